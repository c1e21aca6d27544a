-- The authorization endpoint: a valid S256 request (RFC 7636 Appendix B's
-- challenge). The upstream answers 302 with a fresh code.
wrk.method = "GET"
wrk.path = "/authorize?response_type=code&client_id=bench"
   .. "&redirect_uri=https%3A%2F%2Fclient.example%2Fcb&state=s1"
   .. "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"

-- The token endpoint without a code: a refresh_token grant, which the proxy
-- reads (buffered, parsed) and forwards. Codes are redeemed in flow.lua.
wrk.method = "POST"
wrk.path = "/token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "grant_type=refresh_token&refresh_token=bench-refresh-token&client_id=bench"

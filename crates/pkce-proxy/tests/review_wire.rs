//! A hostile review of the proxy's wire handling and forwarding (after
//! 0f3cca0), through the real binary, in front of the hostile upstream of
//! `attacks.rs` with its looser knobs on (forms read for any method at
//! `/authorize`, cookies read as token parameters, a HEAD body sent late,
//! `_` folded into `-` in header names, unwanted bodies drained).
//!
//! Each test was written against the code as it stood, and the first eight
//! failed there; they hold the fixes since.

//! | test | invariant | what it shows |
//! | --- | --- | --- |
//! | `a_cookie_cannot_carry_token_parameters_past_the_checks` | I5 | `Cookie: grant_type=authorization_code; code=<victim>` beside a body that passes (a `refresh_token` grant, or the attacker's own bound code): an upstream reading `$_REQUEST` (EGPCS) redeems the victim's code without its verifier |
//! | `an_underscore_content_length_cannot_smuggle_a_token_request` | I1 | `GET` with `Content_Length: 300` is forwarded and its connection kept; an upstream that folds `_` into `-` and drops an unwanted body eats the next request's head, and the next request's body (a token request for the victim's code) is read as a request; the attacker gets the tokens |
//! | `underscore_forwarded_fields_cannot_pass_the_replacement` | forwarding | `X_Forwarded_Host`/`_For`/`_Proto` reach such an upstream ahead of the proxy's own |
//! | `a_late_head_body_never_answers_another_client` | I1 (reuse only when clean) | a HEAD answer whose body comes late: the connection goes to the shared pool, and another client receives the attacker's bytes as its answer |
//! | `a_late_head_body_never_restores_a_redeemed_binding` | I6 | the same bytes read as a 503 for a victim's token request: the upstream redeemed the code, the proxy restored the binding, and the retry forwards the code again |
//! | `an_unread_token_body_never_spoils_the_next_clients_request` | I1 | a checked token body the upstream skipped stays on a connection that goes to the shared pool: the next client's token request is read as `<body>POST /token`, refused, and its code spent |
//! | `an_authorization_body_is_read_whatever_the_method` | I1, I2 | `post`, `PROPFIND`, `QUERY /authorize` with a form body: the query is checked, the body goes upstream unread; a server that reads forms for any method takes its `state`, and the code leaves unbound (redeemed without a verifier in optional mode) |
//! | `a_body_that_never_comes_does_not_hold_its_connection` | DoS | a token or authorization POST whose body stalls was never timed out; it is closed after `--body-timeout` |
//! | `framing_tricks_are_refused` | I1 | CL+TE, two TE, `chunked, chunked`, space before colon, obs-fold, HTTP/1.0 TE, bad lengths, bad chunk lines, two Hosts, NUL: refused, closed, nothing smuggled |
//! | `h2_bodies_and_connect_are_refused` | I1 | h2c: a GET or DELETE whose headers do not end the stream gets 400 and nothing upstream; a HEAD answer has no body |
//! | `debug_logs_hold_no_secret` | logs | a whole flow at `PKCE_PROXY_LOG=debug`: no code, verifier, handle, state, Basic credential or token in the log |

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod driver;
mod hostile;

use std::time::Duration;

use driver::{
    ATTACKER_VERIFIER, After, Body, CHALLENGE, CLIENT, Conn, Mode, Proxy, REDIRECT, Req, Resp,
    STATE, VERIFIER, World, attacker_challenge, enc, every_mode, handles,
};
use hostile::{Flow, Hostile, Knobs};

fn query(challenge: &str) -> String {
    format!(
        "response_type=code&client_id={CLIENT}&redirect_uri={}&state={STATE}\
         &code_challenge={challenge}&code_challenge_method=S256",
        enc(REDIRECT)
    )
}

fn token_body(code: &str, verifier: Option<&str>) -> String {
    let mut body = format!(
        "grant_type=authorization_code&code={}&client_id={CLIENT}&redirect_uri={}",
        enc(code),
        enc(REDIRECT)
    );
    if let Some(v) = verifier {
        body.push_str(&format!("&code_verifier={v}"));
    }
    body
}

fn token(code: &str, verifier: Option<&str>) -> Req {
    Req::post("/token", token_body(code, verifier))
}

/// A code delivered to the victim's client by the direct flow (query
/// delivery), bound to `challenge`, not redeemed yet.
async fn bound_code(w: &World, challenge: &str) -> String {
    let since = w.log().issued.len();
    let req = Req::get(&format!("/authorize?{}", query(challenge)));
    let resp = w.send(&req).await;
    let code = w.log().issued[since..]
        .last()
        .unwrap_or_else(|| panic!("{} no code issued: {}", w.tag(), resp.describe()))
        .code
        .clone();
    assert!(
        resp.status == 302
            && resp.contains(&code)
            && resp.contains(&format!("state={STATE}"))
            && handles(&resp.text()).is_empty(),
        "{} a plain delivery must be bound and restored: {}",
        w.tag(),
        resp.describe()
    );
    code
}

// ------------------------------------------------------------ findings

/// I1 says the upstream never receives a request the proxy did not parse
/// and check, and DESIGN.md says every method at the authorization path is
/// intercepted, because routers are loose about methods. But the layer
/// reads an authorization request's body only for POST, PUT and PATCH
/// (`authorize`: `reads_body`), and the engine refuses bodies only on GET,
/// HEAD, DELETE, OPTIONS and TRACE. Any other method (`post` in lower
/// case, `PROPFIND`, `QUERY`, `SEARCH`, `REPORT`, ...) at `/authorize`
/// has its query checked and its body forwarded unread. A server whose
/// router takes every method there and whose form parser reads a form body
/// for any method (Rack's `form_data?`, Express's `urlencoded()`) reads
/// parameters the proxy never saw: here a `state` that replaces the
/// handle, so that the code issued under the checked challenge leaves the
/// proxy unbound (I2), and in optional mode the upstream redeems it with
/// no verifier at all. (The same body could carry `request_uri`, `code`, a
/// continuation's other `redirect_uri` or `client_id`: none is checked.)
#[tokio::test]
async fn an_authorization_body_is_read_whatever_the_method() {
    let mut all_broken = Vec::new();
    for mode in Mode::ALL {
        let knobs = Knobs {
            flow: Flow::Login,
            authorize_body_any_method: true,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let mut broken = Vec::new();
        for method in ["post", "PROPFIND", "QUERY"] {
            let since = w.log().issued.len();
            let req = Req::new(method, &format!("/authorize?{}", query(CHALLENGE)))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(Body::Sized(b"state=chosen-by-the-body".to_vec()));
            let page = w.send_unchecked(&req).await;
            let read_unchecked = {
                let log = w.log();
                log.with_id(&req.id)
                    .iter()
                    .find_map(|s| s.body.clone())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            let Some(body) = read_unchecked else { continue };
            let mut what = format!(
                "{method} /authorize with the challenge in its query: the upstream read the form \
                 body {body:?}, which the proxy never parsed (the sign-in page: {} {})",
                page.status,
                if handles(&page.text()).is_empty() {
                    "without the handle"
                } else {
                    "with the handle"
                }
            );
            // The user signs in on the page the upstream showed.
            let txn = page
                .text()
                .split("name=\"txn\" value=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_owned);
            if let Some(txn) = txn {
                let login = Req::post("/login", format!("txn={}&username=alice", enc(&txn)));
                let resp = w.send_unchecked(&login).await;
                let issued = w.log().issued[since..].last().cloned();
                if let Some(issued) = issued
                    && resp.contains(&issued.code)
                {
                    what.push_str(&format!(
                        "; code {} (issued for the transaction that carried the challenge; \
                         the upstream's state {:?}) reached the client: {}",
                        issued.code,
                        issued.state,
                        resp.describe()
                    ));
                    // Bound, a request without the verifier is refused and
                    // one with it redeems.
                    let bare = w.send(&token(&issued.code, None)).await;
                    if bare.status == 200 {
                        what.push_str(&format!(
                            "; the upstream REDEEMED IT WITHOUT ANY VERIFIER: {}",
                            bare.describe()
                        ));
                    } else {
                        let right = w
                            .send(&token(&issued.code, Some(VERIFIER)).legit(&issued.code))
                            .await;
                        what.push_str(&if right.status == 200 {
                            "; bound to the challenge after all".to_owned()
                        } else {
                            format!(
                                "; UNBOUND: with the right verifier the proxy answers {} {:?}",
                                right.status,
                                right.error()
                            )
                        });
                    }
                }
            }
            broken.push(what);
        }
        all_broken.extend(broken.into_iter().map(|b| format!("{} {b}", w.tag())));
        w.finish();
    }
    assert!(
        all_broken.is_empty(),
        "I1/I2: an authorization request whose body the proxy never read reached the \
         upstream:\n  {}",
        all_broken.join("\n  ")
    );
}

/// I5 says the token checks apply with every parameter that a loose server
/// might read, wherever it stands. PHP's `$_REQUEST` (with the built-in
/// `variables_order = "EGPCS"`, no `request_order`) reads the query, the
/// body and then the cookies, the last one winning; ASP.NET's
/// `Request[...]` reads cookies too. The layer refuses `Connection: Cookie`
/// (it counts `Cookie` as a checked field) but never reads the `Cookie`
/// header itself. An attacker who learnt a victim's code sends a token
/// request that passes every check (a `refresh_token` grant, which passes
/// unchecked, or their own bound code with their own verifier) with
/// `Cookie: grant_type=authorization_code; code=<victim's code>`: the
/// upstream redeems the victim's code, without its verifier, and the
/// attacker receives the tokens.
#[tokio::test]
async fn a_cookie_cannot_carry_token_parameters_past_the_checks() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            token_reads_cookies: true,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let mut broken = Vec::new();
        // Without any code of the attacker's: a grant that passes unchecked.
        let victim = bound_code(&w, CHALLENGE).await;
        let req = Req::post("/token", "grant_type=refresh_token&refresh_token=anything").header(
            "Cookie",
            &format!(
                "grant_type=authorization_code; code={}; client_id={CLIENT}; redirect_uri={}",
                enc(&victim),
                enc(REDIRECT)
            ),
        );
        let resp = w.send(&req).await;
        if w.log()
            .tokens_for(&victim)
            .iter()
            .any(|t| t.answered == Some(200))
        {
            broken.push(format!(
                "a refresh_token body with Cookie: grant_type=authorization_code; code=<victim>: \
                 the upstream redeemed the victim's code {victim}; the attacker got {}",
                resp.describe()
            ));
        }
        // With the attacker's own code and verifier in the body.
        let victim = bound_code(&w, CHALLENGE).await;
        let mine = bound_code(&w, &attacker_challenge()).await;
        let req = token(&mine, Some(ATTACKER_VERIFIER))
            .legit(&mine)
            .header("Cookie", &format!("code={}", enc(&victim)));
        let resp = w.send(&req).await;
        if w.log()
            .tokens_for(&victim)
            .iter()
            .any(|t| t.answered == Some(200))
        {
            broken.push(format!(
                "the attacker's own checked token request with Cookie: code=<victim>: the \
                 upstream redeemed the victim's code {victim}; the attacker got {}",
                resp.describe()
            ));
        }
        assert!(
            broken.is_empty(),
            "{} I5: a Cookie header carries token parameters the proxy never checks:\n  {}\n\
             upstream saw:{}",
            w.tag(),
            broken.join("\n  "),
            w.log().summary()
        );
        w.finish();
    })
    .await;
}

/// An upstream connection serves another request only when known clean.
/// After a HEAD the proxy takes the answer to have no body (RFC 9110
/// §9.3.2) and pools the connection as soon as the head is read, if no
/// byte of a body has arrived yet. A naive server that answers HEAD with
/// its GET handler (Python's `do_HEAD = do_GET`, which writes the head and
/// the body in separate writes) sends the body anyway, a moment later.
/// An attacker sends `HEAD /echo?<a whole HTTP response>` and hangs up: the
/// connection goes to the shared pool, the next client's request is written
/// on it, and that client reads the attacker's bytes as its answer. The
/// answer to its own request then waits on the connection, which is pooled
/// again, and goes to whoever asks next.
#[tokio::test]
async fn a_late_head_body_never_answers_another_client() {
    let knobs = Knobs {
        head_body_after: Some(Duration::from_millis(700)),
        ..Knobs::default()
    };
    let w = World::start(Mode::Required, knobs, &[]).await;
    let page = "<script>alert('served by the attacker on the server origin')</script>";
    let fake = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
        page.len()
    );
    let mut attacker = w.conn().await;
    let head = Req::new("HEAD", &format!("/echo?{}", enc(&fake)));
    let resp = w.send_on(&mut attacker, &head).await;
    assert_eq!(resp.status, 200, "HEAD /echo: {}", resp.describe());
    // The attacker hangs up: the connection's upstream connection, whose
    // body is still to come, goes to the shared pool.
    drop(attacker);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut victim = w.conn().await;
    let first = Req::get("/other?first");
    let got = w.try_send_unchecked(&mut victim, &first).await;
    let second = Req::get("/other?second");
    let got2 = w.try_send_unchecked(&mut victim, &second).await;
    let describe = |r: &Result<Resp, driver::ReadFail>| match r {
        Ok(r) => r.describe(),
        Err(e) => e.to_string(),
    };
    let own = |req: &Req, r: &Result<Resp, driver::ReadFail>| {
        r.as_ref().is_ok_and(|r| {
            r.header_str("x-test-id").as_deref() == Some(req.id.as_str()) && !r.contains(page)
        })
    };
    assert!(
        own(&first, &got) && own(&second, &got2),
        "a client's requests must get their own answers (or an error), never another's: \
         GET /other?first (x-test-id {}) got {}; GET /other?second (x-test-id {}) got {}\n\
         upstream saw:{}",
        first.id,
        describe(&got),
        second.id,
        describe(&got2),
        w.log().summary()
    );
}

/// The same desync, against I6: the attacker's late HEAD body is a `503`,
/// and the next request on the pooled connection is a victim's token
/// request. The upstream redeems the code and answers 200 with tokens,
/// but the proxy has already read the attacker's 503 as that answer; the
/// layer, seeing a 5xx from "the upstream", restores the binding, and the
/// victim's retry forwards the same code a second time (to a server that
/// may accept a code twice). The tokens the upstream issued are read by
/// nobody.
#[tokio::test]
async fn a_late_head_body_never_restores_a_redeemed_binding() {
    let knobs = Knobs {
        head_body_after: Some(Duration::from_millis(700)),
        ..Knobs::default()
    };
    let w = World::start(Mode::Required, knobs, &[]).await;
    let victim_code = bound_code(&w, CHALLENGE).await;
    let fake = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                Content-Length: 24\r\n\r\n{\"error\":\"server_error\"}";
    let mut attacker = w.conn().await;
    let head = Req::new("HEAD", &format!("/echo?{}", enc(fake)));
    w.send_on(&mut attacker, &head).await;
    drop(attacker);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let first = token(&victim_code, Some(VERIFIER)).legit(&victim_code);
    let got = w.send_unchecked(&first).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let retry = token(&victim_code, Some(VERIFIER)).legit(&victim_code);
    let again = w.send_unchecked(&retry).await;
    let log = w.log();
    let seen: Vec<String> = log
        .tokens_for(&victim_code)
        .iter()
        .map(|t| format!("{:?} answered {:?}", t.test_id, t.answered))
        .collect();
    assert!(
        seen.len() <= 1,
        "I6: the upstream received the victim's code {} times ({seen:?}): its first token \
         request (x-test-id {}) was answered with {} (the attacker's bytes, not the upstream's \
         answer to it), so the layer restored the binding although the upstream had redeemed \
         the code, and the retry (x-test-id {}) forwarded it again and got {}\nupstream saw:{}",
        seen.len(),
        first.id,
        got.describe(),
        retry.id,
        again.describe(),
        log.summary()
    );
}

/// I1: "No byte that the proxy forwarded as a body may become a request on
/// a connection it reuses." A checked token body keeps its connection
/// because, being visible ASCII, what a server leaves of it "can only
/// spoil the next request's method". But that next request may be
/// another client's: the connection goes to the shared pool when its
/// client leaves. An attacker sends a token request that passes (a
/// `refresh_token` grant) to a server that answers `/token` without
/// reading the body when `Authorization` is missing, and hangs up. The
/// next client to draw that connection has its token request read by the
/// upstream as `grant_type=refresh_token&refresh_token=xPOST /token`: not a
/// POST, so it is refused, the proxy takes the 4xx as the upstream's
/// answer, and the victim's code is spent. Each such request poisons one
/// pooled connection, and the pool hands out the newest first.
#[tokio::test]
async fn an_unread_token_body_never_spoils_the_next_clients_request() {
    let knobs = Knobs {
        token_body_needs_authorization: true,
        ..Knobs::default()
    };
    let w = World::start(Mode::Required, knobs, &[]).await;
    let victim_code = bound_code(&w, CHALLENGE).await;
    let mut attacker = w.conn().await;
    let poison = Req::post("/token", "grant_type=refresh_token&refresh_token=x");
    let resp = w.send_on(&mut attacker, &poison).await;
    assert_eq!(
        resp.status,
        401,
        "the upstream skips the body: {}",
        resp.describe()
    );
    drop(attacker);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let victim = token(&victim_code, Some(VERIFIER))
        .legit(&victim_code)
        .header("Authorization", "Basic YXBwOg==");
    let got = w.send_unchecked(&victim).await;
    let retry = w
        .send_unchecked(
            &token(&victim_code, Some(VERIFIER))
                .legit(&victim_code)
                .header("Authorization", "Basic YXBwOg=="),
        )
        .await;
    let log = w.log();
    let seen = log.with_id(&victim.id);
    assert!(
        got.status == 200,
        "the victim's own, correct token request (x-test-id {}) on a new connection must redeem \
         its code; the upstream read it as {:?} and the victim got {}; its retry got {}\n\
         upstream saw:{}",
        victim.id,
        seen.iter()
            .map(|s| format!(
                "{} {} (from the body before it: {})",
                s.method, s.target, s.from_body
            ))
            .collect::<Vec<_>>(),
        got.describe(),
        retry.describe(),
        log.summary()
    );
}

/// The engine refuses a body on GET (`Content-Length` above 0, any
/// `Transfer-Encoding`) so that no upstream reads one, but it forwards a
/// field named `Content_Length` (or `Transfer_Encoding`) untouched, and
/// keeps the connection: to the proxy it is just a header. Servers that
/// map header names to CGI-style variables read `Content_Length` as
/// `Content-Length` (`HTTP_CONTENT_LENGTH`; Puma's PR #4021 and nginx's
/// `underscores_in_headers off` exist for this), and a server that
/// answers a GET without waiting for its body, then reads and drops the
/// body, drops the first N bytes of the next request on the connection:
/// the head the proxy wrote for it. What follows, the next request's body,
/// which the proxy never parsed as a request, is then read as one. Here
/// the attacker's `GET` with `Content_Length: 300` is followed on the same
/// connection by a `POST` whose body is a token request for the victim's
/// code: the upstream redeems it, and the proxy hands the tokens to the
/// attacker as the answer to the POST.
#[tokio::test]
async fn an_underscore_content_length_cannot_smuggle_a_token_request() {
    let knobs = Knobs {
        fold_underscores: true,
        drain_unread_bodies: true,
        ..Knobs::default()
    };
    let w = World::start(Mode::Required, knobs, &[]).await;
    let victim = bound_code(&w, CHALLENGE).await;
    let form = token_body(&victim, None);
    let smuggled = format!(
        "{}POST /token HTTP/1.1\r\nHost: upstream\r\nx-test-id: smuggled-underscore\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        "\r\n".repeat(100),
        form.len()
    );
    let mut conn = w.conn().await;
    let get = Req::get("/other").header("Content_Length", "300");
    let first = w.try_send_unchecked(&mut conn, &get).await;
    let carrier = Req::new("POST", "/other")
        .header("Content-Type", "text/plain")
        .body(Body::Sized(smuggled.into_bytes()));
    let second = w.try_send_unchecked(&mut conn, &carrier).await;
    let describe = |r: &Result<Resp, driver::ReadFail>| match r {
        Ok(r) => r.describe(),
        Err(e) => e.to_string(),
    };
    let log = w.log();
    let redeemed: Vec<String> = log
        .tokens_for(&victim)
        .iter()
        .map(|t| format!("x-test-id {:?} answered {:?}", t.test_id, t.answered))
        .collect();
    assert!(
        redeemed.is_empty(),
        "I1: the upstream read a token request for the victim's code {victim} out of a POST \
         body the proxy forwarded ({redeemed:?}); GET /other with Content_Length: 300 got {}; \
         the carrier POST /other (x-test-id {}) got {}\nupstream saw:{}",
        describe(&first),
        carrier.id,
        describe(&second),
        log.summary()
    );
}

/// The same spelling against the forwarded fields: the proxy replaces the
/// client's `X-Forwarded-For`, `-Proto` and `-Host` (unless the peer is
/// one of `--trusted-proxies`), because upstreams build absolute URLs from them,
/// but passes `X_Forwarded_Host` and `X_Forwarded_For` through, ahead of
/// its own. An upstream that folds `_` into `-` reads two of each, the
/// client's first.
#[tokio::test]
async fn underscore_forwarded_fields_cannot_pass_the_replacement() {
    let knobs = Knobs {
        fold_underscores: true,
        ..Knobs::default()
    };
    let w = World::start(Mode::Required, knobs, &[]).await;
    let req = Req::get("/other")
        .header("X_Forwarded_Host", "evil.example")
        .header("X_Forwarded_For", "6.6.6.6")
        .header("X_Forwarded_Proto", "https");
    w.send(&req).await;
    let log = w.log();
    let seen = log.with_id(&req.id);
    let forwarded: Vec<String> = seen
        .iter()
        .flat_map(|s| s.headers.iter())
        .filter(|(n, _)| n.starts_with("x-forwarded-"))
        .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
        .collect();
    assert!(
        !forwarded
            .iter()
            .any(|f| f.contains("evil.example") || f.contains("6.6.6.6")),
        "the client's X_Forwarded_* fields reached the upstream beside the proxy's own, which \
         an upstream folding `_` into `-` reads first: {forwarded:?}"
    );
}

/// DESIGN.md: "Every resource is bounded: connections, upstream
/// connections, header and body timeouts." A head must come within 30 s,
/// and a forwarded request within `--response-timeout`; but the body of a
/// token request or an authorization POST is read by the layer before
/// anything is forwarded, with no timer at all, and the listener takes any
/// number of connections. One request head with a `Content-Length` and no
/// body holds a connection, its task and its file descriptor forever.
#[tokio::test]
async fn a_body_that_never_comes_does_not_hold_its_connection() {
    let w = World::start(
        Mode::Required,
        Knobs::default(),
        &["--response-timeout", "1", "--body-timeout", "1"],
    )
    .await;
    let heads = [
        "POST /token HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type=",
        "POST /authorize HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nclient_id=",
    ];
    let mut conns = Vec::new();
    for i in 0..64 {
        let mut conn = w.conn().await;
        conn.write(heads[i % 2].as_bytes()).await.unwrap();
        conns.push(conn);
    }
    // Well past the body timeout (a second between two reads).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut open = 0;
    for conn in &mut conns {
        if conn.after(Duration::from_millis(200)).await == After::Open {
            open += 1;
        }
    }
    assert_eq!(
        open,
        0,
        "{open} of {} connections whose request body stalled (a token request or an \
         authorization POST, {} bytes of 100) are still open 4 s later, past a body timeout of \
         1 s: a client would hold a file descriptor and a task per request head",
        conns.len(),
        "grant_type=".len()
    );
}

// ------------------------------------------------------------ controls

/// Framing that a proxy in front could read differently: each gets the
/// proxy's refusal, the connection closes, and the request smuggled in its
/// body never reaches the upstream.
#[tokio::test]
async fn framing_tricks_are_refused() {
    let w = World::start(Mode::Required, Knobs::default(), &[]).await;
    let smuggled = "GET /other HTTP/1.1\r\nHost: upstream\r\nx-test-id: smuggled\r\n\r\n";
    let n = smuggled.len();
    let cases: Vec<(&str, String)> = vec![
        (
            "CL and TE",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two TE fields",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunked, chunked",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "xchunked",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "space before colon",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\nContent-Length: {n}\r\n\r\n{smuggled}"
            ),
        ),
        (
            "obs-fold TE",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "obs-fold CL",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n Content-Length: 0\r\nContent-Length: {n}\r\n\r\n{smuggled}"
            ),
        ),
        (
            "HTTP/1.0 TE",
            format!(
                "POST /other HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "CL with a sign",
            format!("POST /other HTTP/1.1\r\nHost: h\r\nContent-Length: +0\r\n\r\n{smuggled}"),
        ),
        (
            "CL list",
            format!("POST /other HTTP/1.1\r\nHost: h\r\nContent-Length: 0, {n}\r\n\r\n{smuggled}"),
        ),
        (
            "two CLs",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk size LF",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk ext CR",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0;a\rb\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk size overflow",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk size 0x",
            format!(
                "POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two hosts",
            format!("GET /other HTTP/1.1\r\nHost: h\r\nHost: g\r\n\r\n{smuggled}"),
        ),
        (
            "NUL in a value",
            format!("GET /other HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n{smuggled}"),
        ),
        (
            "GET with TE",
            format!(
                "GET /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
    ];
    for (what, bytes) in cases {
        let mut conn = w.conn().await;
        conn.write(bytes.as_bytes()).await.unwrap();
        let resp = conn.response(false).await;
        // A bad head is refused before anything is forwarded (400, or 501
        // for an unknown coding); a bad chunk line is met while the body
        // streams, after the head went upstream: the proxy's own 502.
        let refused = resp
            .as_ref()
            .is_ok_and(|r| matches!(r.status, 400 | 501 | 502) && r.header("x-served").is_none());
        assert!(
            refused,
            "{what}: expected the proxy's refusal; got {:?}",
            resp.map(|r| r.describe())
        );
        let after = conn.after(Duration::from_secs(2)).await;
        assert_eq!(after, After::Closed, "{what}: the connection must close");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = w.log();
        assert!(
            log.with_id("smuggled").is_empty(),
            "{what}: the request in the body reached the upstream:{}",
            log.summary()
        );
    }
    w.finish();
}

/// A whole flow at `PKCE_PROXY_LOG=debug` (every crate): sign-in, a
/// refused token request with a wrong verifier and Basic credentials, the
/// redemption, an upstream failure, a refused request head: the log holds
/// no code, verifier, handle, client state, Basic credential or token.
#[tokio::test]
async fn debug_logs_hold_no_secret() {
    let up = Hostile::start(Knobs {
        flow: Flow::Login,
        ..Knobs::default()
    })
    .await;
    let level = std::env::var("REVIEW_LOG_LEVEL").unwrap_or_else(|_| "debug".into());
    let proxy = Proxy::spawn_logging(&format!("http://{}", up.addr), &level, &[]);
    let mut secrets: Vec<String> = vec![VERIFIER.into(), STATE.into(), "YXBwOnNlY3JldA".into()];
    let mut conn = Conn::open(proxy.addr).await;
    let send = |req: Req| req.bytes();
    conn.write(&send(Req::get(&format!("/authorize?{}", query(CHALLENGE)))))
        .await
        .unwrap();
    let page = conn.response(false).await.unwrap();
    secrets.extend(handles(&page.text()));
    let txn = page
        .text()
        .split("name=\"txn\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    secrets.push(txn.clone());
    conn.write(&send(Req::post(
        "/login",
        format!("txn={txn}&username=alice"),
    )))
    .await
    .unwrap();
    let delivered = conn.response(false).await.unwrap();
    let code = up.log().last_issued().unwrap().code.clone();
    secrets.push(code.clone());
    assert!(delivered.contains(&code), "{}", delivered.describe());
    let wrong = Req::post(
        "/token",
        token_body(&code, Some("wrongVerifierOfTheRightShape-0123456789abcd")),
    )
    .header("Authorization", "Basic YXBwOnNlY3JldA==");
    conn.write(&send(wrong)).await.unwrap();
    let _ = conn.response(false).await.unwrap();
    conn.write(&send(token(&code, Some(VERIFIER))))
        .await
        .unwrap();
    let redeemed = conn.response(false).await.unwrap();
    if let Some(json) = redeemed.json() {
        for key in ["access_token", "refresh_token"] {
            if let Some(v) = json[key].as_str() {
                secrets.push(v.to_owned());
            }
        }
    }
    conn.write(
        b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer secret-bearer-1\r\nHost: b\r\n\r\n",
    )
    .await
    .unwrap();
    let _ = conn.response(false).await;
    secrets.push("secret-bearer-1".into());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = proxy.log();
    assert!(
        log.lines().count() > 5,
        "too little logged to judge:\n{log}"
    );
    if std::env::var("REVIEW_SHOW_LOG").is_ok() {
        println!("{log}");
    }
    let leaked: Vec<&String> = secrets
        .iter()
        .filter(|s| log.contains(s.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "the debug log holds secrets {leaked:?}:\n{log}"
    );
}

/// HTTP/2 with prior knowledge: a GET or DELETE whose headers do not end
/// the stream (a body follows) is refused before anything reaches the
/// upstream; a HEAD answer has no body.
#[tokio::test]
async fn h2_bodies_and_connect_are_refused() {
    use http_body_util::{BodyExt, Full};
    let w = World::start(Mode::Required, Knobs::default(), &[]).await;
    let stream = tokio::net::TcpStream::connect(w.proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let ask = |method: &str, path: &str, body: &'static [u8], id: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://proxy.test{path}"))
            .header("x-test-id", id)
            .body(Full::new(bytes::Bytes::from_static(body)))
            .unwrap()
    };
    let authorize = format!("/authorize?{}", query(CHALLENGE));
    for (method, path, body, id) in [
        ("GET", authorize.as_str(), &b"state=x"[..], "h2-get-body"),
        (
            "GET",
            "/other",
            &b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            "h2-get-body-2",
        ),
        ("DELETE", "/other", &b"x"[..], "h2-delete-body"),
    ] {
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            send.send_request(ask(method, path, body, id)),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 400, "{method} {path} with DATA over h2");
        assert!(
            w.log().with_id(id).is_empty(),
            "{method} {path} reached the upstream"
        );
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        send.send_request(ask("HEAD", "/other", b"", "h2-head")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty(), "a HEAD answer over h2 carried {body:?}");
}

/// The deprecated `--trust-forwarded` still starts, and says at start why
/// it should go; `--trusted-proxies` starts without that warning.
#[test]
fn trust_forwarded_warns_at_start() {
    let deprecated = Proxy::spawn("http://127.0.0.1:9", &["--trust-forwarded"]);
    let log = deprecated.log();
    assert!(
        log.contains("--trust-forwarded is deprecated") && log.contains("\"level\":\"WARN\""),
        "{log}"
    );
    let listed = Proxy::spawn("http://127.0.0.1:9", &["--trusted-proxies", "10.0.0.0/8"]);
    assert!(!listed.log().contains("deprecated"), "{}", listed.log());
}

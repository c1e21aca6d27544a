//! Attacks on the real `pkce-proxy` binary, in front of a deliberately
//! hostile legacy upstream (`hostile/`), over raw TCP (`driver/`).
//!
//! # Threat model
//!
//! The attacker runs any client, reads every page the upstream shows a
//! browser (a pending transaction handle is no secret), sends the proxy
//! any bytes, and lures victims through crafted URLs. They may learn a
//! victim's code (that is what PKCE is for) but never the victim's
//! `code_verifier`. The upstream is a loose legacy server: it ignores
//! bodies it does not want, reads parameters from the query string too,
//! echoes parameters into pages, redirects wherever it is told, writes
//! latin-1 headers, and hands codes out in ambiguous shapes.
//!
//! Each attack runs with PKCE required (the default), `--pkce optional` and
//! `--strip-pkce-params`, unless it only makes sense in one of them. The
//! pair of RFC 7636 Appendix B is the victim's; the attacker has a pair of
//! their own.
//!
//! # What every test asserts besides its own claims
//!
//! - Every answer a client reads is the answer to the request it sent: the
//!   upstream stamps `x-served` and echoes `x-test-id`
//!   ([`World::check`](driver::World::check)).
//! - No answer hands a client a transaction handle (`pkce.` and 22
//!   base64url characters) beside a code, in a `Location`, a `Refresh` or
//!   a page.
//! - The upstream never issued a token for a code issued under a
//!   challenge to a request that did not carry its verifier (tracked on the
//!   client side, since `--strip-pkce-params` removes it upstream), and no
//!   token the upstream issued to a request it parsed out of another
//!   request's body reached any client
//!   ([`World::finish`](driver::World::finish)).
//!
//! # Tests and the invariants they prove (DESIGN.md, "Security invariants")
//!
//! | test | invariant | expectation |
//! | --- | --- | --- |
//! | `i1_bodies_on_bodiless_methods_are_refused` | I1 | GET/HEAD/DELETE/TRACE/OPTIONS with a body: 400, nothing upstream, connection closed; `Content-Length: 0` passes |
//! | `i1_connect_is_never_forwarded` | I1 | CONNECT: 4xx, nothing upstream |
//! | `i1_a_request_smuggled_in_a_body_never_answers_anyone` | I1 | a request inside a body the upstream skips: its answer reaches no client, on any connection, pipelined or not |
//! | `i1_a_request_smuggled_in_a_token_body_never_reaches_the_upstream` | I1, beyond | a token body that is itself a request (raw CR LF SP): never parsed as a request upstream, and never answers anyone |
//! | `i1_a_request_smuggled_in_an_authorization_form_never_answers_anyone` | I1 | the same through a POST to `/authorize` the upstream skips |
//! | `i2_clear_deliveries_are_bound_and_restored` | I2 | query (302/303/307), fragment, form_post, latin-1 `Location`, no client state; every flow: bound, only `state` changed |
//! | `i2_uncertain_deliveries_are_withheld` | I2 | `#?`, two codes, query+fragment codes, `;`, two states, two hidden codes, meta refresh, JS, page past the scan bound, zstd: 502, no `Location`, no code |
//! | `i2_a_page_past_the_scan_bound_never_delivers_its_code` | I2 | the form after 256 KiB: 502, or cut off without the code |
//! | `i2b_an_expired_binding_never_makes_its_code_redeemable_without_its_verifier` | I2 | optional, ttl 1: after expiry no verifier / wrong verifier: 400 `invalid_grant`, nothing upstream |
//! | `i3_a_code_echoed_into_a_consent_page_is_never_bound` | I3 | consent page echoing `code=X` beside the handle: 502; X never bound |
//! | `i3_a_delivery_to_another_target_is_withheld` | I3 | redirect with code and handle to another target (other host, prefix tricks, protocol-relative): 502, no state, code not bound |
//! | `i3_a_form_post_to_another_action_is_withheld` | I3, beyond | form_post action differing in path case or by a trailing slash: 502; host case: bound or withheld |
//! | `i4_continuations_must_match_their_transaction` | I4 | other client_id, redirect_uri, challenge, or a redirect_uri the transaction lacked: 400, nothing upstream; handle alone or the same parameters: forwarded |
//! | `i4_a_finished_transaction_cannot_be_continued` | I4 | after its code was bound: 400 `invalid_request`, "took too long" page |
//! | `i4_a_victim_lured_onto_an_attackers_handle_is_stopped` | I4 | victim request with the attacker's handle (also as `STATE`, `st%61te`): 400, nothing upstream |
//! | `i4_a_continuation_with_two_handles_is_refused` | I4, beyond | handle in the query and another in the body: 400, nothing upstream |
//! | `i5_connection_cannot_hide_a_checked_field` | I5 | `Connection: Authorization` (any case, in a list) on a token request; `host`, `content-type`, `content-length`, `transfer-encoding`, `cookie` anywhere: 400, nothing upstream |
//! | `i5_connection_authorization_cannot_make_the_upstream_skip_a_checked_body` | I5 | the chain that makes it matter: nothing upstream, the victim's code never redeemed |
//! | `i5_connection_still_removes_other_fields` | I5 | `Connection: x-foo`: forwarded without `x-foo` |
//! | `i5_token_parameters_in_the_query_are_refused` | I5 | `code`, `code_verifier`, `grant_type`, `redirect_uri`, `client_id`, `client_assertion` in a token query: 400 `invalid_request`, nothing upstream |
//! | `i5_token_trailers_are_refused` | I5 | a chunked token request with trailers: 400, nothing upstream |
//! | `i5_token_path_aliases_are_checked` | I5, beyond | `/TOKEN`, `/token/`, `//token`, `/token;x`, `/%74oken`, `/a/../token`, `/token%3f`, `/token%23`, `/token%20`: checked, wrong verifier refused; `%00`, `%09`, `%0a`, `%2500`, `%c0%ae` in the path: 400, nothing upstream |
//! | `i6_a_5xx_from_the_token_upstream_restores_the_binding` | I6 | 500/502/503: the retry with the right verifier succeeds |
//! | `i6_an_unreachable_upstream_restores_the_binding` | I6 | 502, then the retry succeeds |
//! | `i6_a_token_timeout_leaves_the_binding_spent` | I6 | 504, retry 400 `invalid_grant`, the upstream saw the code once |
//! | `i6_a_token_connection_closed_without_answer_leaves_the_binding_spent` | I6 | 502, retry 400 `invalid_grant`, the upstream saw the code once |
//! | `beyond_handle_spellings_in_a_delivery` | I2, beyond | encoded handle, `STATE=`, `Code=`, state in query and fragment, state only in the fragment, 200 with `Location`, `Refresh` header: bound (handle gone) or withheld |
//! | `beyond_an_http10_upstream_delivers_bound_codes` | I2, beyond | HTTP/1.0 answers, close-delimited pages: bound and restored |
//! | `beyond_head_at_the_authorization_endpoint_binds` | I2, beyond | a HEAD that issues a code: bound and restored |
//! | `beyond_a_code_beside_an_unknown_handle_is_not_handed_out` | I2, beyond | a code beside a handle-shaped value the proxy never minted: the code never reaches the client |
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod driver;
mod hostile;

use std::time::Duration;

use driver::{
    ATTACKER_VERIFIER, After, Body, CHALLENGE, CLIENT, Conn, Mode, REDIRECT, Req, Resp, STATE,
    VERIFIER, World, attacker_challenge, enc, every_mode, handles,
};
use hostile::{Delivery, Flow, Issued, Knobs, TokenFault};

/// A verifier of the right shape that matches nothing.
const WRONG_VERIFIER: &str = "wrongVerifierOfTheRightShape-0123456789abcd";

/// An authorization query for the victim's client, with `challenge` (S256)
/// and `extra` appended.
fn query(challenge: Option<&str>, extra: &str) -> String {
    query_to(REDIRECT, challenge, extra)
}

fn query_to(redirect: &str, challenge: Option<&str>, extra: &str) -> String {
    let mut q = format!(
        "response_type=code&client_id={CLIENT}&redirect_uri={}&state={STATE}",
        enc(redirect)
    );
    if let Some(c) = challenge {
        q.push_str(&format!("&code_challenge={c}&code_challenge_method=S256"));
    }
    q.push_str(extra);
    q
}

/// A token request for `code`, with `verifier` if any; marked legitimate
/// when `verifier` is `right` for the code.
fn token(code: &str, verifier: Option<&str>, right: &str) -> Req {
    token_to(code, verifier, right, REDIRECT)
}

fn token_to(code: &str, verifier: Option<&str>, right: &str, redirect: &str) -> Req {
    let req = Req::post("/token", token_body(code, verifier, redirect));
    if verifier == Some(right) {
        req.legit(code)
    } else {
        req
    }
}

fn token_body(code: &str, verifier: Option<&str>, redirect: &str) -> String {
    let mut body = format!(
        "grant_type=authorization_code&code={}&client_id={CLIENT}&redirect_uri={}",
        enc(code),
        enc(redirect)
    );
    if let Some(v) = verifier {
        body.push_str(&format!("&code_verifier={v}"));
    }
    body
}

fn with_json(req: Req, json: bool) -> Req {
    if json { req.json() } else { req }
}

/// The hidden inputs of a page, in order, unescaped.
fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    };
    let mut out = Vec::new();
    for piece in html.split("<input").skip(1) {
        let tag = piece.split('>').next().unwrap_or("");
        if !tag.contains("type=\"hidden\"") {
            continue;
        }
        let attr = |name: &str| {
            let marker = format!("{name}=\"");
            let start = tag.find(&marker)? + marker.len();
            let end = tag[start..].find('"')? + start;
            Some(unescape(&tag[start..end]))
        };
        if let (Some(n), Some(v)) = (attr("name"), attr("value")) {
            out.push((n, v));
        }
    }
    out
}

fn input<'a>(inputs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    inputs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Walks an authorization through the upstream's flow, up to the request
/// whose answer carries the code. That request and its answer come back
/// unchecked: the caller makes its own assertions first, then
/// [`World::check`]s.
async fn walk(w: &World, query: &str, json: bool) -> (Req, Resp) {
    let first = Req::get(&format!("/authorize?{query}"));
    match w.up.knobs().flow {
        Flow::Direct => {
            let first = with_json(first, json);
            let resp = w.send_unchecked(&first).await;
            (first, resp)
        }
        Flow::Login => {
            let page = w.send(&first).await;
            login(w, &page, json).await
        }
        Flow::Consent => {
            let page = w.send(&first).await;
            assert_eq!(
                page.status,
                200,
                "{} the consent page: {}",
                w.tag(),
                page.describe()
            );
            let body = hidden_inputs(&page.text())
                .iter()
                .map(|(n, v)| format!("{}={}", enc(n), enc(v)))
                .collect::<Vec<_>>()
                .join("&");
            let req = with_json(Req::post("/authorize", body), json);
            let resp = w.send_unchecked(&req).await;
            (req, resp)
        }
    }
}

/// Signs in on a login page: the POST to `/login` and its answer,
/// unchecked.
async fn login(w: &World, page: &Resp, json: bool) -> (Req, Resp) {
    assert_eq!(
        page.status,
        200,
        "{} the login page: {}",
        w.tag(),
        page.describe()
    );
    let inputs = hidden_inputs(&page.text());
    let txn = input(&inputs, "txn")
        .unwrap_or_else(|| panic!("{} no txn on the login page: {}", w.tag(), page.describe()));
    let req = with_json(
        Req::post("/login", format!("txn={}&username=alice", enc(txn))),
        json,
    );
    let resp = w.send_unchecked(&req).await;
    (req, resp)
}

/// Starts a transaction on the login flow and returns its handle, read
/// from the login page as an attacker would.
async fn start_login(w: &World, query: &str) -> (String, Resp) {
    let page = w.send(&Req::get(&format!("/authorize?{query}"))).await;
    assert_eq!(
        page.status,
        200,
        "{} starting a transaction: {}",
        w.tag(),
        page.describe()
    );
    let handle = handles(&page.text()).into_iter().next().unwrap_or_else(|| {
        panic!(
            "{} the login page shows no handle: {}",
            w.tag(),
            page.describe()
        )
    });
    (handle, page)
}

/// The code issued last, and every code issued since `since`.
fn issued_since(w: &World, since: usize) -> (Issued, Vec<String>) {
    let log = w.log();
    let issued = log.issued[since..].to_vec();
    let last = issued
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("{} the upstream issued no code:{}", w.tag(), log.summary()));
    (last, issued.into_iter().map(|i| i.code).collect())
}

fn issued_count(w: &World) -> usize {
    w.log().issued.len()
}

/// The `Location` the upstream wrote, with only the handle in `state`
/// replaced by `state`.
fn restored_location(w: &World, issued: &Issued, state: &str) -> Vec<u8> {
    let location = issued
        .location
        .clone()
        .unwrap_or_else(|| panic!("{} the delivery had no Location", w.tag()));
    let handle = issued.state.clone().unwrap_or_default();
    let from = format!("state={handle}").into_bytes();
    let to = format!("state={state}").into_bytes();
    let at = location
        .windows(from.len())
        .position(|win| win == from.as_slice())
        .unwrap_or_else(|| panic!("{} no handle in the upstream's Location", w.tag()));
    let mut out = location[..at].to_vec();
    out.extend_from_slice(&to);
    out.extend_from_slice(&location[at + from.len()..]);
    out
}

/// What of an answer a client acts on: `Location`, `Refresh` and the
/// body (not the upstream's `x-served` stamp, which echoes the target the
/// upstream was sent).
fn delivered_text(resp: &Resp) -> String {
    let mut text = String::new();
    for name in ["location", "refresh"] {
        if let Some(v) = resp.header(name) {
            text.extend(v.iter().map(|&b| char::from(b)));
            text.push('\n');
        }
    }
    text.push_str(&resp.text());
    text
}

/// Asserts that the delivery of `issued` reached the client with the
/// client's `state` restored and nothing else changed, then checks it.
fn assert_restored(w: &World, what: &str, req: &Req, resp: &Resp, issued: &Issued) {
    match issued.delivery {
        Delivery::FormPost => {
            assert_eq!(
                resp.status,
                200,
                "{} {what}: the form_post page did not reach the client: {}",
                w.tag(),
                resp.describe()
            );
            let inputs = hidden_inputs(&resp.text());
            assert_eq!(
                input(&inputs, "code"),
                Some(issued.code.as_str()),
                "{} {what}: the form_post page lost its code: {}",
                w.tag(),
                resp.describe()
            );
            assert_eq!(
                input(&inputs, "state"),
                Some(STATE),
                "{} {what}: the client's state was not put back in the form_post page: {}",
                w.tag(),
                resp.describe()
            );
        }
        _ => {
            let expected = restored_location(w, issued, STATE);
            let got = resp.header("location");
            assert!(
                got == Some(expected.as_slice()),
                "{} {what}: the Location must be the upstream's with only state's value \
                 changed:\n  expected {}\n  got      {}\n{}",
                w.tag(),
                expected.escape_ascii(),
                got.map_or("no Location".into(), |l| l.escape_ascii().to_string()),
                resp.describe()
            );
        }
    }
    assert!(
        handles(&delivered_text(resp)).is_empty(),
        "{} {what}: a handle reached the client: {}",
        w.tag(),
        resp.describe()
    );
    w.check(req, resp);
}

/// Asserts that `code` is bound to the challenge of `right`: a wrong
/// verifier and no verifier are refused by the proxy (400
/// `invalid_grant`, nothing upstream), the right one is forwarded and
/// redeems it.
async fn assert_bound(w: &World, what: &str, code: &str, right: &str, redirect: &str) {
    for (label, verifier) in [
        ("a wrong verifier", Some(WRONG_VERIFIER)),
        ("no verifier", None),
    ] {
        let req = token_to(code, verifier, right, redirect);
        let resp = w.send(&req).await;
        assert!(
            resp.status == 400 && resp.error().as_deref() == Some("invalid_grant"),
            "{} {what}: a token request for the delivered code with {label} must get 400 \
             invalid_grant from the proxy (the code is bound); got {}",
            w.tag(),
            resp.describe()
        );
        w.assert_not_forwarded(&req, &resp);
    }
    let req = token_to(code, Some(right), right, redirect);
    let resp = w.send(&req).await;
    assert_eq!(
        resp.status,
        200,
        "{} {what}: the right verifier must redeem the bound code; got {}\nupstream saw:{}",
        w.tag(),
        resp.describe(),
        w.log().summary()
    );
}

/// Asserts that an answer carrying `codes` was withheld: 502, no
/// `Location`, none of the codes nor the client's state in anything the
/// client received, `server_error` JSON when it asked for JSON. Then checks
/// it.
fn assert_withheld(w: &World, what: &str, req: &Req, resp: &Resp, codes: &[String], json: bool) {
    assert_eq!(
        resp.status,
        502,
        "{} {what}: the answer must be withheld (502, no Location, no code); got {}{}",
        w.tag(),
        resp.describe(),
        w.proxy_log()
    );
    assert!(
        resp.header("location").is_none() && resp.header("refresh").is_none(),
        "{} {what}: a withheld answer has no Location: {}",
        w.tag(),
        resp.describe()
    );
    for code in codes {
        assert!(
            !resp.contains(code),
            "{} {what}: the withheld code {code} reached the client: {}",
            w.tag(),
            resp.describe()
        );
    }
    assert!(
        !resp.contains(STATE),
        "{} {what}: the client's state was put into a withheld answer: {}",
        w.tag(),
        resp.describe()
    );
    if json {
        assert_eq!(
            resp.error().as_deref(),
            Some("server_error"),
            "{} {what}: asked for JSON, the refusal must be {{\"error\":\"server_error\"}}: {}",
            w.tag(),
            resp.describe()
        );
    }
    w.check(req, resp);
}

/// A code delivered to the victim's client by the direct flow, bound to
/// `challenge`, not redeemed yet.
async fn bound_code(w: &World, challenge: &str) -> String {
    let saved = w.up.knobs();
    w.set(|k| {
        k.flow = Flow::Direct;
        k.delivery = Delivery::Query;
        k.redirect_status = 302;
    });
    let since = issued_count(w);
    let (req, resp) = walk(w, &query(Some(challenge), ""), false).await;
    let (issued, _) = issued_since(w, since);
    assert_restored(w, "a plain delivery", &req, &resp, &issued);
    w.set(|k| *k = saved);
    issued.code
}

async fn assert_refused(w: &World, what: &str, req: &Req, status: u16, error: &str) -> Resp {
    let resp = w.send(req).await;
    assert!(
        resp.status == status && resp.error().as_deref() == Some(error),
        "{} {what}: expected {status} {error} from the proxy; got {}{}",
        w.tag(),
        resp.describe(),
        w.proxy_log()
    );
    w.assert_not_forwarded(req, &resp);
    resp
}

/// Either the code left bound (and no handle reached the client) or the
/// answer was withheld: I2 in its general form, for shapes where both are
/// safe.
async fn assert_bound_or_withheld(
    w: &World,
    what: &str,
    req: &Req,
    resp: &Resp,
    codes: &[String],
    json: bool,
) {
    if resp.status == 502 {
        assert_withheld(w, what, req, resp, codes, json);
        return;
    }
    w.check(req, resp);
    assert!(
        handles(&delivered_text(resp)).is_empty()
            && handles(&hostile::decode(&delivered_text(resp))).is_empty(),
        "{} {what}: the answer was not withheld, yet the handle reached the client: {}",
        w.tag(),
        resp.describe()
    );
    for code in codes {
        if resp.contains(code) {
            assert_bound(w, what, code, VERIFIER, REDIRECT).await;
        }
    }
}

// ---------------------------------------------------------------- I1

#[tokio::test]
async fn i1_bodies_on_bodiless_methods_are_refused() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let smuggled =
            b"GET /other HTTP/1.1\r\nHost: upstream\r\nx-test-id: smuggled\r\n\r\n".to_vec();
        let authorize = format!("/authorize?{}", query(Some(CHALLENGE), ""));
        for method in ["GET", "HEAD", "DELETE", "TRACE", "OPTIONS"] {
            for path in [authorize.as_str(), "/token", "/other"] {
                for (framing, body) in [
                    ("Content-Length", Body::Sized(smuggled.clone())),
                    (
                        "Transfer-Encoding: chunked",
                        Body::Chunked(smuggled.clone(), String::new()),
                    ),
                ] {
                    let what = format!("{method} {path} with a body ({framing})");
                    let req = Req::new(method, path).body(body);
                    let before = w.log().requests.len();
                    let mut conn = w.conn().await;
                    let resp = w.try_send_on(&mut conn, &req).await.unwrap_or_else(|e| {
                        panic!("{} {what}: no answer ({e}); expected 400", w.tag())
                    });
                    assert_eq!(
                        resp.status,
                        400,
                        "{} {what}: must get 400 from the proxy; got {}",
                        w.tag(),
                        resp.describe()
                    );
                    {
                        let log = w.log();
                        assert_eq!(
                            log.requests.len(),
                            before,
                            "{} {what}: nothing may reach the upstream; it saw:{}",
                            w.tag(),
                            log.summary()
                        );
                    }
                    let after = conn.after(Duration::from_secs(3)).await;
                    assert_eq!(
                        after,
                        After::Closed,
                        "{} {what}: after the 400 the proxy must close the connection (the \
                         body's bytes are not to be read as a request)",
                        w.tag()
                    );
                }
            }
        }
        // An empty body is no body.
        let req = Req::get("/other").header("Content-Length", "0");
        let resp = w.send(&req).await;
        assert!(
            resp.status == 200 && w.upstream_saw(&req.id),
            "{} GET with Content-Length: 0 must be forwarded; got {}",
            w.tag(),
            resp.describe()
        );
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i1_connect_is_never_forwarded() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let upstream = w.up.addr.to_string();
        for target in [
            upstream.as_str(),
            "hostile.example:443",
            "/other",
            "/authorize",
        ] {
            let req = Req::new("CONNECT", target);
            let before = w.log().requests.len();
            let mut conn = w.conn().await;
            let resp = w
                .try_send_on(&mut conn, &req)
                .await
                .unwrap_or_else(|e| panic!("{} CONNECT {target}: no answer ({e})", w.tag()));
            assert!(
                (400..500).contains(&resp.status) && resp.header("x-served").is_none(),
                "{} CONNECT {target} must get a 4xx from the proxy; got {}",
                w.tag(),
                resp.describe()
            );
            let log = w.log();
            assert_eq!(
                log.requests.len(),
                before,
                "{} CONNECT {target} reached the upstream:{}",
                w.tag(),
                log.summary()
            );
        }
        w.finish();
    })
    .await;
}

/// `POST /token` for `code`, written to be carried in another request's
/// body. An unfinished one claims 43 bytes more than it holds: the start
/// of whatever the proxy sends next on that upstream connection.
fn smuggled_token_request(code: &str, unfinished: bool, id: &str) -> Vec<u8> {
    let mut body = format!(
        "grant_type=authorization_code&client_id={CLIENT}&redirect_uri={}&code={}",
        enc(REDIRECT),
        enc(code)
    );
    let mut length = body.len();
    if unfinished {
        body.push_str("&pad=");
        length = body.len() + 43;
    }
    format!(
        "POST /token HTTP/1.1\r\nHost: upstream\r\nx-test-id: {id}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Requests on `conn` (reopened if the proxy closed it), on new
/// connections while it is open, and after it closed: each answer must be
/// its own ([`World::send_on`] checks it).
async fn aftermath(w: &World, mut conn: Conn) {
    for _ in 0..3 {
        if w.try_send_on(&mut conn, &Req::get("/other")).await.is_err() {
            conn = w.conn().await;
        }
    }
    for _ in 0..2 {
        w.send(&Req::get("/other")).await;
    }
    // Its upstream connection goes back to the shared pool.
    drop(conn);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        w.send(&Req::get("/other")).await;
    }
}

#[tokio::test]
async fn i1_a_request_smuggled_in_a_body_never_answers_anyone() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let carrier = |smuggled: Vec<u8>| {
            Req::new("POST", "/nothing-here")
                .header("Content-Type", "text/plain")
                .body(Body::Sized(smuggled))
        };
        for unfinished in [true, false] {
            // The victim's code, bound; the attacker has learnt it.
            let victim = bound_code(&w, CHALLENGE).await;
            let mut conn = w.conn().await;
            let outer = carrier(smuggled_token_request(&victim, unfinished, "smuggled"));
            w.send_on(&mut conn, &outer).await;
            aftermath(&w, conn).await;

            // Pipelined: the carrier between requests, in one write.
            let victim = bound_code(&w, CHALLENGE).await;
            let mut conn = w.conn().await;
            let reqs = [
                Req::get("/other"),
                carrier(smuggled_token_request(
                    &victim,
                    unfinished,
                    "smuggled-pipelined",
                )),
                Req::get("/other"),
                Req::get("/other"),
            ];
            let answers = w.pipeline(&mut conn, &reqs).await;
            assert!(
                answers.first().is_some_and(Result::is_ok),
                "{} the first of pipelined requests got no answer: {:?}",
                w.tag(),
                answers.first().map(|a| a.as_ref().map(Resp::describe))
            );
            aftermath(&w, conn).await;
        }
        w.finish();
    })
    .await;
}

/// Beyond the contract's letter: a token body that is itself an HTTP
/// request. It passes as a form (the attacker's own code and verifier
/// stand in a "header" of it), and a server that answers `/token` without
/// reading the body when `Authorization` is missing reads it as a request
/// that redeems the victim's code. No real client writes raw CR, LF or SP
/// in a form body, so a careful proxy refuses such a body (or at least
/// never reuses the connection); the upstream must never parse a token
/// request out of a token body the proxy forwarded.
#[tokio::test]
async fn i1_a_request_smuggled_in_a_token_body_never_reaches_the_upstream() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            token_body_needs_authorization: true,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let victim = bound_code(&w, CHALLENGE).await;
        for unfinished in [true, false] {
            let mine = bound_code(&w, &attacker_challenge()).await;
            let length = if unfinished { 40 } else { 0 };
            let body = format!(
                "POST /token?code={victim}&grant_type=authorization_code HTTP/1.1\r\n\
                 Host: upstream\r\nAuthorization: Basic YXBwOg==\r\nx-test-id: smuggled-in-token\r\n\
                 X-Pad: &code={mine}&code_verifier={ATTACKER_VERIFIER}&client_id={CLIENT}&redirect_uri={}&z=\r\n\
                 Content-Length: {length}\r\n\r\n",
                enc(REDIRECT)
            );
            let outer = Req::post("/token", body).legit(&mine);
            let mut conn = w.conn().await;
            let _ = w.try_send_on(&mut conn, &outer).await;
            aftermath(&w, conn).await;
            let log = w.log();
            let smuggled: Vec<_> = log
                .tokens
                .iter()
                .filter(|t| t.from_body)
                .map(|t| (&t.test_id, &t.params, t.answered))
                .collect();
            assert!(
                smuggled.is_empty(),
                "{} ({}) the upstream parsed a token request out of the body of a token request \
                 the proxy forwarded (test id, params, answer: {smuggled:?}): a token body that \
                 is not a clean form (raw CR, LF, SP) must not reach the upstream; it saw:{}",
                w.tag(),
                if unfinished { "unfinished" } else { "complete" },
                log.summary()
            );
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i1_a_request_smuggled_in_an_authorization_form_never_answers_anyone() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            flow: Flow::Login,
            authorize_reads_body: false,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        // A form the proxy reads as an authorization request, and a
        // server that skips the body reads as an unfinished POST /login.
        let form = format!(
            "POST /login?a=1&{} HTTP/1.1\r\nHost: upstream\r\nx-test-id: smuggled-in-form\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 40\r\n\r\n",
            query(Some(CHALLENGE), "&z=")
        );
        let outer = Req::post("/authorize", form);
        let mut conn = w.conn().await;
        let _ = w.try_send_on(&mut conn, &outer).await;
        aftermath(&w, conn).await;
        w.finish();
    })
    .await;
}

// ---------------------------------------------------------------- I2

#[tokio::test]
async fn i2_clear_deliveries_are_bound_and_restored() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        for flow in [Flow::Direct, Flow::Login, Flow::Consent] {
            for (delivery, status, extra) in [
                (Delivery::Query, 302, ""),
                (Delivery::Query, 303, ""),
                (Delivery::Query, 307, ""),
                (Delivery::Fragment, 302, "&response_mode=fragment"),
                (Delivery::FormPost, 302, "&response_mode=form_post"),
                (Delivery::Latin1, 302, ""),
            ] {
                let what = format!("{flow:?} flow, {delivery:?} delivery ({status})");
                let latin1 = delivery == Delivery::Latin1;
                // A redirect_uri with an é, which the latin-1 server writes
                // as the single byte 0xE9.
                let redirect = if latin1 {
                    "https://client.example/caf\u{e9}/cb"
                } else {
                    REDIRECT
                };
                w.set(|k| {
                    k.flow = flow;
                    k.delivery = delivery.clone();
                    k.redirect_status = status;
                });
                let since = issued_count(&w);
                let (req, resp) =
                    walk(&w, &query_to(redirect, Some(CHALLENGE), extra), false).await;
                let (issued, _) = issued_since(&w, since);
                if latin1 {
                    assert!(
                        issued.location.as_ref().is_some_and(|l| l.contains(&0xE9)),
                        "the hostile server wrote no raw latin-1 byte"
                    );
                }
                if delivery != Delivery::FormPost {
                    assert_eq!(
                        resp.status,
                        status,
                        "{} {what}: the redirect did not reach the client: {}",
                        w.tag(),
                        resp.describe()
                    );
                }
                assert_restored(&w, &what, &req, &resp, &issued);
                assert_bound(&w, &what, &issued.code, VERIFIER, redirect).await;
            }
        }

        // A client without a state of its own gets none back.
        w.set(|k| {
            k.flow = Flow::Direct;
            k.delivery = Delivery::Query;
            k.redirect_status = 302;
        });
        let since = issued_count(&w);
        let q = format!(
            "response_type=code&client_id={CLIENT}&redirect_uri={}&code_challenge={CHALLENGE}\
             &code_challenge_method=S256",
            enc(REDIRECT)
        );
        let (req, resp) = walk(&w, &q, false).await;
        let (issued, _) = issued_since(&w, since);
        let sent = String::from_utf8(issued.location.clone().unwrap()).unwrap();
        let expected = sent.replace(&format!("&state={}", issued.state.clone().unwrap()), "");
        assert_eq!(
            resp.header_str("location").as_deref(),
            Some(expected.as_str()),
            "{} a client that sent no state must get the Location without one: {}",
            w.tag(),
            resp.describe()
        );
        w.check(&req, &resp);
        assert_bound(&w, "no client state", &issued.code, VERIFIER, REDIRECT).await;
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i2_uncertain_deliveries_are_withheld() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let shapes = [
            Delivery::HashQuery,
            Delivery::TwoCodes,
            Delivery::QueryAndFragment,
            Delivery::Semicolon,
            Delivery::TwoStates,
            Delivery::FormPostTwoCodes,
            Delivery::PaddedFormPostStart,
            Delivery::MetaRefresh,
            Delivery::JsRedirect,
            Delivery::Zstd,
        ];
        for flow in [Flow::Direct, Flow::Login] {
            for (i, delivery) in shapes.iter().enumerate() {
                let json = i % 2 == 0;
                let what = format!(
                    "{flow:?} flow, {delivery:?} delivery{}",
                    if json {
                        " (Accept: application/json)"
                    } else {
                        ""
                    }
                );
                w.set(|k| {
                    k.flow = flow;
                    k.delivery = delivery.clone();
                });
                let since = issued_count(&w);
                let (req, resp) = walk(&w, &query(Some(CHALLENGE), ""), json).await;
                let (_, codes) = issued_since(&w, since);
                assert_withheld(&w, &what, &req, &resp, &codes, json);
            }
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i2_a_page_past_the_scan_bound_never_delivers_its_code() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        for (flow, json) in [(Flow::Direct, false), (Flow::Login, true)] {
            let what = format!("{flow:?} flow, a form_post page with its form past 256 KiB");
            w.set(|k| {
                k.flow = flow;
                k.delivery = Delivery::PaddedFormPostEnd;
            });
            let since = issued_count(&w);
            let (req, resp) = walk(&w, &query(Some(CHALLENGE), ""), json).await;
            let (issued, codes) = issued_since(&w, since);
            if resp.status == 502 {
                assert_withheld(&w, &what, &req, &resp, &codes, json);
                continue;
            }
            assert!(
                !resp.complete,
                "{} {what}: the page arrived whole ({} bytes, status {}): it must be withheld \
                 (502) or cut off before its code",
                w.tag(),
                resp.body.len(),
                resp.status
            );
            assert!(
                !resp.contains(&issued.code),
                "{} {what}: the cut-off page still carried the code",
                w.tag()
            );
            w.check(&req, &resp);
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i2b_an_expired_binding_never_makes_its_code_redeemable_without_its_verifier() {
    let scenario = |strip: bool| async move {
        let mut args = vec!["--ttl", "1"];
        if strip {
            args.push("--strip-pkce-params");
        }
        let w = World::start(Mode::Optional, Knobs::default(), &args).await;
        let code = bound_code(&w, CHALLENGE).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for (label, verifier) in [
            ("no verifier", None),
            ("a wrong verifier", Some(WRONG_VERIFIER)),
        ] {
            let req = token(&code, verifier, VERIFIER);
            let resp = w.send(&req).await;
            assert!(
                resp.status == 400 && resp.error().as_deref() == Some("invalid_grant"),
                "{}{} a code bound with a challenge whose binding expired (--ttl 1, 2.5 s \
                 later), redeemed with {label}: must get 400 invalid_grant from the proxy; got {}",
                w.tag(),
                if strip { " --strip-pkce-params" } else { "" },
                resp.describe()
            );
            w.assert_not_forwarded(&req, &resp);
        }
        w.finish();
    };
    tokio::join!(scenario(false), scenario(true));
}

// ---------------------------------------------------------------- I3

#[tokio::test]
async fn i3_a_code_echoed_into_a_consent_page_is_never_bound() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            flow: Flow::Consent,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let echoed = "attacker-chosen-code-0123456789";
        let attacker = attacker_challenge();
        for json in [false, true] {
            let req = with_json(
                Req::get(&format!(
                    "/authorize?{}",
                    query(Some(&attacker), &format!("&code={echoed}"))
                )),
                json,
            );
            let resp = w.send_unchecked(&req).await;
            // Refusing the request that would be echoed keeps the value out
            // of any page, as withholding the page does.
            if resp.status == 400 {
                assert!(
                    resp.header("location").is_none() && !resp.contains(echoed),
                    "{} an authorization request carrying code= refused: {}",
                    w.tag(),
                    resp.describe()
                );
                if json {
                    assert_eq!(resp.error().as_deref(), Some("invalid_request"), "{}", w.tag());
                }
                w.assert_not_forwarded(&req, &resp);
                continue;
            }
            assert_withheld(
                &w,
                "a consent page that echoes code= beside the handle, in a form posting to /authorize",
                &req,
                &resp,
                &[echoed.to_owned()],
                json,
            );
        }
        if mode.required() {
            let req = Req::post(
                "/token",
                token_body(echoed, Some(ATTACKER_VERIFIER), REDIRECT),
            );
            assert_refused(
                &w,
                "redeeming the echoed value with the attacker's verifier (it must never be bound)",
                &req,
                400,
                "invalid_grant",
            )
            .await;
        }
        // Without the echo, the consent flow completes.
        let since = issued_count(&w);
        let (req, resp) = walk(&w, &query(Some(CHALLENGE), ""), false).await;
        let (issued, _) = issued_since(&w, since);
        assert_restored(&w, "a consent flow", &req, &resp, &issued);
        assert_bound(&w, "a consent flow", &issued.code, VERIFIER, REDIRECT).await;
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i3_a_delivery_to_another_target_is_withheld() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let targets = [
            "https://evil.example/cb",
            "https://client.example/cbx",
            "https://client.example/cb.evil.example",
            "https://client.example.evil.example/cb",
            "https://client.example@evil.example/cb",
            "https://client.example/cb/../../evil",
            "//evil.example/cb",
            "http://client.example/cb",
        ];
        for flow in [Flow::Direct, Flow::Login] {
            for (i, target) in targets.iter().enumerate() {
                let json = i % 2 == 1;
                let what = format!("{flow:?} flow, code and handle sent to {target}");
                w.set(|k| {
                    k.flow = flow;
                    k.delivery = Delivery::Foreign((*target).to_owned());
                });
                let since = issued_count(&w);
                let (req, resp) = walk(&w, &query(Some(CHALLENGE), ""), json).await;
                let (issued, codes) = issued_since(&w, since);
                assert_withheld(&w, &what, &req, &resp, &codes, json);
                if mode.required() {
                    // Not legitimate: the code must not have been bound.
                    let req =
                        Req::post("/token", token_body(&issued.code, Some(VERIFIER), REDIRECT));
                    assert_refused(
                        &w,
                        &format!("{what}: redeeming that code (it must not be bound)"),
                        &req,
                        400,
                        "invalid_grant",
                    )
                    .await;
                }
            }
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i3_a_form_post_to_another_action_is_withheld() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        for (action, strict) in [
            ("https://client.example/CB", true),
            ("https://client.example/cb/", true),
            ("https://evil.example/cb", true),
            ("/authorize", true),
            ("HTTPS://CLIENT.EXAMPLE/cb", false),
        ] {
            let what = format!("a form_post page posting to {action}");
            w.set(|k| {
                k.flow = Flow::Login;
                k.delivery = Delivery::FormPostTo(action.to_owned());
            });
            let since = issued_count(&w);
            let (req, resp) = walk(
                &w,
                &query(Some(CHALLENGE), "&response_mode=form_post"),
                false,
            )
            .await;
            let (_, codes) = issued_since(&w, since);
            if strict {
                assert_withheld(&w, &what, &req, &resp, &codes, false);
            } else {
                assert_bound_or_withheld(&w, &what, &req, &resp, &codes, false).await;
            }
        }
        w.finish();
    })
    .await;
}

// ---------------------------------------------------------------- I4

#[tokio::test]
async fn i4_continuations_must_match_their_transaction() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            flow: Flow::Login,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let (h, _) = start_login(&w, &query(Some(CHALLENGE), "")).await;
        let r = enc(REDIRECT);
        let att = attacker_challenge();
        let evil = enc("https://attacker.example/cb");
        let pkce = |c: &str| format!("&code_challenge={c}&code_challenge_method=S256");
        let cases = [
            (
                "another client_id",
                format!(
                    "response_type=code&client_id=other-app&redirect_uri={r}&state={h}{}",
                    pkce(CHALLENGE)
                ),
            ),
            (
                "another redirect_uri",
                format!(
                    "response_type=code&client_id={CLIENT}&redirect_uri={evil}&state={h}{}",
                    pkce(CHALLENGE)
                ),
            ),
            (
                "another code_challenge",
                format!(
                    "response_type=code&client_id={CLIENT}&redirect_uri={r}&state={h}{}",
                    pkce(&att)
                ),
            ),
            (
                "only another client_id",
                format!("client_id=other-app&state={h}"),
            ),
            (
                "only another redirect_uri",
                format!("redirect_uri={evil}&state={h}"),
            ),
            (
                "only another code_challenge",
                format!("state={h}{}", pkce(&att)),
            ),
        ];
        for (what, q) in &cases {
            let req = Req::get(&format!("/authorize?{q}")).json();
            assert_refused(
                &w,
                &format!("a continuation with {what}"),
                &req,
                400,
                "invalid_request",
            )
            .await;
        }
        // The same as a consent-style POST, the handle in the body.
        let req = Req::post(
            "/authorize",
            format!("response_type=code&client_id=other-app&redirect_uri={r}&state={h}"),
        )
        .json();
        assert_refused(
            &w,
            "a POSTed continuation with another client_id",
            &req,
            400,
            "invalid_request",
        )
        .await;

        // A transaction that had no redirect_uri gets none added.
        let (h2, _) = start_login(
            &w,
            &format!(
                "response_type=code&client_id={CLIENT}&state={STATE}{}",
                pkce(CHALLENGE)
            ),
        )
        .await;
        let req = Req::get(&format!(
            "/authorize?response_type=code&client_id={CLIENT}&redirect_uri={evil}&state={h2}"
        ))
        .json();
        assert_refused(
            &w,
            "a continuation adding a redirect_uri its transaction did not have",
            &req,
            400,
            "invalid_request",
        )
        .await;

        // What matches is forwarded (on a transaction of its own: whether a
        // refused continuation ends its transaction is not in question here).
        let (h, _) = start_login(&w, &query(Some(CHALLENGE), "")).await;
        for (what, q) in [
            ("only the handle", format!("state={h}")),
            (
                "the transaction's own parameters",
                format!(
                    "response_type=code&client_id={CLIENT}&redirect_uri={r}&state={h}{}",
                    pkce(CHALLENGE)
                ),
            ),
        ] {
            let req = Req::get(&format!("/authorize?{q}"));
            let resp = w.send(&req).await;
            assert!(
                resp.status == 200 && w.upstream_saw(&req.id),
                "{} a continuation with {what} must be forwarded; got {}",
                w.tag(),
                resp.describe()
            );
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i4_a_finished_transaction_cannot_be_continued() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            flow: Flow::Login,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let q = query(Some(CHALLENGE), "");
        let since = issued_count(&w);
        let (h, page) = start_login(&w, &q).await;
        let (req, resp) = login(&w, &page, false).await;
        let (issued, _) = issued_since(&w, since);
        assert_restored(&w, "the login flow", &req, &resp, &issued);
        let again = q.replace(&format!("state={STATE}"), &format!("state={h}"));
        for json in [false, true] {
            let req = with_json(Req::get(&format!("/authorize?{again}")), json);
            let resp = w.send(&req).await;
            assert_eq!(
                resp.status,
                400,
                "{} continuing a transaction whose code was bound: must get 400; got {}",
                w.tag(),
                resp.describe()
            );
            if json {
                assert_eq!(
                    resp.error().as_deref(),
                    Some("invalid_request"),
                    "{} {}",
                    w.tag(),
                    resp.describe()
                );
            } else {
                assert!(
                    resp.text().contains("took too long"),
                    "{} continuing a finished transaction: expected the \"took too long\" page; \
                     got {}",
                    w.tag(),
                    resp.describe()
                );
            }
            w.assert_not_forwarded(&req, &resp);
        }
        assert_bound(&w, "the login flow", &issued.code, VERIFIER, REDIRECT).await;
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i4_a_victim_lured_onto_an_attackers_handle_is_stopped() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            flow: Flow::Login,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let att = attacker_challenge();
        let attacker_cb = "https://attacker.example/cb";
        let (h, _) = start_login(
            &w,
            &format!(
                "response_type=code&client_id=attacker-app&redirect_uri={}&state=mine\
                 &code_challenge={att}&code_challenge_method=S256",
                enc(attacker_cb)
            ),
        )
        .await;
        let lure = format!("response_type=code&client_id=victim-app&redirect_uri={}", enc(attacker_cb));
        for (what, q) in [
            ("state", format!("{lure}&state={h}")),
            ("state, with the attacker's challenge", format!("{lure}&state={h}&code_challenge={att}&code_challenge_method=S256")),
            ("STATE (a name a loose server folds)", format!("{lure}&STATE={h}")),
            ("st%61te (a name a server decodes)", format!("{lure}&st%61te={h}")),
        ] {
            let req = Req::get(&format!("/authorize?{q}")).json();
            let resp = w.send(&req).await;
            assert!(
                (400..500).contains(&resp.status),
                "{} a victim's request carrying the attacker's handle as {what}: must get 400; got {}",
                w.tag(),
                resp.describe()
            );
            w.assert_not_forwarded(&req, &resp);
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i4_a_continuation_with_two_handles_is_refused() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            flow: Flow::Login,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let (h1, _) = start_login(&w, &query(Some(CHALLENGE), "")).await;
        let (h2, _) = start_login(&w, &query(Some(CHALLENGE), "")).await;
        let r = enc(REDIRECT);
        let req = Req::post(
            &format!("/authorize?state={h1}"),
            format!("client_id={CLIENT}&redirect_uri={r}&state={h2}"),
        )
        .json();
        assert_refused(
            &w,
            "a handle in the query and another in the body",
            &req,
            400,
            "invalid_request",
        )
        .await;
        let req = Req::get(&format!(
            "/authorize?client_id={CLIENT}&state={h1}&state={h2}"
        ))
        .json();
        assert_refused(&w, "two handles in the query", &req, 400, "invalid_request").await;
        w.finish();
    })
    .await;
}

// ---------------------------------------------------------------- I5

#[tokio::test]
async fn i5_connection_cannot_hide_a_checked_field() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let code = bound_code(&w, CHALLENGE).await;
        for value in [
            "Authorization",
            "authorization",
            "AUTHORIZATION",
            "keep-alive, Authorization",
            "close,authorization",
            "x-foo , Authorization",
        ] {
            let req = token(&code, Some(VERIFIER), VERIFIER)
                .header("Authorization", "Basic YXBwOg==")
                .header("Connection", value);
            let resp = w.send(&req).await;
            assert_eq!(
                resp.status,
                400,
                "{} a token request with Connection: {value}: must get 400 from the proxy; got {}",
                w.tag(),
                resp.describe()
            );
            w.assert_not_forwarded(&req, &resp);
        }
        let authorize = format!("/authorize?{}", query(Some(CHALLENGE), ""));
        for field in [
            "host",
            "Host",
            "content-type",
            "content-length",
            "Content-Length",
            "transfer-encoding",
            "cookie",
            "keep-alive, Cookie",
        ] {
            for (what, req) in [
                ("a token request", token(&code, Some(VERIFIER), VERIFIER)),
                ("an authorization request", Req::get(&authorize).json()),
                ("a GET elsewhere", Req::get("/other")),
                ("a POST elsewhere", Req::post("/other", "a=1")),
            ] {
                let req = req
                    .header("Cookie", "session=1")
                    .header("Connection", field);
                let resp = w.send(&req).await;
                assert_eq!(
                    resp.status,
                    400,
                    "{} {what} with Connection: {field}: must get 400 from the proxy; got {}",
                    w.tag(),
                    resp.describe()
                );
                w.assert_not_forwarded(&req, &resp);
            }
        }
        w.finish();
    })
    .await;
}

/// Why `Connection: Authorization` matters: the proxy checks a request
/// whose `Authorization` it then removes, and a server that answers `/token`
/// without client authentication by not reading the body reads the body as
/// the next request, one that redeems the victim's code.
#[tokio::test]
async fn i5_connection_authorization_cannot_make_the_upstream_skip_a_checked_body() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            token_body_needs_authorization: true,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        let victim = bound_code(&w, CHALLENGE).await;
        let mine = bound_code(&w, &attacker_challenge()).await;
        let body = format!(
            "POST /token?code={victim}&grant_type=authorization_code HTTP/1.1\r\n\
             Host: upstream\r\nAuthorization: Basic YXBwOg==\r\nx-test-id: smuggled-past-connection\r\n\
             X-Pad: &code={mine}&code_verifier={ATTACKER_VERIFIER}&client_id={CLIENT}&redirect_uri={}&z=\r\n\
             Content-Length: 0\r\n\r\n",
            enc(REDIRECT)
        );
        let req = Req::post("/token", body)
            .header("Authorization", "Basic YXBwOg==")
            .header("Connection", "Authorization")
            .legit(&mine);
        let resp = w.send(&req).await;
        let log = w.log();
        let redeemed = log.tokens_for(&victim);
        assert!(
            redeemed.is_empty(),
            "{} through Connection: Authorization the upstream redeemed the victim's code in a \
             request it read out of a checked token body ({:?}); upstream saw:{}",
            w.tag(),
            redeemed.iter().map(|t| (&t.test_id, t.answered)).collect::<Vec<_>>(),
            log.summary()
        );
        drop(log);
        assert_eq!(
            resp.status,
            400,
            "{} a token request with Connection: Authorization: must get 400; got {}",
            w.tag(),
            resp.describe()
        );
        w.assert_not_forwarded(&req, &resp);
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i5_connection_still_removes_other_fields() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let code = bound_code(&w, CHALLENGE).await;
        for (what, req) in [
            ("a GET elsewhere", Req::get("/other")),
            ("a token request", token(&code, Some(VERIFIER), VERIFIER)),
        ] {
            let req = req.header("Connection", "x-foo").header("X-Foo", "1");
            let resp = w.send(&req).await;
            assert_eq!(
                resp.status,
                200,
                "{} {what} with Connection: x-foo must be forwarded; got {}",
                w.tag(),
                resp.describe()
            );
            let log = w.log();
            let seen = log.with_id(&req.id);
            assert!(
                seen.len() == 1 && seen[0].header("x-foo").is_none(),
                "{} {what}: the upstream must get it once, without x-foo; it saw:{}",
                w.tag(),
                log.summary()
            );
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i5_token_parameters_in_the_query_are_refused() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let victim = bound_code(&w, CHALLENGE).await;
        let mine = bound_code(&w, &attacker_challenge()).await;
        // The attacker's own request passes every check in its body; the
        // upstream lets the query win.
        let body = token_body(&mine, Some(ATTACKER_VERIFIER), REDIRECT);
        let r = enc(REDIRECT);
        for (name, value) in [
            ("code", victim.as_str()),
            ("c%6Fde", victim.as_str()),
            ("code_verifier", VERIFIER),
            ("grant_type", "authorization_code"),
            ("redirect_uri", r.as_str()),
            ("client_id", CLIENT),
            (
                "client_assertion",
                "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhcHAifQ.",
            ),
        ] {
            let req = Req::post(&format!("/token?{name}={value}"), body.clone()).legit(&mine);
            assert_refused(
                &w,
                &format!("a token request with {name} in the query"),
                &req,
                400,
                "invalid_request",
            )
            .await;
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i5_token_trailers_are_refused() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let code = bound_code(&w, CHALLENGE).await;
        let chunked = |trailers: &str| {
            Req::new("POST", "/token")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(Body::Chunked(
                    token_body(&code, Some(VERIFIER), REDIRECT).into_bytes(),
                    trailers.to_owned(),
                ))
                .legit(&code)
        };
        for trailers in [
            "X-Extra: 1\r\n",
            "Authorization: Basic YXBwOg==\r\n",
            "Content-Type: text/plain\r\n",
        ] {
            let req = chunked(trailers);
            let resp = w.send(&req).await;
            assert_eq!(
                resp.status,
                400,
                "{} a chunked token request with the trailer {:?}: must get 400; got {}",
                w.tag(),
                trailers.trim_end(),
                resp.describe()
            );
            w.assert_not_forwarded(&req, &resp);
        }
        // Chunked without trailers is fine (a code of its own: whether a
        // refusal counts as a failed attempt is not in question here).
        let code = bound_code(&w, CHALLENGE).await;
        let req = Req::new("POST", "/token")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(Body::Chunked(
                token_body(&code, Some(VERIFIER), REDIRECT).into_bytes(),
                String::new(),
            ))
            .legit(&code);
        let resp = w.send(&req).await;
        assert_eq!(
            resp.status,
            200,
            "{} a chunked token request without trailers redeems the code; got {}",
            w.tag(),
            resp.describe()
        );
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i5_token_path_aliases_are_checked() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let code = bound_code(&w, CHALLENGE).await;
        for path in [
            "/TOKEN",
            "/token/",
            "//token",
            "/token;x=1",
            "/%74oken",
            "/a/../token",
            "/Token/",
            // A server that decodes before it splits the target, or trims.
            "/token%3f",
            "/token%3Fx=1",
            "/token%23",
            "/token%20",
            "/TOKEN%20/",
            "/token%253f",
        ] {
            let req = Req::post(path, token_body(&code, Some(WRONG_VERIFIER), REDIRECT));
            assert_refused(
                &w,
                &format!("POST {path} (the upstream routes it to /token) with a wrong verifier"),
                &req,
                400,
                "invalid_grant",
            )
            .await;
        }
        // A control character or an overlong form anywhere in the path: the
        // proxy refuses the request before the layer sees it.
        for path in [
            "/token%00",
            "/token%09",
            "/token%0a",
            "/token%2500",
            "/%c0%ae%c0%ae/token",
            "/x/..%c0%af/token",
        ] {
            let req = Req::post(path, token_body(&code, Some(VERIFIER), REDIRECT));
            let resp = w.send(&req).await;
            assert_eq!(
                resp.status,
                400,
                "{} POST {path}: must get 400; got {}",
                w.tag(),
                resp.describe()
            );
            w.assert_not_forwarded(&req, &resp);
        }
        w.finish();
    })
    .await;
}

// ---------------------------------------------------------------- I6

#[tokio::test]
async fn i6_a_5xx_from_the_token_upstream_restores_the_binding() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        for status in [500, 502, 503] {
            let code = bound_code(&w, CHALLENGE).await;
            w.set(|k| k.token_faults = [TokenFault::Status(status)].into());
            let req = token(&code, Some(VERIFIER), VERIFIER);
            let resp = w.send(&req).await;
            assert!(
                resp.status >= 500 && w.upstream_saw(&req.id),
                "{} the token upstream answers {status}: expected a 5xx after forwarding; got {}",
                w.tag(),
                resp.describe()
            );
            let retry = token(&code, Some(VERIFIER), VERIFIER);
            let resp = w.send(&retry).await;
            assert_eq!(
                resp.status,
                200,
                "{} after the token upstream answered {status}, the binding must be restored and \
                 the same request redeem the code; got {}",
                w.tag(),
                resp.describe()
            );
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i6_an_unreachable_upstream_restores_the_binding() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let code = bound_code(&w, CHALLENGE).await;
        w.up.go_dark().await;
        let req = token(&code, Some(VERIFIER), VERIFIER);
        let resp = w.send(&req).await;
        assert_eq!(
            resp.status,
            502,
            "{} the token upstream cannot be reached: expected 502; got {}",
            w.tag(),
            resp.describe()
        );
        w.up.come_back().await;
        let retry = token(&code, Some(VERIFIER), VERIFIER);
        let resp = w.send(&retry).await;
        assert_eq!(
            resp.status,
            200,
            "{} the request never reached the upstream, so the binding must be restored and the \
             retry redeem the code; got {}",
            w.tag(),
            resp.describe()
        );
        w.finish();
    })
    .await;
}

/// The upstream redeemed the code (it read the request) and then said
/// nothing: the binding stays spent, and no retry reaches it.
async fn assert_spent_after(w: &World, fault: TokenFault, status: u16, what: &str) {
    let code = bound_code(w, CHALLENGE).await;
    w.set(|k| k.token_faults = [fault].into());
    let req = token(&code, Some(VERIFIER), VERIFIER);
    let resp = w.send(&req).await;
    assert_eq!(
        resp.status,
        status,
        "{} {what}: expected {status}; got {}",
        w.tag(),
        resp.describe()
    );
    let retry = token(&code, Some(VERIFIER), VERIFIER);
    assert_refused(
        w,
        &format!(
            "{what}: the upstream may have redeemed the code, so a retry with the right verifier"
        ),
        &retry,
        400,
        "invalid_grant",
    )
    .await;
    let log = w.log();
    assert_eq!(
        log.tokens_for(&code).len(),
        1,
        "{} {what}: the upstream must receive the code once; it saw:{}",
        w.tag(),
        log.summary()
    );
}

#[tokio::test]
async fn i6_a_token_timeout_leaves_the_binding_spent() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &["--response-timeout", "1"]).await;
        assert_spent_after(
            &w,
            TokenFault::AnswerAfter(Duration::from_millis(2500)),
            504,
            "the token upstream answers after --response-timeout",
        )
        .await;
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn i6_a_token_connection_closed_without_answer_leaves_the_binding_spent() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        assert_spent_after(
            &w,
            TokenFault::CloseWithoutAnswer,
            502,
            "the token upstream closes the connection without answering",
        )
        .await;
        w.finish();
    })
    .await;
}

// ---------------------------------------------------------------- beyond

#[tokio::test]
async fn beyond_handle_spellings_in_a_delivery() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        for flow in [Flow::Direct, Flow::Login] {
            for delivery in [
                Delivery::EncodedState,
                Delivery::UpperState,
                Delivery::UpperCode,
                Delivery::StateInQueryAndFragment,
                Delivery::StateOnlyInFragment,
                Delivery::OkWithLocation,
                Delivery::RefreshHeader,
            ] {
                let what = format!("{flow:?} flow, {delivery:?} delivery");
                w.set(|k| {
                    k.flow = flow;
                    k.delivery = delivery.clone();
                });
                let since = issued_count(&w);
                let (req, resp) = walk(&w, &query(Some(CHALLENGE), ""), false).await;
                let (_, codes) = issued_since(&w, since);
                assert_bound_or_withheld(&w, &what, &req, &resp, &codes, false).await;
            }
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn beyond_an_http10_upstream_delivers_bound_codes() {
    every_mode(|mode| async move {
        let knobs = Knobs {
            http10: true,
            ..Knobs::default()
        };
        let w = World::start(mode, knobs, &[]).await;
        for flow in [Flow::Direct, Flow::Login] {
            for (delivery, extra) in [
                (Delivery::Query, ""),
                (Delivery::FormPost, "&response_mode=form_post"),
            ] {
                let what = format!("HTTP/1.0 upstream, {flow:?} flow, {delivery:?} delivery");
                w.set(|k| {
                    k.flow = flow;
                    k.delivery = delivery.clone();
                });
                let since = issued_count(&w);
                let (req, resp) = walk(&w, &query(Some(CHALLENGE), extra), false).await;
                let (issued, _) = issued_since(&w, since);
                assert_restored(&w, &what, &req, &resp, &issued);
                assert_bound(&w, &what, &issued.code, VERIFIER, REDIRECT).await;
            }
        }
        w.finish();
    })
    .await;
}

#[tokio::test]
async fn beyond_head_at_the_authorization_endpoint_binds() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        let since = issued_count(&w);
        let req = Req::new(
            "HEAD",
            &format!("/authorize?{}", query(Some(CHALLENGE), "")),
        );
        let resp = w.send_unchecked(&req).await;
        let (issued, _) = issued_since(&w, since);
        assert_eq!(
            resp.status,
            302,
            "{} HEAD /authorize: the redirect did not reach the client: {}",
            w.tag(),
            resp.describe()
        );
        assert_restored(&w, "HEAD /authorize", &req, &resp, &issued);
        assert_bound(&w, "HEAD /authorize", &issued.code, VERIFIER, REDIRECT).await;
        w.finish();
    })
    .await;
}

/// A code beside a handle the proxy never minted (a server that mixed up
/// two sign-ins) cannot be bound: it must not reach the client, whatever
/// the page says (DESIGN.md: the "took too long" page).
#[tokio::test]
async fn beyond_a_code_beside_an_unknown_handle_is_not_handed_out() {
    every_mode(|mode| async move {
        let w = World::start(mode, Knobs::default(), &[]).await;
        for flow in [Flow::Direct, Flow::Login] {
            w.set(|k| {
                k.flow = flow;
                k.delivery = Delivery::UnknownHandle;
            });
            let since = issued_count(&w);
            let (req, resp) = walk(&w, &query(Some(CHALLENGE), ""), false).await;
            let (issued, _) = issued_since(&w, since);
            assert!(
                !resp.contains(&issued.code) && resp.header("location").is_none(),
                "{} {flow:?} flow, a code beside a handle the proxy never minted: it cannot be \
                 bound, so it must not reach the client; got {}{}",
                w.tag(),
                resp.describe(),
                w.proxy_log()
            );
            w.check(&req, &resp);
        }
        w.finish();
    })
    .await;
}

//! Logs name events and reasons, never a code, verifier, state or query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use tests::{Flavor, LegacyServer, delivered, form, get, send, token_request, walk};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, PkceLayer};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_hold_no_secrets() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = LegacyServer::new(Flavor::LoginPage);
    let svc = server.behind(PkceLayer::strict());
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    let state = "client-state-9f8e7d";
    let query = form(&[
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("redirect_uri", "https://client.example/cb"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", state),
    ]);
    let answer = walk(&svc, Flavor::LoginPage, &query).await;
    let (code, _) = delivered(&answer).unwrap();
    let handle = server
        .state
        .last_authorize_params
        .lock()
        .unwrap()
        .iter()
        .find(|(n, _)| n == "state")
        .map(|(_, v)| v.clone())
        .unwrap();
    let wrong = CodeVerifier::generate();
    send(&svc, token_request(&code, "client-a", Some(wrong.secret()))).await;
    send(
        &svc,
        token_request(&code, "client-a", Some(verifier.secret())),
    )
    .await;
    send(&svc, get(&format!("/authorize?{query}&state=again"))).await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for event in [
        "challenge recorded",
        "code bound",
        "code verified",
        "request rejected",
        "verifier_mismatch",
        "repeated_parameter",
    ] {
        assert!(logs.contains(event), "missing {event:?} in:\n{logs}");
    }
    for secret in [
        code.as_str(),
        verifier.secret(),
        wrong.secret(),
        state,
        handle.as_str(),
        challenge.as_str(),
        "response_type",
    ] {
        assert!(!logs.contains(secret), "logs leak {secret:?}:\n{logs}");
    }
}

//! The layer in front of a fake legacy server, for each way a server issues
//! a code: (a) a redirect straight from /authorize, (b) a redirect from a
//! later `POST /login`, (c) a fragment, (d) a form_post page after login,
//! (e) a consent page that posts the handle back first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use http::StatusCode;
use tests::{Answer, Flavor, LegacyServer, Service, delivered, form, send, token_request, walk};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, PkceLayer, Rejection};

#[derive(Debug, Clone, Copy)]
struct Way {
    flavor: Flavor,
    response_mode: Option<&'static str>,
}

const DIRECT: Way = Way {
    flavor: Flavor::Direct,
    response_mode: None,
};
const LOGIN: Way = Way {
    flavor: Flavor::LoginPage,
    response_mode: None,
};
const FRAGMENT: Way = Way {
    flavor: Flavor::Direct,
    response_mode: Some("fragment"),
};
const FORM_POST: Way = Way {
    flavor: Flavor::LoginPage,
    response_mode: Some("form_post"),
};
const CONSENT: Way = Way {
    flavor: Flavor::Consent,
    response_mode: None,
};

struct Flow {
    svc: Service,
    server: LegacyServer,
    verifier: CodeVerifier,
    code: String,
    state: Option<String>,
}

fn authorize_query(challenge: &str, state: Option<&str>, way: Way, client_id: &str) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", "https://client.example/cb"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    if let Some(mode) = way.response_mode {
        pairs.push(("response_mode", mode));
    }
    form(&pairs)
}

async fn start(way: Way, layer: PkceLayer) -> Flow {
    let server = LegacyServer::new(way.flavor);
    let svc = server.behind(layer);
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    let query = authorize_query(
        challenge.as_str(),
        Some("client state &=é"),
        way,
        "client-a",
    );
    let answer = walk(&svc, way.flavor, &query).await;
    let (code, state) = delivered(&answer).unwrap_or_else(|| panic!("no code in {answer:?}"));
    Flow {
        svc,
        server,
        verifier,
        code,
        state,
    }
}

async fn redeem(flow: &Flow, verifier: Option<&str>) -> Answer {
    send(&flow.svc, token_request(&flow.code, "client-a", verifier)).await
}

fn assert_rejected(answer: &Answer, error: &str, rejection: Rejection) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
    assert_eq!(answer.error().as_deref(), Some(error), "{answer:?}");
    assert_eq!(answer.rejection, Some(rejection), "{answer:?}");
    assert_eq!(
        answer
            .headers
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

macro_rules! each_way {
    ($($name:ident => $way:expr),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn state_restored_and_right_verifier_accepted() {
                let flow = start($way, PkceLayer::strict()).await;
                assert_eq!(flow.state.as_deref(), Some("client state &=é"));
                let answer = redeem(&flow, Some(flow.verifier.secret())).await;
                assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
                assert_eq!(flow.server.token_requests(), 1);
            }

            #[tokio::test]
            async fn wrong_verifier_refused_and_not_forwarded() {
                let flow = start($way, PkceLayer::strict()).await;
                let wrong = CodeVerifier::generate();
                let answer = redeem(&flow, Some(wrong.secret())).await;
                assert_rejected(&answer, "invalid_grant", Rejection::VerifierMismatch);
                assert_eq!(flow.server.token_requests(), 0);
            }

            #[tokio::test]
            async fn missing_verifier_refused_and_not_forwarded() {
                let flow = start($way, PkceLayer::strict()).await;
                let answer = redeem(&flow, None).await;
                assert_rejected(&answer, "invalid_grant", Rejection::VerifierMissing);
                assert_eq!(flow.server.token_requests(), 0);
            }

            #[tokio::test]
            async fn wrong_then_right_verifier() {
                let flow = start($way, PkceLayer::strict()).await;
                let wrong = CodeVerifier::generate();
                let first = redeem(&flow, Some(wrong.secret())).await;
                assert_rejected(&first, "invalid_grant", Rejection::VerifierMismatch);
                let second = redeem(&flow, Some(flow.verifier.secret())).await;
                assert_eq!(second.status, StatusCode::OK, "{second:?}");
                assert_eq!(flow.server.token_requests(), 1);
            }

            #[tokio::test]
            async fn replay_refused_and_not_forwarded() {
                let flow = start($way, PkceLayer::strict()).await;
                let first = redeem(&flow, Some(flow.verifier.secret())).await;
                assert_eq!(first.status, StatusCode::OK, "{first:?}");
                let replay = redeem(&flow, Some(flow.verifier.secret())).await;
                assert_rejected(&replay, "invalid_grant", Rejection::CodeSpent);
                assert_eq!(flow.server.token_requests(), 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn thirty_two_concurrent_redemptions_one_winner() {
                let flow = std::sync::Arc::new(start($way, PkceLayer::strict()).await);
                let mut tasks = Vec::new();
                for _ in 0..32 {
                    let flow = flow.clone();
                    tasks.push(tokio::spawn(async move {
                        redeem(&flow, Some(flow.verifier.secret())).await.status
                    }));
                }
                let mut ok = 0;
                for task in tasks {
                    let status = task.await.unwrap();
                    if status == StatusCode::OK {
                        ok += 1;
                    } else {
                        assert_eq!(status, StatusCode::BAD_REQUEST);
                    }
                }
                assert_eq!(ok, 1);
                assert_eq!(flow.server.token_requests(), 1);
            }
        }
    )*};
}

each_way! {
    a_direct_redirect => DIRECT,
    b_login_page => LOGIN,
    c_fragment => FRAGMENT,
    d_form_post_after_login => FORM_POST,
    e_consent_continuation => CONSENT,
}

//! pkce-proxy in front of a real authorization server, panva's
//! `oidc-provider` on Node.js, driven by real clients: panva's
//! `openid-client` (`tests/interop/client.mjs`) and the `oauth2` crate.
//!
//! The provider does not do PKCE: the proxy strips the PKCE parameters
//! (`--strip-pkce-params`) and the provider's own discovery hides
//! `code_challenge_methods_supported`. The provider counts what reaches it,
//! so each refusal can be shown to come from the proxy.
//!
//! These tests need Node.js 20 or later and the packages of
//! `tests/interop/package-lock.json`: `npm ci --prefix tests/interop`.
//! Without them they fail; they never skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::url::Url;
use oauth2::{
    AsyncHttpClient, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::server::{Running, start};
use serde_json::Value;
use tests::{form, hidden_field, parse_form};

// The clients registered at the provider: see tests/interop/shared.mjs.
const PUBLIC_CLIENT: &str = "interop-public";
const CONFIDENTIAL_CLIENT: &str = "interop-confidential";
const CONFIDENTIAL_SECRET: &str = "interop-confidential-secret-0123456789abcdef";
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
const COUNTERS_PATH: &str = "/__interop/counters";

/// How long a Node process may take: starting, or running client.mjs.
const NODE_DEADLINE: Duration = Duration::from_secs(60);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Fails with what to do when Node.js or the npm packages are missing.
fn require_node() {
    let output = match Command::new("node").arg("--version").output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("node is missing: install Node.js 20 or later to run the interop tests")
        }
        Err(e) => panic!("cannot run node: {e}"),
    };
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {version} is too old: install Node.js 20 or later to run the interop tests"
    );
    for package in ["oidc-provider", "openid-client"] {
        let manifest = interop_dir()
            .join("node_modules")
            .join(package)
            .join("package.json");
        assert!(
            manifest.is_file(),
            "{package} is not installed: run `npm ci --prefix tests/interop`"
        );
    }
}

/// A Node.js script run from `tests/interop`, its output kept in files and
/// the process killed by its PID when dropped. When the test fails, its
/// stderr is printed.
#[derive(Debug)]
struct NodeProcess {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl NodeProcess {
    fn spawn(script: &str, args: &[&str]) -> Self {
        // Tests run in parallel: one pair of files per process spawned.
        static SPAWNED: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir().join(format!(
            "pkce-proxy-interop-{}-{}-{script}",
            std::process::id(),
            SPAWNED.fetch_add(1, Ordering::Relaxed),
        ));
        let stdout = base.with_extension("out");
        let stderr = base.with_extension("err");
        let child = Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(interop_dir())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {script}: {e}"));
        Self {
            child,
            name: script.to_owned(),
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panics with its stderr when the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.name, self.stderr());
        }
    }

    /// Waits for the process to exit, up to [`NODE_DEADLINE`].
    async fn finish(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + NODE_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {NODE_DEADLINE:?}:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// A port nobody listens on right now, for the provider: it must be known
/// before the proxy starts, and the provider's issuer (the proxy's URL)
/// before the provider starts.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read whole.
#[derive(Debug)]
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(http: &HttpClient, req: Request<Full<Bytes>>) -> Page {
    let uri = req.uri().clone();
    let response = http
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("{uri}: {e}"));
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Page {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(http: &HttpClient, url: &str) -> Page {
    send(http, Request::get(url).body(Full::default()).unwrap()).await
}

/// The proxy, with `--strip-pkce-params`, in front of oidc-provider, whose
/// issuer is the proxy's URL.
struct Setup {
    proxy: Running,
    proxy_url: String,
    provider: NodeProcess,
    provider_url: String,
    http: HttpClient,
}

impl Setup {
    async fn start() -> Self {
        require_node();
        let port = free_port();
        let provider_url = format!("http://127.0.0.1:{port}");
        let config = Config::resolve(&RawSettings {
            upstream: Some(provider_url.clone()),
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            authorize_path: Some("/auth".into()),
            strip_pkce_params: Some("true".into()),
            ..RawSettings::default()
        })
        .unwrap();
        let proxy = start(config).await.unwrap();
        let proxy_url = format!("http://{}", proxy.addr);
        let provider = NodeProcess::spawn(
            "provider.mjs",
            &["--port", &port.to_string(), "--issuer", &proxy_url],
        );
        let mut setup = Self {
            proxy,
            proxy_url,
            provider,
            provider_url,
            http: http_client(),
        };
        setup.wait_for_provider().await;
        setup
    }

    async fn wait_for_provider(&mut self) {
        let url = format!("{}{COUNTERS_PATH}", self.provider_url);
        let deadline = Instant::now() + NODE_DEADLINE;
        while Instant::now() < deadline {
            self.provider.assert_running();
            let req = Request::get(&url).body(Full::default()).unwrap();
            if let Ok(response) = self.http.request(req).await
                && response.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the provider did not answer within {NODE_DEADLINE:?}:\n{}",
            self.provider.stderr()
        );
    }

    /// The provider's counters, read from its own port.
    async fn counters(&self) -> Value {
        let page = get(&self.http, &format!("{}{COUNTERS_PATH}", self.provider_url)).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        serde_json::from_str(&page.body).unwrap()
    }

    /// Token requests that reached the provider, any grant type.
    async fn token_requests(&self) -> u64 {
        let counters = self.counters().await;
        counters["token_requests"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum()
    }

    async fn tokens_issued(&self, grant_type: &str) -> u64 {
        self.counters().await["tokens_issued"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// The proxy's `pkce_proxy_rejections_total` for `reason`.
    async fn rejections(&self, reason: &str) -> u64 {
        let page = get(
            &self.http,
            &format!("http://{}/metrics", self.proxy.admin_addr),
        )
        .await;
        let series = format!("pkce_proxy_rejections_total{{reason=\"{reason}\"}} ");
        page.body
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.trim().parse().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_through_the_proxy() {
    let setup = Setup::start().await;
    let mut client = NodeProcess::spawn(
        "client.mjs",
        &[
            "--proxy",
            &setup.proxy_url,
            "--provider",
            &setup.provider_url,
        ],
    );
    let status = client.finish().await;
    assert!(
        status.success(),
        "client.mjs failed ({status}):\n{}",
        client.stderr()
    );
    let out = client.stdout();
    // Shown with --nocapture: what each check saw.
    println!("openid-client: {out}");
    let results: Value = serde_json::from_str(out.trim()).unwrap();

    assert_eq!(results["discovery"]["provider_direct"], Value::Null);
    assert_eq!(
        results["discovery"]["through_proxy"],
        serde_json::json!(["S256"])
    );
    for id in [PUBLIC_CLIENT, CONFIDENTIAL_CLIENT] {
        let c = &results["clients"][id];
        assert_eq!(c["code_grant"]["provider_code_grants"], 1, "{id}");
        assert_eq!(c["code_grant"]["id_token_iss"], setup.proxy_url.as_str());
        for check in ["wrong_verifier", "missing_verifier", "replayed_code"] {
            assert_eq!(c[check]["error"], "invalid_grant", "{id} {check}");
            assert_eq!(c[check]["token_requests_reaching_provider"], 0);
        }
        assert_eq!(c["refresh"]["provider_refresh_grants"], 1, "{id}");
        let form_post = &c["form_post"];
        assert_eq!(form_post["wrong_verifier"]["error"], "invalid_grant");
        assert_eq!(form_post["provider_code_grants"], 1, "{id}");
    }

    // The provider's side: four code grants (two by redirect, two by
    // form_post) and two refreshes reached it, none of the eight refusals,
    // and never a PKCE parameter.
    let counters = setup.counters().await;
    assert_eq!(
        counters["token_requests"],
        serde_json::json!({"authorization_code": 4, "refresh_token": 2})
    );
    assert_eq!(counters["pkce_params_seen"], 0);
    assert_eq!(counters["authorization_requests"], 4);
    // The proxy's side: the eight refusals, by reason.
    assert_eq!(setup.rejections("verifier_mismatch").await, 4);
    assert_eq!(setup.rejections("verifier_missing").await, 2);
    assert_eq!(setup.rejections("code_spent").await, 2);
}

/// `oauth2`'s HTTP client: hyper-util's, already in the workspace.
#[derive(Debug, Clone)]
struct Oauth2Http(HttpClient);

type Oauth2Future<'c> =
    Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, std::io::Error>> + Send + 'c>>;

impl<'c> AsyncHttpClient<'c> for Oauth2Http {
    type Error = std::io::Error;
    type Future = Oauth2Future<'c>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = request.map(|body| Full::new(Bytes::from(body)));
            let response = self
                .0
                .request(request)
                .await
                .map_err(std::io::Error::other)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(std::io::Error::other)?;
            Ok(http::Response::from_parts(parts, body.to_bytes().to_vec()))
        })
    }
}

type Oauth2Client =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// A user agent for one sign-in: it keeps cookies by name and path (one
/// host), follows redirects, and fills in oidc-provider's login and consent
/// forms, until the provider redirects to the client.
struct Browser<'a> {
    http: &'a HttpClient,
    origin: String,
    cookies: Vec<(String, String, String)>,
}

impl<'a> Browser<'a> {
    fn new(http: &'a HttpClient, origin: &str) -> Self {
        Self {
            http,
            origin: origin.to_owned(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self, url: &Url) -> String {
        let path = url.path();
        self.cookies
            .iter()
            .filter(|(_, p, _)| {
                path == p || path.starts_with(&format!("{}/", p.trim_end_matches('/')))
            })
            .map(|(name, _, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, headers: &HeaderMap) {
        for line in headers.get_all(header::SET_COOKIE) {
            let line = line.to_str().unwrap();
            let mut attributes = line.split(';');
            let (name, value) = attributes.next().unwrap().split_once('=').unwrap();
            let path = attributes
                .filter_map(|a| a.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("path"))
                .map_or("/", |(_, v)| v);
            let (name, value, path) = (name.trim(), value.trim(), path.trim());
            self.cookies.retain(|(n, p, _)| !(n == name && p == path));
            // A cleared cookie comes back empty (and expired).
            if !value.is_empty() {
                self.cookies
                    .push((name.to_owned(), path.to_owned(), value.to_owned()));
            }
        }
    }

    /// Signs in as `login` from the authorization URL, and returns the URL
    /// the provider sends the user back to.
    async fn sign_in(&mut self, authorization_url: &Url, login: &str) -> Url {
        let mut url = authorization_url.clone();
        let mut body: Option<String> = None;
        for _ in 0..12 {
            assert_eq!(
                url.origin().ascii_serialization(),
                self.origin,
                "the flow left the proxy"
            );
            let method = if body.is_some() {
                Method::POST
            } else {
                Method::GET
            };
            let mut req = Request::builder()
                .method(method.clone())
                .uri(url.as_str())
                .header(header::COOKIE, self.cookie_header(&url));
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            }
            let req = req
                .body(Full::new(Bytes::from(body.take().unwrap_or_default())))
                .unwrap();
            let page = send(self.http, req).await;
            self.keep_cookies(&page.headers);
            let step = format!("{method} {}", url.path());
            if page.status.is_redirection() {
                let location = page.headers[header::LOCATION].to_str().unwrap();
                let next = url.join(location).unwrap();
                if next.as_str().starts_with(REDIRECT_URI) {
                    return next;
                }
                url = next;
                continue;
            }
            assert_eq!(page.status, StatusCode::OK, "{step}: {}", page.body);
            let action = form_action(&page.body)
                .unwrap_or_else(|| panic!("{step}: neither a redirect nor a form"));
            url = url.join(&action).unwrap();
            body = Some(match hidden_field(&page.body, "prompt").as_deref() {
                Some("login") => form(&[("prompt", "login"), ("login", login), ("password", "x")]),
                Some("consent") => form(&[("prompt", "consent")]),
                other => panic!("{step}: unexpected prompt {other:?}"),
            });
        }
        panic!("no redirect to the client after 12 steps");
    }
}

/// The `action` of the first form in a page.
fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = form[start..].find('"')? + start;
    Some(form[start..end].replace("&amp;", "&"))
}

fn query_param(url: &Url, name: &str) -> Option<String> {
    parse_form(url.query().unwrap_or(""))
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

impl Setup {
    /// The authorization and token endpoints, from discovery through the
    /// proxy, which must advertise S256 where the provider does not.
    async fn endpoints(&self) -> (AuthUrl, TokenUrl) {
        let path = "/.well-known/openid-configuration";
        let direct: Value = serde_json::from_str(
            &get(&self.http, &format!("{}{path}", self.provider_url))
                .await
                .body,
        )
        .unwrap();
        assert!(direct.get("code_challenge_methods_supported").is_none());
        let meta: Value = serde_json::from_str(
            &get(&self.http, &format!("{}{path}", self.proxy_url))
                .await
                .body,
        )
        .unwrap();
        assert_eq!(
            meta["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        let endpoint = |name: &str| meta[name].as_str().unwrap().to_owned();
        (
            AuthUrl::new(endpoint("authorization_endpoint")).unwrap(),
            TokenUrl::new(endpoint("token_endpoint")).unwrap(),
        )
    }

    /// Sends a token request that the proxy must refuse with
    /// `invalid_grant` before it reaches the provider; returns the
    /// `error_description`.
    async fn refused<F>(&self, what: &str, request: F) -> String
    where
        F: Future<
            Output = Result<
                BasicTokenResponse,
                RequestTokenError<std::io::Error, oauth2::basic::BasicErrorResponse>,
            >,
        >,
    {
        let before = self.token_requests().await;
        let description = match request.await {
            Ok(_) => panic!("{what}: tokens were issued"),
            Err(RequestTokenError::ServerResponse(e)) => {
                assert_eq!(*e.error(), BasicErrorResponseType::InvalidGrant, "{what}");
                e.error_description().cloned().unwrap_or_default()
            }
            Err(e) => panic!("{what}: {e}"),
        };
        assert_eq!(
            self.token_requests().await,
            before,
            "{what}: the refused request reached the provider"
        );
        description
    }

    /// One client's whole flow with the `oauth2` crate.
    async fn oauth2_flow(&self, client: &Oauth2Client, http: &Oauth2Http) {
        let id = client.client_id().as_str();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (authorization_url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scope(Scope::new("openid".into()))
            .set_pkce_challenge(challenge)
            .url();
        let callback = Browser::new(&self.http, &self.proxy_url)
            .sign_in(&authorization_url, &format!("rust-user-of-{id}"))
            .await;
        assert_eq!(
            query_param(&callback, "state").as_deref(),
            Some(state.secret().as_str()),
            "{id}: the proxy did not give the client its state back"
        );
        let code = AuthorizationCode::new(query_param(&callback, "code").unwrap());

        let wrong = self
            .refused(
                &format!("{id}: wrong verifier"),
                client
                    .exchange_code(code.clone())
                    .set_pkce_verifier(PkceCodeChallenge::new_random_sha256().1)
                    .request_async(http),
            )
            .await;
        assert!(wrong.contains("does not match"), "{wrong}");
        let missing = self
            .refused(
                &format!("{id}: missing verifier"),
                client.exchange_code(code.clone()).request_async(http),
            )
            .await;
        assert!(missing.contains("code_verifier is required"), "{missing}");

        let issued = self.tokens_issued("authorization_code").await;
        let tokens = client
            .exchange_code(code.clone())
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.secret().clone()))
            .request_async(http)
            .await
            .unwrap_or_else(|e| panic!("{id}: the right verifier was refused: {e}"));
        assert_eq!(
            self.tokens_issued("authorization_code").await,
            issued + 1,
            "{id}"
        );

        let replayed = self
            .refused(
                &format!("{id}: replayed code"),
                client
                    .exchange_code(code)
                    .set_pkce_verifier(verifier)
                    .request_async(http),
            )
            .await;
        assert!(replayed.contains("already been used"), "{replayed}");

        let refresh_token = tokens.refresh_token().expect("a refresh token");
        let refreshed = client
            .exchange_refresh_token(refresh_token)
            .request_async(http)
            .await
            .unwrap_or_else(|e| panic!("{id}: refresh failed: {e}"));
        assert_ne!(
            refreshed.access_token().secret(),
            tokens.access_token().secret()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_crate_through_the_proxy() {
    let setup = Setup::start().await;
    let (auth_url, token_url) = setup.endpoints().await;
    let redirect = RedirectUrl::new(REDIRECT_URI.into()).unwrap();
    let public = BasicClient::new(ClientId::new(PUBLIC_CLIENT.into()))
        .set_auth_uri(auth_url.clone())
        .set_token_uri(token_url.clone())
        .set_redirect_uri(redirect.clone());
    // With a secret, oauth2 authenticates with HTTP Basic
    // (client_secret_basic), as the provider expects of this client.
    let confidential = BasicClient::new(ClientId::new(CONFIDENTIAL_CLIENT.into()))
        .set_client_secret(ClientSecret::new(CONFIDENTIAL_SECRET.into()))
        .set_auth_uri(auth_url)
        .set_token_uri(token_url)
        .set_redirect_uri(redirect);
    let http = Oauth2Http(http_client());
    setup.oauth2_flow(&public, &http).await;
    setup.oauth2_flow(&confidential, &http).await;

    let counters = setup.counters().await;
    println!("oauth2: provider counters {counters}");
    assert_eq!(
        counters["token_requests"],
        serde_json::json!({"authorization_code": 2, "refresh_token": 2})
    );
    assert_eq!(
        counters["tokens_issued"],
        serde_json::json!({"authorization_code": 2, "refresh_token": 2})
    );
    assert_eq!(counters["pkce_params_seen"], 0);
    assert_eq!(setup.rejections("verifier_mismatch").await, 2);
    assert_eq!(setup.rejections("verifier_missing").await, 2);
    assert_eq!(setup.rejections("code_spent").await, 2);
}

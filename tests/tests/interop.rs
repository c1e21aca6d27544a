//! pkce-proxy in front of a real authorization server, panva's
//! `oidc-provider` on Node.js, driven by a real client: panva's
//! `openid-client` (`tests/interop/client.mjs`).
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
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::server::{Running, start};
use serde_json::Value;

// The clients registered at the provider: see tests/interop/shared.mjs.
const PUBLIC_CLIENT: &str = "interop-public";
const CONFIDENTIAL_CLIENT: &str = "interop-confidential";
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
    }

    // The provider's side: two code grants and two refreshes reached it,
    // none of the six refusals, and never a PKCE parameter.
    let counters = setup.counters().await;
    assert_eq!(
        counters["token_requests"],
        serde_json::json!({"authorization_code": 2, "refresh_token": 2})
    );
    assert_eq!(counters["pkce_params_seen"], 0);
    assert_eq!(counters["authorization_requests"], 2);
    // The proxy's side: the six refusals, by reason.
    assert_eq!(setup.rejections("verifier_mismatch").await, 2);
    assert_eq!(setup.rejections("verifier_missing").await, 2);
    assert_eq!(setup.rejections("code_spent").await, 2);
}

//! A PKCE-unaware upstream for the load benchmark (`benches/load/run.sh`).
//!
//! - `/authorize`: 302 to `https://client.example/cb?code=<fresh>&state=<echoed>`;
//! - `/token`: a small JSON token response (the body is read, not checked);
//! - `/other`: a small plain-text body;
//! - anything else: 404.
//!
//! It serves HTTP/1.1 on one thread, prints `listening on ADDR` once bound
//! and runs until it is killed.
//!
//! `load_upstream [ADDR]` (default `127.0.0.1:0`)

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const TOKEN_JSON: &[u8] =
    br#"{"access_token":"bench-access-token","token_type":"Bearer","expires_in":3600}"#;
const OTHER_BODY: &[u8] = b"hello from the upstream\n";

/// Hands out codes that are unique across restarts of this process: a
/// per-process prefix, then a counter.
struct Codes {
    prefix: u64,
    next: AtomicU64,
}

impl Codes {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            prefix: nanos ^ (u64::from(std::process::id()) << 32),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("c{:016x}{n:x}", self.prefix)
    }
}

/// The raw value of `name` in a query string, as it was sent.
fn raw_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn small(
    status: StatusCode,
    content_type: &'static str,
    body: &'static [u8],
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn answer(codes: &Codes, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/authorize" => {
            let code = codes.next();
            let location = match req.uri().query().and_then(|q| raw_param(q, "state")) {
                Some(state) => format!("https://client.example/cb?code={code}&state={state}"),
                None => format!("https://client.example/cb?code={code}"),
            };
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::FOUND;
            match HeaderValue::try_from(location) {
                Ok(value) => {
                    response.headers_mut().insert(header::LOCATION, value);
                    response
                }
                Err(_) => small(StatusCode::BAD_REQUEST, "text/plain", b"bad state\n"),
            }
        }
        "/token" if req.method() == Method::POST => {
            // Read the whole body, as a real server would, before answering.
            if req.into_body().collect().await.is_err() {
                return small(StatusCode::BAD_REQUEST, "text/plain", b"unreadable body\n");
            }
            let mut response = small(StatusCode::OK, "application/json", TOKEN_JSON);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        "/other" => small(StatusCode::OK, "text/plain", OTHER_BODY),
        _ => small(StatusCode::NOT_FOUND, "text/plain", b"not found\n"),
    }
}

fn main() -> std::process::ExitCode {
    let addr: SocketAddr = match std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()
    {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("load_upstream: bad address: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load_upstream: no runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load_upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let codes = Arc::new(Codes::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                eprintln!("load_upstream: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let codes = codes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let codes = codes.clone();
                async move { Ok::<_, Infallible>(answer(&codes, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

//! The example legacy authorization server on its own, to put the sidecar
//! in front of by hand:
//!
//! ```sh
//! cargo run -p examples --example legacy_server          # on 127.0.0.1:8080
//! cargo run -p pkce-proxy -- --upstream http://127.0.0.1:8080 --listen 127.0.0.1:8443
//! ```
//!
//! It knows nothing of PKCE: a login page at `/authorize`, the code from
//! `POST /login`, tokens at `/token`.

use std::net::SocketAddr;

use pkce_proxy::demo::legacy::LegacyServer;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let server = LegacyServer::start(addr).await?;
    println!("legacy server on http://{} (Ctrl-C to stop)", server.addr);
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}

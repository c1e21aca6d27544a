//! An axum authorization server that knows nothing of PKCE, with PKCE added
//! by one layer.
//!
//! Run it with `cargo run -p examples --example axum`, then try
//! `curl -i 'http://127.0.0.1:3000/authorize?client_id=app&response_type=code'`
//! (refused: no code_challenge).

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use tower_pkce::PkceLayer;

async fn authorize() -> Redirect {
    // A legacy server: it issues a code and knows nothing of PKCE.
    Redirect::to("https://client.example/cb?code=legacy-code")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/authorize", get(authorize))
        .layer(PkceLayer::strict());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

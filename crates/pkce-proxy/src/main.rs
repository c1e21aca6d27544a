//! The `pkce-proxy` binary: see the crate's library for the work.

fn main() -> std::process::ExitCode {
    pkce_proxy::cli()
}

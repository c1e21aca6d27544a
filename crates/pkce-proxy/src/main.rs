//! The `pkce-proxy` binary: see the crate's library for the work.

// A proxy allocates and frees a few small blocks per request, from one
// thread each time; mimalloc's thread-local free lists make that cheaper
// than the system allocator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pkce_proxy::cli()
}

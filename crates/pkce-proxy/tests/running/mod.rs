//! Starts the `pkce-proxy` binary on free loopback ports and reads the
//! addresses from its `pkce-proxy listening` line.

// Each test file uses a part of it.
#![allow(dead_code)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// The binary, running until dropped.
pub(crate) struct Running {
    pub(crate) child: Child,
    /// The client listener's address.
    pub(crate) addr: String,
    /// The admin listener's address.
    pub(crate) admin: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the proxy in front of `upstream`, logging JSON.
pub(crate) fn start_proxy(upstream: &str) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pkce-proxy"))
        .args(["--upstream", upstream, "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("listening") {
        line.clear();
    }
    // Keeps the pipe open and drained, so that later log lines are written.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let event: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let field = |name: &str| event[name].as_str().unwrap().to_owned();
    Running {
        addr: field("addr"),
        admin: field("admin_addr"),
        child,
    }
}

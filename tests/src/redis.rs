//! A real `redis-server` on a free loopback port, started and stopped by
//! the tests that need one, speaking plain TCP or TLS only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::tls::{self, Authority};

/// A `redis-server` process this test run started.
///
/// It is killed when dropped, and a watchdog kills it if the test process
/// dies first, so no server outlives its tests.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    /// For a TLS-only server, how this helper itself connects to it.
    tls: Option<Arc<rustls::ClientConfig>>,
    server: Option<Child>,
    watchdog: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed or does not come up: the tests
    /// that need it fail rather than skip.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (such as
    /// `--requirepass`).
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_with(args: &[&str]) -> Self {
        let mut server = Self::unstarted(args);
        server.launch();
        server
    }

    /// Starts a server that speaks TLS only, with a certificate for
    /// 127.0.0.1 and localhost that `authority` issued. With
    /// `auth_clients`, it also demands a client certificate that
    /// `authority` issued (`--tls-auth-clients yes`). Its [`url`](Self::url)
    /// is `rediss://`.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`], and when this `redis-server` was built
    /// without TLS.
    pub fn start_tls(authority: &Authority, auth_clients: bool) -> Self {
        let mut server = Self::unstarted(&[]);
        let (cert, key) = authority
            .server(&["127.0.0.1", "localhost"])
            .write(&server.dir, "redis");
        let ca = tls::write(&server.dir, "redis-ca.pem", authority.pem());
        for (flag, path) in [
            ("--tls-cert-file", cert),
            ("--tls-key-file", key),
            ("--tls-ca-cert-file", ca),
        ] {
            server.args.push(flag.to_owned());
            server.args.push(path.display().to_string());
        }
        server.args.push("--tls-auth-clients".to_owned());
        server
            .args
            .push(if auth_clients { "yes" } else { "no" }.to_owned());
        let me = authority.client("redis-readiness-check");
        server.tls = Some(authority.client_config(&[], Some(&me)));
        server.launch();
        server
    }

    fn unstarted(args: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
        let dir = std::env::temp_dir().join(format!("pkce-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self {
            port,
            dir,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            tls: None,
            server: None,
            watchdog: None,
        }
    }

    /// The server every test in this process may share. Tests keep apart by
    /// key prefix ([`fresh_prefix`]).
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// The URL of database 0: `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// The URL of database 0 with a password.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/0", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Kills the server (its data is gone: it keeps nothing on disk).
    pub fn stop(&mut self) {
        for child in [self.server.take(), self.watchdog.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server, to make it hang
    /// without closing its connections.
    ///
    /// # Panics
    ///
    /// When the server is not running or the signal cannot be sent.
    pub fn freeze(&self, frozen: bool) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("redis-server is not running"));
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls.is_some() {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        let server = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): install it (Debian package redis-server; \
                     .ci/run does this)"
                )
            });
        // The watchdog outlives this process by at most half a second, and
        // takes the server and its directory with it.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill -9 {} 2>/dev/null; rm -rf '{}'",
                std::process::id(),
                server.id(),
                self.dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the redis-server watchdog (sh): {e}"));
        self.server = Some(server);
        self.watchdog = Some(watchdog);
        self.wait_ready();
    }

    /// Waits until the server this run started, and no other, answers.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = self.pid().unwrap_or_default();
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server on port {} exited at start ({status}): is the port taken?",
                    self.port
                );
            }
            let password = self
                .args
                .iter()
                .position(|a| a == "--requirepass")
                .and_then(|i| self.args.get(i + 1));
            if server_pid(self.port, self.tls.as_ref(), password.map(String::as_str)) == Some(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        );
    }
}

/// The process id the server on `port` reports, if one answers, over TLS
/// with `tls`.
fn server_pid(
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    password: Option<&str>,
) -> Option<u32> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    match tls {
        None => ask_pid(stream, password),
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
            let connection = rustls::ClientConnection::new(config.clone(), name).ok()?;
            ask_pid(rustls::StreamOwned::new(connection, stream), password)
        }
    }
}

fn ask_pid(mut stream: impl Read + Write, password: Option<&str>) -> Option<u32> {
    if let Some(password) = password {
        stream
            .write_all(format!("AUTH {password}\r\n").as_bytes())
            .ok()?;
        let mut ok = [0u8; 5];
        stream.read_exact(&mut ok).ok()?;
        if &ok != b"+OK\r\n" {
            return None;
        }
    }
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.starts_with(b"-") || answer.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A key prefix no other test uses.
pub fn fresh_prefix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap_or_else(|e| panic!("random prefix: {e}"));
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("test-{hex}")
}

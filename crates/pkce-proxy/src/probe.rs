//! `pkce-proxy probe URL`: one HTTP/1.1 GET over plain TCP, for a health
//! check in an image that has no curl. Exit 0 on a 2xx answer, 1 otherwise.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use http::Uri;

use crate::config::EXIT_USAGE;

/// The longest status line read: `HTTP/1.1 200 OK` and a long reason.
const STATUS_LINE_LIMIT: usize = 1024;

/// The arguments of `probe`.
#[derive(Debug, Clone, Args)]
pub struct Probe {
    /// What to ask: http://HOST:PORT/PATH, such as
    /// http://127.0.0.1:9901/readyz.
    #[arg(value_name = "URL")]
    pub url: String,
    /// The bound on the whole exchange, from connecting to reading the
    /// status line.
    #[arg(long, value_name = "SECONDS", default_value = "2")]
    pub timeout: String,
}

impl Probe {
    /// Sends the request and prints the status line it got, or why it got
    /// none. A URL or timeout that cannot be used exits 64.
    pub fn run(&self) -> ExitCode {
        let (host, port, target) = match parse_url(&self.url) {
            Ok(parts) => parts,
            Err(e) => return usage(format!("probe: URL: {e}")),
        };
        let timeout = match self.timeout.parse::<f64>().ok().and_then(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3600))
        }) {
            Some(timeout) => timeout,
            None => {
                return usage("probe: --timeout: expected seconds, from 0.001 to 3600");
            }
        };
        match get(&host, port, &target, timeout) {
            Ok(line) => {
                println!("{line}");
                let status = line.split(' ').nth(1).unwrap_or("");
                if status.len() == 3
                    && status.starts_with('2')
                    && status.bytes().all(|b| b.is_ascii_digit())
                {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("pkce-proxy: probe {}: {e}", self.url);
                ExitCode::FAILURE
            }
        }
    }
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("pkce-proxy: {message}");
    ExitCode::from(EXIT_USAGE as u8)
}

/// The host, port and request target of an `http://` URL.
fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// is probed".into());
    }
    let authority = uri.authority().ok_or("no host")?;
    if authority.as_str().contains('@') {
        return Err("no user information is sent".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = if target.is_empty() { "/" } else { target };
    Ok((
        host.to_owned(),
        authority.port_u16().unwrap_or(80),
        target.to_owned(),
    ))
}

/// Connects, sends the GET and reads the status line, all within `timeout`.
fn get(host: &str, port: u16, target: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {timeout:?}"))
    };
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} has no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let host_field = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host_field}\r\nUser-Agent: pkce-proxy-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .set_write_timeout(Some(left()?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !line.contains(&b'\n') {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        let n = stream.read(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer within {timeout:?}")
            }
            _ => format!("cannot read the answer: {e}"),
        })?;
        if n == 0 {
            return Err("the connection closed before a status line".into());
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > STATUS_LINE_LIMIT && !line[..STATUS_LINE_LIMIT].contains(&b'\n') {
            return Err("the status line is too long".into());
        }
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let text = String::from_utf8_lossy(&line[..end]);
    let text = text.trim_end_matches('\r');
    if !text.starts_with("HTTP/1.") {
        return Err("the answer is not HTTP/1.x".into());
    }
    Ok(text.to_owned())
}

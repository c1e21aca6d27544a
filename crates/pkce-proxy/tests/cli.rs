//! The binary as a user runs it: exit codes, precedence, `pair`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod running;

use std::process::{Command, Output};

use running::start_proxy;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pkce-proxy"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for var in [
        "PKCE_PROXY_UPSTREAM",
        "PKCE_PROXY_TTL",
        "PKCE_PROXY_CONFIG",
        "PKCE_PROXY_LISTEN",
        "PKCE_PROXY_MAX_CONNECTIONS",
        "PKCE_PROXY_MAX_IDLE_UPSTREAM_CONNECTIONS",
        "PKCE_PROXY_BODY_TIMEOUT",
        "PKCE_PROXY_H2_MAX_CONCURRENT_STREAMS",
        "PKCE_PROXY_STORE",
        "PKCE_PROXY_REDIS_CA",
        "PKCE_PROXY_REDIS_CLIENT_CERT",
        "PKCE_PROXY_REDIS_CLIENT_KEY",
        "PKCE_PROXY_TLS_CERT",
        "PKCE_PROXY_TLS_KEY",
    ] {
        if !env.iter().any(|(k, _)| k == &var) {
            cmd.env_remove(var);
        }
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_config_exits_64_with_one_line_naming_the_setting() {
    for (args, env, setting) in [
        (vec![], vec![], "--upstream"),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--ttl", "0"],
            vec![],
            "--ttl",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1"],
            vec![("PKCE_PROXY_TTL", "soon")],
            "--ttl",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--listen", "nowhere"],
            vec![],
            "--listen",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--no-such-flag"],
            vec![],
            "--no-such-flag",
        ),
        (vec!["--upstream", "gopher://x"], vec![], "--upstream"),
        (
            vec![
                "--upstream",
                "https://127.0.0.1:1",
                "--upstream-ca",
                "/nonexistent/ca.pem",
            ],
            vec![],
            "--upstream-ca",
        ),
        (
            vec!["--upstream", "https://127.0.0.1:1"],
            vec![("PKCE_PROXY_UPSTREAM_CLIENT_KEY", "/nonexistent/key.pem")],
            "--upstream-client-key",
        ),
    ] {
        let out = run(&args, &env);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?} {env:?}: {}",
            stderr(&out)
        );
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(setting), "{setting} in {err}");
    }
}

#[test]
fn limits_out_of_bounds_exit_64_naming_the_setting() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.toml");
    std::fs::write(
        &file,
        "upstream = \"http://127.0.0.1:1\"\nrequest_buffer = 0\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let up = "http://127.0.0.1:1";
    for (args, env, setting) in [
        (
            vec!["--upstream", up, "--max-connections", "0"],
            vec![],
            "--max-connections",
        ),
        (
            vec!["--upstream", up],
            vec![("PKCE_PROXY_MAX_CONNECTIONS", "5000000")],
            "--max-connections",
        ),
        (
            vec!["--upstream", up, "--max-upstream-connections", "0"],
            vec![],
            "--max-upstream-connections",
        ),
        (
            vec![
                "--upstream",
                up,
                "--max-upstream-connections",
                "10",
                "--max-upstream-connections-per-client",
                "11",
            ],
            vec![],
            "--max-upstream-connections-per-client",
        ),
        (
            vec!["--upstream", up],
            vec![("PKCE_PROXY_MAX_IDLE_UPSTREAM_CONNECTIONS", "0")],
            "--max-idle-upstream-connections",
        ),
        (
            vec!["--upstream", up, "--upstream-idle-timeout", "0"],
            vec![],
            "--upstream-idle-timeout",
        ),
        (
            vec!["--upstream", up, "--head-timeout", "0"],
            vec![],
            "--head-timeout",
        ),
        (
            vec!["--upstream", up],
            vec![("PKCE_PROXY_BODY_TIMEOUT", "86400")],
            "--body-timeout",
        ),
        (
            vec!["--upstream", up, "--send-timeout", "0"],
            vec![],
            "--send-timeout",
        ),
        (vec!["--config", path], vec![], "--request-buffer"),
        (
            vec![
                "--upstream",
                up,
                "--request-buffer",
                "4096",
                "--request-buffer-total",
                "4095",
            ],
            vec![],
            "--request-buffer-total",
        ),
        (
            vec!["--upstream", up, "--h2-idle-timeout", "0"],
            vec![],
            "--h2-idle-timeout",
        ),
        (
            vec!["--upstream", up, "--h2-keepalive-interval", "0"],
            vec![],
            "--h2-keepalive-interval",
        ),
        (
            vec!["--upstream", up, "--h2-keepalive-timeout", "0"],
            vec![],
            "--h2-keepalive-timeout",
        ),
        (
            vec!["--upstream", up, "--h2-max-header-list-size", "10"],
            vec![],
            "--h2-max-header-list-size",
        ),
        (
            vec!["--upstream", up],
            vec![("PKCE_PROXY_H2_MAX_CONCURRENT_STREAMS", "0")],
            "--h2-max-concurrent-streams",
        ),
    ] {
        let out = run(&args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(setting), "{setting} in {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_redis_ca_exits_64_naming_it_before_listening() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-redis-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    let missing = dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let up = "http://127.0.0.1:1";
    // The listener's port is taken by this test: had the proxy gone on to
    // listen, it would fail there instead, with another exit code.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    for (args, env, why) in [
        (
            vec!["--store", "rediss://127.0.0.1:1/0", "--redis-ca", not_pem],
            vec![],
            "CERTIFICATE",
        ),
        (
            vec!["--store", "rediss://127.0.0.1:1/0"],
            vec![("PKCE_PROXY_REDIS_CA", missing)],
            "cannot read",
        ),
        (
            vec!["--store", "redis://127.0.0.1:1/0", "--redis-ca", not_pem],
            vec![],
            "rediss://",
        ),
    ] {
        let mut all = vec!["--upstream", up, "--listen", &listen];
        all.extend_from_slice(&args);
        let out = run(&all, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains("--redis-ca") && err.contains(why), "{err}");
    }
    drop(taken);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreadable_system_store_stops_tls_to_redis_at_start() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-ssl-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let args = [
        "check",
        "--upstream",
        "http://127.0.0.1:1",
        "--store",
        "rediss://127.0.0.1:1/0",
        "--redis-ca",
        ca_file.to_str().unwrap(),
    ];
    let out = run(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let missing = dir.join("no-such-bundle.pem");
    let out = run(&args, &[("SSL_CERT_FILE", missing.to_str().unwrap())]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--store") && err.contains("SSL_CERT_FILE"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flag_beats_env_beats_file() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.toml");
    std::fs::write(
        &file,
        "upstream = \"http://file.example\"\nttl = 100\nlisten = \"127.0.0.1:7000\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["check", "--config", path];
        all.extend_from_slice(args);
        let out = run(&all, env);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let from_file = check(&[], &[]);
    assert!(
        from_file.contains("ttl = 100") && from_file.contains("http://file.example"),
        "{from_file}"
    );
    let from_env = check(&[], &[("PKCE_PROXY_TTL", "200")]);
    assert!(from_env.contains("ttl = 200"), "{from_env}");
    let from_flag = check(&["--ttl", "300"], &[("PKCE_PROXY_TTL", "200")]);
    assert!(from_flag.contains("ttl = 300"), "{from_flag}");
    assert!(from_flag.contains("listen = \"127.0.0.1:7000\""));
    assert!(
        from_flag.contains("max_entries = 1000000"),
        "defaults fill the rest"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pair_prints_a_matching_verifier_and_challenge() {
    let out = run(&["pair"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        tower_pkce::s256(get("code_verifier")),
        get("code_challenge")
    );
}

#[test]
fn demo_walks_the_flow_and_exits_0() {
    let out = run(&["demo"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for step in [
        "refused by the proxy",
        "challenge recorded",
        "code is bound",
        "wrong verifier -> 400",
        "right verifier -> 200",
        "reached the server: 1 of 3",
    ] {
        assert!(text.contains(step), "{step} in {text}");
    }
}

#[test]
fn sigterm_stops_the_proxy_with_exit_0() {
    // start_proxy waits for the "listening" line, which names the bound
    // addresses.
    let mut proxy = start_proxy("http://127.0.0.1:1");
    assert!(proxy.addr.starts_with("127.0.0.1:"), "{}", proxy.addr);
    let status = Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = proxy.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// A self-signed certificate for localhost and its key, PEM.
fn self_signed() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

#[test]
fn a_bad_listener_certificate_or_key_exits_64_naming_the_setting() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cert = write("a.crt", &cert);
    let key = write("a.key", &key);
    let other_key = write("b.key", &other_key);
    let text = write("text.crt", "not a certificate\n");
    let missing = dir.join("missing.crt").to_str().unwrap().to_owned();
    let up = "http://127.0.0.1:1";
    for (tls, setting, why) in [
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            "--tls-key",
            "not the key of the certificate",
        ),
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            "--tls-cert",
            "cannot read it",
        ),
        (
            vec!["--tls-cert", &text, "--tls-key", &key],
            "--tls-cert",
            "no CERTIFICATE",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &cert],
            "--tls-key",
            "no PRIVATE KEY",
        ),
        (vec!["--tls-cert", &cert], "--tls-key", "both or neither"),
        (vec!["--tls-key", &key], "--tls-cert", "both or neither"),
    ] {
        // The listen address is taken: a port bound first would fail
        // differently (exit 1).
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let mut args = vec!["--upstream", up, "--listen", &listen];
        args.extend_from_slice(&tls);
        let out = run(&args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(&format!("invalid setting {setting}: ")) && err.contains(why),
            "{setting}, {why} in {err}"
        );
    }
    // The same from the environment, and `check` reads the files too.
    let out = run(
        &["check", "--upstream", up],
        &[
            ("PKCE_PROXY_TLS_CERT", cert.as_str()),
            ("PKCE_PROXY_TLS_KEY", other_key.as_str()),
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tls-key"), "{}", stderr(&out));
    let out = run(
        &[
            "check",
            "--upstream",
            up,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("tls_cert = {cert:?}")),
        "{printed}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_reads_the_certificate_again_and_does_not_stop_the_proxy() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("l.crt"), dir.join("l.key"));
    let (cert_pem, key_pem) = self_signed();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pkce-proxy"))
        .args(["--upstream", "http://127.0.0.1:1"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env_remove("PKCE_PROXY_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr) {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |what: &str| loop {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {what:?}: {e}"),
        }
    };
    wait_for("listening");
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let (cert_pem, key_pem) = self_signed();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    signal("-HUP");
    wait_for("TLS certificate reloaded");
    signal("-HUP");
    // Unchanged: nothing to reload, and still running.
    wait_for("SIGHUP");
    signal("-TERM");
    wait_for("stopped");
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn probe_exits_0_on_2xx_and_1_otherwise() {
    // An upstream that accepts connections, so that /readyz can pass.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ready = start_proxy(&format!("http://{}", upstream.local_addr().unwrap()));
    let unready = start_proxy("http://127.0.0.1:1");
    let admin = ready.admin.clone();
    let unready_admin = &unready.admin;

    let out = run(&["probe", &format!("http://{admin}/healthz")], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200"));
    let out = run(&["probe", &format!("http://{admin}/readyz")], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The upstream cannot be reached: /readyz answers 503.
    let out = run(&["probe", &format!("http://{unready_admin}/readyz")], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 503"));
    let out = run(&["probe", &format!("http://{admin}/no-such-page")], &[]);
    assert_eq!(out.status.code(), Some(1));

    drop((ready, unready));
    // Nothing listens there any more.
    let out = run(&["probe", &format!("http://{admin}/healthz")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn probe_gives_up_at_its_timeout_and_refuses_what_it_cannot_ask() {
    // Accepts the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/readyz", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = run(&["probe", "--timeout", "0.5", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no answer within"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    for (args, says) in [
        (
            vec!["probe", "https://127.0.0.1:9901/readyz"],
            "only http://",
        ),
        (vec!["probe", "not a url"], "URL"),
        (vec!["probe", "--timeout", "0", &url], "--timeout"),
    ] {
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(says) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

//! The Dockerfile, the systemd unit and the Kubernetes example hold only
//! settings the binary takes, and their health checks work.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod running;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use running::start_proxy;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// Runs the binary with `env` and no other `PKCE_PROXY_` variable.
fn run(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pkce-proxy"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PKCE_PROXY_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.output().unwrap()
}

/// `check` with these settings passes; its output.
fn check(args: &[&str], env: &[(String, String)]) -> String {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out = run(&all, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check {args:?} {env:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The variables are settings, and with `args` the proxy listens on every
/// address: 8443 for clients, 9901 for the admin listener.
fn check_listens_on_all_addresses(args: &[&str], env: &[(String, String)]) {
    assert_known(env);
    let resolved = check(args, env);
    for line in [
        "listen = \"0.0.0.0:8443\"",
        "admin_listen = \"0.0.0.0:9901\"",
    ] {
        assert!(resolved.lines().any(|l| l == line), "{line} in {resolved}");
    }
}

/// Every variable is one the binary reads (`--help` names each).
fn assert_known(env: &[(String, String)]) {
    let help = String::from_utf8(run(&["--help"], &[]).stdout).unwrap();
    for (k, _) in env {
        assert!(help.contains(&format!("[env: {k}=")), "{k} is no setting");
    }
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(line);
                let (op, rest) = pending.split_once(' ').unwrap();
                out.push((op.to_owned(), rest.trim().to_owned()));
                pending.clear();
            }
        }
    }
    out
}

fn json_args(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap()
}

#[test]
fn the_dockerfile_runs_the_proxy_on_all_addresses_with_a_working_health_check() {
    let file = dockerfile();
    let all = |op: &str| -> Vec<&str> {
        file.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(all("FROM").len(), 2, "a builder and a runtime");
    assert!(all("RUN")[0].contains("cargo build --release --locked -p pkce-proxy"));
    let user = all("USER")[0];
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );

    let mut env = Vec::new();
    for value in all("ENV") {
        for pair in value.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap();
            env.push((k.to_owned(), v.to_owned()));
        }
    }
    env.push(("PKCE_PROXY_UPSTREAM".into(), "http://127.0.0.1:8080".into()));
    let entrypoint = json_args(all("ENTRYPOINT")[0]);
    let args: Vec<&str> = entrypoint[1..].iter().map(String::as_str).collect();
    check_listens_on_all_addresses(&args, &env);
    let exposed: Vec<&str> = all("EXPOSE")[0].split_whitespace().collect();
    assert_eq!(exposed, ["8443", "9901"]);

    let health = all("HEALTHCHECK")[0];
    let probe = json_args(health.split_once("CMD ").unwrap().1);
    assert_eq!(probe[0], entrypoint[0], "the health check runs the binary");
    assert_eq!(probe[1], "probe");
    let url = probe.last().unwrap();
    assert_eq!(url, "http://127.0.0.1:9901/readyz");

    // The same probe against a proxy whose upstream accepts connections.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = start_proxy(&format!("http://{}", upstream.local_addr().unwrap()));
    let mut args: Vec<String> = probe[1..].to_vec();
    *args.last_mut().unwrap() = url.replace("127.0.0.1:9901", &proxy.admin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, &[]);
    drop(proxy);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = read("packaging/systemd/pkce-proxy.service");
    let mut section = "";
    let mut keys: Vec<(String, &str, &str)> = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name;
            continue;
        }
        let (k, v) = line.split_once('=').expect(line);
        keys.push((section.to_owned(), k, v));
    }
    let get = |key: &str| -> Vec<&str> {
        keys.iter()
            .filter(|(s, k, _)| s == "Service" && *k == key)
            .map(|(_, _, v)| *v)
            .collect()
    };
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
        ("DynamicUser", "yes"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert!(get(key).contains(&value), "{key}={value}");
    }

    // The command line is one the binary takes, with a file of its own.
    let exec = get("ExecStart")[0];
    let mut words = exec.split_whitespace();
    let binary = words.next().unwrap();
    let dir = std::env::temp_dir().join(format!("pkce-proxy-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pkce-proxy.toml");
    std::fs::write(&config, "upstream = \"http://127.0.0.1:8080\"\n").unwrap();
    let args: Vec<String> = words
        .map(|w| match w {
            "/etc/pkce-proxy/pkce-proxy.toml" => config.to_str().unwrap().to_owned(),
            _ => w.to_owned(),
        })
        .collect();
    assert!(args.iter().any(|a| a == config.to_str().unwrap()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    check(&args, &[]);

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit was not verified");
        return;
    };
    assert!(version.status.success());
    // verify wants the ExecStart binary to exist: point it at the one built.
    let copy = dir.join("pkce-proxy.service");
    std::fs::write(
        &copy,
        unit.replace(binary, env!("CARGO_BIN_EXE_pkce-proxy")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_kubernetes_example_probes_the_admin_port_and_runs_locked_down() {
    let text = read("packaging/kubernetes/sidecar.yaml");
    assert!(!text.contains('\t'), "YAML indents with spaces");
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| field(d, "kind").unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["Deployment", "Service"]);
    for doc in &docs {
        assert!(field(doc, "apiVersion").is_some());
    }

    // The proxy's container: the last one, with every line after its name.
    let proxy = text
        .split("- name: pkce-proxy\n")
        .nth(1)
        .unwrap()
        .split("\n---\n")
        .next()
        .unwrap();
    let mut env = Vec::new();
    let mut lines = proxy.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix("- name: PKCE_PROXY_") {
            let value = lines.next().unwrap().strip_prefix("value: ").unwrap();
            env.push((format!("PKCE_PROXY_{name}"), value.to_owned()));
        }
    }
    check_listens_on_all_addresses(&[], &env);
    for wanted in [
        "containerPort: 8443",
        "containerPort: 9901",
        "readinessProbe:\n            httpGet:\n              path: /readyz\n              port: admin",
        "livenessProbe:\n            httpGet:\n              path: /healthz\n              port: admin",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "limits:\n              memory:",
    ] {
        assert!(proxy.contains(wanted), "{wanted}");
    }
    assert!(text.contains("runAsNonRoot: true"));
    assert!(
        docs[1].contains("targetPort: http"),
        "the Service sends to the proxy"
    );

    match Command::new("python3")
        .args([
            "-c",
            "import sys, yaml; list(yaml.safe_load_all(sys.stdin))",
        ])
        .stdin(std::fs::File::open(root().join("packaging/kubernetes/sidecar.yaml")).unwrap())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            if said.contains("No module named 'yaml'") {
                eprintln!("python3 has no yaml module: parsed by structure only");
            } else {
                panic!("sidecar.yaml does not parse: {said}");
            }
        }
        Err(_) => eprintln!("python3 is not installed: parsed by structure only"),
    }
}

/// The value of a top-level `key: value` line.
fn field<'a>(doc: &'a str, key: &str) -> Option<&'a str> {
    doc.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .map(str::trim)
}

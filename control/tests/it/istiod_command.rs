//! The istiod binary's command line: `--help`, one-line errors, `explain` (the decision for
//! a connection or request from the configuration alone), and draining on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ISTIOD: &str = env!("CARGO_BIN_EXE_istiod");

fn istiod(args: &[&str]) -> std::process::Output {
    Command::new(ISTIOD)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

/// The waypoint example cluster, plus: only web may GET `/api/*` on echo (at the waypoint,
/// attached to the Service), and echo's ztunnel admits only the waypoint's identity.
fn config_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("istiod-explain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/waypoint/cluster.yaml");
    std::fs::copy(example, dir.join("cluster.yaml")).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-waypoint, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/waypoint"]}}]
"#,
    )
    .unwrap();
    dir
}

#[test]
fn help_answers_usage_and_errors_are_one_line() {
    let help = istiod(&["--help"]);
    assert!(help.status.success(), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: istiod"));
    assert!(String::from_utf8_lossy(&help.stdout).contains("istiod explain"));
    let bad = istiod(&["--bogus"]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.starts_with("istiod: unknown argument \"--bogus\""),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn explain_names_the_hop_policy_rule_and_attribute() {
    let dir = config_dir();
    let d = dir.to_str().unwrap();
    let denied = istiod(&[
        "explain",
        "--config-dir",
        d,
        "--from",
        "shop/web-0",
        "--to",
        "echo.shop:80",
        "--method",
        "POST",
        "--path",
        "/api/items",
    ]);
    assert!(denied.status.success(), "{denied:?}");
    let text = String::from_utf8_lossy(&denied.stdout);
    assert!(
        text.starts_with("DENIED: 403 RBAC: access denied (waypoint shop/waypoint)"),
        "{text}"
    );
    assert!(
        text.contains("rules[0].to[0].methods: \"POST\" not in [\"GET\"]"),
        "{text}"
    );
    let allowed = istiod(&[
        "explain",
        "--config-dir",
        d,
        "--from",
        "shop/web-0",
        "--to",
        "echo.shop:80",
        "--path",
        "/api/items",
        "--json",
    ]);
    let answer: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(answer["allowed"], true, "{answer}");
    let hops = answer["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 2, "{answer}");
    assert_eq!(hops[0]["component"], "waypoint shop/waypoint");
    // Behind the waypoint, echo's ztunnel sees the waypoint, not web (policy-semantics §1).
    assert_eq!(hops[1]["source"], "cluster.local/ns/shop/sa/waypoint");
    assert_eq!(hops[1]["reason"], "allowed by shop/only-waypoint rule 0");
    let unknown = istiod(&[
        "explain",
        "--config-dir",
        d,
        "--from",
        "shop/nobody",
        "--to",
        "echo.shop:80",
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr).trim(),
        "istiod: --from shop/nobody: no such pod in the configuration"
    );
    for (args, said) in [
        (
            &["--from", "web-0", "--to", "echo.shop:80"][..],
            "--from \"web-0\": expected namespace/pod",
        ),
        (
            &["--from", "shop/web-0", "--to", "echo.shop"][..],
            "--to \"echo.shop\": expected host:port",
        ),
        (
            &["--from", "shop/web-0", "--to", "nothing.here:80"][..],
            "--to nothing.here:80: no Service or pod has that name or address",
        ),
        (
            &[
                "--from",
                "shop/web-0",
                "--to",
                "echo.shop:80",
                "--header",
                "no-colon",
            ][..],
            "--header \"no-colon\": expected NAME:VALUE",
        ),
    ] {
        let mut all = vec!["explain", "--config-dir", d];
        all.extend_from_slice(args);
        let out = istiod(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_drains_and_exits() {
    let mut child = Command::new(ISTIOD)
        .args([
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            "0",
            "--config-dir",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/waypoint"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A watchdog: if istiod is still running after 30 s it is killed and the test ends;
    // once the test has reaped it, the watchdog stands down (its pid may be reused).
    let pid = child.id().to_string();
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("istiod serving xDS and the CA"));
    assert!(serving, "istiod never served");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    let _ = done.send(());
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM; draining")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("drained; exiting")),
        "{rest:?}"
    );
}

#[test]
fn rotate_root_walks_the_phases_and_a_restart_keeps_the_pending_root() {
    let dir = std::env::temp_dir().join(format!("istiod-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = dir.to_str().unwrap();
    let step = |args: &[&str]| {
        let out = istiod(&[&["rotate-root"], args, &["--state-dir", state]].concat());
        let text = String::from_utf8_lossy(if out.status.success() {
            &out.stdout
        } else {
            &out.stderr
        })
        .into_owned();
        (out.status.success(), text)
    };

    let (ok, text) = step(&["status"]);
    assert!(ok && text.starts_with("no rotation"), "{text}");
    let (ok, text) = step(&["begin", "--activate-after", "1h", "--overlap", "2h"]);
    assert!(ok && text.starts_with("trusting:"), "{text}");
    let next = std::fs::read_to_string(dir.join("next-root-cert.pem")).unwrap();
    let base = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    // A later run (as after a restart) finds the same pending root.
    let (ok, text) = step(&["status"]);
    assert!(ok && text.starts_with("trusting:"), "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.join("next-root-cert.pem")).unwrap(),
        next
    );
    let (ok, text) = step(&["begin"]);
    assert!(!ok && text.contains("already in progress"), "{text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text}");
    let (ok, text) = step(&["finish"]);
    assert!(!ok && text.contains("does not sign yet"), "{text}");

    let (ok, text) = step(&["advance"]);
    assert!(ok && text.starts_with("signing:"), "{text}");
    let (ok, text) = step(&["advance"]);
    assert!(ok && text.starts_with("retired:"), "{text}");
    let (ok, text) = step(&["finish"]);
    assert!(ok && text.starts_with("no rotation"), "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.join("root-cert.pem")).unwrap(),
        next
    );
    assert_ne!(base, next);
    assert!(!dir.join("next-root-cert.pem").exists());

    let (ok, text) = step(&["sideways"]);
    assert!(
        !ok && text.contains("begin, advance, finish or status"),
        "{text}"
    );
    let out = istiod(&["rotate-root", "status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state-dir"));
    std::fs::remove_dir_all(&dir).unwrap();
}

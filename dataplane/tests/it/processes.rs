//! The real `ztunnel` binary: two processes on loopback carry HBONE traffic; a malformed
//! local config stops the process before it serves anything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ztunnel");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ztunnel-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed when the test ends, whatever happens.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, node: &str, listen: std::net::IpAddr, log: &str) -> Proc {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Proc(
        Command::new(BIN)
            .arg("proxy")
            .env("NODE_NAME", node)
            .env("LISTEN_IP", listen.to_string())
            .env("UNSTABLE_ENABLE_SOCKS5", "true")
            .env("LOCAL_XDS_PATH", dir.join("config.yaml"))
            .env("LOCAL_CA_DIR", dir.join("ca"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn wait_ready(addr: SocketAddr) {
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::AsyncWriteExt;
            let _ = s
                .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ztunnel at {addr} never became ready");
}

#[tokio::test]
async fn two_ztunnel_processes_carry_hbone() {
    let net = subnet();
    let dir = temp_dir("pair");
    std::fs::write(dir.join("config.yaml"), topology_yaml(net, "")).unwrap();
    let status = Command::new(BIN)
        .args(["gen-ca", dir.join("ca").to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    echo_server(SocketAddr::new(ip(net, 3), ECHO_PORT)).await;
    let _a = spawn(&dir, "node-a", ip(net, 2), "a.log");
    let b = spawn(&dir, "node-b", ip(net, 3), "b.log");
    wait_ready(SocketAddr::new(ip(net, 2), 15021)).await;
    wait_ready(SocketAddr::new(ip(net, 3), 15021)).await;

    let (code, stream) = socks5(
        SocketAddr::new(ip(net, 2), 15080),
        ip(net, 2),
        SocketAddr::new(ip(net, 3), ECHO_PORT),
    )
    .await;
    assert_eq!(code, 0);
    let mut s = stream.unwrap();
    assert_eq!(
        round_trip(&mut s, b"across processes").await.unwrap(),
        b"across processes"
    );
    drop(s);

    // The server process logs the client's SPIFFE identity in its access log.
    let mut found = String::new();
    for _ in 0..100 {
        let log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("\taccess\tconnection complete\t"))
        {
            found = line.to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        found.contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/web\"")
            && found.contains("direction=\"inbound\""),
        "server access log: {found:?}"
    );
    let log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
    assert!(log.contains("\tztunnel ready\t"), "{log}");
    // /quitquitquit drains and exits cleanly
    let (status, _) = http(SocketAddr::new(ip(net, 3), 15000), "POST", "/quitquitquit").await;
    assert_eq!(status, 200);
    let mut b = b;
    let mut exited = None;
    for _ in 0..100 {
        if let Some(code) = b.0.try_wait().unwrap() {
            exited = Some(code);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited.is_some_and(|c| c.success()), "exit: {exited:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_local_config_stops_startup_naming_the_field() {
    let net = subnet();
    let dir = temp_dir("bad-config");
    let bad = topology_yaml(net, "").replace("workloadName: web", "workloadNmae: web");
    std::fs::write(dir.join("config.yaml"), bad).unwrap();
    let out = Command::new(BIN)
        .arg("proxy")
        .env("LISTEN_IP", ip(net, 2).to_string())
        .env("LOCAL_XDS_PATH", dir.join("config.yaml"))
        .env("LOCAL_CA_DIR", dir.join("missing-ca"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("workloadNmae") && stderr.contains("line"),
        "{stderr}"
    );
    // it stopped before serving anything: never ready
    assert!(!stderr.contains("ztunnel ready"), "{stderr}");

    let bad_ip =
        topology_yaml(net, "").replacen(&format!("[\"{}\"]", ip(net, 2)), "[\"10.0.0.x\"]", 1);
    std::fs::write(dir.join("config.yaml"), bad_ip).unwrap();
    let out = Command::new(BIN)
        .arg("proxy")
        .env("LOCAL_XDS_PATH", dir.join("config.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("workloadIps[0]") && stderr.contains("10.0.0.x"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_readme_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-nodes.yaml");
    let config = dataplane::localconfig::LocalConfig::load(&path).unwrap();
    assert_eq!(config.workloads.len(), 2);
    assert_eq!(config.services[0].hostname, "echo.shop.svc.cluster.local");
    assert_eq!(config.policies[0].key(), "shop/echo-from-web");
}

#[test]
fn every_binary_answers_help_and_errors_in_one_line() {
    for bin in [BIN, env!("CARGO_BIN_EXE_waypoint")] {
        let help = Command::new(bin)
            .arg("--help")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert!(help.status.success(), "{bin} --help: {help:?}");
        assert!(
            String::from_utf8_lossy(&help.stdout).starts_with("usage: "),
            "{help:?}"
        );
        let bad = Command::new(bin)
            .arg("no-such-command")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(1), "{bad:?}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(
            stderr.contains("unknown command \"no-such-command\""),
            "{stderr}"
        );
        assert!(!stderr.contains("stack backtrace"), "{stderr}");
    }
}

#[test]
fn a_bad_worker_thread_count_is_refused_by_name() {
    for value in ["0", "many", "100000"] {
        let out = Command::new(BIN)
            .arg("proxy")
            .env("ZTUNNEL_WORKER_THREADS", value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{value}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("ZTUNNEL_WORKER_THREADS=\"{value}\"")),
            "{stderr}"
        );
    }
}

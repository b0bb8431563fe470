//! The real binaries: `istiod --config-dir` with a state directory, tokens from
//! `istiod --issue-token`, and two `ztunnel` processes with no local config, fed only by it,
//! carrying traffic end to end under the policy the manifests state.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const ISTIOD: &str = env!("CARGO_BIN_EXE_istiod");

/// The ztunnel binary, built next to istiod by `cargo test --workspace`.
fn ztunnel_bin() -> PathBuf {
    Path::new(ISTIOD).with_file_name("ztunnel")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("istiod-it-{name}-{}", std::process::id()));
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

/// What a user would `kubectl apply`: web and echo pinned to two nodes with loopback IPs, the
/// echo Service, and a policy letting only web call echo.
fn manifests(net: [u8; 3], allowed: &str) -> String {
    let (web, echo, vip) = (ip(net, 2), ip(net, 3), ip(net, 100));
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {{app: web}}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{{name: web, image: curl}}]
status:
  phase: Running
  podIP: {web}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-0
  namespace: shop
  labels: {{app: echo}}
spec:
  nodeName: node-b
  serviceAccountName: echo
  containers: [{{name: echo, image: echo, ports: [{{containerPort: {ECHO_PORT}}}]}}]
status:
  phase: Running
  podIP: {echo}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: shop
spec:
  clusterIP: {vip}
  selector: {{app: echo}}
  ports: [{{port: 80, targetPort: {ECHO_PORT}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-policy
  namespace: shop
spec:
  selector:
    matchLabels: {{app: echo}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["{allowed}"]
"#
    )
}

fn issue_token(state: &Path, node: &str) -> String {
    let out = Command::new(ISTIOD)
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "--issue-token",
            node,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn spawn_ztunnel(dir: &Path, net: [u8; 3], node: &str, listen: IpAddr, token: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{node}.log"))).unwrap();
    let address = format!("https://{}:15012", ip(net, 1));
    let root = dir.join("root-cert.pem");
    Proc(
        Command::new(ztunnel_bin())
            .env("NODE_NAME", node)
            .env("POD_NAME", format!("ztunnel-{node}"))
            .env("POD_NAMESPACE", "istio-system")
            .env("INSTANCE_IP", listen.to_string())
            .env("LISTEN_IP", listen.to_string())
            .env("UNSTABLE_ENABLE_SOCKS5", "true")
            .env("XDS_ADDRESS", &address)
            .env("CA_ADDRESS", &address)
            .env("XDS_ROOT_CA", &root)
            .env("CA_ROOT_CA", &root)
            .env("AUTH_TOKEN", token)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let _ = s
        .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.1 200")
}

async fn wait_ready(addr: SocketAddr, dir: &Path) {
    for _ in 0..300 {
        if ready(addr).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs: Vec<String> = ["istiod.log", "node-a.log", "node-b.log"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect();
    panic!(
        "ztunnel at {addr} never became ready; logs:\n{}",
        logs.join("\n---\n")
    );
}

async fn through_mesh(net: [u8; 3]) -> bool {
    let socks = SocketAddr::new(ip(net, 2), 15080);
    let vip = SocketAddr::new(ip(net, 100), 80);
    match socks5(socks, ip(net, 2), vip).await {
        (0, Some(mut s)) => round_trip(&mut s, b"hello")
            .await
            .is_ok_and(|b| b == b"hello"),
        _ => false,
    }
}

#[tokio::test]
async fn istiod_and_two_ztunnel_processes_carry_traffic_from_manifests() {
    let net = subnet();
    let dir = temp_dir("processes");
    let state = dir.join("state");
    std::fs::write(
        dir.join("cluster.yaml"),
        manifests(net, "cluster.local/ns/shop/sa/web"),
    )
    .unwrap();

    // `--check` accepts the manifests without serving.
    let check = Command::new(ISTIOD)
        .args([
            "--config-dir",
            dir.join("cluster.yaml").to_str().unwrap(),
            "--check",
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Tokens come from the state directory the serving istiod will use.
    let a_token = issue_token(&state, "node-a");
    let b_token = issue_token(&state, "node-b");
    let log = std::fs::File::create(dir.join("istiod.log")).unwrap();
    let _istiod = Proc(
        Command::new(ISTIOD)
            .args(["--config-dir", dir.join("cluster.yaml").to_str().unwrap()])
            .args(["--state-dir", state.to_str().unwrap()])
            .args(["--listen", &ip(net, 1).to_string()])
            .args(["--config-poll", "100ms"])
            .args([
                "--write-root-cert",
                dir.join("root-cert.pem").to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    for _ in 0..200 {
        if dir.join("root-cert.pem").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    echo_server(SocketAddr::new(ip(net, 3), ECHO_PORT)).await;
    let _a = spawn_ztunnel(&dir, net, "node-a", ip(net, 2), &a_token);
    let _b = spawn_ztunnel(&dir, net, "node-b", ip(net, 3), &b_token);
    wait_ready(SocketAddr::new(ip(net, 2), 15021), &dir).await;
    wait_ready(SocketAddr::new(ip(net, 3), 15021), &dir).await;

    let mut ok = false;
    for _ in 0..100 {
        if through_mesh(net).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "web could not reach echo through the mesh");
    // The access log line is written when the connection closes.
    let mut server_log = String::new();
    for _ in 0..100 {
        server_log = std::fs::read_to_string(dir.join("node-b.log")).unwrap();
        if server_log.contains("connection complete") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server_log.contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/web\""),
        "the server side logs the verified client identity:\n{server_log}"
    );

    // The served file is watched: an edit changes the mesh without a restart.
    let edit = |text: String| {
        let staged = dir.join("cluster.yaml.staged");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, dir.join("cluster.yaml")).unwrap();
    };
    edit(manifests(net, "cluster.local/ns/shop/sa/nobody"));
    assert!(
        until(|| async { !through_mesh(net).await }).await,
        "web was still let through after the policy was edited to allow nobody"
    );
    // A malformed edit is refused, and the last good configuration goes on being served.
    edit(format!(
        "{}---\nkind: [unclosed\n",
        manifests(net, "cluster.local/ns/shop/sa/web")
    ));
    let istiod_log = dir.join("istiod.log");
    assert!(
        until(|| async {
            std::fs::read_to_string(&istiod_log)
                .unwrap_or_default()
                .contains("configuration not reloaded")
        })
        .await,
        "istiod did not say it refused the malformed edit"
    );
    assert!(!through_mesh(net).await, "a refused edit changed the mesh");
    edit(manifests(net, "cluster.local/ns/shop/sa/web"));
    assert!(
        until(|| through_mesh(net)).await,
        "web was not let through again after the fixed edit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `check` comes true within 10 s, asked every 50 ms.
async fn until<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    for _ in 0..200 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn check_names_the_bad_object_and_field() {
    let dir = temp_dir("check");
    let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: default\nspec:\n  action: ALLOW\n  rulez: []\n";
    std::fs::write(dir.join("bad.yaml"), bad).unwrap();
    let out = Command::new(ISTIOD)
        .args(["--config-dir", dir.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(stderr.contains("default/p"), "{stderr}");
    assert!(stderr.contains("rulez"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn check_counts_the_manifests_and_names_what_it_generated() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/waypoint");
    let out = Command::new(ISTIOD)
        .args(["--config-dir", example.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok: 9 objects; 3 generated for waypoints: ServiceAccount shop/waypoint, \
         Service shop/waypoint, Deployment shop/waypoint"
    );
}

#[tokio::test]
async fn check_accepts_the_fault_injection_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fault-injection.yaml");
    let out = Command::new(ISTIOD)
        .args(["--config-dir", example.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok: 11 objects;"), "{stdout}");
}

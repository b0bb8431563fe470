//! In-pod capture on a real kernel: a ztunnel handed two pods over ZDS opens its listeners
//! inside their network namespaces, and a plain `connect` from one pod to the other — nothing
//! in the application knows the mesh — is captured by the pod's rules and carried over HBONE.
//!
//! The test plays the node agent (ZDS server, nft rules) and runs the ztunnel in-process, its
//! runtime's threads started inside a "node" namespace of their own; the pods sit on a private
//! bridge. Needs root and `nft`: otherwise a `SKIP` line (a failure with
//! `REAL_COMPONENTS_REQUIRED=1`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dataplane::seams::{Seams, SystemClock};
use dataplane::zds::{PodInfo, Request, ZdsListener, ZdsServerConn};
use dataplane::ztunnel::{self, Config, LocalCaProvider};
use harness::{Lan, Netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 3);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 9);
const APP_PORT: u16 = 8080;

fn usable(test: &str) -> bool {
    let nft = std::process::Command::new("nft").arg("--version").output();
    let why = match (harness::netns::check(), nft) {
        (Err(why), _) => why,
        (Ok(()), Err(e)) => format!("`nft` not found ({e}): apt-get install -y nftables"),
        (Ok(()), Ok(_)) => return true,
    };
    harness::skip(test, &why);
    false
}

/// What the node agent installs in an enrolled pod (see `dataplane::node_agent`).
const RULES: &str = r#"
table ip ztunnel {}
delete table ip ztunnel
table ip ztunnel {
  chain prerouting {
    type nat hook prerouting priority -100;
    tcp dport 15008 accept
    iifname "lo" accept
    meta l4proto tcp redirect to :15006
  }
  chain output {
    type nat hook output priority -100;
    meta mark 0x539 accept
    ip daddr 127.0.0.0/8 accept
    meta l4proto tcp redirect to :15001
  }
}
"#;

fn install_rules(pod: &Netns) {
    let mut nft = pod.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().unwrap();
    child.stdin.take().unwrap().write_all_sync(RULES.as_bytes());
    assert!(child.wait().unwrap().success(), "nft refused the rules");
}

trait WriteAllSync {
    fn write_all_sync(self, bytes: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self, bytes).unwrap();
    }
}

fn topology() -> String {
    format!(
        r#"
workloads:
- uid: Kubernetes//Pod/shop/a-0
  name: a-0
  namespace: shop
  serviceAccount: a
  workloadIps: ["{A}"]
  protocol: HBONE
  node: node
- uid: Kubernetes//Pod/shop/b-0
  name: b-0
  namespace: shop
  serviceAccount: b
  workloadIps: ["{B}"]
  protocol: HBONE
  node: node
"#
    )
}

/// An app in `pod` answering each connection with the address it came from.
async fn app(pod: &Netns) {
    let listener = pod
        .enter(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, APP_PORT)))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let answer = format!("{}|{}", String::from_utf8_lossy(&buf[..n]), peer.ip());
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
}

/// A plain client in `pod`: its socket made in the pod's namespace, then `connect`.
async fn call(pod: &Netns, to: SocketAddr) -> std::io::Result<String> {
    let socket = pod
        .enter(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(std::net::TcpStream::from(s))
        })
        .unwrap()?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket);
    let mut s = tokio::time::timeout(Duration::from_secs(3), socket.connect(to)).await??;
    s.write_all(b"hello").await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut answer)).await??;
    if answer.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "closed without an answer",
        ));
    }
    Ok(answer)
}

fn netns_fd(pod: &Netns) -> OwnedFd {
    let path = Path::new("/run/netns").join(pod.name());
    OwnedFd::from(std::fs::File::open(path).unwrap())
}

fn add(pod: &Netns, name: &str) -> Request {
    Request::Add {
        uid: format!("uid-{name}"),
        pod: PodInfo {
            name: name.into(),
            namespace: "shop".into(),
            service_account: name.trim_end_matches("-0").into(),
        },
        netns: netns_fd(pod),
    }
}

async fn wait_ready(proxy: &ztunnel::Ztunnel) {
    for _ in 0..200 {
        if proxy.is_ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the ztunnel never became ready");
}

#[test]
fn a_plain_connect_between_pods_is_captured_and_carried_over_hbone() {
    if !usable("a_plain_connect_between_pods_is_captured_and_carried_over_hbone") {
        return;
    }
    let lan = Lan::create().unwrap();
    let node = Netns::create("node").unwrap();
    let a = Netns::create("pod-a").unwrap();
    let b = Netns::create("pod-b").unwrap();
    let outsider = Netns::create("outsider").unwrap();
    for (pod, ip) in [(&a, A), (&b, B), (&outsider, OUTSIDER)] {
        lan.attach(pod, &format!("{ip}/24")).unwrap();
    }
    install_rules(&a);
    install_rules(&b);
    let dir = std::env::temp_dir().join(format!("inpod-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("ztunnel.sock");

    let (a, b, outsider) = (&a, &b, &outsider);
    node.enter(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let agent = ZdsListener::bind(&socket).unwrap();
            let ca = common::new_ca();
            let clock: Arc<dyn dataplane::seams::Clock> = Arc::new(SystemClock);
            let config = Config {
                node_name: "node".into(),
                listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                inpod_socket: Some(socket.clone()),
                ..Config::default()
            };
            let provider = Arc::new(LocalCaProvider::new(
                dataplane::identity::LocalCa::from_pem(&ca.root_pem(), ca.key_pem()).unwrap(),
                config.certificate_ttl,
                clock.clone(),
            ));
            let proxy = ztunnel::run(config, Seams::real(7), common::state(&topology()), provider)
                .await
                .unwrap();
            assert!(!proxy.is_ready(), "not ready before the pod snapshot");
            let conn = ZdsServerConn::accept(&agent).await.unwrap();
            for request in [add(a, "a-0"), add(b, "b-0"), Request::SnapshotSent] {
                assert_eq!(conn.request(&request).await.unwrap(), Ok(()));
            }
            wait_ready(&proxy).await;
            app(b).await;

            // a → b by pod IP: captured in a, HBONE into b, delivered from inside b — so
            // the app sees b's own address, not a's.
            let answer = call(a, SocketAddr::from((B, APP_PORT))).await.unwrap();
            assert_eq!(answer, format!("hello|{B}"), "carried by the ztunnel");
            let metrics = proxy.metrics().encode();
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                        && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/a\"")
                        && l.contains(
                            "destination_principal=\"spiffe://cluster.local/ns/shop/sa/b\""
                        )),
                "the ztunnel accounted a → b:\n{metrics}"
            );

            // An unenrolled outsider's plaintext is captured by b's inbound rule (15006).
            let answer = call(outsider, SocketAddr::from((B, APP_PORT)))
                .await
                .unwrap();
            assert_eq!(answer, format!("hello|{B}"), "through 15006 (PERMISSIVE)");

            // The same namespace again is a no-op; the pod keeps being served.
            assert_eq!(conn.request(&add(b, "b-0")).await.unwrap(), Ok(()));
            assert!(call(a, SocketAddr::from((B, APP_PORT))).await.is_ok());

            // b removed: its listeners and the connections they accepted close, so a's
            // traffic to it fails at once (b's rules are the agent's to remove).
            let del = Request::Del {
                uid: "uid-b-0".into(),
            };
            assert_eq!(conn.request(&del).await.unwrap(), Ok(()));
            assert!(call(a, SocketAddr::from((B, APP_PORT))).await.is_err());

            // A new agent connection replays b only: a, not replayed, is dropped.
            drop(conn);
            let conn = ZdsServerConn::accept(&agent).await.unwrap();
            for request in [add(b, "b-0"), Request::SnapshotSent] {
                assert_eq!(conn.request(&request).await.unwrap(), Ok(()));
            }
            assert!(
                call(a, SocketAddr::from((B, APP_PORT))).await.is_err(),
                "a is no longer served: its captured connect finds no listener"
            );
            assert_eq!(
                call(outsider, SocketAddr::from((B, APP_PORT)))
                    .await
                    .unwrap(),
                format!("hello|{B}")
            );
            proxy.shutdown().await;
        });
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

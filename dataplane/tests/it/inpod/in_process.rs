//! One ztunnel in-process, handed two pods over ZDS by the test, which plays the node agent
//! (ZDS server, the agent's nft ruleset); its runtime's threads start inside a "node"
//! namespace of their own, and the pods sit on a private bridge.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dataplane::seams::{Seams, SystemClock};
use dataplane::zds::{Request, ZdsListener, ZdsServerConn};
use dataplane::ztunnel::{self, Config, LocalCaProvider};
use harness::{Lan, Netns};
use tokio::io::AsyncReadExt;

use super::*;
use crate::common;

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
            // A descriptor that is no network namespace is refused in the ack, by pod, and
            // the connection goes on.
            let bogus = Request::Add {
                uid: "uid-bogus".into(),
                pod: dataplane::zds::PodInfo {
                    name: "bogus-0".into(),
                    namespace: "shop".into(),
                    service_account: "bogus".into(),
                },
                netns: std::fs::File::open("/dev/null").unwrap().into(),
            };
            let refused = conn.request(&bogus).await.unwrap().unwrap_err();
            assert!(
                refused.contains("shop/bogus-0") && refused.contains("network namespace"),
                "{refused}"
            );
            for request in [add(a, "a-0"), add(b, "b-0"), Request::SnapshotSent] {
                assert_eq!(conn.request(&request).await.unwrap(), Ok(()));
            }
            wait_ready(&proxy).await;
            app(b).await;

            // a → b by pod IP: captured in a, HBONE into b, delivered from inside b from a's
            // own address (IP_TRANSPARENT, the agent's reply route) — the app sees a.
            let answer = call(a, SocketAddr::from((B, APP_PORT))).await.unwrap();
            assert_eq!(answer, format!("hello|{A}"), "carried by the ztunnel");
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

            // A connection b's ztunnel cannot complete (nothing listens on b's port 9) whose
            // client spoke first is reset, not ended in order: its bytes went nowhere.
            let mut closes = Vec::new();
            for _ in 0..3 {
                let closed = refused_after_speaking(a, SocketAddr::from((B, 9))).await;
                let reset =
                    matches!(&closed, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
                closes.push(closed);
                if reset {
                    break;
                }
            }
            assert!(
                closes.iter().all(|c| matches!(c, Ok(0))
                    || matches!(c, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)),
                "{closes:?}"
            );
            assert!(closes.iter().any(Result::is_err), "never reset: {closes:?}");

            // An unenrolled outsider's plaintext is captured by b's inbound rule (15006).
            let answer = call(outsider, SocketAddr::from((B, APP_PORT)))
                .await
                .unwrap();
            assert_eq!(
                answer,
                format!("hello|{OUTSIDER}"),
                "through 15006 (PERMISSIVE), delivered from the outsider's address"
            );

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
                format!("hello|{OUTSIDER}")
            );
            proxy.shutdown().await;
        });
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// How a connection from `pod` to `to` ends when its client connects and writes at once (on
/// this thread, so that the bytes are there before the ztunnel can have given up: a thread
/// preempted between the two can still lose that race, on any proxy, and then sees an
/// orderly close).
async fn refused_after_speaking(pod: &Netns, to: SocketAddr) -> std::io::Result<usize> {
    let stream = pod
        .enter(|| {
            let mut s = std::net::TcpStream::connect(to)?;
            std::io::Write::write_all(&mut s, b"hello")?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap()?;
    let mut stream = tokio::net::TcpStream::from_std(stream)?;
    let mut rest = [0u8; 8];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await {
        Ok(closed) => closed,
        Err(_) => panic!("the refused connection to {to} was left open"),
    }
}

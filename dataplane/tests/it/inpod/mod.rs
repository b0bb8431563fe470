//! In-pod capture on a real kernel: a ztunnel handed pods over ZDS opens its listeners inside
//! their network namespaces, and a plain `connect` from one pod to another — nothing in the
//! application knows the mesh — is captured by the pod's rules and carried over HBONE.
//!
//! Needs root and `nft`: otherwise a `SKIP` line (a failure with `REAL_COMPONENTS_REQUIRED=1`).

mod in_process;
mod restart;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use dataplane::zds::{PodInfo, Request};
use harness::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const A: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
pub const B: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 3);
pub const OUTSIDER: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 9);
pub const APP_PORT: u16 = 8080;

pub fn usable(test: &str) -> bool {
    let nft = std::process::Command::new("nft").arg("--version").output();
    let why = match (harness::netns::check(), nft) {
        (Err(why), _) => why,
        (Ok(()), Err(e)) => format!("`nft` not found ({e}): apt-get install -y nftables"),
        (Ok(()), Ok(_)) => return true,
    };
    harness::skip(test, &why);
    false
}

/// What the node agent installs in an enrolled pod: its rules and reply route, by the agent's
/// own code.
pub fn install_rules(pod: &Netns) {
    use dataplane::node_agent::{Nft, Redirection, open_netns};
    use std::os::fd::AsFd;
    let netns = open_netns(&std::path::Path::new("/run/netns").join(pod.name())).unwrap();
    Nft::default().install(netns.as_fd()).unwrap();
}

pub fn topology() -> String {
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

/// An app in `pod` answering every read with what it read and the address it came from.
pub async fn app(pod: &Netns) {
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
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let answer = format!("{}|{}", String::from_utf8_lossy(&buf[..n]), peer.ip());
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A plain connection from `pod`: its socket made in the pod's namespace, then `connect`.
pub async fn open(pod: &Netns, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = pod
        .enter(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(std::net::TcpStream::from(s))
        })
        .unwrap()?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket);
    tokio::time::timeout(Duration::from_secs(3), socket.connect(to)).await?
}

/// One exchange on an open connection: `hello` out, the app's answer back.
pub async fn exchange(s: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    s.write_all(b"hello").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await??;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "closed without an answer",
        ));
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A plain client in `pod`: connect, one exchange.
pub async fn call(pod: &Netns, to: SocketAddr) -> std::io::Result<String> {
    exchange(&mut open(pod, to).await?).await
}

pub fn netns_fd(pod: &Netns) -> OwnedFd {
    let path = Path::new("/run/netns").join(pod.name());
    OwnedFd::from(std::fs::File::open(path).unwrap())
}

pub fn add(pod: &Netns, name: &str) -> Request {
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

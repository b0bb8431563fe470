//! The namespaces alone, no mesh: a pod on one node reaches a pod on another by its pod IP
//! through both nodes' namespaces, unNATed, and a Service VIP through kube-proxy's DNAT; and
//! nothing of it appears in the host's namespace.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use e2e::Placement;
use e2e::topology::Topology;
use sim::Scenario;

const SCENARIO: &str = "about: t
nodes: [node-a, node-b]
cluster: |
  apiVersion: v1
  kind: Namespace
  metadata:
    name: shop
  ---
  apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: shop, labels: {app: a}}
  spec: {nodeName: node-a, containers: [{name: a, image: a}]}
  ---
  apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: shop, labels: {app: b}}
  spec: {nodeName: node-b, containers: [{name: b, image: b, ports: [{containerPort: 7000}]}]}
  ---
  apiVersion: v1
  kind: Service
  metadata: {name: b, namespace: shop}
  spec:
    selector: {app: b}
    ports: [{port: 80, targetPort: 7000}]
";

fn host_links() -> BTreeSet<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Accepts one connection on `listener` and writes back the peer's IP.
fn answer_with_peer(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(peer.ip().to_string().as_bytes()).unwrap();
    })
}

fn read_all(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = String::new();
    s.read_to_string(&mut seen).unwrap();
    seen
}

#[test]
fn pods_on_two_nodes_reach_each_other_through_their_nodes_and_nothing_touches_the_host() {
    if !common::usable("topology") {
        return;
    }
    let scenario = Scenario::parse(SCENARIO, "topology.yaml", "topology").unwrap();
    let placement = Placement::of(&scenario).unwrap();
    let a = placement.pod("shop", "a").unwrap().clone();
    let b = placement.pod("shop", "b").unwrap().clone();
    assert_eq!((a.node.as_str(), b.node.as_str()), ("node-a", "node-b"));
    assert_eq!(a.ip.to_string(), "10.244.1.2");
    assert_eq!(b.ip.to_string(), "10.244.2.2");
    let vip = placement.service("shop", "b").unwrap().vips[0];

    let before = host_links();
    let dir = std::env::temp_dir().join(format!("e2e-topology-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = Topology::build(&placement).unwrap();
    topology.install_kube_proxy(&placement, &dir).unwrap();
    let (net_a, net_b) = (
        topology.pod("shop", "a").unwrap(),
        topology.pod("shop", "b").unwrap(),
    );

    // By pod IP: the peer is a's own address (routed, not NATed, through both nodes).
    let listener = net_b
        .netns
        .enter(|| TcpListener::bind(SocketAddr::new(b.ip, 7000)))
        .unwrap()
        .unwrap();
    let server = answer_with_peer(listener.try_clone().unwrap());
    let to_b = SocketAddr::new(b.ip, 7000);
    let stream = net_a
        .netns
        .enter(|| TcpStream::connect_timeout(&to_b, Duration::from_secs(5)));
    assert_eq!(read_all(stream.unwrap().unwrap()), a.ip.to_string());
    server.join().unwrap();

    // By VIP: kube-proxy's DNAT in node-a sends it to b:7000.
    let server = answer_with_peer(listener);
    let to_vip = SocketAddr::new(vip, 80);
    let stream = net_a
        .netns
        .enter(|| TcpStream::connect_timeout(&to_vip, Duration::from_secs(5)));
    assert_eq!(read_all(stream.unwrap().unwrap()), a.ip.to_string());
    server.join().unwrap();

    // The nodes forward; the pods' namespaces hold only their veth end.
    let out = net_a
        .netns
        .command("ip")
        .args(["-o", "addr"])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&out.stdout);
    assert!(
        addrs.contains("eth0") && addrs.contains("10.244.1.2/32"),
        "{addrs}"
    );
    assert_eq!(
        host_links(),
        before,
        "links appeared in the host's namespace"
    );
    let names: Vec<String> = topology
        .pods
        .values()
        .map(|p| p.netns.name().to_string())
        .chain(topology.nodes.values().map(|n| n.netns.name().to_string()))
        .collect();
    drop(topology);
    for name in names {
        assert!(
            !std::path::Path::new("/run/netns").join(&name).exists(),
            "{name} left behind"
        );
    }
    assert_eq!(host_links(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

//! `examples/cluster/`: what istiod would publish for it.

use std::net::IpAddr;
use std::path::PathBuf;

use control::snapshot::MeshConfig;
use control::sources;
use control::store::StoreConfig;
use control::translate;
use dataplane::policy::{ConnectionContext, evaluate};
use dataplane::state::TunnelProtocol;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster")
}

#[test]
fn example_cluster_snapshot() {
    let store = sources::validate(&[dir()], StoreConfig::default()).unwrap();
    let s = translate::snapshot(&store, &MeshConfig::default());

    assert_eq!(s.workloads.len(), 2);
    let web = &s.workloads["Kubernetes//Pod/shop/web-0"];
    let echo = &s.workloads["Kubernetes//Pod/shop/echo-0"];
    assert_eq!(web.protocol, TunnelProtocol::Hbone);
    assert_eq!(echo.protocol, TunnelProtocol::Hbone);
    assert_ne!(web.node, echo.node);
    assert_eq!(echo.canonical_revision, "v1");

    let service = &s.services["shop/echo.shop.svc.cluster.local"];
    assert_eq!(
        service.vips[0].address,
        "10.96.0.2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(service.ports.get(&80), Some(&8080));
    assert_eq!(
        echo.services["shop/echo.shop.svc.cluster.local"].get(&80),
        Some(&8080)
    );

    assert!(s.policies.contains_key("shop/echo-from-web"));
    assert_eq!(echo.authorization_policies, ["shop/echo-from-web"]);
    assert!(web.authorization_policies.is_empty());

    // And the policy does what it says: web in, anyone else out.
    let policy = &s.policies["shop/echo-from-web"];
    let from = |w: &dataplane::state::Workload| ConnectionContext {
        source_identity: Some(w.identity()),
        source_ip: w.workload_ips[0],
        destination_ip: echo.workload_ips[0],
        destination_port: 8080,
    };
    assert!(evaluate(&from(web), [policy]).allowed());
    assert!(!evaluate(&from(echo), [policy]).allowed());
}

#[test]
fn translation_is_deterministic() {
    let a = sources::validate(&[dir()], StoreConfig::default()).unwrap();
    let b = sources::validate(&[dir()], StoreConfig::default()).unwrap();
    assert_eq!(
        translate::snapshot(&a, &MeshConfig::default()),
        translate::snapshot(&b, &MeshConfig::default())
    );
}

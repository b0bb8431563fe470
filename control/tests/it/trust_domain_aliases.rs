//! `trustDomainAliases` from the mesh config: a policy's principals for the local trust
//! domain (or `cluster.local`) match under every alias, at ztunnels and waypoints alike.

use control::mesh_config;
use control::snapshot::MeshConfig;
use control::translate;
use dataplane::identity::Identity;
use dataplane::policy::{ConnectionContext, evaluate};

use crate::common::{BASE, deployment, store, uid};

const ONLY_WEB: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-web, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
"#;

fn admits(s: &control::snapshot::Snapshot, trust_domain: &str) -> bool {
    let echo = &s.workloads[&uid("shop", "echo-0")];
    let ctx = ConnectionContext {
        source_identity: Some(Identity::new(trust_domain, "shop", "web")),
        source_ip: "10.244.1.9".parse().unwrap(),
        destination_ip: echo.workload_ips[0],
        destination_port: 8080,
    };
    evaluate(&ctx, s.policies.values().filter(|p| p.namespace == "shop")).allowed()
}

#[test]
fn principals_match_under_every_alias_of_the_mesh_config() {
    let st = store(&format!(
        "{BASE}\n---\n{}\n---\n{ONLY_WEB}",
        deployment("shop", "echo", "", "echo", "")
    ));
    let plain = translate::snapshot(&st, &MeshConfig::default());
    assert!(admits(&plain, "cluster.local"));
    assert!(!admits(&plain, "old.td"));

    let mut mesh = MeshConfig::default();
    let ignored = mesh_config::read(
        "trustDomain: new.td\ntrustDomainAliases: [old.td]\nenableTracing: true\n",
        &mut mesh,
    )
    .unwrap();
    assert_eq!(ignored, ["enableTracing"]);
    let aliased = translate::snapshot(&st, &mesh);
    assert!(admits(&aliased, "new.td"), "the local trust domain");
    assert!(admits(&aliased, "old.td"), "its alias");
    assert!(!admits(&aliased, "cluster.local"), "not in the bundle");
    assert!(!admits(&aliased, "foreign.td"));
}

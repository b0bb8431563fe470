use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::policy::{Action, Cidr, Scope, ServiceAccountMatch, StringMatch};
use crate::state::{
    GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress, PortMap,
    TunnelProtocol, WorkloadStatus,
};

/// The example from the wire-facts reference, §6.2.
pub(super) const EXAMPLE: &str = r#"
workloads:
- uid: Kubernetes//Pod/shop/web-0
  name: web-0
  namespace: shop
  serviceAccount: web
  trustDomain: cluster.local
  workloadIps: ["10.10.1.5"]
  protocol: HBONE
  node: node-a
  workloadName: web
  canonicalName: web
- uid: Kubernetes//Pod/shop/cart-0
  name: cart-0
  namespace: shop
  serviceAccount: cart
  trustDomain: cluster.local
  workloadIps: ["10.10.2.7"]
  protocol: HBONE
  node: node-b
  authorizationPolicies: ["shop/cart-from-web"]
  services:
    "shop/cart.shop.svc.cluster.local": {80: 8080}
- uid: Kubernetes//Pod/shop/wp-0
  name: wp-0
  namespace: shop
  serviceAccount: wp
  trustDomain: cluster.local
  workloadIps: ["10.10.2.9"]
  protocol: HBONE
  nativeTunnel: true
  node: node-b
  services:
    "shop/wp.shop.svc.cluster.local": {15008: 15008}
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports: {80: 8080}
  waypoint: {destination: "shop/wp.shop.svc.cluster.local", hboneMtlsPort: 15008}
- name: wp
  namespace: shop
  hostname: wp.shop.svc.cluster.local
  vips: ["/10.96.0.11"]
  ports: {15008: 15008}
policies:
- name: cart-from-web
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/web, !Exact cluster.local/ns/shop/sa/wp]
        destinationPorts: [8080]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The `Invalid` message of a config expected to fail validation.
fn invalid(yaml: &str) -> String {
    match LocalConfig::parse(yaml) {
        Err(LocalConfigError::Invalid {
            path: None,
            message,
        }) => message,
        other => panic!("expected an invalid-value error, got {other:?}"),
    }
}

#[test]
fn parses_reference_example() {
    let config = LocalConfig::parse(EXAMPLE).unwrap();
    assert_eq!(config.workloads.len(), 3);
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.policies.len(), 1);

    let web = &config.workloads[0];
    assert_eq!(web.uid, "Kubernetes//Pod/shop/web-0");
    assert_eq!(web.name, "web-0");
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.service_account, "web");
    assert_eq!(web.trust_domain, "cluster.local");
    assert_eq!(web.workload_ips, [ip("10.10.1.5")]);
    assert_eq!(web.protocol, TunnelProtocol::Hbone);
    assert_eq!(web.node, "node-a");
    assert_eq!(web.workload_name, "web");
    assert_eq!(web.canonical_name, "web");
    assert_eq!(web.network, "");
    assert_eq!(web.status, WorkloadStatus::Healthy);
    assert_eq!(web.capacity, 1);
    assert!(!web.native_tunnel);
    assert!(web.services.is_empty());
    assert_eq!(web.identity().principal(), "cluster.local/ns/shop/sa/web");

    let cart = &config.workloads[1];
    assert_eq!(cart.authorization_policies, ["shop/cart-from-web"]);
    let expected: BTreeMap<String, PortMap> = [(
        "shop/cart.shop.svc.cluster.local".to_string(),
        [(80, 8080)].into(),
    )]
    .into();
    assert_eq!(cart.services, expected);
    assert!(config.workloads[2].native_tunnel);
    assert_eq!(
        config.workloads[2].services["shop/wp.shop.svc.cluster.local"],
        PortMap::from([(15008, 15008)])
    );

    let svc = &config.services[0];
    assert_eq!(svc.key(), "shop/cart.shop.svc.cluster.local");
    assert_eq!(svc.name, "cart");
    assert_eq!(
        svc.vips,
        [NetworkAddress {
            network: String::new(),
            address: ip("10.96.0.10"),
        }]
    );
    assert_eq!(svc.ports, PortMap::from([(80, 8080)]));
    assert_eq!(
        svc.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname(NamespacedHostname {
                namespace: "shop".into(),
                hostname: "wp.shop.svc.cluster.local".into(),
            }),
            hbone_mtls_port: 15008,
        })
    );
    assert_eq!(config.services[1].waypoint, None);

    let policy = &config.policies[0];
    assert_eq!(policy.key(), "shop/cart-from-web");
    assert_eq!(policy.scope, Scope::WorkloadSelector);
    assert_eq!(policy.action, Action::Allow);
    assert!(!policy.dry_run);
    assert_eq!(policy.rules.len(), 1);
    assert_eq!(policy.rules[0].clauses.len(), 1);
    assert_eq!(policy.rules[0].clauses[0].matches.len(), 1);
    let m = &policy.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.principals,
        [
            StringMatch::Exact("cluster.local/ns/shop/sa/web".into()),
            StringMatch::Exact("cluster.local/ns/shop/sa/wp".into()),
        ]
    );
    assert_eq!(m.destination_ports, [8080]);
    assert!(m.namespaces.is_empty() && m.source_ips.is_empty());
}

#[test]
fn other_forms_and_enum_values() {
    let yaml = r#"
workloads:
- namespace: ops
  name: host-agent
  uid: u1
  workloadIps: ["fd00::5", "10.0.0.5"]
  network: net1
  status: Unhealthy
  networkMode: HostNetwork
  capacity: 3
  clusterId: east
  waypoint: {destination: "net1/10.0.0.3", hboneMtlsPort: 15008}
  networkGateway: {destination: "/fd00::9", hboneMtlsPort: 15009}
services:
- name: db
  namespace: ops
  hostname: db.example
  vips: ["net1/10.96.1.1", "/fd00::1"]
  ports: {5432: 0}
  subjectAltNames: ["spiffe://cluster.local/ns/ops/sa/db"]
policies:
- name: deny-some
  namespace: istio-system
  scope: Global
  action: Deny
  dryRun: true
  rules:
  - - - namespaces: [!Prefix team-, !Suffix -prod]
        notPrincipals: [!Presence []]
        serviceAccounts: [{namespace: ops, serviceAccount: db}]
        sourceIps: ["10.0.0.0/8", "10.1.2.3"]
        notDestinationPorts: [22]
    - - notSourceIps: ["fd00::/8"]
  - []
"#;
    let config = LocalConfig::parse(yaml).unwrap();
    let w = &config.workloads[0];
    assert_eq!(w.workload_ips, [ip("fd00::5"), ip("10.0.0.5")]);
    assert_eq!(w.protocol, TunnelProtocol::None);
    assert_eq!(w.status, WorkloadStatus::Unhealthy);
    assert_eq!(w.capacity, 3);
    assert_eq!(w.cluster_id, "east");
    // no defaulting in local config
    assert_eq!(w.trust_domain, "");
    assert_eq!(w.service_account, "");
    assert_eq!(
        w.waypoint.as_ref().unwrap().destination,
        GatewayDestination::Address(NetworkAddress {
            network: "net1".into(),
            address: ip("10.0.0.3"),
        })
    );
    let gw = w.network_gateway.as_ref().unwrap();
    assert_eq!(gw.hbone_mtls_port, 15009);
    assert_eq!(
        gw.destination,
        GatewayDestination::Address(NetworkAddress {
            network: String::new(),
            address: ip("fd00::9"),
        })
    );

    let s = &config.services[0];
    assert_eq!(s.vips[0].network, "net1");
    assert_eq!(s.vips[1].address, ip("fd00::1"));
    assert_eq!(s.ports, PortMap::from([(5432, 0)]));
    assert_eq!(s.subject_alt_names, ["spiffe://cluster.local/ns/ops/sa/db"]);

    let p = &config.policies[0];
    assert_eq!(
        (p.scope, p.action, p.dry_run),
        (Scope::Global, Action::Deny, true)
    );
    assert_eq!(p.rules.len(), 2);
    assert!(p.rules[1].clauses.is_empty());
    let clauses = &p.rules[0].clauses;
    assert_eq!(clauses.len(), 2);
    let m = &clauses[0].matches[0];
    assert_eq!(
        m.namespaces,
        [
            StringMatch::Prefix("team-".into()),
            StringMatch::Suffix("-prod".into())
        ]
    );
    assert_eq!(m.not_principals, [StringMatch::Presence]);
    assert_eq!(
        m.service_accounts,
        [ServiceAccountMatch {
            namespace: "ops".into(),
            service_account: "db".into(),
        }]
    );
    assert_eq!(
        m.source_ips,
        [
            "10.0.0.0/8".parse::<Cidr>().unwrap(),
            Cidr::host(ip("10.1.2.3"))
        ]
    );
    assert_eq!(m.not_destination_ports, [22]);
    assert_eq!(
        clauses[1].matches[0].not_source_ips,
        ["fd00::/8".parse::<Cidr>().unwrap()]
    );
}

#[test]
fn empty_documents_give_empty_config() {
    for yaml in [
        "",
        "\n",
        "# nothing yet\n",
        "---\n",
        "{}",
        "workloads: []\n",
    ] {
        let config =
            LocalConfig::parse(yaml).unwrap_or_else(|e| panic!("{yaml:?} should parse: {e}"));
        assert_eq!(config, LocalConfig::default(), "{yaml:?}");
    }
}

#[test]
fn unknown_field_is_rejected_with_its_line() {
    let yaml = "workloads:\n- namespace: shop\n  workloadIps: []\n  colour: blue\n";
    let err = LocalConfig::parse(yaml).unwrap_err();
    assert!(
        matches!(err, LocalConfigError::Yaml { path: None, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
    // nested objects reject unknown fields too
    let yaml = "policies:\n- {name: p, namespace: n, scope: Global, action: Allow, dryRun: false, rules: [[[{principal: []}]]]}\n";
    let msg = LocalConfig::parse(yaml).unwrap_err().to_string();
    assert!(msg.contains("unknown field `principal`"), "{msg}");
}

#[test]
fn missing_required_field_and_bad_enum_are_rejected() {
    let yaml = "policies:\n- {name: p, namespace: n, scope: Global, action: Allow, rules: []}\n";
    let msg = LocalConfig::parse(yaml).unwrap_err().to_string();
    assert!(msg.contains("missing field `dryRun`"), "{msg}");
    let yaml = "workloads:\n- {namespace: n, workloadIps: [], protocol: LEGACY_ISTIO_MTLS}\n";
    let msg = LocalConfig::parse(yaml).unwrap_err().to_string();
    assert!(msg.contains("LEGACY_ISTIO_MTLS"), "{msg}");
    let yaml = "workloads:\n- {name: a, workloadIps: []}\n";
    let msg = LocalConfig::parse(yaml).unwrap_err().to_string();
    assert!(msg.contains("missing field `namespace`"), "{msg}");
}

#[test]
fn bad_ip_names_workload_and_field() {
    let yaml = r#"
workloads:
- {namespace: shop, name: web-0, workloadIps: ["10.0.0.1"]}
- {namespace: shop, name: cart-0, workloadIps: ["10.0.0.x"]}
"#;
    assert_eq!(
        invalid(yaml),
        r#"workloads[1] (shop/cart-0): workloadIps[0]: "10.0.0.x" is not an IP address"#
    );
    let yaml =
        "services:\n- {name: a, namespace: n, hostname: a.n, vips: [\"/10.96.0.x\"], ports: {}}\n";
    assert_eq!(
        invalid(yaml),
        r#"services[0] (n/a.n): vips[0]: "/10.96.0.x": "10.96.0.x" is not an IP address"#
    );
    let yaml =
        "services:\n- {name: a, namespace: n, hostname: a.n, vips: [\"10.96.0.1\"], ports: {}}\n";
    assert!(
        invalid(yaml)
            .starts_with(r#"services[0] (n/a.n): vips[0]: "10.96.0.1" is not "<network>/<ip>""#)
    );
}

#[test]
fn bad_cidr_names_policy_and_field() {
    let yaml = r#"
policies:
- name: p
  namespace: shop
  scope: Namespace
  action: Deny
  dryRun: false
  rules:
  - - - sourceIps: ["10.0.0.0/8"]
    - - destinationIps: ["10.0.0.0/8", "10.0.0.0/40"]
"#;
    let msg = invalid(yaml);
    assert!(
        msg.starts_with("policies[0] (shop/p): rules[0][1][0].destinationIps[1]: "),
        "{msg}"
    );
    assert!(msg.contains("prefix length 40"), "{msg}");
    let yaml = yaml.replace("10.0.0.0/40", "ten/8");
    assert_eq!(
        invalid(&yaml),
        r#"policies[0] (shop/p): rules[0][1][0].destinationIps[1]: "ten/8" is not an IP address or CIDR"#
    );
}

#[test]
fn bad_service_key_names_workload_and_field() {
    let yaml = "workloads:\n- {namespace: shop, uid: u-7, workloadIps: [], services: {cart: {80: 8080}}}\n";
    assert_eq!(
        invalid(yaml),
        r#"workloads[0] (u-7): services: key "cart" is not "<namespace>/<hostname>""#
    );
    let yaml = "workloads:\n- {namespace: shop, name: a, workloadIps: [], services: {\"/cart\": {80: 8080}}}\n";
    assert!(invalid(yaml).contains(r#"services: key "/cart""#));
}

#[test]
fn bad_waypoint_destination_names_object_and_field() {
    let yaml = r#"
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: []
  ports: {80: 8080}
  waypoint: {destination: "wp", hboneMtlsPort: 15008}
"#;
    assert_eq!(
        invalid(yaml),
        r#"services[0] (shop/cart.shop.svc.cluster.local): waypoint.destination: "wp" is neither "<network>/<ip>" nor "<namespace>/<hostname>""#
    );
    let yaml = yaml.replace("\"wp\"", "\"shop/\"");
    assert!(invalid(&yaml).contains(r#"waypoint.destination: "shop/" is neither"#));
    let yaml = "workloads:\n- {namespace: n, name: a, workloadIps: [], networkGateway: {destination: \"/gw\", hboneMtlsPort: 15008}}\n";
    assert!(invalid(yaml).starts_with(r#"workloads[0] (n/a): networkGateway.destination: "/gw""#));
}

#[test]
fn out_of_range_numbers_name_the_field() {
    let svc = "services:\n- {name: a, namespace: n, hostname: a.n, vips: [], ports: PORTS}\n";
    assert_eq!(
        invalid(&svc.replace("PORTS", "{80: 70000}")),
        "services[0] (n/a.n): ports[80]: 70000 is not a port (0..=65535)"
    );
    assert_eq!(
        invalid(&svc.replace("PORTS", "{-1: 80}")),
        "services[0] (n/a.n): ports: key: -1 is not a port (0..=65535)"
    );
    let yaml = "workloads:\n- {namespace: n, name: a, workloadIps: [], capacity: -2}\n";
    assert!(invalid(yaml).starts_with("workloads[0] (n/a): capacity: -2 is not"));
    let yaml = "workloads:\n- {namespace: n, name: a, workloadIps: [], waypoint: {destination: n/wp, hboneMtlsPort: 65536}}\n";
    assert_eq!(
        invalid(yaml),
        "workloads[0] (n/a): waypoint.hboneMtlsPort: 65536 is not a port (0..=65535)"
    );
    let yaml = "policies:\n- {name: p, namespace: n, scope: Global, action: Allow, dryRun: false, rules: [[[{destinationPorts: [99999]}]]]}\n";
    assert_eq!(
        invalid(yaml),
        "policies[0] (n/p): rules[0][0][0].destinationPorts[0]: 99999 is not a port (0..=65535)"
    );
}

#[test]
fn unsupported_upstream_fields_and_duplicates_are_rejected() {
    let yaml = "workloads:\n- {namespace: n, name: a, workloadIps: [], locality: {region: r}}\n";
    assert_eq!(
        invalid(yaml),
        "workloads[0] (n/a): locality: is not supported by this ztunnel (remove it)"
    );
    let yaml = "services:\n- {name: a, namespace: n, hostname: a.n, vips: [], ports: {}, cidrVips: [\"/10.0.0.0/8\"]}\n";
    assert!(invalid(yaml).starts_with("services[0] (n/a.n): cidrVips: is not supported"));
    let yaml = "workloads:\n- {namespace: n, name: a, uid: x, workloadIps: []}\n- {namespace: n, name: b, uid: x, workloadIps: []}\n";
    assert_eq!(
        invalid(yaml),
        r#"workloads[1] (n/b): uid: "x" is also the uid of workloads[0]"#
    );
}

#[test]
fn apply_to_makes_lookups_work() {
    let config = LocalConfig::parse(EXAMPLE).unwrap();
    let mut state = State::default();
    config.apply_to(&mut state);

    let cart = state.workload_by_ip("", ip("10.10.2.7")).unwrap();
    assert_eq!(cart.uid, "Kubernetes//Pod/shop/cart-0");
    assert!(state.workload_by_ip("net1", ip("10.10.2.7")).is_none());
    assert!(state.workload_by_ip("", ip("10.10.2.8")).is_none());

    let svc = state.service_by_vip("", ip("10.96.0.10")).unwrap();
    assert_eq!(svc.key(), "shop/cart.shop.svc.cluster.local");
    let endpoints = state.endpoints("shop/cart.shop.svc.cluster.local");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].uid, cart.uid);

    let policies: Vec<String> = state.policies_for(&cart).iter().map(|p| p.key()).collect();
    assert_eq!(policies, ["shop/cart-from-web"]);
    let web = state.workload_by_ip("", ip("10.10.1.5")).unwrap();
    assert!(state.policies_for(&web).is_empty());
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("localconfig-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let missing = dir.join("missing.yaml");
    let err = LocalConfig::load(&missing).unwrap_err();
    assert!(matches!(err, LocalConfigError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");

    let good = dir.join("good.yaml");
    std::fs::write(&good, EXAMPLE).unwrap();
    assert_eq!(
        LocalConfig::load(&good).unwrap(),
        LocalConfig::parse(EXAMPLE).unwrap()
    );

    let bad_yaml = dir.join("bad-yaml.yaml");
    std::fs::write(
        &bad_yaml,
        "workloads:\n- namespace: n\n  workloadIps: []\n  nope: 1\n",
    )
    .unwrap();
    let msg = LocalConfig::load(&bad_yaml).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("invalid local config {}: ", bad_yaml.display())),
        "{msg}"
    );
    assert!(
        msg.contains("unknown field `nope`") && msg.contains("line 4"),
        "{msg}"
    );

    let bad_value = dir.join("bad-value.yaml");
    std::fs::write(
        &bad_value,
        "workloads:\n- {namespace: n, name: a, workloadIps: [x]}\n",
    )
    .unwrap();
    let msg = LocalConfig::load(&bad_value).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "invalid local config {}: workloads[0] (n/a): workloadIps[0]: \"x\" is not an IP address",
            bad_value.display()
        )
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

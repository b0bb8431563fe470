//! PeerAuthentication in ambient: the decision table of policy-semantics §3.3, row by row,
//! checked through the policies istiod would publish and the evaluator ztunnel runs.

use std::collections::BTreeMap;

use control::translate::peer_authentication::{
    PeerAuthentication, STATIC_STRICT, WorkloadRef, for_workload, static_strict_policy,
};
use control::types::security::PeerAuthenticationSpec;
use dataplane::identity::Identity;
use dataplane::policy::{ConnectionContext, evaluate};

const ROOT: &str = "istio-system";
const PORT: u16 = 8080;
const EXCEPTION: u16 = 9090;

#[derive(Clone, Copy)]
enum Level {
    Mesh,
    Namespace,
    Workload,
}

fn pa(level: Level, yaml: &str, created: i64) -> PeerAuthentication {
    let mut spec: PeerAuthenticationSpec = serde_yaml::from_str(yaml).unwrap();
    let namespace = match level {
        Level::Mesh => ROOT,
        _ => "shop",
    };
    if matches!(level, Level::Workload) {
        spec.selector = serde_yaml::from_str("matchLabels: {app: cart}").unwrap();
    }
    PeerAuthentication {
        namespace: namespace.into(),
        name: format!("pa-{created}"),
        created,
        spec,
    }
}

/// Whether plaintext (or, with `mtls`, a mesh client) reaches the cart workload on `port`.
fn reaches(pas: &[PeerAuthentication], port: u16, mtls: bool) -> bool {
    let labels: BTreeMap<String, String> = [("app".to_string(), "cart".to_string())].into();
    let result = for_workload(
        pas,
        ROOT,
        WorkloadRef {
            namespace: "shop",
            labels: &labels,
        },
    );
    let mut published = Vec::new();
    if !pas.is_empty() {
        published.push(static_strict_policy(ROOT));
    }
    published.extend(result.converted.clone());
    let applied: Vec<_> = published
        .iter()
        .filter(|p| result.references.contains(&p.key()))
        .collect();
    assert_eq!(
        applied.len(),
        result.references.len(),
        "every reference is published"
    );
    let context = ConnectionContext {
        source_identity: mtls.then(|| Identity::new("cluster.local", "shop", "web")),
        source_ip: "10.1.0.5".parse().unwrap(),
        destination_ip: "10.2.0.7".parse().unwrap(),
        destination_port: port,
    };
    evaluate(&context, applied).allowed()
}

fn plaintext(pas: &[PeerAuthentication]) -> (bool, bool) {
    (reaches(pas, PORT, false), reaches(pas, EXCEPTION, false))
}

const STRICT: &str = "mtls: {mode: STRICT}";
const PERMISSIVE: &str = "mtls: {mode: PERMISSIVE}";
const DISABLE: &str = "mtls: {mode: DISABLE}";
const UNSET: &str = "{}";

fn with_port(mode: &str, port_mode: &str) -> String {
    format!("{mode}\nportLevelMtls: {{{EXCEPTION}: {{mode: {port_mode}}}}}").replace("{}\n", "")
}

#[test]
fn without_peer_authentication_plaintext_is_accepted() {
    assert_eq!(plaintext(&[]), (true, true));
}

#[test]
fn mesh_and_namespace_levels() {
    use Level::*;
    let rows: [(&[(Level, &str)], bool); 6] = [
        (&[(Mesh, STRICT)], false),
        (&[(Mesh, PERMISSIVE)], true),
        (&[(Mesh, STRICT), (Namespace, PERMISSIVE)], true),
        (&[(Mesh, STRICT), (Namespace, UNSET)], false),
        (&[(Mesh, PERMISSIVE), (Namespace, STRICT)], false),
        (&[(Mesh, DISABLE), (Namespace, UNSET)], true),
    ];
    for (i, (levels, expected)) in rows.iter().enumerate() {
        let pas: Vec<_> = levels
            .iter()
            .enumerate()
            .map(|(n, (level, yaml))| pa(*level, yaml, n as i64))
            .collect();
        assert_eq!(reaches(&pas, PORT, false), *expected, "row {i}");
        assert!(
            reaches(&pas, PORT, true),
            "row {i}: mesh clients are never affected"
        );
    }
}

#[test]
fn workload_level_overrides_namespace() {
    use Level::*;
    let ns_strict_wl_permissive = [pa(Namespace, STRICT, 1), pa(Workload, PERMISSIVE, 2)];
    assert_eq!(plaintext(&ns_strict_wl_permissive), (true, true));
    let ns_permissive_wl_strict = [pa(Namespace, PERMISSIVE, 1), pa(Workload, STRICT, 2)];
    assert_eq!(plaintext(&ns_permissive_wl_strict), (false, false));
}

#[test]
fn port_level_exceptions() {
    use Level::*;
    // (levels, plaintext on 8080, plaintext on the exception port 9090)
    let rows: Vec<(Vec<PeerAuthentication>, (bool, bool))> = vec![
        (
            vec![pa(Workload, &with_port(STRICT, "PERMISSIVE"), 1)],
            (false, true),
        ),
        (
            vec![pa(Workload, &with_port(STRICT, "DISABLE"), 1)],
            (false, true),
        ),
        (
            vec![pa(Workload, &with_port(PERMISSIVE, "STRICT"), 1)],
            (true, false),
        ),
        (
            vec![pa(Workload, &with_port(DISABLE, "STRICT"), 1)],
            (true, false),
        ),
        (
            vec![
                pa(Mesh, STRICT, 1),
                pa(Workload, &with_port(UNSET, "PERMISSIVE"), 2),
            ],
            (false, true),
        ),
        (
            vec![
                pa(Mesh, PERMISSIVE, 1),
                pa(Workload, &with_port(UNSET, "STRICT"), 2),
            ],
            (true, false),
        ),
        (
            vec![
                pa(Mesh, PERMISSIVE, 1),
                pa(Namespace, STRICT, 2),
                pa(Workload, &with_port(UNSET, "PERMISSIVE"), 3),
            ],
            (false, true),
        ),
        (
            vec![
                pa(Mesh, STRICT, 1),
                pa(Namespace, PERMISSIVE, 2),
                pa(Workload, &with_port(UNSET, "STRICT"), 3),
            ],
            (true, false),
        ),
        // upstream quirk 1 (§3.4): the documented intent is deny on the STRICT port
        (
            vec![
                pa(Mesh, STRICT, 1),
                pa(Workload, &with_port(PERMISSIVE, "STRICT"), 2),
            ],
            (true, false),
        ),
        // upstream quirk 2 (§3.4): the documented intent is allow on the DISABLE port
        (
            vec![
                pa(Namespace, STRICT, 1),
                pa(Workload, &with_port(UNSET, "DISABLE"), 2),
            ],
            (false, true),
        ),
    ];
    for (i, (pas, expected)) in rows.iter().enumerate() {
        assert_eq!(plaintext(pas), *expected, "row {i}");
        assert!(
            reaches(pas, PORT, true) && reaches(pas, EXCEPTION, true),
            "row {i}"
        );
    }
}

#[test]
fn redundant_port_settings_convert_nothing() {
    use Level::*;
    let labels: BTreeMap<String, String> = [("app".to_string(), "cart".to_string())].into();
    let w = WorkloadRef {
        namespace: "shop",
        labels: &labels,
    };
    let strict_strict = [pa(Workload, &with_port(STRICT, "STRICT"), 1)];
    let result = for_workload(&strict_strict, ROOT, w);
    assert!(result.converted.is_none());
    assert_eq!(result.references, [format!("{ROOT}/{STATIC_STRICT}")]);
    let permissive_permissive = [pa(Workload, &with_port(PERMISSIVE, "PERMISSIVE"), 1)];
    let result = for_workload(&permissive_permissive, ROOT, w);
    assert_eq!(result, Default::default());
}

#[test]
fn the_oldest_wins_and_root_selectors_are_ignored() {
    use Level::*;
    assert_eq!(
        plaintext(&[pa(Namespace, STRICT, 1), pa(Namespace, PERMISSIVE, 2)]),
        (false, false)
    );
    assert_eq!(
        plaintext(&[pa(Namespace, STRICT, 2), pa(Namespace, PERMISSIVE, 1)]),
        (true, true)
    );
    let mut root_selector = pa(Workload, STRICT, 1);
    root_selector.namespace = ROOT.into();
    assert_eq!(plaintext(&[root_selector]), (true, true));
    // a selector that does not match the workload's labels does not apply
    let mut other = pa(Workload, STRICT, 1);
    other.spec.selector = serde_yaml::from_str("matchLabels: {app: db}").unwrap();
    assert_eq!(plaintext(&[other]), (true, true));
}

#[test]
fn converted_policy_names_follow_istiod() {
    use Level::*;
    let labels: BTreeMap<String, String> = [("app".to_string(), "cart".to_string())].into();
    let pas = [pa(Workload, &with_port(STRICT, "PERMISSIVE"), 7)];
    let result = for_workload(
        &pas,
        ROOT,
        WorkloadRef {
            namespace: "shop",
            labels: &labels,
        },
    );
    let converted = result.converted.unwrap();
    assert_eq!(converted.key(), "shop/converted_peer_authentication_pa-7");
    assert_eq!(result.references, [converted.key()]);
    assert_eq!(
        static_strict_policy(ROOT).key(),
        "istio-system/istio_converted_static_strict"
    );
}

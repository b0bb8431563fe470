//! Fuzz target for the W3C `baggage` a ztunnel sends about its workload on every CONNECT (and
//! in every inbound 200). Its values come from the control plane (cluster, namespace,
//! workload and canonical names), so they are whatever istiod was given: the header must
//! always be built, and for the names Kubernetes allows, a peer reading it as W3C baggage
//! (comma-separated `key=value` members) must get exactly the workload's values back.

use proptest::prelude::*;

use super::baggage;
use crate::fuzzing::{bounded, config, hostile_text};
use crate::hbone::ConnectHeaders;
use crate::state::Workload;

/// A Kubernetes name or label value: what these fields hold when they come from a cluster.
fn k8s_name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?"]
}

fn workload(field: BoxedStrategy<String>) -> impl Strategy<Value = Workload> {
    let kind = prop::sample::select(vec!["", "deployment", "pod", "job", "cronjob"]);
    (
        [
            field.clone(),
            field.clone(),
            field.clone(),
            field.clone(),
            field,
        ],
        kind,
    )
        .prop_map(
            |([cluster, namespace, name, canonical, revision], kind)| Workload {
                cluster_id: cluster,
                namespace,
                workload_name: name,
                canonical_name: canonical,
                canonical_revision: revision,
                workload_type: kind.to_string(),
                ..Workload::default()
            },
        )
}

/// W3C baggage §3.2 members, read without any of `baggage`'s code.
fn members(header: &str) -> Vec<(String, String)> {
    if header.is_empty() {
        return Vec::new();
    }
    header
        .split(',')
        .map(|member| {
            let (k, v) = member.split_once('=').unwrap_or((member, ""));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

proptest! {
    #![proptest_config(config(1024))]

    /// Kubernetes-shaped values read back member by member, in upstream's order, empty
    /// ones left out, and the header is valid on the wire.
    #[test]
    fn fuzz_baggage_round_trip(w in workload(k8s_name().boxed())) {
        let header = bounded("rendering baggage", || baggage(&w))?;
        prop_assert!(http::HeaderValue::from_str(&header).is_ok(), "{:?}", header);
        let kind = if w.workload_type.is_empty() { "deployment" } else { &w.workload_type };
        let expected: Vec<(String, String)> = [
            ("k8s.cluster.name".to_string(), &w.cluster_id),
            ("k8s.namespace.name".to_string(), &w.namespace),
            (format!("k8s.{kind}.name"), &w.workload_name),
            ("service.name".to_string(), &w.canonical_name),
            ("service.version".to_string(), &w.canonical_revision),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect();
        prop_assert_eq!(members(&header), expected);
    }

    /// Any values at all: the CONNECT carrying the baggage is still built, so a workload
    /// with an odd name keeps its connections.
    #[test]
    fn fuzz_baggage_never_blocks_a_connect(w in workload(hostile_text().boxed())) {
        let headers = ConnectHeaders {
            baggage: bounded("rendering baggage", || baggage(&w))?,
            ..ConnectHeaders::default()
        };
        let built = bounded("building the CONNECT", || {
            crate::hbone::connect_request("10.0.0.1:8080", &headers)
        })?;
        prop_assert!(built.is_ok(), "{:?}", built.err());
    }
}

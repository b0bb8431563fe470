//! Fuzz targets for configuration input: YAML of every kind the loader accepts, taken from
//! the examples and a few more valid objects, mutated in structure (fields removed, retyped,
//! repeated, replaced with hostile names, addresses and numbers) and in text (syntax broken,
//! cut short), then through everything istiod does with it: parse, store (with semantic
//! validation), translate and encode for xDS. A configuration is hand-written: it must load,
//! or be refused with an error that points into the file (a line that exists, the right
//! document), in bounded time, never a panic; nesting past [`MAX_DEPTH`] and text past
//! [`MAX_FILE_BYTES`] are refused before the YAML parser sees them; and what loads reads
//! back the same when written out again.

use proptest::prelude::*;
use serde::Serialize;
use serde_yaml::Value;

use super::*;
use crate::fuzzing::{bounded, config, edit_text, edits, mutate, text_edits};
use crate::snapshot::MeshConfig;
use crate::store::MAX_REPLICAS;
use crate::xds::PublishedResources;

const BASES: &[&str] = &[
    include_str!("../../../examples/cluster/cluster.yaml"),
    include_str!("../../../examples/waypoint/cluster.yaml"),
    include_str!("../../../examples/fault-injection.yaml"),
    include_str!("../../../examples/loopback/cluster.yaml"),
];

/// Valid objects of the kinds no example has (and a `List` of two), to mix into any base.
const EXTRAS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  ports: [{name: grpc, port: 9090, targetPort: 8000, appProtocol: grpc}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-abc
  namespace: shop
  labels: {kubernetes.io/service-name: legacy}
addressType: IPv4
ports: [{name: grpc, port: 8000}]
endpoints:
- addresses: [192.168.50.10]
  nodeName: node-b
- addresses: [192.168.50.11]
  conditions: {ready: false}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: legacy, port: 9090}]
  rules:
  - matches: [{method: {service: echo.Echo, method: Say}}, {headers: [{name: x-user, value: a}]}]
    backendRefs: [{name: legacy, port: 9090, weight: 3}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: STRICT}
  portLevelMtls: {"8080": {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [shop], ipBlocks: [10.0.0.0/8]}}]
    to: [{operation: {ports: ["8080"], methods: [GET], paths: [/admin/*]}}]
    when: [{key: "request.headers[x-user]", values: [a, b]}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ServiceAccount
  metadata: {name: legacy, namespace: shop}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: allow-legacy, namespace: shop}
  spec:
    targetRefs: [{kind: Service, group: "", name: legacy}]
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
"#;

/// Field names of the kinds, so insertions often land on real fields.
const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "selector",
    "matchLabels",
    "ports",
    "port",
    "targetPort",
    "containerPort",
    "protocol",
    "appProtocol",
    "podCIDR",
    "podIP",
    "podIPs",
    "nodeName",
    "hostNetwork",
    "serviceAccountName",
    "containers",
    "replicas",
    "template",
    "clusterIP",
    "clusterIPs",
    "type",
    "endpoints",
    "addresses",
    "conditions",
    "parentRefs",
    "backendRefs",
    "rules",
    "matches",
    "filters",
    "hostnames",
    "weight",
    "listeners",
    "gatewayClassName",
    "from",
    "to",
    "when",
    "source",
    "operation",
    "action",
    "principals",
    "ipBlocks",
    "paths",
    "methods",
    "values",
    "mtls",
    "mode",
    "portLevelMtls",
    "targetRefs",
    "istio.io/use-waypoint",
    "istio.io/dataplane-mode",
    "kind",
    "apiVersion",
    "status",
    "items",
];

/// The documents of a valid file (the examples separate them with `---` lines).
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn render(documents: &[Value]) -> String {
    documents
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// One base (and maybe the extras) as documents, some of them mutated or dropped.
fn manifests() -> impl Strategy<Value = String> {
    (
        prop::sample::select(BASES),
        prop::bool::ANY,
        prop::collection::vec((any::<prop::sample::Index>(), edits(KEYS)), 0..3),
        prop::collection::vec(any::<prop::sample::Index>(), 0..2),
    )
        .prop_map(|(base, extras, edited, dropped)| {
            let mut docs = documents(base);
            if extras {
                docs.extend(documents(EXTRAS));
            }
            for (at, edits) in &edited {
                let i = at.index(docs.len());
                docs[i] = mutate(docs[i].clone(), edits);
            }
            for at in &dropped {
                docs.remove(at.index(docs.len()));
            }
            render(&docs)
        })
}

/// An object as YAML again, with the `apiVersion` and `kind` our own types do not store.
fn rewrite(object: &Object) -> String {
    fn yaml(object: &impl Serialize) -> Value {
        serde_yaml::to_value(object).unwrap_or(Value::Null)
    }
    let mut value = match object {
        Object::Namespace(o) => yaml(o),
        Object::Node(o) => yaml(o),
        Object::ServiceAccount(o) => yaml(o),
        Object::Service(o) => yaml(o),
        Object::EndpointSlice(o) => yaml(o),
        Object::Deployment(o) => yaml(o),
        Object::Pod(o) => yaml(o),
        Object::Gateway(o) => yaml(o),
        Object::HttpRoute(o) => yaml(o),
        Object::GrpcRoute(o) => yaml(o),
        Object::AuthorizationPolicy(o) => yaml(o),
        Object::PeerAuthentication(o) => yaml(o),
        Object::FaultInjection(o) => yaml(o),
    };
    if let Value::Mapping(m) = &mut value {
        let kind = object.kind();
        m.insert("kind".into(), kind.name().into());
        m.insert("apiVersion".into(), kind.api_versions()[0].into());
    }
    serde_yaml::to_string(&value).unwrap_or_default()
}

/// Loads `text` as istiod does, all the way to xDS, and checks the outcome.
fn load(text: &str) -> Result<(), TestCaseError> {
    let lines = text.lines().count() + 1;
    let points_into_the_file = |line: Option<usize>| line.is_none_or(|l| (1..=lines).contains(&l));
    let parsed = bounded("parsing", || parse_str(text, "fuzz.yaml"))?;
    let loaded = match parsed {
        Ok(loaded) => loaded,
        Err(e) => {
            prop_assert_eq!(&e.file, "fuzz.yaml");
            prop_assert!(!e.message.is_empty());
            prop_assert!(
                points_into_the_file(e.line),
                "line {:?} of {}: {}",
                e.line,
                lines,
                e
            );
            return Ok(());
        }
    };
    for l in &loaded {
        prop_assert!(points_into_the_file(Some(l.origin.line)));
        let again = parse_str(&rewrite(&l.object), "again.yaml");
        let again = again.map(|a| a.into_iter().map(|l| l.object).collect::<Vec<_>>());
        prop_assert_eq!(again, Ok(vec![l.object.clone()]));
    }
    let mut store = Store::new(StoreConfig::default());
    match bounded("storing", || apply_loaded(&mut store, loaded))? {
        Ok(_) => {}
        Err(e) => {
            if let Error::Rejected { origin, .. } = &e {
                prop_assert!(points_into_the_file(Some(origin.line)), "{}", e);
            }
            prop_assert!(!e.to_string().is_empty());
            return Ok(());
        }
    }
    let snapshot = bounded("translating", || {
        crate::translate::snapshot(&store, &MeshConfig::default())
    })?;
    bounded("encoding", || PublishedResources::encode(&snapshot, 1))?;
    Ok(())
}

/// Flow or block collections nested `depth` deep inside a document of `base`.
fn nested(depth: usize, flow: bool) -> String {
    let inner = if flow {
        format!("{}x{}", "[".repeat(depth), "]".repeat(depth))
    } else {
        (0..depth)
            .map(|i| format!("\n{}k:", " ".repeat(2 * i + 4)))
            .collect::<String>()
            + " x"
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: deep\n  labels: {inner}\n")
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fuzz_yaml_mutated_objects(text in manifests()) {
        load(&text)?;
    }

    #[test]
    fn fuzz_yaml_edited_text(
        base in prop::sample::select(BASES),
        edits in text_edits(),
    ) {
        load(&edit_text(base, &edits))?;
    }

    /// Nesting past MAX_DEPTH (the depth counts `metadata`, `labels` and the document) is
    /// refused before parsing, naming the line; within it, the document is read.
    #[test]
    fn fuzz_yaml_nesting(depth in 1usize..400, flow in prop::bool::ANY) {
        let text = nested(depth, flow);
        let parsed = bounded("parsing", || parse_str(&text, "deep.yaml"))?;
        let total = depth + 2;
        match parsed {
            Err(e) if e.message.contains("refused before parsing") => {
                prop_assert!(total > MAX_DEPTH, "refused at {}", total);
                prop_assert!(e.line.is_some());
            }
            _ => prop_assert!(total <= MAX_DEPTH, "{} levels not refused", total),
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// `replicas` is a pod count the store expands: past MAX_REPLICAS it is refused (a dozen
    /// bytes must not become gigabytes of pods), within it the pods are there.
    #[test]
    fn fuzz_yaml_replicas(
        replicas in prop_oneof![
            0i32..50,
            (MAX_REPLICAS + 1)..=i32::MAX,
            Just(MAX_REPLICAS + 1),
            Just(i32::MAX),
            i32::MIN..0,
        ],
    ) {
        let text = BASES[0].replacen("replicas: 1\n", &format!("replicas: {replicas}\n"), 1);
        let loaded = parse_str(&text, "replicas.yaml").unwrap();
        let mut store = Store::new(StoreConfig::default());
        let applied = bounded("storing", || apply_loaded(&mut store, loaded))?;
        if (0..=MAX_REPLICAS).contains(&replicas) {
            prop_assert!(applied.is_ok(), "{:?}", applied);
            let web = store.pods().iter().filter(|p| p.name.starts_with("web-")).count();
            prop_assert_eq!(web, usize::try_from(replicas).unwrap());
        } else {
            let message = applied.map_err(|e| e.to_string()).err().unwrap_or_default();
            prop_assert!(message.contains("spec.replicas"), "{}", message);
        }
    }
}

/// Text past MAX_FILE_BYTES is refused on its length, whatever it holds. Each case is 64 MiB
/// of text, so a few show the limit holds however long the run: a runner of its own, as the
/// `proptest!` macro would let `PROPTEST_CASES` scale it.
#[test]
fn fuzz_yaml_over_size() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 4,
        ..config(4)
    });
    let inputs = (1usize..4096, prop::sample::select(vec!["#", "[", "a: b\n"]));
    let outcome = runner.run(&inputs, |(extra, fill)| {
        let limit = usize::try_from(MAX_FILE_BYTES).unwrap();
        let text = fill.repeat((limit + extra).div_ceil(fill.len()));
        let parsed = bounded("refusing", || parse_str(&text, "big.yaml"))?;
        let message = parsed.err().map(|e| e.message);
        prop_assert!(
            message
                .as_ref()
                .is_some_and(|m| m.contains("over the limit")),
            "{:?}",
            message
        );
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// Every kind the loader reads is in the fuzzed input, so a new kind cannot go unfuzzed.
#[test]
fn fuzz_inputs_hold_every_kind() {
    let text = format!("{}\n---\n{EXTRAS}", BASES.join("\n---\n"));
    let loaded = parse_str(&text, "all.yaml").unwrap();
    for kind in Kind::ALL {
        assert!(
            loaded.iter().any(|l| l.object.kind() == kind),
            "no {} in the fuzz inputs",
            kind.name()
        );
    }
    assert!(loaded.iter().any(|l| l.origin.item.is_some()), "no List");
}

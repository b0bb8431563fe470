//! Reading manifests: documents, lists, kinds, and errors that say where and what.

use std::path::PathBuf;

use control::object::{Kind, Object};
use control::sources;
use control::store::StoreConfig;

use crate::common::{BASE, error, store};

#[test]
fn multi_document_with_comments_and_empty_documents() {
    let loaded = sources::parse_str(
        "# leading comment\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
        "x.yaml",
    )
    .unwrap();
    let names: Vec<&str> = loaded.iter().map(|l| l.object.name()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(loaded[1].origin.line, 9);
}

#[test]
fn list_kind_expands_to_its_items() {
    let loaded = sources::parse_str(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: a}
- apiVersion: v1
  kind: ServiceAccount
  metadata: {name: s, namespace: a}
"#,
        "list.yaml",
    )
    .unwrap();
    let kinds: Vec<Kind> = loaded.iter().map(|l| l.object.kind()).collect();
    assert_eq!(kinds, [Kind::Namespace, Kind::ServiceAccount]);
}

#[test]
fn every_kind_parses() {
    let s = store(&format!(
        "{BASE}\n---\n{}",
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: shop}
spec: {selector: {}, template: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: shop}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: e, namespace: shop}
addressType: IPv4
endpoints: []
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: echo, kind: Service, group: ""}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x, value: y}]}
    backendRefs: [{name: echo, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{name: echo, kind: Service, group: ""}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: pa, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
---
apiVersion: testbed.ambient.io/v1alpha1
kind: FaultInjection
metadata: {name: f, namespace: shop}
spec: {abort: {httpStatus: 503}}
"#
    ));
    for kind in Kind::ALL {
        assert!(s.of_kind(kind).next().is_some(), "no {kind}");
    }
    // No spec: an ALLOW without rules.
    match s.get(Kind::AuthorizationPolicy, "shop", "deny-all") {
        Some(Object::AuthorizationPolicy(p)) => assert!(p.spec.rules.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_namespace_means_default() {
    let s = store("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa}\n");
    assert!(s.get(Kind::ServiceAccount, "default", "sa").is_some());
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let e = error("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n");
    assert!(e.starts_with("test.yaml:"), "{e}");
    assert!(e.contains("document 2"), "{e}");
    assert!(e.starts_with("test.yaml:6"), "{e}");
    // libyaml's own line numbers are the file's too, not the document's.
    assert!(e.contains("line 5"), "{e}");
}

#[test]
fn unknown_field_in_authorization_policy_names_object_and_field() {
    let e = error(
        r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  rules:
  - from:
    - source:
        principal: ["cluster.local/ns/shop/sa/web"]
"#,
    );
    assert!(e.contains("AuthorizationPolicy shop/allow-web"), "{e}");
    assert!(e.contains("spec.rules[0].from[0].source"), "{e}");
    assert!(e.contains("unknown field `principal`"), "{e}");
    assert!(
        e.contains("test.yaml:12") || e.contains("test.yaml:11"),
        "{e}"
    );
}

#[test]
fn unknown_field_in_kubernetes_kind_is_an_error() {
    let e = error(
        r#"apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  ports: [{port: 80, targetPrt: 8080}]
"#,
    );
    assert!(e.contains("Service default/echo"), "{e}");
    assert!(e.contains("spec.ports[0].targetPrt: unknown field"), "{e}");
    assert!(e.starts_with("test.yaml:5 "), "{e}");
}

#[test]
fn unknown_field_in_gateway_is_an_error() {
    let e = error(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: w}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE, tlsMode: x}]
"#,
    );
    assert!(e.contains("Gateway default/w"), "{e}");
    assert!(e.contains("spec.listeners[0].tlsMode"), "{e}");
}

#[test]
fn wrong_type_names_the_field() {
    let e = error(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: lots\n  selector: {}\n  template: {}\n",
    );
    assert!(e.contains("Deployment default/d"), "{e}");
    assert!(e.contains("spec.replicas: invalid type"), "{e}");
    assert!(e.starts_with("test.yaml:5 "), "{e}");
}

#[test]
fn unknown_kind_is_named() {
    let e = error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n");
    assert!(e.contains("unknown kind `ConfigMap`"), "{e}");
    assert!(e.contains("ConfigMap c"), "{e}");
}

#[test]
fn unsupported_api_version_is_named() {
    let e = error("apiVersion: apps/v1beta1\nkind: Deployment\nmetadata: {name: d}\n");
    assert!(e.contains("apiVersion `apps/v1beta1`"), "{e}");
    assert!(e.contains("apps/v1"), "{e}");
}

#[test]
fn missing_kind_and_missing_name() {
    assert!(error("apiVersion: v1\nmetadata: {name: a}\n").contains("missing `kind`"));
    assert!(error("apiVersion: v1\nkind: Namespace\nmetadata: {}\n").contains("metadata.name"));
}

#[test]
fn scalar_document_is_refused() {
    assert!(error("just a string\n").contains("mapping"));
}

#[test]
fn invalid_cidr_in_policy_names_object_and_field() {
    let e = error(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec:
  rules:
  - from:
    - source:
        ipBlocks: ["10.0.0.0/8", "10.0.0.0/33"]
"#,
    );
    assert!(e.contains("AuthorizationPolicy default/p"), "{e}");
    assert!(
        e.contains("spec.rules[0].from[0].source.ipBlocks[1]"),
        "{e}"
    );
    assert!(e.contains("test.yaml:1"), "{e}");
}

#[test]
fn invalid_remote_ip_block_is_refused() {
    let e = error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules: [{from: [{source: {remoteIpBlocks: [nope]}}]}]\n",
    );
    assert!(e.contains("remoteIpBlocks[0]"), "{e}");
}

#[test]
fn invalid_port_in_policy_is_refused() {
    let e = error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules: [{to: [{operation: {ports: [\"http\"]}}]}]\n",
    );
    assert!(e.contains("spec.rules[0].to[0].operation.ports[0]"), "{e}");
}

#[test]
fn policy_in_missing_namespace_is_refused() {
    let e = error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: nowhere}\n",
    );
    assert!(e.contains("AuthorizationPolicy nowhere/p"), "{e}");
    assert!(e.contains("metadata.namespace"), "{e}");
    assert!(e.contains("\"nowhere\" does not exist"), "{e}");
}

#[test]
fn root_and_system_namespaces_always_exist() {
    store(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: istio-system}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: kube-system}\n",
    );
}

#[test]
fn namespace_may_come_after_what_lives_in_it() {
    store(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: late}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: late}\n",
    );
}

#[test]
fn port_level_mtls_without_selector_is_refused() {
    let e = error(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  portLevelMtls: {8080: {mode: DISABLE}}\n",
    );
    assert!(
        e.contains("PeerAuthentication default/p: spec.portLevelMtls"),
        "{e}"
    );
}

/// A workload-level PeerAuthentication with one port exception keyed as written in `key`.
fn port_exception(key: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  portLevelMtls: {{{key}: {{mode: DISABLE}}}}\n"
    )
}

fn port_level_ports(s: &control::store::Store) -> Vec<u32> {
    s.peer_authentications()
        .flat_map(|pa| pa.spec.port_level_mtls.keys().copied())
        .collect()
}

#[test]
fn port_level_mtls_keys_may_be_quoted_as_the_api_json_has_them() {
    assert_eq!(port_level_ports(&store(&port_exception("8080"))), [8080]);
    assert_eq!(
        port_level_ports(&store(&port_exception("\"8080\""))),
        [8080]
    );
    // As the kube watcher receives it: JSON, where every key is a string.
    let spec: control::types::security::PeerAuthenticationSpec = serde_json::from_str(
        r#"{"selector": {"matchLabels": {"app": "echo"}}, "portLevelMtls": {"8080": {"mode": "STRICT"}, "9090": {}}}"#,
    )
    .unwrap();
    assert_eq!(
        spec.port_level_mtls.keys().copied().collect::<Vec<_>>(),
        [8080, 9090]
    );
}

#[test]
fn port_level_mtls_keys_that_are_not_ports_are_refused_by_name() {
    for key in [
        "http",
        "\"http\"",
        "-1",
        "\"+80\"",
        "\"\"",
        "8080.5",
        "99999999999",
    ] {
        let e = error(&port_exception(key));
        assert!(
            e.contains("PeerAuthentication default/p")
                && e.contains("(portLevelMtls keys are ports 1..65535"),
            "{key}: {e}"
        );
    }
    for key in ["0", "\"70000\""] {
        let e = error(&port_exception(key));
        assert!(
            e.contains("PeerAuthentication default/p: spec.portLevelMtls[")
                && e.contains("port must be 1..65535"),
            "{key}: {e}"
        );
    }
    let twice = port_exception("8080").replace(
        "{8080: {mode: DISABLE}}",
        "{8080: {mode: DISABLE}, \"8080\": {mode: STRICT}}",
    );
    let e = error(&twice);
    assert!(
        e.contains("port 8080 is listed more than once in portLevelMtls"),
        "{e}"
    );
}

#[test]
fn bad_cluster_ip_and_pod_cidr_are_refused() {
    assert!(
        error(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.300}\n"
        )
        .contains("spec.clusterIP")
    );
    assert!(
        error("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.0.0.0/40}\n")
            .contains("Node n: spec.podCIDR")
    );
}

#[test]
fn cluster_scoped_kind_with_namespace_is_refused() {
    assert!(
        error("apiVersion: v1\nkind: Node\nmetadata: {name: n, namespace: x}\n")
            .contains("cluster-scoped")
    );
}

#[test]
fn a_bad_object_leaves_the_store_intact() {
    let mut s = store(BASE);
    let before = s.len();
    let bad = sources::parse_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ok, namespace: shop}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bad, namespace: missing}\n",
        "bad.yaml",
    )
    .unwrap();
    let e = sources::apply_loaded(&mut s, bad).unwrap_err().to_string();
    assert!(
        e.starts_with("bad.yaml:4 (document 2): ServiceAccount missing/bad"),
        "{e}"
    );
    assert_eq!(s.len(), before);
    // One object at a time: same.
    let one = sources::parse_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bad, namespace: missing}\n",
        "x",
    )
    .unwrap();
    assert!(s.apply(one[0].object.clone()).is_err());
    assert_eq!(s.len(), before);
}

#[test]
fn apply_and_delete_report_changes() {
    let mut s = store(BASE);
    let sa = sources::parse_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: shop}\n",
        "x",
    )
    .unwrap()
    .remove(0)
    .object;
    assert!(s.apply(sa.clone()).unwrap());
    assert!(!s.apply(sa).unwrap());
    assert!(s.delete(Kind::ServiceAccount, "shop", "s"));
    assert!(!s.delete(Kind::ServiceAccount, "shop", "s"));
}

#[test]
fn deleting_a_namespace_deletes_its_objects() {
    let mut s = store(&format!(
        "{BASE}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: s, namespace: shop}}\n"
    ));
    assert!(s.delete(Kind::Namespace, "", "shop"));
    assert!(s.get(Kind::ServiceAccount, "shop", "s").is_none());
}

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster")
}

#[test]
fn directory_loads_and_validates() {
    let s = sources::validate(&[example_dir()], StoreConfig::default()).unwrap();
    assert!(s.len() >= 9);
}

#[test]
fn validate_reports_unreadable_path() {
    let e = sources::validate(
        &[PathBuf::from("/nonexistent/manifests.yaml")],
        StoreConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("/nonexistent/manifests.yaml: cannot read"),
        "{e}"
    );
}

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("control-sources-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn validate_error(paths: &[PathBuf]) -> String {
    match sources::validate(paths, StoreConfig::default()) {
        Ok(store) => panic!("accepted: {} objects", store.len()),
        Err(e) => e.to_string(),
    }
}

const NAMESPACE_A: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";

#[test]
fn an_oversized_file_is_refused_by_name_before_it_is_read() {
    let dir = scratch("oversized");
    let file = dir.join("big.yaml");
    // Sparse: the size is what is checked, before a byte is read.
    let handle = std::fs::File::create(&file).unwrap();
    handle.set_len(sources::MAX_FILE_BYTES + 1).unwrap();
    let e = validate_error(std::slice::from_ref(&file));
    assert!(e.starts_with(&file.display().to_string()), "{e}");
    assert!(e.contains("over the limit of 64 MiB for one file"), "{e}");
    // Exactly at the limit is allowed as far as size goes (it is not YAML, though).
    handle.set_len(sources::MAX_FILE_BYTES).unwrap();
    assert!(!validate_error(std::slice::from_ref(&file)).contains("over the limit"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deep_nesting_is_refused_before_parsing_and_fast() {
    let dir = scratch("deep");
    // 100,000 nested flow sequences: libyaml alone took 22-41 s to give up on these.
    let deep = dir.join("deep.yaml");
    std::fs::write(
        &deep,
        format!(
            "{NAMESPACE_A}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: b}}\n\
             spec: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let e = validate_error(std::slice::from_ref(&deep));
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    assert!(
        e.starts_with(&format!("{}:8 (document 2)", deep.display())),
        "{e}"
    );
    assert!(e.contains("nested more than 64 levels deep"), "{e}");

    // Indentation nests too: 70 levels of block mappings, refused at the line that goes
    // past 64.
    let block: String = (0..70)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
        .collect();
    let e = error(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: c\n  annotations:\n{}",
        block
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    ));
    assert!(e.starts_with("test.yaml:68 (document 1)"), "{e}");

    // Depth 64 itself is let through to the parser (which finds the annotation is not a
    // string), and brackets in strings are not nesting.
    let e = error(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: d\n  annotations:\n    \
         x: \"{}\"\n    y: {}x{}\n",
        "[".repeat(1_000),
        "[".repeat(61),
        "]".repeat(61)
    ));
    assert!(
        e.contains("metadata.annotations.y: invalid type: sequence"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn istiod_check_refuses_deep_nesting_in_well_under_a_second() {
    let dir = scratch("deep-check");
    let deep = dir.join("deep.yaml");
    std::fs::write(
        &deep,
        format!(
            "{NAMESPACE_A}spec: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_istiod"))
        .arg("--check")
        .arg("--config-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("deep.yaml:4 (document 1)"), "{stderr}");
    assert!(
        stderr.contains("nested more than 64 levels deep"),
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `validate` on another thread: a FIFO that is opened blocks forever, and the test
/// should fail, not hang.
fn validate_within(paths: Vec<PathBuf>, limit: std::time::Duration) -> Result<usize, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            sources::validate(&paths, StoreConfig::default())
                .map(|s| s.len())
                .map_err(|e| e.to_string()),
        );
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("validate blocked for {limit:?}"))
}

#[test]
fn a_fifo_is_skipped_in_a_directory_and_refused_when_named() {
    let dir = scratch("fifo");
    std::fs::write(dir.join("a.yaml"), NAMESPACE_A).unwrap();
    let fifo = dir.join("b.yaml");
    match std::process::Command::new("mkfifo").arg(&fifo).status() {
        Ok(status) if status.success() => {}
        other => {
            eprintln!(
                "SKIPPED a_fifo_is_skipped_in_a_directory_and_refused_when_named: mkfifo unavailable ({other:?})"
            );
            return;
        }
    }
    let limit = std::time::Duration::from_secs(10);
    assert_eq!(validate_within(vec![dir.clone()], limit), Ok(1));
    let e = validate_within(vec![fifo.clone()], limit).unwrap_err();
    assert!(
        e.starts_with(&format!("{}: a FIFO: only regular files", fifo.display())),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_symlink_loop_is_refused() {
    use std::os::unix::fs::symlink;

    let dir = scratch("loop");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/a.yaml"), NAMESPACE_A).unwrap();
    // sub/back -> .. : walking it would find sub/back/sub/back/... until the path is too long.
    symlink("..", dir.join("sub/back")).unwrap();
    let e = validate_error(std::slice::from_ref(&dir));
    assert!(
        e.starts_with(&format!(
            "{}: symlink loop: it is ",
            dir.join("sub/back").display()
        )),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // A link to itself.
    let dir = scratch("self-loop");
    std::fs::write(dir.join("a.yaml"), NAMESPACE_A).unwrap();
    symlink("self.yaml", dir.join("self.yaml")).unwrap();
    let e = validate_error(std::slice::from_ref(&dir));
    assert!(
        e.starts_with(&format!(
            "{}: symlink loop: the link leads back to itself",
            dir.join("self.yaml").display()
        )),
        "{e}"
    );
    let e = validate_error(&[dir.join("self.yaml")]);
    assert!(e.contains("symlink loop"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_reached_twice_is_read_once() {
    use std::os::unix::fs::symlink;

    // As a ConfigMap volume has it: the file, and a link to it.
    let dir = scratch("twice");
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    std::fs::write(dir.join("..data/a.yaml"), NAMESPACE_A).unwrap();
    symlink("..data/a.yaml", dir.join("a.yaml")).unwrap();
    let store = sources::validate(&[dir.clone(), dir.join("a.yaml")], StoreConfig::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn duplicates_in_one_file_are_refused_naming_both_places() {
    let dir = scratch("duplicates-one");
    let file = dir.join("all.yaml");
    std::fs::write(
        &file,
        format!(
            "{NAMESPACE_A}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: s, namespace: a}}\n\
             ---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: s, namespace: a}}\n"
        ),
    )
    .unwrap();
    let e = validate_error(std::slice::from_ref(&file));
    let f = file.display();
    assert_eq!(
        e,
        format!(
            "{f}:8 (document 3): ServiceAccount a/s: declared twice: first at {f}:4 (document 2)"
        )
    );

    // In a List, by item.
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n\
         - {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n",
    )
    .unwrap();
    let e = validate_error(std::slice::from_ref(&file));
    assert_eq!(
        e,
        format!(
            "{f}:1 (document 1): Namespace a: items[1]: declared twice: first at {f}:1 (document 1, items[0])"
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn duplicates_across_files_are_refused_naming_both_files() {
    let dir = scratch("duplicates-two");
    std::fs::write(dir.join("1-first.yaml"), NAMESPACE_A).unwrap();
    // The same object, default namespace spelled out in one and implied in the other.
    std::fs::write(
        dir.join("1-first.yaml"),
        format!("{NAMESPACE_A}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: s}}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("2-more")).unwrap();
    std::fs::write(
        dir.join("2-more/second.yaml"),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: default}\n",
    )
    .unwrap();
    let e = validate_error(std::slice::from_ref(&dir));
    assert_eq!(
        e,
        format!(
            "{}:1 (document 1): ServiceAccount default/s: declared twice: first at {}:4 (document 2)",
            dir.join("2-more/second.yaml").display(),
            dir.join("1-first.yaml").display()
        )
    );
    // Same name, other kind or namespace: not a duplicate.
    std::fs::write(
        dir.join("2-more/second.yaml"),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: a}\n",
    )
    .unwrap();
    assert_eq!(
        sources::validate(std::slice::from_ref(&dir), StoreConfig::default())
            .unwrap()
            .len(),
        3
    );
    let _ = std::fs::remove_dir_all(&dir);
}

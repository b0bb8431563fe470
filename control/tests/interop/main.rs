//! Upstream's ztunnel (istio/ztunnel `62d82653`, dedicated mode) against our istiod, and
//! against our ztunnel on the wire in both directions, each in a private network namespace
//! (see `mesh.rs`). Each test names the wire fact it proves (sections of
//! `istio-wire-facts.md`, kept beside the repository in `shared/reference/`).
//!
//! Needs root, `ip`, `iptables` (for the STRICT checks) and the upstream binary
//! (`UPSTREAM_ZTUNNEL`, else `../shared/bin/upstream-ztunnel.xz`); without them each test
//! prints `SKIP` and passes, unless `REAL_COMPONENTS_REQUIRED=1`. Our ztunnel binary must be
//! built (`cargo test --workspace` does; alone: `cargo build -p dataplane --bin ztunnel`).

mod mesh;
mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};

use mesh::*;
use wire::Outcome;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// From pod a through upstream's SOCKS5 (loopback only, in its namespace).
fn via_upstream(mesh: &Mesh, target: SocketAddr, payload: &[u8]) -> Outcome {
    let proxy = at(Ipv4Addr::LOCALHOST, 15080);
    mesh.a
        .enter(|| wire::exchange(wire::socks5(proxy, target), payload))
        .unwrap()
}

/// From pod b through our SOCKS5; the client's address names the source workload.
fn via_ours(mesh: &Mesh, target: SocketAddr, payload: &[u8]) -> Outcome {
    let proxy = at(B_IP, 15080);
    mesh.b
        .enter(|| wire::exchange(wire::socks5(proxy, target), payload))
        .unwrap()
}

fn served_by(outcome: &Outcome, greeting: &str, payload_len: usize, what: &str) {
    match outcome {
        Outcome::Served {
            greeting: got,
            echoed,
            bye,
        } => {
            assert_eq!(got, greeting, "{what}: the wrong app answered");
            assert!(echoed, "{what}: the payload did not come back whole");
            assert_eq!(
                bye,
                &format!("bye {payload_len}"),
                "{what}: the half-close or the bytes after it were lost"
            );
        }
        Outcome::Refused(why) => panic!("{what}: refused ({why})"),
    }
}

fn refused(outcome: &Outcome, what: &str) {
    assert!(
        outcome.greeting().is_none(),
        "{what}: the app answered ({outcome:?})"
    );
}

/// 1 MiB of a pattern: larger than one HTTP/2 frame, under one stream window.
fn payload() -> Vec<u8> {
    (0..1 << 20).map(|i: u32| (i % 251) as u8).collect()
}

fn config_dump(mesh: &Mesh) -> serde_json::Value {
    let (status, body) = mesh
        .a
        .enter(|| wire::http_get(at(Ipv4Addr::LOCALHOST, 15000), "/config_dump"))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// §1.5, readiness gate: upstream reports ready only after ACKing a response of *each*
/// wildcard type (Address and Authorization), so istiod must answer both on a new stream.
#[test]
fn upstream_ztunnel_is_ready_on_our_istiod() {
    let Some(mesh) = mesh::mesh("upstream_ztunnel_is_ready_on_our_istiod") else {
        return;
    };
    let answer = mesh
        .a
        .enter(|| wire::http_get(at(A_IP, 15021), "/healthz/ready"))
        .unwrap();
    assert_eq!(
        answer,
        Ok((200, "ready\n".into())),
        "startup took {:?}",
        mesh.started_in
    );
}

/// §1.5 and §2: upstream ACKs every response of both types (a resource that failed to decode
/// or convert would be a NACK naming it), and keeps every resource istiod sent — rejected ones
/// are not stored, so its `/config_dump` holding all of them proves each was accepted.
#[test]
fn upstream_ztunnel_acks_every_resource_istiod_sends() {
    let Some(mesh) = mesh::mesh("upstream_ztunnel_acks_every_resource_istiod_sends") else {
        return;
    };
    for type_url in [
        "type.googleapis.com/istio.workload.Address",
        "type.googleapis.com/istio.security.Authorization",
    ] {
        wire::log_line(&mesh.istiod, &["ACK", UPSTREAM_NODE_ID, type_url])
            .unwrap_or_else(|e| panic!("istiod saw no ACK of {type_url} from upstream: {e}"));
    }
    let log = std::fs::read_to_string(mesh.istiod.log_path()).unwrap();
    assert!(
        !log.contains("NACK"),
        "istiod logged a NACK:\n{}",
        mesh.logs()
    );
    // Nor does upstream complain about anything it was sent: its only warnings and errors
    // are the access lines of the connections other checks have refused.
    let upstream_log = std::fs::read_to_string(mesh.upstream.log_path()).unwrap();
    let complaints: Vec<&str> = upstream_log
        .lines()
        .filter(|l| l.contains("\twarn\t") || l.contains("\terror\t"))
        .filter(|l| !l.contains("\taccess\t"))
        .collect();
    assert!(complaints.is_empty(), "upstream complains: {complaints:#?}");
    let dump = config_dump(mesh);
    let names = |key: &str, field: &str| -> Vec<String> {
        let mut v: Vec<String> = dump[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {dump}"))
            .iter()
            .map(|x| x[field].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names("workloads", "uid"),
        ["Kubernetes//Pod/interop/a-0", "Kubernetes//Pod/interop/b-0"]
    );
    assert_eq!(
        names("services", "hostname"),
        [
            "svc-a.interop.svc.cluster.local",
            "svc-b.interop.svc.cluster.local"
        ]
    );
    assert_eq!(
        names("policies", "name"),
        [
            "a-refuses-ours-on-9090",
            "b-refuses-upstream-on-9090",
            "istio_converted_static_strict"
        ]
    );
}

/// §3, CA API: upstream's CSR (dedicated mode: no impersonation, the identity is the caller
/// token's) is signed by our CA; the answer's last element is the trust anchor upstream
/// installs — our root — and the leaf chains to it. The same certificate then passes our
/// ztunnel's client-certificate check on the wire.
#[test]
fn upstream_certificate_is_issued_by_our_ca() {
    let Some(mesh) = mesh::mesh("upstream_certificate_is_issued_by_our_ca") else {
        return;
    };
    // Dedicated mode asks for its certificate with its first connection.
    served_by(
        &via_upstream(mesh, at(B_IP, APP_PORT), b"cert"),
        "b-0:8080",
        4,
        "upstream → ours",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let certificate = loop {
        let dump = config_dump(mesh);
        if let Some(c) = dump["certificates"].get(0) {
            break c.clone();
        }
        assert!(Instant::now() < deadline, "no certificate: {dump}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(certificate["identity"], UPSTREAM_ID);
    assert_eq!(certificate["state"], "Available");
    let pem = |v: &serde_json::Value| wire::base64(v["pem"].as_str().unwrap()).unwrap();
    // Compared as DER: upstream re-encodes the PEM (64-column lines, no CR).
    let der = |pem: &[u8]| CertificateDer::from_pem_slice(pem).unwrap();
    let ours = der(mesh.root_pem.as_bytes());
    assert_eq!(
        der(&pem(&certificate["rootCerts"][0])),
        ours,
        "upstream trusts a root that is not our CA's"
    );
    let leaf = der(&pem(&certificate["certChain"][0]));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ours).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&leaf, &[], UnixTime::now())
        .expect("upstream's leaf does not chain to our root");
    wire::log_line(
        &mesh.istiod,
        &["certificate issued", "node=node-a", UPSTREAM_ID],
    )
    .unwrap();
    let src = format!("src.identity=\"{UPSTREAM_ID}\"");
    wire::log_line(&mesh.ours, &["connection complete", "inbound", &src]).unwrap();
}

/// §4, HBONE with upstream as the client and ours as the server: mTLS 1.3, ALPN h2, no SNI,
/// HTTP/2 CONNECT to `<pod IP>:<target port>` (for the VIP, the service port already mapped to
/// the target port, §4.4), `forwarded: …;host=<service>` read by ours; 1 MiB of DATA frames
/// under flow control, and the client's half-close as END_STREAM reaching the app.
#[test]
fn upstream_to_ours_hbone_by_pod_ip_and_service_vip() {
    let Some(mesh) = mesh::mesh("upstream_to_ours_hbone_by_pod_ip_and_service_vip") else {
        return;
    };
    let big = payload();
    let by_pod = via_upstream(mesh, at(B_IP, APP_PORT), &big);
    served_by(&by_pod, "b-0:8080", big.len(), "upstream → ours by pod IP");
    let by_vip = via_upstream(mesh, at(SVC_B, SVC_PORT), b"vip");
    served_by(&by_vip, "b-0:8080", 3, "upstream → ours by Service VIP");
    let src = format!("src.identity=\"{UPSTREAM_ID}\"");
    for extra in [
        "dst.hbone_addr=198.18.0.3:8080",
        "dst.service=\"svc-b.interop",
    ] {
        wire::log_line(&mesh.ours, &["connection complete", "inbound", &src, extra]).unwrap();
    }
}

/// §4, HBONE with ours as the client and upstream as the server: upstream accepts our
/// client certificate (mandatory, from the mesh root), our CONNECT authority (it must equal
/// the dialled pod IP, §4.5 step 3), and answers 200 after reaching its app.
#[test]
fn ours_to_upstream_hbone_by_pod_ip_and_service_vip() {
    let Some(mesh) = mesh::mesh("ours_to_upstream_hbone_by_pod_ip_and_service_vip") else {
        return;
    };
    let big = payload();
    let by_pod = via_ours(mesh, at(A_IP, APP_PORT), &big);
    served_by(&by_pod, "a-0:8080", big.len(), "ours → upstream by pod IP");
    let by_vip = via_ours(mesh, at(SVC_A, SVC_PORT), b"vip");
    served_by(&by_vip, "a-0:8080", 3, "ours → upstream by Service VIP");
    let src = format!("src.identity=\"{OURS_ID}\"");
    wire::log_line(
        &mesh.upstream,
        &[
            "connection complete",
            "direction=\"inbound\"",
            &src,
            "dst.hbone_addr=198.18.0.2:8080",
        ],
    )
    .unwrap();
}

/// §2.2 and §4.5 step 5: the DENY policy istiod translated for a-0 (selector scope, L4 port
/// and principal) is enforced by upstream against our identity, answered with 401 on the
/// CONNECT; the port it does not name still passes.
#[test]
fn upstream_enforces_the_policy_istiod_pushed() {
    let Some(mesh) = mesh::mesh("upstream_enforces_the_policy_istiod_pushed") else {
        return;
    };
    served_by(
        &via_ours(mesh, at(A_IP, APP_PORT), b"ok"),
        "a-0:8080",
        2,
        "ours → upstream on the allowed port",
    );
    refused(&via_ours(mesh, at(A_IP, DENIED_PORT), b"no"), "by pod IP");
    refused(
        &via_ours(mesh, at(SVC_A, SVC_DENIED_PORT), b"no"),
        "by Service VIP (port 90 → 9090)",
    );
    wire::log_line(
        &mesh.upstream,
        &["explicitly denied by: interop/a-refuses-ours-on-9090"],
    )
    .unwrap();
    wire::log_line(&mesh.ours, &["198.18.0.2:9090 answered 401 Unauthorized"]).unwrap();
}

/// The same from the other side: ours enforces the policy on b-0 against upstream's
/// identity, and upstream reads our 401 as a refusal.
#[test]
fn ours_enforces_the_policy_istiod_pushed() {
    let Some(mesh) = mesh::mesh("ours_enforces_the_policy_istiod_pushed") else {
        return;
    };
    served_by(
        &via_upstream(mesh, at(B_IP, APP_PORT), b"ok"),
        "b-0:8080",
        2,
        "upstream → ours on the allowed port",
    );
    refused(
        &via_upstream(mesh, at(B_IP, DENIED_PORT), b"no"),
        "by pod IP",
    );
    refused(
        &via_upstream(mesh, at(SVC_B, SVC_DENIED_PORT), b"no"),
        "by Service VIP (port 90 → 9090)",
    );
    wire::log_line(
        &mesh.ours,
        &["explicitly denied by interop/b-refuses-upstream-on-9090"],
    )
    .unwrap();
    wire::log_line(
        &mesh.upstream,
        &[
            "dst.hbone_addr=198.18.0.3:9090",
            "error=\"http status: 401 Unauthorized\"",
        ],
    )
    .unwrap();
}

/// Plaintext from the other pod to `target`, which its namespace hands to `who`'s 15006:
/// refused, and `who` names the policy that refused it.
fn strict_refuses(
    test: &str,
    mesh: &Mesh,
    from: &harness::Netns,
    target: SocketAddr,
    who: &harness::Process,
) {
    if let Err(why) = &mesh.redirect {
        harness::skip(test, why);
        return;
    }
    let outcome = from
        .enter(|| wire::exchange(wire::plain(target), b"plain"))
        .unwrap();
    refused(&outcome, "plaintext to a STRICT workload");
    let dst = format!("dst.addr={target}");
    wire::log_line(who, &["istio-system/istio_converted_static_strict", &dst]).unwrap();
}

/// §3.2 of the policy semantics: PeerAuthentication STRICT reaches upstream as istiod's
/// static DENY `istio_converted_static_strict` (no peer identity), listed on a-0, and
/// upstream refuses plaintext with it.
#[test]
fn strict_refuses_plaintext_at_upstream() {
    let test = "strict_refuses_plaintext_at_upstream";
    let Some(mesh) = mesh::mesh(test) else { return };
    strict_refuses(test, mesh, &mesh.b, at(A_IP, APP_PORT), &mesh.upstream);
}

/// The same policy, enforced by ours for b-0.
#[test]
fn strict_refuses_plaintext_at_ours() {
    let test = "strict_refuses_plaintext_at_ours";
    let Some(mesh) = mesh::mesh(test) else { return };
    strict_refuses(test, mesh, &mesh.a, at(B_IP, APP_PORT), &mesh.ours);
}

/// Traffic metrics (§0, key metrics): both ztunnels label `istio_tcp_connections_opened_total`
/// with the same names in the same order, so one dashboard reads both.
#[test]
fn both_ztunnels_label_traffic_metrics_alike() {
    let Some(mesh) = mesh::mesh("both_ztunnels_label_traffic_metrics_alike") else {
        return;
    };
    served_by(
        &via_upstream(mesh, at(B_IP, APP_PORT), b"m"),
        "b-0:8080",
        1,
        "upstream → ours",
    );
    let labels = |netns: &harness::Netns, ip: Ipv4Addr| -> Vec<String> {
        let (_, body) = netns
            .enter(|| wire::http_get(at(ip, 15020), "/metrics"))
            .unwrap()
            .unwrap();
        let line = body
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .unwrap_or_else(|| panic!("no traffic metric in:\n{body}"))
            .to_string();
        let inner = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
        inner
            .split(',')
            .map(|kv| kv.split('=').next().unwrap_or_default().to_string())
            .collect()
    };
    let (ours, upstream) = (labels(&mesh.b, B_IP), labels(&mesh.a, A_IP));
    let missing: Vec<&String> = upstream.iter().filter(|l| !ours.contains(l)).collect();
    let extra: Vec<&String> = ours.iter().filter(|l| !upstream.contains(l)).collect();
    assert_eq!(
        ours, upstream,
        "traffic metric labels differ: ours lacks {missing:?}, has extra {extra:?}"
    );
}

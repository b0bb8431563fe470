//! istiod's TLS port (15012) as an attacker with a network path to it sees it: the CA asked
//! with tokens that are missing, forged, tampered, expired or for another node, and with
//! CSRs that are garbage or name someone else; xDS streams that are unauthenticated, that
//! NACK with megabytes of error text, or that open and never read.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use control::ca::TokenSigner;
use dataplane::identity::{CertificateRequest, Identity};
use dataplane::xds::proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use dataplane::xds::proto::google::rpc::Status as RpcStatus;
use dataplane::xds::proto::istio::v1::auth::IstioCertificateRequest;
use dataplane::xds::proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use futures_util::future::join_all;
use prost_types::{Struct, Value, value::Kind};

use super::junk::noise;
use super::{Ctx, Findings};
use crate::mesh::{Mesh, TRUST_DOMAIN};
use crate::wire::{grpc, tls};

/// One CreateCertificate call with `authorization` as the header, as is.
async fn create(
    mesh: &Mesh,
    authorization: Option<&str>,
    csr: String,
    impersonate: Option<&Identity>,
    validity: i64,
) -> Result<Vec<String>, String> {
    let client = tls::control_plane(mesh, None).map_err(|e| e.to_string())?;
    let metadata = impersonate.map(|id| Struct {
        fields: BTreeMap::from([(
            "ImpersonatedIdentity".to_string(),
            Value {
                kind: Some(Kind::StringValue(id.to_string())),
            },
        )]),
    });
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: validity,
        metadata,
    });
    if let Some(value) = authorization {
        match value.parse() {
            Ok(v) => {
                request.metadata_mut().insert("authorization", v);
            }
            Err(_) => return Err("not a header value".into()),
        }
    }
    let mut ca = IstioCertificateServiceClient::new(client.channel());
    match tokio::time::timeout(Duration::from_secs(5), ca.create_certificate(request)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(status)) => Err(format!("{:?}", status.code())),
        Ok(Ok(response)) => Ok(response.into_inner().cert_chain),
    }
}

pub async fn ca(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mesh = ctx.mesh;
    let web = tls::identity("shop", "web");
    let echo = tls::identity("shop", "echo");
    let good = CertificateRequest::new(&web)?.csr_pem;
    let bearer = |t: &str| format!("Bearer {t}");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let state = control::istiod::state_dir::load_or_create(&mesh.state_dir, TRUST_DOMAIN, now)?;
    let real = TokenSigner::new(&state.token_secret);
    let forged = TokenSigner::new(&[7u8; 32]).issue("node-a", None, hour, now);
    let expired = real.issue("node-a", None, hour, now - 3 * hour);
    let mut tampered = mesh.token_a.clone();
    let last = tampered.pop().unwrap_or('A');
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let workload_token = real.issue("node-a", Some(&web), hour, now);
    let evil = Identity::new("evil.example", "shop", "web");
    let system = Identity::new(TRUST_DOMAIN, "istio-system", "istiod");
    let huge = format!("Bearer {}", "A".repeat(1 << 20));

    // The control: node-a's token may have web's certificate.
    let control = create(
        mesh,
        Some(&bearer(&mesh.token_a)),
        good.clone(),
        Some(&web),
        3600,
    )
    .await;
    findings.expect(control.is_ok(), || {
        format!("the control CSR was refused: {control:?}")
    });

    let refused_cases: Vec<(&str, Option<String>, Option<&Identity>)> = vec![
        ("no token", None, Some(&web)),
        ("empty bearer", Some("Bearer ".into()), Some(&web)),
        (
            "garbage bearer",
            Some(bearer("garbage.garbage.garbage")),
            Some(&web),
        ),
        ("basic auth", Some("Basic bm9kZS1hOng=".into()), Some(&web)),
        (
            "token signed with another key",
            Some(bearer(&forged)),
            Some(&web),
        ),
        ("expired token", Some(bearer(&expired)), Some(&web)),
        ("tampered token", Some(bearer(&tampered)), Some(&web)),
        ("1 MiB token", Some(huge), Some(&web)),
        (
            "node-a asking for echo (on node-b)",
            Some(bearer(&mesh.token_a)),
            Some(&echo),
        ),
        (
            "node-a asking for another trust domain",
            Some(bearer(&mesh.token_a)),
            Some(&evil),
        ),
        (
            "node-a asking for istiod",
            Some(bearer(&mesh.token_a)),
            Some(&system),
        ),
        (
            "a workload's token impersonating",
            Some(bearer(&workload_token)),
            Some(&echo),
        ),
    ];
    for (name, authorization, impersonate) in refused_cases {
        let result = create(
            mesh,
            authorization.as_deref(),
            good.clone(),
            impersonate,
            3600,
        )
        .await;
        findings.expect(result.is_err(), || {
            format!("CA issued a certificate for: {name}")
        });
        findings.note(format!("{name}: {}", result.err().unwrap_or_default()));
    }

    let token = bearer(&mesh.token_a);
    let junk_pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "!".repeat(64)
    );
    let big = String::from_utf8_lossy(&noise(11, 3 << 20)).into_owned();
    for (name, csr) in [
        ("empty CSR", String::new()),
        ("garbage CSR", "garbage".to_string()),
        ("PEM armour around junk", junk_pem),
        ("3 MiB of noise", big),
    ] {
        let result = create(mesh, Some(&token), csr, Some(&web), 3600).await;
        findings.expect(result.is_err(), || format!("CA signed a {name}"));
        findings.note(format!("{name}: {}", result.err().unwrap_or_default()));
    }
    // A CSR naming echo, sent as node-a for web: the CA must sign web, or refuse.
    let spoof = CertificateRequest::new(&echo)?;
    match create(mesh, Some(&token), spoof.csr_pem.clone(), Some(&web), 3600).await {
        Ok(chain) => match spoof.finish(&chain) {
            Ok(cert) => findings.violation(format!("a CSR naming echo got {}", cert.identity)),
            Err(e) => findings.note(format!("CSR naming echo: signed as web ({e})")),
        },
        Err(e) => findings.note(format!("CSR naming echo: {e}")),
    }
    for validity in [-1, 0, i64::MAX] {
        let result = create(mesh, Some(&token), good.clone(), Some(&web), validity).await;
        findings.note(format!(
            "validity {validity}: {}",
            match &result {
                Ok(_) => "issued".to_string(),
                Err(e) => e.clone(),
            }
        ));
    }
    // A burst of good requests: signing costs CPU, it must not cost memory.
    let burst = join_all((0..200).map(|_| {
        let csr = good.clone();
        let token = token.clone();
        let web = web.clone();
        async move {
            create(mesh, Some(&token), csr, Some(&web), 3600)
                .await
                .is_ok()
        }
    }))
    .await;
    findings.note(format!(
        "burst: {}/200 good CSRs signed",
        burst.iter().filter(|ok| **ok).count()
    ));
    Ok(findings)
}

/// A NACK of `type_url`'s response `nonce` with `size` bytes of error text.
fn nack(type_url: &str, nonce: &str, size: usize) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "E".repeat(size),
            details: Vec::new(),
        }),
        ..DeltaDiscoveryRequest::default()
    }
}

pub async fn xds(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mesh = ctx.mesh;
    let node = grpc::node(mesh, "node-a", mesh.node_a_ip());

    // Unauthenticated streams on the TLS port are refused.
    for (name, token) in [("no token", None), ("garbage token", Some("garbage"))] {
        let client = tls::control_plane(mesh, token)?;
        let answered = async {
            let mut s = grpc::open_ads(&client, grpc::initial_requests(&node)).await?;
            grpc::both_answered(&mut s).await
        };
        let result = tokio::time::timeout(Duration::from_secs(3), answered).await;
        findings.expect(!matches!(result, Ok(Ok(_))), || {
            format!("an xDS stream with {name} was served")
        });
    }

    // NACKs with megabytes of error_detail, on one authenticated stream.
    let client = tls::control_plane(mesh, Some(&mesh.token_a))?;
    let mut stream = grpc::open_ads(&client, grpc::initial_requests(&node)).await?;
    let nonces = grpc::both_answered(&mut stream).await?;
    let mut sent = 0;
    for round in 0..4 {
        for (type_url, nonce) in &nonces {
            if stream
                .send
                .send(nack(type_url, nonce, 3 << 20))
                .await
                .is_ok()
            {
                sent += 1;
            }
        }
        let _ = round;
    }
    // One over tonic's 4 MiB decoding limit, and a node id of 3 MiB.
    let (type_url, nonce) = nonces
        .iter()
        .next()
        .context("istiod answered no type on the NACK stream")?;
    let _ = stream.send.send(nack(type_url, nonce, 5 << 20)).await;
    let mut big_node = node.clone();
    big_node.id = "n".repeat(3 << 20);
    let mut second = grpc::initial_requests(&big_node);
    let second_client = tls::control_plane(mesh, Some(&mesh.token_a))?;
    let big_node_stream = grpc::open_ads(&second_client, std::mem::take(&mut second)).await;
    let ended = tokio::time::timeout(Duration::from_secs(3), stream.responses.message()).await;
    findings.note(format!(
        "{sent} NACKs of 3 MiB sent; after the 5 MiB one the stream ended with {:?}; a 3 MiB node id: {}",
        ended.map(|r| r.map(|m| m.is_some()).map_err(|s| s.code())),
        match big_node_stream {
            Ok(_) => "stream opened".to_string(),
            Err(e) => format!("{e:#}"),
        }
    ));
    drop(stream);

    // Streams that open and never read: no receive window at all.
    let mut held: Vec<Box<dyn Send>> = Vec::new();
    let mut opened = 0;
    let mut refused = None;
    let host = mesh.istiod_ip().to_string();
    for _ in 0..20 {
        let mut connection = match grpc::never_reading_connection(mesh).await {
            Ok(c) => c,
            Err(e) => {
                refused.get_or_insert(format!("connection: {e:#}"));
                continue;
            }
        };
        for _ in 0..100 {
            let mut body = Vec::new();
            for request in grpc::initial_requests(&node) {
                body.extend_from_slice(&grpc::grpc_frame(&request));
            }
            let stream =
                grpc::open_unread_stream(&mut connection.send, &host, &mesh.token_a, body.into())
                    .await;
            match stream {
                Ok(s) => {
                    opened += 1;
                    held.push(Box::new(s));
                }
                Err(e) => {
                    refused.get_or_insert(format!("stream: {e:#}"));
                    break;
                }
            }
        }
        held.push(Box::new(connection));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    findings.note(format!(
        "{opened} never-reading xDS streams held{}",
        refused
            .map(|r| format!("; first refusal: {r}"))
            .unwrap_or_default()
    ));
    let during = crate::probe::happy_path(mesh).await;
    findings.expect(during.is_ok(), || {
        format!(
            "happy path failed while {opened} streams never read: {}",
            during.err().unwrap_or_default()
        )
    });
    drop(held);
    Ok(findings)
}

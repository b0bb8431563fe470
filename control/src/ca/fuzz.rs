//! Fuzz targets for what the CA takes from callers: bearer headers and caller tokens, the
//! `ImpersonatedIdentity` a node ztunnel asks for, and CSRs. Anyone who can reach istiod's
//! port can send these, and the CA is what mTLS identity rests on, so: garbage and mutated
//! tokens are refused unless they still say exactly what was signed (a mutation may find
//! another spelling of the same bytes, never other claims); impersonation is granted only as
//! the rules say; a CSR is signed only if it is one, and a mutated CSR can never get a
//! certificate for a key other than the one that signed it. Never a panic, whatever the
//! input, the requested lifetime or the token lifetime an operator asks for.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataplane::identity::{CertificateRequest, Identity, LocalCa};
use dataplane::state::Workload;
use proptest::prelude::*;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509CertificationRequest};

use super::*;
use crate::fuzzing::{bounded, config, hostile_text};
use crate::snapshot::Snapshot;

const SECRET: [u8; 32] = [7; 32];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn identity() -> Identity {
    Identity::new("cluster.local", "shop", "web")
}

/// One CA and one valid CSR (with its public key) for every case: keys are slow to make.
static CA: LazyLock<CertificateAuthority> = LazyLock::new(|| {
    let root = LocalCa::generate("cluster.local", now() - Duration::from_secs(3600)).unwrap();
    CertificateAuthority::new(root, "cluster.local", DEFAULT_TTL)
});
static CSR: LazyLock<(Vec<u8>, Vec<u8>)> = LazyLock::new(|| {
    let pem = CertificateRequest::new(&identity()).unwrap().csr_pem;
    let der = pem::parse(&pem).unwrap().into_contents();
    let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
    let key = csr.certification_request_info.subject_pki.raw.to_vec();
    (der, key)
});

/// A change to a token's text.
fn mutated(token: &str, at: prop::sample::Index, how: u8, with: char) -> String {
    let chars: Vec<char> = token.chars().collect();
    let i = at.index(chars.len());
    let mut out: Vec<char> = chars.clone();
    match how % 5 {
        0 => out[i] = with,
        1 => out.insert(i, with),
        2 => {
            out.remove(i);
        }
        3 => {
            out[i] = if out[i].is_ascii_lowercase() {
                out[i].to_ascii_uppercase()
            } else {
                with
            }
        }
        _ => out.truncate(i),
    }
    out.into_iter().collect()
}

fn ttl() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => (1u64..10_000_000).prop_map(Duration::from_secs),
        1 => any::<u64>().prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    /// Arbitrary text is never a token, and never a panic.
    #[test]
    fn fuzz_token_garbage(
        text in prop_oneof![
            hostile_text(),
            "\\PC{0,80}",
            ("[0-9a-fA-F+]{0,64}", "[0-9a-fA-F+]{0,70}").prop_map(|(c, m)| format!("istio-node.{c}.{m}")),
        ],
        header in prop_oneof![hostile_text(), "Bearer \\PC{0,40}"],
    ) {
        let signer = TokenSigner::new(&SECRET);
        let verified = bounded("verifying", || signer.verify(&text, now()))?;
        prop_assert!(verified.is_err());
        if let Ok(token) = bounded("reading the header", || bearer(Some(&header)))? {
            prop_assert!(header.starts_with("Bearer ") && !token.is_empty());
            prop_assert_eq!(token, token.trim());
        }
    }

    /// Issued tokens verify until they expire, whatever lifetime was asked for; a mutated
    /// one is refused, or (another spelling of the same signed bytes) says the same claims.
    #[test]
    fn fuzz_token_mutations(
        node in prop_oneof![Just("node-a".to_string()), hostile_text()],
        own in prop::option::of(Just(identity())),
        ttl in ttl(),
        at in any::<prop::sample::Index>(),
        how in any::<u8>(),
        with in prop_oneof![Just('0'), Just('.'), Just('+'), Just(' '), any::<char>()],
    ) {
        let signer = TokenSigner::new(&SECRET);
        let token = bounded("issuing", || signer.issue(&node, own.as_ref(), ttl, now()))?;
        let claims = signer.verify(&token, now());
        prop_assert!(claims.is_ok(), "{:?}", claims);
        let claims = claims.unwrap();
        prop_assert_eq!(&claims.node, &node);
        prop_assert_eq!(claims.identity.clone(), own.map(|i| i.to_string()));
        if let Some(expiry) = UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp)) {
            prop_assert!(expiry > now());
            prop_assert!(signer.verify(&token, expiry).is_err());
        }
        let other = mutated(&token, at, how, with);
        match bounded("verifying", || signer.verify(&other, now()))? {
            Ok(read) => prop_assert_eq!(read, claims),
            Err(e) => prop_assert!(other != token, "{}", e),
        }
    }

    /// Impersonation: the caller's own identity without it; with it, only an identity in
    /// the trust domain that some workload on the caller's node has, asked by a node proxy.
    #[test]
    fn fuzz_ca_authorize(
        node in prop::sample::select(vec!["node-a", "node-b", ""]),
        own in prop::option::of(prop_oneof![
            Just("spiffe://cluster.local/ns/shop/sa/dedicated".to_string()),
            hostile_text(),
        ]),
        asked in prop::option::of(prop_oneof![
            prop::sample::select(vec![
                "spiffe://cluster.local/ns/shop/sa/web",
                "spiffe://cluster.local/ns/shop/sa/other",
                "spiffe://evil.local/ns/shop/sa/web",
                "spiffe://cluster.local/ns/shop/sa/web/x",
            ]).prop_map(str::to_string),
            hostile_text(),
        ]),
        on in prop::sample::select(vec!["node-a", "node-b"]),
    ) {
        let claims = Claims { node: node.to_string(), identity: own.clone(), exp: u64::MAX };
        let mut snapshot = Snapshot::default();
        let web = Workload {
            uid: "web-0".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            node: on.into(),
            ..Workload::default()
        };
        snapshot.workloads.insert(web.uid.clone(), web);
        let granted = bounded("authorizing", || {
            authorize(&claims, asked.as_deref(), "cluster.local", &snapshot)
        })?;
        match (&asked, granted) {
            (None, Ok(id)) => match &own {
                Some(own) => prop_assert_eq!(id.to_string(), own.clone()),
                None => prop_assert_eq!(id, Identity::new("cluster.local", "istio-system", "ztunnel")),
            },
            (Some(asked), Ok(id)) => {
                prop_assert!(own.is_none());
                prop_assert_eq!(&id.to_string(), asked);
                prop_assert_eq!(id, identity());
                prop_assert_eq!(node, on);
            }
            (None, Err(_)) => prop_assert!(own.is_some_and(|o| o.parse::<Identity>().is_err())),
            (Some(asked), Err(_)) => prop_assert!(
                own.is_some() || node != on || asked.parse::<Identity>().ok() != Some(identity())
            ),
        }
    }

    /// Anything that is not a CSR is refused, never a panic.
    #[test]
    fn fuzz_csr_garbage(
        text in prop_oneof![
            hostile_text(),
            prop::collection::vec(any::<u8>(), 0..600)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            prop::collection::vec(any::<u8>(), 0..600)
                .prop_map(|b| pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", b))),
        ],
    ) {
        let signed = bounded("signing", || CA.sign(&text, &identity(), 0, now()))?;
        prop_assert!(matches!(signed, Err(SignError::Csr(_))), "{:?}", signed.map(|_| ()));
    }

    /// A valid CSR changed anywhere: signed only as what it proves, with its own key, the
    /// caller's identity alone and the lifetime asked for (never past MAX_TTL).
    #[test]
    fn fuzz_csr_mutations(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..3),
        label in prop::sample::select(vec!["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST", "CERTIFICATE"]),
        requested in prop_oneof![Just(0i64), 1i64..1_000_000, any::<i64>()],
    ) {
        let (der, key) = &*CSR;
        let mut mutated = der.clone();
        for (at, byte, how) in &edits {
            let i = at.index(mutated.len().max(1)).min(mutated.len());
            match how {
                0 if i < mutated.len() => mutated[i] ^= byte.max(&1),
                1 => mutated.insert(i, *byte),
                2 if i < mutated.len() => {
                    mutated.remove(i);
                }
                _ => mutated.truncate(i),
            }
        }
        let pem = pem::encode(&pem::Pem::new(label, mutated.clone()));
        let signed = bounded("signing", || CA.sign(&pem, &identity(), requested, now()))?;
        let max = i64::try_from(MAX_TTL.as_secs()).unwrap();
        match signed {
            Err(SignError::NegativeTtl(_)) => prop_assert!(requested < 0),
            Err(SignError::TtlTooLong { .. }) => prop_assert!(requested > max),
            Err(SignError::Csr(_)) => prop_assert!(mutated != *der || label == "CERTIFICATE"),
            Ok(chain) => {
                prop_assert!((0..=max).contains(&requested));
                prop_assert_eq!(chain.len(), 2);
                let leaf = pem::parse(&chain[0]).unwrap().into_contents();
                let (_, leaf) = X509Certificate::from_der(&leaf).unwrap();
                prop_assert_eq!(leaf.public_key().raw, key.as_slice());
                let uris: Vec<String> = leaf
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|san| {
                        san.value
                            .general_names
                            .iter()
                            .map(|n| match n {
                                GeneralName::URI(uri) => format!("URI:{uri}"),
                                other => format!("{other:?}"),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                prop_assert_eq!(uris, vec![format!("URI:{}", identity())]);
                let lifetime = if requested == 0 { DEFAULT_TTL.as_secs() } else { requested.unsigned_abs() };
                let not_after = leaf.validity().not_after.timestamp();
                prop_assert_eq!(not_after.unsigned_abs(), 1_800_000_000 + lifetime);
            }
        }
    }
}

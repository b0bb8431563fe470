//! SPIFFE identities of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// A workload identity. Upstream's parsing rule: exactly five `/`-separated parts after the
/// `spiffe://` scheme, with the literal keywords `ns` and `sa`; empty components are tolerated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error(
        "identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Shape(String),
}

const SCHEME: &str = "spiffe://";

impl Identity {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The identity as policies write it: without the `spiffe://` scheme.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::Scheme(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Ok(Identity::new(*td, *ns, *sa)),
            _ => Err(IdentityError::Shape(s.to_string())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_upstream_examples() {
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "shop", "web"));
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/web");
        // empty components are tolerated, as upstream
        let id: Identity = "spiffe:///ns//sa/".parse().unwrap();
        assert_eq!(id, Identity::new("", "", ""));
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "cluster.local/ns/a/sa/b",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/namespace/a/sa/b",
            "spiffe://cluster.local/ns/a/serviceaccount/b",
            "spiffe://cluster.local",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad} parsed");
        }
    }

    /// A realistic trust domain: a DNS name (`cluster.local`, `td-1.example.com`).
    fn arb_trust_domain() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}"
    }

    /// A Kubernetes namespace: an RFC 1123 label.
    fn arb_namespace() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?"
    }

    /// A Kubernetes service account: an RFC 1123 subdomain.
    fn arb_service_account() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?"
    }

    /// Any component the parser accepts: anything without a `/`, including the empty string
    /// and the keywords themselves (a namespace may well be called `sa`).
    fn arb_any_component() -> impl Strategy<Value = String> {
        prop_oneof![
            "[^/]{0,12}",
            Just(String::new()),
            Just("ns".to_string()),
            Just("sa".to_string()),
            Just("spiffe:".to_string()),
        ]
    }

    fn arb_parts() -> impl Strategy<Value = (String, String, String)> {
        prop_oneof![
            3 => (arb_trust_domain(), arb_namespace(), arb_service_account()),
            1 => (arb_any_component(), arb_any_component(), arb_any_component()),
        ]
    }

    /// The segments after the scheme of the identity made of these parts.
    fn segments(td: &str, ns: &str, sa: &str) -> Vec<String> {
        vec![td.into(), "ns".into(), ns.into(), "sa".into(), sa.into()]
    }

    fn with_scheme(segments: &[String]) -> String {
        format!("spiffe://{}", segments.join("/"))
    }

    /// A single edit of a valid identity's segments that breaks the
    /// `<td>/ns/<ns>/sa/<sa>` shape (the scheme is kept intact).
    #[derive(Debug, Clone)]
    enum ShapeMutation {
        /// Replace the `ns` keyword with another word.
        NsKeyword(&'static str),
        /// Replace the `sa` keyword with another word.
        SaKeyword(&'static str),
        /// `<td>/sa/<ns>/ns/<sa>`.
        SwapKeywords,
        /// Insert one more segment at this index (0..=5): leading, inner, or trailing slash
        /// when the segment is empty.
        Insert(usize, String),
        /// Drop the segment at this index (0..5).
        Remove(usize),
    }

    fn arb_shape_mutation() -> impl Strategy<Value = ShapeMutation> {
        let not_ns =
            prop::sample::select(vec!["", "NS", "Ns", "n", "nss", "ns ", "namespace", "sa"]);
        let not_sa =
            prop::sample::select(vec!["", "SA", "s", "saa", " sa", "serviceaccount", "ns"]);
        prop_oneof![
            not_ns.prop_map(ShapeMutation::NsKeyword),
            not_sa.prop_map(ShapeMutation::SaKeyword),
            Just(ShapeMutation::SwapKeywords),
            (0usize..=5, arb_any_component()).prop_map(|(i, s)| ShapeMutation::Insert(i, s)),
            (0usize..5).prop_map(ShapeMutation::Remove),
        ]
    }

    fn apply(mutation: &ShapeMutation, mut segs: Vec<String>) -> Vec<String> {
        match mutation {
            ShapeMutation::NsKeyword(k) => segs[1] = (*k).into(),
            ShapeMutation::SaKeyword(k) => segs[3] = (*k).into(),
            ShapeMutation::SwapKeywords => segs.swap(1, 3),
            ShapeMutation::Insert(i, s) => segs.insert(*i, s.clone()),
            ShapeMutation::Remove(i) => {
                segs.remove(*i);
            }
        }
        segs
    }

    proptest! {
        /// Identities built from realistic parts parse to exactly those parts and survive
        /// Display -> parse; the principal is the string without the scheme.
        #[test]
        fn generated_identities_parse_and_round_trip((td, ns, sa) in arb_parts()) {
            let s = format!("spiffe://{td}/ns/{ns}/sa/{sa}");
            let id: Identity = s.parse().unwrap();
            prop_assert_eq!(&id.trust_domain, &td);
            prop_assert_eq!(&id.namespace, &ns);
            prop_assert_eq!(&id.service_account, &sa);
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(id.principal(), format!("{td}/ns/{ns}/sa/{sa}"));
            prop_assert_eq!(id.to_string().parse::<Identity>().unwrap(), id.clone());
            // and from the value side
            let built = Identity::new(td, ns, sa);
            prop_assert_eq!(built.to_string().parse::<Identity>().unwrap(), built);
        }

        /// Emptying the trust domain, namespace or service account keeps the identity valid
        /// (upstream tolerates empty components); only that field becomes empty.
        #[test]
        fn emptied_components_are_tolerated((td, ns, sa) in arb_parts(), which in 0usize..3) {
            let mut parts = [td, ns, sa];
            parts[which].clear();
            let [td, ns, sa] = parts;
            let s = with_scheme(&segments(&td, &ns, &sa));
            prop_assert_eq!(s.parse::<Identity>(), Ok(Identity::new(td, ns, sa)));
        }

        /// Breaking the shape of a valid identity once (keyword changed or swapped, a
        /// segment added or removed, leading/trailing/double slash) is rejected as a shape
        /// error: by construction the result no longer has exactly five segments with `ns`
        /// second and `sa` fourth.
        #[test]
        fn shape_mutations_are_rejected(
            (td, ns, sa) in arb_parts(),
            mutation in arb_shape_mutation(),
        ) {
            let s = with_scheme(&apply(&mutation, segments(&td, &ns, &sa)));
            prop_assert_eq!(s.parse::<Identity>(), Err(IdentityError::Shape(s.clone())));
        }

        /// Replacing or dropping the `spiffe://` scheme of a valid identity is rejected as a
        /// scheme error (a realistic trust domain is never empty, so no variant can
        /// accidentally re-form `spiffe://`).
        #[test]
        fn scheme_mutations_are_rejected(
            td in arb_trust_domain(),
            ns in arb_namespace(),
            sa in arb_service_account(),
            scheme in prop::sample::select(vec![
                "", "SPIFFE://", "Spiffe://", "spiffe:/", "spiffe:", "spiffe//", "spiffe",
                "spife://", "http://", "https://", " spiffe://", "/spiffe://",
            ]),
        ) {
            let s = format!("{scheme}{}", segments(&td, &ns, &sa).join("/"));
            prop_assert_eq!(s.parse::<Identity>(), Err(IdentityError::Scheme(s.clone())));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<Identity>();
        }
    }
}

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

    proptest! {
        #[test]
        fn display_then_parse_round_trips(
            td in "[a-z0-9.-]{0,20}",
            ns in "[a-z0-9-]{0,20}",
            sa in "[a-z0-9-]{0,20}",
        ) {
            let id = Identity::new(td, ns, sa);
            let back: Identity = id.to_string().parse().unwrap();
            prop_assert_eq!(back, id);
        }

        #[test]
        fn parse_accepts_exactly_five_parts_with_keywords(s in "spiffe://[a-z/]{0,30}") {
            let rest = &s["spiffe://".len()..];
            let parts: Vec<&str> = rest.split('/').collect();
            let shaped = parts.len() == 5 && parts[1] == "ns" && parts[3] == "sa";
            prop_assert_eq!(s.parse::<Identity>().is_ok(), shaped);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<Identity>();
        }
    }
}

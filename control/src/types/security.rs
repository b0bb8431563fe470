//! `security.istio.io/v1` specs, accepting the same YAML as upstream (camelCase fields; unknown
//! fields are errors).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Pods in the policy's namespace (or, from the root namespace, in any) whose labels include
/// all of these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A reference to what a waypoint-enforced policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

/// The extension provider of a CUSTOM policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub action: AuthorizationAction,
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
    /// `None` and `[]` both mean "no rules": an ALLOW that allows nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// `from`, `to` and `when` AND together; a missing section means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Option<Vec<From>>,
    #[serde(default)]
    pub to: Option<Vec<To>>,
    #[serde(default)]
    pub when: Option<Vec<Condition>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    pub source: Source,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    pub operation: Operation,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// How strictly a workload requires mTLS from its peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MutualTlsMode {
    /// Inherit from the next level up.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MutualTlsMode,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Workload (container) port → mode; only valid with a selector. Keys may be written as
    /// YAML integers or as the strings the API's JSON has (see `port_keyed`).
    #[serde(default, deserialize_with = "port_level_mtls")]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

fn port_level_mtls<'de, D>(deserializer: D) -> Result<BTreeMap<u32, MutualTls>, D::Error>
where
    D: Deserializer<'de>,
{
    port_keyed(deserializer, "portLevelMtls")
}

/// A map key as written: the API's JSON has only string keys (`"8080"`), YAML written by
/// hand usually has integers (`8080`); anything else is kept to be named in the error.
enum RawPortKey {
    Number(i128),
    Text(String),
    Other(String),
}

impl<'de> Deserialize<'de> for RawPortKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = RawPortKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number, as an integer or a string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPortKey, E> {
                Ok(RawPortKey::Number(i128::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPortKey, E> {
                Ok(RawPortKey::Number(i128::from(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPortKey, E> {
                Ok(RawPortKey::Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawPortKey, E> {
                Ok(RawPortKey::Other(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawPortKey, E> {
                Ok(RawPortKey::Other(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawPortKey, E> {
                Ok(RawPortKey::Other("null".into()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

/// A map keyed by port, accepting both key forms. Keys must be whole numbers that fit a
/// `u32` (decimal digits only when written as a string), so a typo such as `http` or `-1` is
/// an error naming `field` and the key; the 1..65535 range is checked by validation, which
/// names the object too. A port written twice (`8080` and `"8080"`) is an error rather than
/// one silently replacing the other.
fn port_keyed<'de, D, V>(deserializer: D, field: &'static str) -> Result<BTreeMap<u32, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct MapVisitor<V> {
        field: &'static str,
        value: PhantomData<V>,
    }
    impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
        type Value = BTreeMap<u32, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}: a map from port numbers", self.field)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(raw) = map.next_key::<RawPortKey>()? {
                let (port, shown) = match raw {
                    RawPortKey::Number(n) => (u32::try_from(n).ok(), n.to_string()),
                    RawPortKey::Text(t) => {
                        let digits = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
                        (digits.then(|| t.parse().ok()).flatten(), format!("{t:?}"))
                    }
                    RawPortKey::Other(o) => (None, o),
                };
                let Some(port) = port else {
                    return Err(de::Error::custom(format!(
                        "port key {shown} is not a number ({} keys are ports 1..65535, \
                         written as integers or strings)",
                        self.field
                    )));
                };
                let value = map.next_value()?;
                if out.insert(port, value).is_some() {
                    return Err(de::Error::custom(format!(
                        "port {port} is listed more than once in {}",
                        self.field
                    )));
                }
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(MapVisitor {
        field,
        value: PhantomData,
    })
}

/// Status as the API server reports it; kept opaque because the control plane never reads it.
pub type OpaqueStatus = Option<serde_yaml::Value>;

/// A `security.istio.io/v1` (or `v1beta1`) AuthorizationPolicy object: the same YAML as
/// upstream, with unknown fields rejected so that typos do not silently widen a policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Absent means `{}`: an ALLOW policy without rules, which denies everything it selects.
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: OpaqueStatus,
}

/// A `security.istio.io/v1` (or `v1beta1`) PeerAuthentication object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: OpaqueStatus,
}

/// Implements `kube::Resource` by hand (rather than `#[derive(CustomResource)]`) so the objects
/// keep an optional `spec`, reject unknown fields and need no JSON schema; the watcher only
/// needs the API coordinates.
macro_rules! istio_security_resource {
    ($ty:ident, $kind:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = kube::core::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "security.istio.io".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

istio_security_resource!(
    AuthorizationPolicy,
    "AuthorizationPolicy",
    "authorizationpolicies"
);
istio_security_resource!(
    PeerAuthentication,
    "PeerAuthentication",
    "peerauthentications"
);

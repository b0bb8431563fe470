//! Local-config (file) mode: the ztunnel reads workloads, services and policies from a YAML file
//! (upstream's `LOCAL_XDS_PATH` / `LOCAL_XDS`) instead of, or in addition to, xDS.
//!
//! The file has upstream Istio ztunnel's local-config shape, so one file drives both upstream's
//! ztunnel and ours in interop tests. The YAML is read into private structs that mirror that
//! shape exactly (camelCase, unknown fields rejected as upstream does), then validated and
//! converted into the model types of [`crate::state`] and [`crate::policy`]. Every invalid value
//! is reported with the object and field it is in, because a local config is hand-written and
//! the person fixing it needs to know where to look.
//!
//! Unlike xDS, local config does not default `trustDomain` or `serviceAccount`: empty strings
//! are kept as written (our [`Workload::identity`] then applies the usual defaults).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::{
    Action, Authorization, Cidr, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use crate::state::{
    GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress, PortMap, Service,
    State, TunnelProtocol, Workload, WorkloadStatus,
};

/// A local config, converted into model types and validated, ready to be put into a [`State`].
///
/// Kept as plain lists (not a `State`) so callers can inspect or merge it before applying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalConfig {
    /// In file order; uids are unique (checked, since `State` would silently keep the last).
    pub workloads: Vec<Workload>,
    /// In file order; `namespace/hostname` keys are unique.
    pub services: Vec<Service>,
    /// In file order; `namespace/name` keys are unique.
    pub policies: Vec<Authorization>,
}

/// Why a local config could not be used. Each variant says where the problem is, so a start-up
/// failure can be fixed from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// The file could not be read.
    #[error("cannot read local config {}: {error}", .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not YAML, or not the local-config shape: an unknown or missing field, a wrong type or an
    /// unknown enum value. serde_yaml's message carries the line and column.
    #[error("{}: {error}", Origin(.path.as_deref()))]
    Yaml {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        error: serde_yaml::Error,
    },
    /// Well-formed YAML with a value that is not valid, e.g. an IP that does not parse.
    /// `message` names the object and the field, e.g.
    /// `workloads[1] (shop/cart-0): workloadIps[0]: "10.0.0.x" is not an IP address`.
    #[error("{}: {message}", Origin(.path.as_deref()))]
    Invalid {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        message: String,
    },
}

/// Renders "local config" or "local config <path>" as the prefix of an error message.
struct Origin<'a>(Option<&'a Path>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "invalid local config {}", path.display()),
            None => f.write_str("invalid local config"),
        }
    }
}

impl LocalConfigError {
    fn with_path(self, file: &Path) -> Self {
        match self {
            LocalConfigError::Yaml { error, .. } => LocalConfigError::Yaml {
                path: Some(file.to_path_buf()),
                error,
            },
            LocalConfigError::Invalid { message, .. } => LocalConfigError::Invalid {
                path: Some(file.to_path_buf()),
                message,
            },
            io @ LocalConfigError::Io { .. } => io,
        }
    }
}

impl LocalConfig {
    /// Parses and validates a local config given inline (upstream's `LOCAL_XDS`). An empty
    /// document is an empty config.
    pub fn parse(yaml: &str) -> Result<Self, LocalConfigError> {
        // serde_yaml reads an empty document (or one with only comments) as null.
        let raw: Option<RawConfig> = serde_yaml::from_str(yaml)
            .map_err(|error| LocalConfigError::Yaml { path: None, error })?;
        raw.unwrap_or_default()
            .convert()
            .map_err(|message| LocalConfigError::Invalid {
                path: None,
                message,
            })
    }

    /// Reads, parses and validates a local config file (upstream's `LOCAL_XDS_PATH`). Errors
    /// name the file.
    pub fn load(path: &Path) -> Result<Self, LocalConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|error| LocalConfigError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&yaml).map_err(|e| e.with_path(path))
    }

    /// Inserts everything into `state`, replacing objects with the same key (workload uid,
    /// service `namespace/hostname`, policy `namespace/name`), as an xDS update would.
    pub fn apply_to(&self, state: &mut State) {
        for service in &self.services {
            state.insert_service(service.clone());
        }
        for workload in &self.workloads {
            state.insert_workload(workload.clone());
        }
        for policy in &self.policies {
            state.insert_policy(policy.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The YAML shape, field for field as upstream writes it.

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "local config", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    workloads: Vec<RawWorkload>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "workload", deny_unknown_fields, rename_all = "camelCase")]
struct RawWorkload {
    workload_ips: Vec<String>,
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    protocol: RawProtocol,
    /// Accepted so upstream files load; our model has no host-network notion, so it is ignored.
    #[serde(default, rename = "networkMode")]
    _network_mode: RawNetworkMode,
    #[serde(default)]
    status: RawStatus,
    waypoint: Option<RawGateway>,
    network_gateway: Option<RawGateway>,
    #[serde(default)]
    native_tunnel: bool,
    #[serde(default)]
    authorization_policies: Vec<String>,
    capacity: Option<i64>,
    #[serde(default)]
    services: BTreeMap<String, BTreeMap<i64, i64>>,
    // Upstream fields our model cannot represent: rejected when set rather than silently
    // dropped, since ignoring them would change where traffic goes.
    hostname: Option<serde_yaml::Value>,
    application_tunnel: Option<serde_yaml::Value>,
    locality: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "protocol")]
enum RawProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "network mode")]
enum RawNetworkMode {
    #[default]
    Standard,
    HostNetwork,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "status")]
enum RawStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Debug, Deserialize)]
#[serde(
    rename = "gateway address",
    deny_unknown_fields,
    rename_all = "camelCase"
)]
struct RawGateway {
    destination: String,
    hbone_mtls_port: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "service", deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: String,
    namespace: String,
    hostname: String,
    vips: Vec<String>,
    ports: BTreeMap<i64, i64>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    waypoint: Option<RawGateway>,
    // Upstream fields our model cannot represent (see RawWorkload).
    weighted_waypoints: Option<serde_yaml::Value>,
    load_balancer: Option<serde_yaml::Value>,
    ip_families: Option<serde_yaml::Value>,
    canonical: Option<serde_yaml::Value>,
    visibility: Option<serde_yaml::Value>,
    cidr_vips: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "policy", deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    name: String,
    namespace: String,
    scope: RawScope,
    action: RawAction,
    dry_run: bool,
    /// Rules (OR) of clauses (AND) of matches (OR).
    rules: Vec<Vec<Vec<RawMatch>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "scope")]
enum RawScope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "action")]
enum RawAction {
    Allow,
    Deny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "match", deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    #[serde(default)]
    namespaces: Vec<RawStringMatch>,
    #[serde(default)]
    not_namespaces: Vec<RawStringMatch>,
    #[serde(default)]
    principals: Vec<RawStringMatch>,
    #[serde(default)]
    not_principals: Vec<RawStringMatch>,
    #[serde(default)]
    service_accounts: Vec<RawServiceAccount>,
    #[serde(default)]
    not_service_accounts: Vec<RawServiceAccount>,
    #[serde(default)]
    source_ips: Vec<String>,
    #[serde(default)]
    not_source_ips: Vec<String>,
    #[serde(default)]
    destination_ips: Vec<String>,
    #[serde(default)]
    not_destination_ips: Vec<String>,
    #[serde(default)]
    destination_ports: Vec<i64>,
    #[serde(default)]
    not_destination_ports: Vec<i64>,
}

/// Written as YAML tags: `!Exact v`, `!Prefix v`, `!Suffix v`, `!Presence []` (upstream's
/// `Presence` is a variant with an empty tuple, hence the empty list).
#[derive(Debug, Deserialize)]
#[serde(rename = "string match")]
enum RawStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence(),
}

#[derive(Debug, Deserialize)]
#[serde(
    rename = "service account match",
    deny_unknown_fields,
    rename_all = "camelCase"
)]
struct RawServiceAccount {
    namespace: String,
    service_account: String,
}

// ---------------------------------------------------------------------------------------------
// Conversion. Inner functions return "field: problem"; the caller prefixes the object.

impl RawConfig {
    fn convert(self) -> Result<LocalConfig, String> {
        let mut config = LocalConfig::default();
        let mut uids: HashMap<String, usize> = HashMap::new();
        for (i, raw) in self.workloads.into_iter().enumerate() {
            let object = format!("workloads[{i}] ({})", workload_label(&raw));
            let workload = raw.convert().map_err(|e| format!("{object}: {e}"))?;
            // State keys workloads by uid; a repeat would silently replace the earlier one.
            if let Some(first) = uids.insert(workload.uid.clone(), i) {
                return Err(format!(
                    "{object}: uid: {:?} is also the uid of workloads[{first}]",
                    workload.uid
                ));
            }
            config.workloads.push(workload);
        }
        let mut keys: HashMap<String, usize> = HashMap::new();
        for (i, raw) in self.services.into_iter().enumerate() {
            let object = format!("services[{i}] ({}/{})", raw.namespace, raw.hostname);
            let service = raw.convert().map_err(|e| format!("{object}: {e}"))?;
            if let Some(first) = keys.insert(service.key(), i) {
                return Err(format!(
                    "{object}: hostname: {:?} in namespace {:?} is also services[{first}]",
                    service.hostname, service.namespace
                ));
            }
            config.services.push(service);
        }
        let mut keys: HashMap<String, usize> = HashMap::new();
        for (i, raw) in self.policies.into_iter().enumerate() {
            let object = format!("policies[{i}] ({}/{})", raw.namespace, raw.name);
            let policy = raw.convert().map_err(|e| format!("{object}: {e}"))?;
            if let Some(first) = keys.insert(policy.key(), i) {
                return Err(format!(
                    "{object}: name: {:?} in namespace {:?} is also policies[{first}]",
                    policy.name, policy.namespace
                ));
            }
            config.policies.push(policy);
        }
        Ok(config)
    }
}

/// How error messages name a workload: `namespace/name`, else its uid.
fn workload_label(raw: &RawWorkload) -> String {
    if raw.name.is_empty() && !raw.uid.is_empty() {
        raw.uid.clone()
    } else {
        format!("{}/{}", raw.namespace, raw.name)
    }
}

/// Rejects an upstream field that is set but that our model cannot represent.
fn unsupported(field: &str, value: &Option<serde_yaml::Value>) -> Result<(), String> {
    match value {
        None | Some(serde_yaml::Value::Null) => Ok(()),
        Some(_) => Err(format!(
            "{field}: is not supported by this ztunnel (remove it)"
        )),
    }
}

impl RawWorkload {
    fn convert(self) -> Result<Workload, String> {
        unsupported("hostname", &self.hostname)?;
        unsupported("applicationTunnel", &self.application_tunnel)?;
        unsupported("locality", &self.locality)?;
        let workload_ips = self
            .workload_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| parse_ip(&format!("workloadIps[{i}]"), ip))
            .collect::<Result<Vec<_>, _>>()?;
        let mut services = BTreeMap::new();
        for (key, ports) in &self.services {
            match key.split_once('/') {
                Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {}
                _ => {
                    return Err(format!(
                        "services: key {key:?} is not \"<namespace>/<hostname>\""
                    ));
                }
            }
            services.insert(key.clone(), port_map(&format!("services[{key:?}]"), ports)?);
        }
        let capacity = match self.capacity {
            None => 1,
            Some(c) => {
                u32::try_from(c).map_err(|_| format!("capacity: {c} is not in 0..={}", u32::MAX))?
            }
        };
        Ok(Workload {
            uid: self.uid,
            name: self.name,
            namespace: self.namespace,
            workload_ips,
            network: self.network,
            protocol: match self.protocol {
                RawProtocol::Tcp => TunnelProtocol::None,
                RawProtocol::Hbone => TunnelProtocol::Hbone,
            },
            trust_domain: self.trust_domain,
            service_account: self.service_account,
            waypoint: self.waypoint.map(|g| g.convert("waypoint")).transpose()?,
            network_gateway: self
                .network_gateway
                .map(|g| g.convert("networkGateway"))
                .transpose()?,
            node: self.node,
            canonical_name: self.canonical_name,
            canonical_revision: self.canonical_revision,
            workload_type: self.workload_type,
            workload_name: self.workload_name,
            native_tunnel: self.native_tunnel,
            services,
            authorization_policies: self.authorization_policies,
            status: match self.status {
                RawStatus::Healthy => WorkloadStatus::Healthy,
                RawStatus::Unhealthy => WorkloadStatus::Unhealthy,
            },
            cluster_id: self.cluster_id,
            capacity,
        })
    }
}

impl RawGateway {
    fn convert(self, field: &str) -> Result<GatewayAddress, String> {
        let destination = match self.destination.split_once('/') {
            Some((network, rest)) => match rest.parse::<IpAddr>() {
                Ok(address) => GatewayDestination::Address(NetworkAddress {
                    network: network.to_string(),
                    address,
                }),
                Err(_) if !network.is_empty() && !rest.is_empty() => {
                    GatewayDestination::Hostname(NamespacedHostname {
                        namespace: network.to_string(),
                        hostname: rest.to_string(),
                    })
                }
                Err(_) => return Err(bad_destination(field, &self.destination)),
            },
            None => return Err(bad_destination(field, &self.destination)),
        };
        Ok(GatewayAddress {
            destination,
            hbone_mtls_port: port(&format!("{field}.hboneMtlsPort"), self.hbone_mtls_port)?,
        })
    }
}

fn bad_destination(field: &str, destination: &str) -> String {
    format!(
        "{field}.destination: {destination:?} is neither \"<network>/<ip>\" nor \"<namespace>/<hostname>\""
    )
}

impl RawService {
    fn convert(self) -> Result<Service, String> {
        unsupported("weightedWaypoints", &self.weighted_waypoints)?;
        unsupported("loadBalancer", &self.load_balancer)?;
        unsupported("ipFamilies", &self.ip_families)?;
        unsupported("canonical", &self.canonical)?;
        unsupported("visibility", &self.visibility)?;
        unsupported("cidrVips", &self.cidr_vips)?;
        let vips = self
            .vips
            .iter()
            .enumerate()
            .map(|(i, vip)| network_address(&format!("vips[{i}]"), vip))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            vips,
            ports: port_map("ports", &self.ports)?,
            subject_alt_names: self.subject_alt_names,
            waypoint: self.waypoint.map(|g| g.convert("waypoint")).transpose()?,
        })
    }
}

impl RawPolicy {
    fn convert(self) -> Result<Authorization, String> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for (r, clauses) in self.rules.into_iter().enumerate() {
            let mut rule = Rule::default();
            for (c, matches) in clauses.into_iter().enumerate() {
                let mut clause = Clause::default();
                for (m, raw) in matches.into_iter().enumerate() {
                    clause
                        .matches
                        .push(raw.convert(&format!("rules[{r}][{c}][{m}]"))?);
                }
                rule.clauses.push(clause);
            }
            rules.push(rule);
        }
        Ok(Authorization {
            name: self.name,
            namespace: self.namespace,
            scope: match self.scope {
                RawScope::Global => Scope::Global,
                RawScope::Namespace => Scope::Namespace,
                RawScope::WorkloadSelector => Scope::WorkloadSelector,
            },
            action: match self.action {
                RawAction::Allow => Action::Allow,
                RawAction::Deny => Action::Deny,
            },
            rules,
            dry_run: self.dry_run,
        })
    }
}

impl RawMatch {
    fn convert(self, at: &str) -> Result<Match, String> {
        let cidrs = |field: &str, list: &[String]| -> Result<Vec<Cidr>, String> {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    s.parse::<Cidr>()
                        .map_err(|e| format!("{at}.{field}[{i}]: {e}"))
                })
                .collect()
        };
        let ports = |field: &str, list: &[i64]| -> Result<Vec<u16>, String> {
            list.iter()
                .enumerate()
                .map(|(i, p)| port(&format!("{at}.{field}[{i}]"), *p))
                .collect()
        };
        Ok(Match {
            namespaces: string_matches(self.namespaces),
            not_namespaces: string_matches(self.not_namespaces),
            principals: string_matches(self.principals),
            not_principals: string_matches(self.not_principals),
            source_ips: cidrs("sourceIps", &self.source_ips)?,
            not_source_ips: cidrs("notSourceIps", &self.not_source_ips)?,
            destination_ips: cidrs("destinationIps", &self.destination_ips)?,
            not_destination_ips: cidrs("notDestinationIps", &self.not_destination_ips)?,
            destination_ports: ports("destinationPorts", &self.destination_ports)?,
            not_destination_ports: ports("notDestinationPorts", &self.not_destination_ports)?,
            service_accounts: service_accounts(self.service_accounts),
            not_service_accounts: service_accounts(self.not_service_accounts),
        })
    }
}

fn string_matches(raw: Vec<RawStringMatch>) -> Vec<StringMatch> {
    raw.into_iter()
        .map(|m| match m {
            RawStringMatch::Exact(s) => StringMatch::Exact(s),
            RawStringMatch::Prefix(s) => StringMatch::Prefix(s),
            RawStringMatch::Suffix(s) => StringMatch::Suffix(s),
            RawStringMatch::Presence() => StringMatch::Presence,
        })
        .collect()
}

fn service_accounts(raw: Vec<RawServiceAccount>) -> Vec<ServiceAccountMatch> {
    raw.into_iter()
        .map(|sa| ServiceAccountMatch {
            namespace: sa.namespace,
            service_account: sa.service_account,
        })
        .collect()
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("{field}: {s:?} is not an IP address"))
}

/// `"<network>/<ip>"`; a leading `/` is the default network.
fn network_address(field: &str, s: &str) -> Result<NetworkAddress, String> {
    let (network, ip) = s.split_once('/').ok_or_else(|| {
        format!("{field}: {s:?} is not \"<network>/<ip>\" (\"/<ip>\" for the default network)")
    })?;
    let address = ip
        .parse()
        .map_err(|_| format!("{field}: {s:?}: {ip:?} is not an IP address"))?;
    Ok(NetworkAddress {
        network: network.to_string(),
        address,
    })
}

fn port(field: &str, value: i64) -> Result<u16, String> {
    u16::try_from(value).map_err(|_| format!("{field}: {value} is not a port (0..=65535)"))
}

/// `{servicePort: targetPort}`.
fn port_map(field: &str, raw: &BTreeMap<i64, i64>) -> Result<PortMap, String> {
    raw.iter()
        .map(|(&service_port, &target_port)| {
            Ok((
                port(&format!("{field}: key"), service_port)?,
                port(&format!("{field}[{service_port}]"), target_port)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the wire-facts reference, §6.2.
    const EXAMPLE: &str = r#"
workloads:
- uid: Kubernetes//Pod/shop/web-0
  name: web-0
  namespace: shop
  serviceAccount: web
  trustDomain: cluster.local
  workloadIps: ["10.10.1.5"]
  protocol: HBONE
  node: node-a
  workloadName: web
  canonicalName: web
- uid: Kubernetes//Pod/shop/cart-0
  name: cart-0
  namespace: shop
  serviceAccount: cart
  trustDomain: cluster.local
  workloadIps: ["10.10.2.7"]
  protocol: HBONE
  node: node-b
  authorizationPolicies: ["shop/cart-from-web"]
  services:
    "shop/cart.shop.svc.cluster.local": {80: 8080}
- uid: Kubernetes//Pod/shop/wp-0
  name: wp-0
  namespace: shop
  serviceAccount: wp
  trustDomain: cluster.local
  workloadIps: ["10.10.2.9"]
  protocol: HBONE
  nativeTunnel: true
  node: node-b
  services:
    "shop/wp.shop.svc.cluster.local": {15008: 15008}
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports: {80: 8080}
  waypoint: {destination: "shop/wp.shop.svc.cluster.local", hboneMtlsPort: 15008}
- name: wp
  namespace: shop
  hostname: wp.shop.svc.cluster.local
  vips: ["/10.96.0.11"]
  ports: {15008: 15008}
policies:
- name: cart-from-web
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/web, !Exact cluster.local/ns/shop/sa/wp]
        destinationPorts: [8080]
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The `Invalid` message of a config expected to fail validation.
    fn invalid(yaml: &str) -> String {
        match LocalConfig::parse(yaml) {
            Err(LocalConfigError::Invalid {
                path: None,
                message,
            }) => message,
            other => panic!("expected an invalid-value error, got {other:?}"),
        }
    }

    #[test]
    fn parses_reference_example() {
        let config = LocalConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.workloads.len(), 3);
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.policies.len(), 1);

        let web = &config.workloads[0];
        assert_eq!(web.uid, "Kubernetes//Pod/shop/web-0");
        assert_eq!(web.name, "web-0");
        assert_eq!(web.namespace, "shop");
        assert_eq!(web.service_account, "web");
        assert_eq!(web.trust_domain, "cluster.local");
        assert_eq!(web.workload_ips, [ip("10.10.1.5")]);
        assert_eq!(web.protocol, TunnelProtocol::Hbone);
        assert_eq!(web.node, "node-a");
        assert_eq!(web.workload_name, "web");
        assert_eq!(web.canonical_name, "web");
        assert_eq!(web.network, "");
        assert_eq!(web.status, WorkloadStatus::Healthy);
        assert_eq!(web.capacity, 1);
        assert!(!web.native_tunnel);
        assert!(web.services.is_empty());
        assert_eq!(web.identity().principal(), "cluster.local/ns/shop/sa/web");

        let cart = &config.workloads[1];
        assert_eq!(cart.authorization_policies, ["shop/cart-from-web"]);
        let expected: BTreeMap<String, PortMap> = [(
            "shop/cart.shop.svc.cluster.local".to_string(),
            [(80, 8080)].into(),
        )]
        .into();
        assert_eq!(cart.services, expected);
        assert!(config.workloads[2].native_tunnel);
        assert_eq!(
            config.workloads[2].services["shop/wp.shop.svc.cluster.local"],
            PortMap::from([(15008, 15008)])
        );

        let svc = &config.services[0];
        assert_eq!(svc.key(), "shop/cart.shop.svc.cluster.local");
        assert_eq!(svc.name, "cart");
        assert_eq!(
            svc.vips,
            [NetworkAddress {
                network: String::new(),
                address: ip("10.96.0.10"),
            }]
        );
        assert_eq!(svc.ports, PortMap::from([(80, 8080)]));
        assert_eq!(
            svc.waypoint,
            Some(GatewayAddress {
                destination: GatewayDestination::Hostname(NamespacedHostname {
                    namespace: "shop".into(),
                    hostname: "wp.shop.svc.cluster.local".into(),
                }),
                hbone_mtls_port: 15008,
            })
        );
        assert_eq!(config.services[1].waypoint, None);

        let policy = &config.policies[0];
        assert_eq!(policy.key(), "shop/cart-from-web");
        assert_eq!(policy.scope, Scope::WorkloadSelector);
        assert_eq!(policy.action, Action::Allow);
        assert!(!policy.dry_run);
        assert_eq!(policy.rules.len(), 1);
        assert_eq!(policy.rules[0].clauses.len(), 1);
        assert_eq!(policy.rules[0].clauses[0].matches.len(), 1);
        let m = &policy.rules[0].clauses[0].matches[0];
        assert_eq!(
            m.principals,
            [
                StringMatch::Exact("cluster.local/ns/shop/sa/web".into()),
                StringMatch::Exact("cluster.local/ns/shop/sa/wp".into()),
            ]
        );
        assert_eq!(m.destination_ports, [8080]);
        assert!(m.namespaces.is_empty() && m.source_ips.is_empty());
    }

    #[test]
    fn other_forms_and_enum_values() {
        let yaml = r#"
workloads:
- namespace: ops
  name: host-agent
  uid: u1
  workloadIps: ["fd00::5", "10.0.0.5"]
  network: net1
  status: Unhealthy
  networkMode: HostNetwork
  capacity: 3
  clusterId: east
  waypoint: {destination: "net1/10.0.0.3", hboneMtlsPort: 15008}
  networkGateway: {destination: "/fd00::9", hboneMtlsPort: 15009}
services:
- name: db
  namespace: ops
  hostname: db.example
  vips: ["net1/10.96.1.1", "/fd00::1"]
  ports: {5432: 0}
  subjectAltNames: ["spiffe://cluster.local/ns/ops/sa/db"]
policies:
- name: deny-some
  namespace: istio-system
  scope: Global
  action: Deny
  dryRun: true
  rules:
  - - - namespaces: [!Prefix team-, !Suffix -prod]
        notPrincipals: [!Presence []]
        serviceAccounts: [{namespace: ops, serviceAccount: db}]
        sourceIps: ["10.0.0.0/8", "10.1.2.3"]
        notDestinationPorts: [22]
    - - notSourceIps: ["fd00::/8"]
  - []
"#;
        let config = LocalConfig::parse(yaml).unwrap();
        let w = &config.workloads[0];
        assert_eq!(w.workload_ips, [ip("fd00::5"), ip("10.0.0.5")]);
        assert_eq!(w.protocol, TunnelProtocol::None);
        assert_eq!(w.status, WorkloadStatus::Unhealthy);
        assert_eq!(w.capacity, 3);
        assert_eq!(w.cluster_id, "east");
        // no defaulting in local config
        assert_eq!(w.trust_domain, "");
        assert_eq!(w.service_account, "");
        assert_eq!(
            w.waypoint.as_ref().unwrap().destination,
            GatewayDestination::Address(NetworkAddress {
                network: "net1".into(),
                address: ip("10.0.0.3"),
            })
        );
        let gw = w.network_gateway.as_ref().unwrap();
        assert_eq!(gw.hbone_mtls_port, 15009);
        assert_eq!(
            gw.destination,
            GatewayDestination::Address(NetworkAddress {
                network: String::new(),
                address: ip("fd00::9"),
            })
        );

        let s = &config.services[0];
        assert_eq!(s.vips[0].network, "net1");
        assert_eq!(s.vips[1].address, ip("fd00::1"));
        assert_eq!(s.ports, PortMap::from([(5432, 0)]));
        assert_eq!(s.subject_alt_names, ["spiffe://cluster.local/ns/ops/sa/db"]);

        let p = &config.policies[0];
        assert_eq!(
            (p.scope, p.action, p.dry_run),
            (Scope::Global, Action::Deny, true)
        );
        assert_eq!(p.rules.len(), 2);
        assert!(p.rules[1].clauses.is_empty());
        let clauses = &p.rules[0].clauses;
        assert_eq!(clauses.len(), 2);
        let m = &clauses[0].matches[0];
        assert_eq!(
            m.namespaces,
            [
                StringMatch::Prefix("team-".into()),
                StringMatch::Suffix("-prod".into())
            ]
        );
        assert_eq!(m.not_principals, [StringMatch::Presence]);
        assert_eq!(
            m.service_accounts,
            [ServiceAccountMatch {
                namespace: "ops".into(),
                service_account: "db".into(),
            }]
        );
        assert_eq!(
            m.source_ips,
            [
                "10.0.0.0/8".parse::<Cidr>().unwrap(),
                Cidr::host(ip("10.1.2.3"))
            ]
        );
        assert_eq!(m.not_destination_ports, [22]);
        assert_eq!(
            clauses[1].matches[0].not_source_ips,
            ["fd00::/8".parse::<Cidr>().unwrap()]
        );
    }

    #[test]
    fn empty_documents_give_empty_config() {
        for yaml in [
            "",
            "\n",
            "# nothing yet\n",
            "---\n",
            "{}",
            "workloads: []\n",
        ] {
            let config =
                LocalConfig::parse(yaml).unwrap_or_else(|e| panic!("{yaml:?} should parse: {e}"));
            assert_eq!(config, LocalConfig::default(), "{yaml:?}");
        }
    }

    #[test]
    fn unknown_field_is_rejected_with_its_line() {
        let yaml = "workloads:\n- namespace: shop\n  workloadIps: []\n  colour: blue\n";
        let err = LocalConfig::parse(yaml).unwrap_err();
        assert!(
            matches!(err, LocalConfigError::Yaml { path: None, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("unknown field `colour`"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        // nested objects reject unknown fields too
        let yaml = "policies:\n- {name: p, namespace: n, scope: Global, action: Allow, dryRun: false, rules: [[[{principal: []}]]]}\n";
        let msg = LocalConfig::parse(yaml).unwrap_err().to_string();
        assert!(msg.contains("unknown field `principal`"), "{msg}");
    }

    #[test]
    fn missing_required_field_and_bad_enum_are_rejected() {
        let yaml =
            "policies:\n- {name: p, namespace: n, scope: Global, action: Allow, rules: []}\n";
        let msg = LocalConfig::parse(yaml).unwrap_err().to_string();
        assert!(msg.contains("missing field `dryRun`"), "{msg}");
        let yaml = "workloads:\n- {namespace: n, workloadIps: [], protocol: LEGACY_ISTIO_MTLS}\n";
        let msg = LocalConfig::parse(yaml).unwrap_err().to_string();
        assert!(msg.contains("LEGACY_ISTIO_MTLS"), "{msg}");
        let yaml = "workloads:\n- {name: a, workloadIps: []}\n";
        let msg = LocalConfig::parse(yaml).unwrap_err().to_string();
        assert!(msg.contains("missing field `namespace`"), "{msg}");
    }

    #[test]
    fn bad_ip_names_workload_and_field() {
        let yaml = r#"
workloads:
- {namespace: shop, name: web-0, workloadIps: ["10.0.0.1"]}
- {namespace: shop, name: cart-0, workloadIps: ["10.0.0.x"]}
"#;
        assert_eq!(
            invalid(yaml),
            r#"workloads[1] (shop/cart-0): workloadIps[0]: "10.0.0.x" is not an IP address"#
        );
        let yaml = "services:\n- {name: a, namespace: n, hostname: a.n, vips: [\"/10.96.0.x\"], ports: {}}\n";
        assert_eq!(
            invalid(yaml),
            r#"services[0] (n/a.n): vips[0]: "/10.96.0.x": "10.96.0.x" is not an IP address"#
        );
        let yaml = "services:\n- {name: a, namespace: n, hostname: a.n, vips: [\"10.96.0.1\"], ports: {}}\n";
        assert!(
            invalid(yaml).starts_with(
                r#"services[0] (n/a.n): vips[0]: "10.96.0.1" is not "<network>/<ip>""#
            )
        );
    }

    #[test]
    fn bad_cidr_names_policy_and_field() {
        let yaml = r#"
policies:
- name: p
  namespace: shop
  scope: Namespace
  action: Deny
  dryRun: false
  rules:
  - - - sourceIps: ["10.0.0.0/8"]
    - - destinationIps: ["10.0.0.0/8", "10.0.0.0/40"]
"#;
        let msg = invalid(yaml);
        assert!(
            msg.starts_with("policies[0] (shop/p): rules[0][1][0].destinationIps[1]: "),
            "{msg}"
        );
        assert!(msg.contains("prefix length 40"), "{msg}");
        let yaml = yaml.replace("10.0.0.0/40", "ten/8");
        assert_eq!(
            invalid(&yaml),
            r#"policies[0] (shop/p): rules[0][1][0].destinationIps[1]: "ten/8" is not an IP address or CIDR"#
        );
    }

    #[test]
    fn bad_service_key_names_workload_and_field() {
        let yaml = "workloads:\n- {namespace: shop, uid: u-7, workloadIps: [], services: {cart: {80: 8080}}}\n";
        assert_eq!(
            invalid(yaml),
            r#"workloads[0] (u-7): services: key "cart" is not "<namespace>/<hostname>""#
        );
        let yaml = "workloads:\n- {namespace: shop, name: a, workloadIps: [], services: {\"/cart\": {80: 8080}}}\n";
        assert!(invalid(yaml).contains(r#"services: key "/cart""#));
    }

    #[test]
    fn bad_waypoint_destination_names_object_and_field() {
        let yaml = r#"
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: []
  ports: {80: 8080}
  waypoint: {destination: "wp", hboneMtlsPort: 15008}
"#;
        assert_eq!(
            invalid(yaml),
            r#"services[0] (shop/cart.shop.svc.cluster.local): waypoint.destination: "wp" is neither "<network>/<ip>" nor "<namespace>/<hostname>""#
        );
        let yaml = yaml.replace("\"wp\"", "\"shop/\"");
        assert!(invalid(&yaml).contains(r#"waypoint.destination: "shop/" is neither"#));
        let yaml = "workloads:\n- {namespace: n, name: a, workloadIps: [], networkGateway: {destination: \"/gw\", hboneMtlsPort: 15008}}\n";
        assert!(
            invalid(yaml).starts_with(r#"workloads[0] (n/a): networkGateway.destination: "/gw""#)
        );
    }

    #[test]
    fn out_of_range_numbers_name_the_field() {
        let svc = "services:\n- {name: a, namespace: n, hostname: a.n, vips: [], ports: PORTS}\n";
        assert_eq!(
            invalid(&svc.replace("PORTS", "{80: 70000}")),
            "services[0] (n/a.n): ports[80]: 70000 is not a port (0..=65535)"
        );
        assert_eq!(
            invalid(&svc.replace("PORTS", "{-1: 80}")),
            "services[0] (n/a.n): ports: key: -1 is not a port (0..=65535)"
        );
        let yaml = "workloads:\n- {namespace: n, name: a, workloadIps: [], capacity: -2}\n";
        assert!(invalid(yaml).starts_with("workloads[0] (n/a): capacity: -2 is not"));
        let yaml = "workloads:\n- {namespace: n, name: a, workloadIps: [], waypoint: {destination: n/wp, hboneMtlsPort: 65536}}\n";
        assert_eq!(
            invalid(yaml),
            "workloads[0] (n/a): waypoint.hboneMtlsPort: 65536 is not a port (0..=65535)"
        );
        let yaml = "policies:\n- {name: p, namespace: n, scope: Global, action: Allow, dryRun: false, rules: [[[{destinationPorts: [99999]}]]]}\n";
        assert_eq!(
            invalid(yaml),
            "policies[0] (n/p): rules[0][0][0].destinationPorts[0]: 99999 is not a port (0..=65535)"
        );
    }

    #[test]
    fn unsupported_upstream_fields_and_duplicates_are_rejected() {
        let yaml =
            "workloads:\n- {namespace: n, name: a, workloadIps: [], locality: {region: r}}\n";
        assert_eq!(
            invalid(yaml),
            "workloads[0] (n/a): locality: is not supported by this ztunnel (remove it)"
        );
        let yaml = "services:\n- {name: a, namespace: n, hostname: a.n, vips: [], ports: {}, cidrVips: [\"/10.0.0.0/8\"]}\n";
        assert!(invalid(yaml).starts_with("services[0] (n/a.n): cidrVips: is not supported"));
        let yaml = "workloads:\n- {namespace: n, name: a, uid: x, workloadIps: []}\n- {namespace: n, name: b, uid: x, workloadIps: []}\n";
        assert_eq!(
            invalid(yaml),
            r#"workloads[1] (n/b): uid: "x" is also the uid of workloads[0]"#
        );
    }

    #[test]
    fn apply_to_makes_lookups_work() {
        let config = LocalConfig::parse(EXAMPLE).unwrap();
        let mut state = State::default();
        config.apply_to(&mut state);

        let cart = state.workload_by_ip("", ip("10.10.2.7")).unwrap();
        assert_eq!(cart.uid, "Kubernetes//Pod/shop/cart-0");
        assert!(state.workload_by_ip("net1", ip("10.10.2.7")).is_none());
        assert!(state.workload_by_ip("", ip("10.10.2.8")).is_none());

        let svc = state.service_by_vip("", ip("10.96.0.10")).unwrap();
        assert_eq!(svc.key(), "shop/cart.shop.svc.cluster.local");
        let endpoints = state.endpoints("shop/cart.shop.svc.cluster.local");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].uid, cart.uid);

        let policies: Vec<String> = state.policies_for(&cart).iter().map(|p| p.key()).collect();
        assert_eq!(policies, ["shop/cart-from-web"]);
        let web = state.workload_by_ip("", ip("10.10.1.5")).unwrap();
        assert!(state.policies_for(&web).is_empty());
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("localconfig-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.yaml");
        let err = LocalConfig::load(&missing).unwrap_err();
        assert!(matches!(err, LocalConfigError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.yaml"), "{err}");

        let good = dir.join("good.yaml");
        std::fs::write(&good, EXAMPLE).unwrap();
        assert_eq!(
            LocalConfig::load(&good).unwrap(),
            LocalConfig::parse(EXAMPLE).unwrap()
        );

        let bad_yaml = dir.join("bad-yaml.yaml");
        std::fs::write(
            &bad_yaml,
            "workloads:\n- namespace: n\n  workloadIps: []\n  nope: 1\n",
        )
        .unwrap();
        let msg = LocalConfig::load(&bad_yaml).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("invalid local config {}: ", bad_yaml.display())),
            "{msg}"
        );
        assert!(
            msg.contains("unknown field `nope`") && msg.contains("line 4"),
            "{msg}"
        );

        let bad_value = dir.join("bad-value.yaml");
        std::fs::write(
            &bad_value,
            "workloads:\n- {namespace: n, name: a, workloadIps: [x]}\n",
        )
        .unwrap();
        let msg = LocalConfig::load(&bad_value).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "invalid local config {}: workloads[0] (n/a): workloadIps[0]: \"x\" is not an IP address",
                bad_value.display()
            )
        );

        std::fs::remove_dir_all(&dir).unwrap();
    }
}

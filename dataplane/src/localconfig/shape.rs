//! The local-config YAML shape, field for field as upstream writes it, and its conversion into
//! model types. Conversion helpers return "field: problem"; the caller prefixes the object, so
//! every message says where in the file to look.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Deserialize;

use super::LocalConfig;
use crate::policy::{
    Action, Authorization, Cidr, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use crate::state::{
    GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress, PortMap, Service,
    TunnelProtocol, Workload, WorkloadStatus,
};

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "local config", deny_unknown_fields)]
pub(super) struct RawConfig {
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
// Conversion (see the module comment for how errors are worded).

impl RawConfig {
    pub(super) fn convert(self) -> Result<LocalConfig, String> {
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

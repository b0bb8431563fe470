//! Waypoint configuration, from the same upstream-style environment variables the ztunnel
//! reads (control plane, certificates, timeouts), plus who this waypoint is.

use std::net::IpAddr;
use std::time::Duration;

use crate::ztunnel::{self, ConfigError, parse_duration};

/// Listener ports. Upstream's waypoints take HBONE on 15008 and serve readiness, metrics and
/// admin on 15021, 15020 and 15000; tests move them to run many waypoints on one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub inbound: u16,
    pub readiness: u16,
    pub metrics: u16,
    pub admin: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            inbound: crate::hbone::HBONE_PORT,
            readiness: 15021,
            metrics: 15020,
            admin: 15000,
        }
    }
}

/// Everything a waypoint needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The waypoint Gateway's namespace and name: the `WaypointConfig` it subscribes to is
    /// `<namespace>/<name>` (`GATEWAY_NAMESPACE`, `GATEWAY_NAME`; the namespace defaults to
    /// `POD_NAMESPACE`).
    pub gateway_namespace: String,
    pub gateway_name: String,
    /// The waypoint's service account (`SERVICE_ACCOUNT`); its identity is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub service_account: String,
    pub ports: Ports,
    /// The waypoint pod's own address (`INSTANCE_IP`): its outbound connections come from
    /// it, so destination ztunnels see the waypoint's address. Unset: the listen address,
    /// when that is not a wildcard.
    pub pod_ip: Option<IpAddr>,
    /// Whole-request timeout when a route sets none (`REQUEST_TIMEOUT`; unset: none).
    pub default_request_timeout: Option<Duration>,
    /// What the waypoint shares with the ztunnel's settings: listen address, trust domain,
    /// control plane, certificate lifetime, handshake and drain deadlines, seed.
    pub mesh: ztunnel::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway_namespace: String::new(),
            gateway_name: "waypoint".into(),
            service_account: "waypoint".into(),
            ports: Ports::default(),
            pod_ip: None,
            default_request_timeout: None,
            mesh: ztunnel::Config::default(),
        }
    }
}

impl Config {
    /// Reads the configuration from environment-style variables.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mesh = ztunnel::Config::from_env(&lookup)?;
        let mut config = Config {
            gateway_namespace: mesh.pod_namespace.clone(),
            mesh,
            ..Config::default()
        };
        if let Some(v) = lookup("GATEWAY_NAMESPACE") {
            config.gateway_namespace = v;
        }
        if let Some(v) = lookup("GATEWAY_NAME") {
            config.gateway_name = v;
        }
        if let Some(v) = lookup("SERVICE_ACCOUNT") {
            config.service_account = v;
        }
        if let Some(v) = lookup("INSTANCE_IP") {
            config.pod_ip = Some(v.parse().map_err(|_| ConfigError {
                name: "INSTANCE_IP".into(),
                value: v.clone(),
                reason: "not an IP address".into(),
            })?);
        }
        if let Some(v) = lookup("REQUEST_TIMEOUT") {
            config.default_request_timeout =
                Some(parse_duration(&v).ok_or_else(|| ConfigError {
                    name: "REQUEST_TIMEOUT".into(),
                    value: v.clone(),
                    reason: "not a duration like 15s or 300ms".into(),
                })?);
        }
        Ok(config)
    }

    /// The `WaypointConfig` resource name.
    pub fn resource_name(&self) -> String {
        format!("{}/{}", self.gateway_namespace, self.gateway_name)
    }

    pub fn identity(&self) -> crate::identity::Identity {
        crate::identity::Identity::new(
            &self.mesh.trust_domain,
            &self.gateway_namespace,
            &self.service_account,
        )
    }

    pub fn listen_ip(&self) -> IpAddr {
        self.mesh.listen_ip
    }

    /// Where the waypoint's outbound connections come from, if anywhere in particular.
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.pod_ip
            .or(Some(self.mesh.listen_ip))
            .filter(|ip| !ip.is_unspecified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_waypoint_is_named_after_its_gateway_in_its_pods_namespace() {
        let c = Config::from_env(env(&[
            ("POD_NAMESPACE", "shop"),
            ("GATEWAY_NAME", "shop-waypoint"),
            ("SERVICE_ACCOUNT", "shop-waypoint"),
            ("LISTEN_IP", "127.0.0.9"),
        ]))
        .unwrap();
        assert_eq!(c.resource_name(), "shop/shop-waypoint");
        assert_eq!(
            c.identity().to_string(),
            "spiffe://cluster.local/ns/shop/sa/shop-waypoint"
        );
        assert_eq!(c.listen_ip(), "127.0.0.9".parse::<IpAddr>().unwrap());
        let e = Config::from_env(env(&[("REQUEST_TIMEOUT", "soon")])).unwrap_err();
        assert!(e.to_string().starts_with("REQUEST_TIMEOUT="), "{e}");
    }
}

//! ztunnel configuration, from upstream's environment variables where they exist.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::identity::DEFAULT_TRUST_DOMAIN;

/// Listener ports. Upstream hard-codes 15001/15006/15008; here they can move so that tests
/// can run many ztunnels, but the defaults are upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub inbound: u16,
    pub socks5: u16,
    pub readiness: u16,
    pub metrics: u16,
    pub admin: u16,
}

impl Ports {
    /// The proxy's own traffic ports: never a destination for proxied traffic (a self-call).
    pub fn proxy_ports(&self) -> [u16; 4] {
        [
            self.outbound,
            self.inbound_plaintext,
            self.inbound,
            self.socks5,
        ]
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            outbound: 15001,
            inbound_plaintext: 15006,
            inbound: crate::hbone::HBONE_PORT,
            socks5: 15080,
            readiness: 15021,
            metrics: 15020,
            admin: 15000,
        }
    }
}

/// Upstream's default place for the control plane's root (relative to the working directory).
pub const DEFAULT_ROOT_CA: &str = "./var/run/secrets/istio/root-cert.pem";
/// Upstream's default token file.
pub const DEFAULT_TOKEN: &str = "./var/run/secrets/tokens/istio-token";

/// Everything a ztunnel needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node this ztunnel serves; workloads on other nodes are not local. Empty: all are.
    pub node_name: String,
    pub cluster_id: String,
    /// This ztunnel's network (empty: the default network).
    pub network: String,
    pub trust_domain: String,
    /// The address every listener binds to, so several ztunnels can share one machine.
    pub listen_ip: IpAddr,
    pub ports: Ports,
    pub enable_socks5: bool,
    /// Upstream's local-config YAML (`LOCAL_XDS_PATH`).
    pub local_config: Option<PathBuf>,
    /// Requested certificate lifetime (`SECRET_TTL`).
    pub certificate_ttl: Duration,
    /// TLS and HTTP/2 handshakes must finish within this.
    pub handshake_timeout: Duration,
    /// How long connections get to finish after a drain starts
    /// (`CONNECTION_TERMINATION_DEADLINE`).
    pub drain_deadline: Duration,
    /// How the process's descriptors are shared out between listeners; the binaries plan
    /// from their own `RLIMIT_NOFILE`.
    pub descriptors: crate::listeners::DescriptorPlan,
    /// Seed for the entropy seam.
    pub seed: u64,
    /// istiod's xDS address (`XDS_ADDRESS`); unset: state comes only from the local config.
    pub xds_address: Option<String>,
    /// istiod's CA address (`CA_ADDRESS`); unset: the CA of the caller's choosing.
    pub ca_address: Option<String>,
    /// Root that istiod's serving certificate chains to (`XDS_ROOT_CA`): a file or PEM text.
    pub xds_root_ca: String,
    /// The same for the CA address (`CA_ROOT_CA`).
    pub ca_root_ca: String,
    /// The caller token (`AUTH_TOKEN`), sent to istiod on every call.
    pub auth_token: Option<crate::ztunnel::control_plane::AuthToken>,
    /// This ztunnel's own pod, for the node id it announces.
    pub pod_name: String,
    pub pod_namespace: String,
    pub instance_ip: String,
    /// In-pod capture: the node agent's ZDS socket (`INPOD_UDS`, or upstream's default when
    /// `INPOD_ENABLED=true`). Set, the ztunnel serves each pod the agent hands it from
    /// listeners inside that pod's network namespace.
    pub inpod_socket: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: String::new(),
            cluster_id: "Kubernetes".into(),
            network: String::new(),
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: Ports::default(),
            enable_socks5: false,
            local_config: None,
            certificate_ttl: Duration::from_secs(24 * 3600),
            handshake_timeout: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(5),
            descriptors: Default::default(),
            seed: 0,
            xds_address: None,
            ca_address: None,
            xds_root_ca: DEFAULT_ROOT_CA.into(),
            ca_root_ca: DEFAULT_ROOT_CA.into(),
            auth_token: None,
            pod_name: String::new(),
            pod_namespace: String::new(),
            instance_ip: "1.1.1.1".into(),
            inpod_socket: None,
        }
    }
}

/// A configuration value that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// Parses durations the way upstream writes them: `24h`, `5s`, `300ms`, `2m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

impl Config {
    /// Reads the configuration from environment-style variables (`lookup` is `std::env::var`
    /// in the binary; tests pass a map).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Config::default();
        let err = |name: &str, value: &str, reason: &str| ConfigError {
            name: name.into(),
            value: value.into(),
            reason: reason.into(),
        };
        if let Some(v) = lookup("NODE_NAME") {
            config.node_name = v;
        }
        if let Some(v) = lookup("ISTIO_META_CLUSTER_ID").or_else(|| lookup("CLUSTER_ID")) {
            config.cluster_id = v;
        }
        if let Some(v) = lookup("NETWORK") {
            config.network = v;
        }
        if let Some(v) = lookup("TRUST_DOMAIN") {
            config.trust_domain = v;
        }
        if let Some(v) = lookup("LISTEN_IP") {
            config.listen_ip = v
                .parse()
                .map_err(|_| err("LISTEN_IP", &v, "not an IP address"))?;
        }
        if let Some(v) = lookup("UNSTABLE_ENABLE_SOCKS5") {
            config.enable_socks5 = match v.as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(err("UNSTABLE_ENABLE_SOCKS5", &v, "expected true or false")),
            };
        }
        if let Some(v) = lookup("LOCAL_XDS_PATH") {
            config.local_config = Some(PathBuf::from(v));
        }
        for (name, slot) in [
            ("SECRET_TTL", &mut config.certificate_ttl),
            (
                "CONNECTION_TERMINATION_DEADLINE",
                &mut config.drain_deadline,
            ),
            ("HANDSHAKE_TIMEOUT", &mut config.handshake_timeout),
        ] {
            if let Some(v) = lookup(name) {
                *slot = parse_duration(&v)
                    .ok_or_else(|| err(name, &v, "not a duration like 24h, 5s or 300ms"))?;
            }
        }
        // An empty address means "no control plane", as upstream's local mode sets it.
        config.xds_address = lookup("XDS_ADDRESS").filter(|v| !v.is_empty());
        config.ca_address = lookup("CA_ADDRESS").filter(|v| !v.is_empty());
        if let Some(v) = lookup("XDS_ROOT_CA") {
            config.xds_root_ca = v;
        }
        if let Some(v) = lookup("CA_ROOT_CA") {
            config.ca_root_ca = v;
        }
        config.auth_token = match lookup("AUTH_TOKEN") {
            Some(v) => Some(crate::ztunnel::control_plane::AuthToken::from_setting(&v)),
            None if std::path::Path::new(DEFAULT_TOKEN).is_file() => Some(
                crate::ztunnel::control_plane::AuthToken::File(DEFAULT_TOKEN.into()),
            ),
            None => None,
        };
        for (name, slot) in [
            ("POD_NAME", &mut config.pod_name),
            ("POD_NAMESPACE", &mut config.pod_namespace),
            ("INSTANCE_IP", &mut config.instance_ip),
        ] {
            if let Some(v) = lookup(name) {
                *slot = v;
            }
        }
        config.inpod_socket = match (lookup("INPOD_UDS"), lookup("INPOD_ENABLED")) {
            (Some(path), _) if !path.is_empty() => Some(PathBuf::from(path)),
            (_, Some(v)) if v == "true" => Some(PathBuf::from(crate::zds::DEFAULT_SOCKET)),
            (_, Some(v)) if v != "false" => {
                return Err(err("INPOD_ENABLED", &v, "expected true or false"));
            }
            _ => None,
        };
        if let Some(v) = lookup("ZTUNNEL_SEED") {
            config.seed = v
                .parse()
                .map_err(|_| err("ZTUNNEL_SEED", &v, "not an integer"))?;
        }
        Ok(config)
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
    fn reads_upstream_variables() {
        let c = Config::from_env(env(&[
            ("NODE_NAME", "node-a"),
            ("LISTEN_IP", "127.0.0.2"),
            ("UNSTABLE_ENABLE_SOCKS5", "true"),
            ("SECRET_TTL", "1h"),
        ]))
        .unwrap();
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.listen_ip, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert!(c.enable_socks5);
        assert_eq!(c.certificate_ttl, Duration::from_secs(3600));
        assert_eq!(c.cluster_id, "Kubernetes");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = Config::from_env(env(&[("LISTEN_IP", "nope")])).unwrap_err();
        assert!(e.to_string().starts_with("LISTEN_IP=\"nope\""), "{e}");
        let e = Config::from_env(env(&[("SECRET_TTL", "10 years")])).unwrap_err();
        assert!(e.to_string().contains("SECRET_TTL"), "{e}");
    }

    #[test]
    fn in_pod_mode_follows_upstream_variables() {
        let c = Config::from_env(env(&[])).unwrap();
        assert_eq!(c.inpod_socket, None, "off unless asked for");
        let c = Config::from_env(env(&[("INPOD_ENABLED", "true")])).unwrap();
        assert_eq!(
            c.inpod_socket.as_deref(),
            Some(std::path::Path::new("/var/run/ztunnel/ztunnel.sock"))
        );
        let c = Config::from_env(env(&[("INPOD_UDS", "/tmp/z.sock")])).unwrap();
        assert_eq!(
            c.inpod_socket.as_deref(),
            Some(std::path::Path::new("/tmp/z.sock"))
        );
        let e = Config::from_env(env(&[("INPOD_ENABLED", "yes")])).unwrap_err();
        assert!(e.to_string().contains("INPOD_ENABLED"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}

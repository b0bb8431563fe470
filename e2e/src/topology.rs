//! The network: a LAN (a bridge in a namespace of its own) with istiod's namespace and every
//! node's namespace on it, and every pod a namespace of its own behind a veth to its node.
//!
//! ```text
//!   istiod ns  198.18.0.1/24 ─┐
//!   node-a ns  198.18.0.2/24 ─┼─ br0 (lan ns)
//!   node-b ns  198.18.0.3/24 ─┘
//!     ├─ e2e0 10.244.1.1/32 ══ eth0 10.244.1.2/32  pod ns (default via 10.244.1.1 onlink)
//!     └─ …
//! ```
//!
//! Routing: a pod's `eth0` has its IP as a `/32` and a default route through its node's
//! gateway address (`.1` of the node's range, never handed to a pod), reached `onlink`; the
//! node side of every veth carries that gateway address (the same `/32` on each of the node's
//! veths, so the node answers ARP for it on each) and a `/32` route to the pod. Nodes forward
//! (`net.ipv4.ip_forward=1`) and route every other node's range via that node's LAN address;
//! istiod's namespace does too, so waypoints in pods reach it. Service VIPs are covered by the
//! pods' default route: captured connections are redirected inside the pod before routing
//! matters, and uncaptured ones meet kube-proxy's DNAT in their node ([`kube_proxy_rules`]).
//!
//! Every veth is made from the node's side straight into the pod's namespace
//! ([`harness::Netns::veth_to`]) and every address, route and nft table lives in a namespace
//! of the run, so nothing appears in the host's namespace and everything goes with them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use harness::{Lan, Netns};

use crate::Error;
use crate::placement::{ISTIOD_IP, LAN_PREFIX, Placement};

/// A node's namespace and addresses.
#[derive(Debug)]
pub struct NodeNet {
    /// Where the node's processes run and its pods' traffic is forwarded.
    pub netns: Netns,
    /// Its `eth0` on the LAN.
    pub lan_ip: Ipv4Addr,
    /// Routed to it from every other node and from istiod.
    pub pod_cidr: String,
    /// On the node side of each of its pods' veths.
    pub gateway: Ipv4Addr,
}

/// A pod's namespace, address and node.
#[derive(Debug)]
pub struct PodNet {
    /// Where the pod's sockets are made and its capture rules go.
    pub netns: Netns,
    /// On its `eth0`, as a `/32`.
    pub ip: IpAddr,
    /// The node whose namespace holds the other end of its veth.
    pub node: String,
    /// The node side of its veth (in the node's namespace).
    pub veth: String,
}

/// The namespaces of one run. Fields drop in order: pods, nodes, istiod, then the LAN.
#[derive(Debug)]
pub struct Topology {
    /// By `namespace/name`.
    pub pods: BTreeMap<String, PodNet>,
    /// By node name.
    pub nodes: BTreeMap<String, NodeNet>,
    /// istiod's namespace, on the LAN at [`ISTIOD_IP`]; also where readiness is asked from.
    pub istiod: Netns,
    lan: Lan,
}

/// A namespace role for `ip netns list`: `pod-<ns>-<name>`, kept short.
fn role(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut role = format!("{prefix}-{clean}");
    role.truncate(48);
    role
}

impl Topology {
    /// Builds the LAN, istiod's and every node's and pod's namespace, as [`Placement`] says.
    pub fn build(placement: &Placement) -> Result<Topology, Error> {
        let lan = Lan::create()?;
        let istiod = Netns::create("istiod")?;
        lan.attach(&istiod, &format!("{ISTIOD_IP}/{LAN_PREFIX}"))?;
        let mut nodes = BTreeMap::new();
        for node in &placement.nodes {
            let netns = Netns::create(&role("node", &node.name))?;
            lan.attach(&netns, &format!("{}/{LAN_PREFIX}", node.lan_ip))?;
            netns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            nodes.insert(
                node.name.clone(),
                NodeNet {
                    netns,
                    lan_ip: node.lan_ip,
                    pod_cidr: node.pod_cidr.clone(),
                    gateway: node.gateway,
                },
            );
        }
        // Every node's range via that node, from every other node and from istiod.
        for (name, node) in &nodes {
            for (other_name, other) in &nodes {
                if other_name != name {
                    let via = other.lan_ip.to_string();
                    node.netns
                        .ip(&["route", "add", &other.pod_cidr, "via", &via])?;
                }
            }
            istiod.ip(&[
                "route",
                "add",
                &node.pod_cidr,
                "via",
                &node.lan_ip.to_string(),
            ])?;
        }
        let mut pods = BTreeMap::new();
        for (index, pod) in placement.pods.iter().enumerate() {
            let Some(node) = nodes.get(&pod.node) else {
                return Err(Error::Unsupported(format!(
                    "pod {}/{} is on node {}, which the scenario does not list",
                    pod.namespace, pod.name, pod.node
                )));
            };
            let IpAddr::V4(_) = pod.ip else {
                return Err(Error::Unsupported(format!(
                    "pod {}/{} has IPv6 address {}",
                    pod.namespace, pod.name, pod.ip
                )));
            };
            let netns = Netns::create(&role("pod", &format!("{}-{}", pod.namespace, pod.name)))?;
            let veth = format!("e2e{index}");
            let (ip, gateway) = (pod.ip.to_string(), node.gateway.to_string());
            node.netns.veth_to(&veth, &netns, "eth0")?;
            node.netns
                .ip(&["addr", "add", &format!("{gateway}/32"), "dev", &veth])?;
            node.netns.ip(&["link", "set", &veth, "up"])?;
            node.netns
                .ip(&["route", "add", &format!("{ip}/32"), "dev", &veth])?;
            netns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
            netns.ip(&["link", "set", "eth0", "up"])?;
            netns.ip(&[
                "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
            ])?;
            pods.insert(
                format!("{}/{}", pod.namespace, pod.name),
                PodNet {
                    netns,
                    ip: pod.ip,
                    node: pod.node.clone(),
                    veth,
                },
            );
        }
        Ok(Topology {
            pods,
            nodes,
            istiod,
            lan,
        })
    }

    /// Pod `namespace/name`'s namespace and address.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodNet> {
        self.pods.get(&format!("{namespace}/{name}"))
    }

    /// Node `name`'s namespace and addresses.
    pub fn node(&self, name: &str) -> Option<&NodeNet> {
        self.nodes.get(name)
    }

    /// Installs kube-proxy's part in every node: DNAT from each Service VIP and port to its
    /// endpoints, taken in turn (`numgen inc`), for traffic that is not captured. The rules
    /// file is written to `dir` (kept for reading after a failure).
    pub fn install_kube_proxy(&self, placement: &Placement, dir: &Path) -> Result<(), Error> {
        let rules = kube_proxy_rules(placement);
        let path = dir.join("kube-proxy.nft");
        std::fs::write(&path, &rules)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        let file = path.display().to_string();
        for node in self.nodes.values() {
            node.netns.exec("nft", &["-f", &file])?;
        }
        Ok(())
    }

    /// The addresses a host (a node, `istiod`, or a pod `ns/name`) sends from and is reached
    /// at: a node's LAN address and whole pod range, istiod's LAN address, a pod's IP.
    fn addresses(&self, host: &str) -> Option<Vec<String>> {
        if host == sim::scenario::ISTIOD {
            return Some(vec![ISTIOD_IP.to_string()]);
        }
        if let Some(node) = self.nodes.get(host) {
            return Some(vec![node.lan_ip.to_string(), node.pod_cidr.clone()]);
        }
        self.pods.get(host).map(|p| vec![p.ip.to_string()])
    }

    /// The namespace where a host's traffic can be stopped: a node's (everything of its pods
    /// passes through it), istiod's, or a pod's own.
    fn netns_of(&self, host: &str) -> Option<&Netns> {
        if host == sim::scenario::ISTIOD {
            return Some(&self.istiod);
        }
        if let Some(node) = self.nodes.get(host) {
            return Some(&node.netns);
        }
        self.pods.get(host).map(|p| &p.netns)
    }

    /// Makes `partitions` (pairs of hosts) the set of cut links: in each host's namespace, an
    /// nft table `ip e2e-partition` drops everything from or to the other side's addresses
    /// (input, output and forward, so a node's pods are cut with it). Silent drops, as a real
    /// partition: connects time out rather than being refused. Every node's and istiod's
    /// table is rewritten, and those of `also` (the hosts of the link just cut or repaired,
    /// which may be pods). `dir` keeps the rules files.
    pub fn set_partitions(
        &self,
        partitions: &BTreeSet<(String, String)>,
        also: &[&str],
        dir: &Path,
    ) -> Result<(), Error> {
        let mut cut: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for host in self
            .nodes
            .keys()
            .map(String::as_str)
            .chain([sim::scenario::ISTIOD])
            .chain(also.iter().copied())
            .chain(
                partitions
                    .iter()
                    .flat_map(|(a, b)| [a.as_str(), b.as_str()]),
            )
        {
            cut.entry(host).or_default();
        }
        for (a, b) in partitions {
            for (here, there) in [(a, b), (b, a)] {
                let Some(addresses) = self.addresses(there) else {
                    return Err(Error::Unsupported(format!("no host {there} to partition")));
                };
                cut.entry(here.as_str()).or_default().extend(addresses);
            }
        }
        for (host, addresses) in cut {
            let Some(netns) = self.netns_of(host) else {
                return Err(Error::Unsupported(format!("no host {host} to partition")));
            };
            let path = dir.join(format!("partition-{}.nft", host.replace('/', "_")));
            std::fs::write(&path, partition_rules(&addresses))
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            netns.exec("nft", &["-f", &path.display().to_string()])?;
        }
        Ok(())
    }

    /// The LAN's own namespace, for whoever needs to look at the bridge.
    pub fn lan(&self) -> &Lan {
        &self.lan
    }
}

/// `table ip e2e-partition`, replaced whole: drops from and to `addresses`.
fn partition_rules(addresses: &BTreeSet<String>) -> String {
    let mut text = String::from(
        "table ip e2e-partition\ndelete table ip e2e-partition\ntable ip e2e-partition {\n",
    );
    if !addresses.is_empty() {
        let set = addresses.iter().cloned().collect::<Vec<_>>().join(", ");
        text.push_str(&format!(
            "  set cut {{ type ipv4_addr; flags interval; elements = {{ {set} }} }}\n"
        ));
    }
    for hook in ["input", "output", "forward"] {
        text.push_str(&format!(
            "  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;\n"
        ));
        if !addresses.is_empty() {
            text.push_str("    ip saddr @cut drop\n    ip daddr @cut drop\n");
        }
        text.push_str("  }\n");
    }
    text.push_str("}\n");
    text
}

/// kube-proxy's rules for every node: `table ip kube-proxy`, a `dstnat` chain matching each
/// VIP and port, spreading new connections over its endpoints with `numgen inc` (one chain
/// per endpoint, jumped to through a verdict map), and a TCP reset for a port without any.
pub fn kube_proxy_rules(placement: &Placement) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for (s, service) in placement.services.iter().enumerate() {
        for vip in &service.vips {
            let IpAddr::V4(vip) = vip else { continue };
            for (port, endpoints) in &service.ports {
                let matched = format!("ip daddr {vip} tcp dport {port}");
                if endpoints.is_empty() {
                    rules.push_str(&format!("    {matched} reject with tcp reset\n"));
                    continue;
                }
                let mut arms = Vec::new();
                for (e, endpoint) in endpoints.iter().enumerate() {
                    let chain = format!("svc{s}-{vip}-{port}-{e}").replace('.', "_");
                    chains.push_str(&format!(
                        "  chain {chain} {{\n    meta l4proto tcp dnat to {endpoint}\n  }}\n"
                    ));
                    arms.push(format!("{e} : jump {chain}"));
                }
                rules.push_str(&format!(
                    "    {matched} numgen inc mod {} vmap {{ {} }}\n",
                    endpoints.len(),
                    arms.join(", ")
                ));
            }
        }
    }
    format!(
        "table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {{\n{chains}  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n}}\n"
    )
}

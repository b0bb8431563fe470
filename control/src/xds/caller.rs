//! Who is at the other end of an xDS stream, from its verified token, and so what it may be
//! sent of the waypoints' configurations. A `WaypointConfig` names every policy and Service
//! behind its waypoint, so it goes only to a caller that acts as that waypoint: one whose
//! token names the waypoint's own identity, or the node proxy of a node where one of the
//! waypoint's pods runs (the CA would issue that node the waypoint's identity anyway, so it
//! learns nothing it could not already). A caller without a token (the plaintext port, which
//! upstream serves unauthenticated) acts as no waypoint.

use dataplane::identity::Identity;

use crate::ca::Claims;
use crate::snapshot::WaypointProxies;

/// A stream's caller, as its token says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Caller {
    /// No token was asked for (the plaintext port).
    #[default]
    Anonymous,
    /// A node proxy's token: `node` only.
    NodeProxy { node: String },
    /// A token naming its holder's own identity (a waypoint, a dedicated-mode ztunnel), as
    /// a SPIFFE URI; never `None` for a token that names one, even one that does not parse
    /// (such a caller acts as nothing).
    Workload { identity: Option<String> },
}

impl Caller {
    /// The caller a verified token describes.
    pub fn from_claims(claims: &Claims) -> Caller {
        match &claims.identity {
            None => Caller::NodeProxy {
                node: claims.node.clone(),
            },
            // Compared in the canonical spelling the snapshot uses.
            Some(identity) => Caller::Workload {
                identity: identity.parse::<Identity>().ok().map(|i| i.to_string()),
            },
        }
    }

    /// Whether this caller acts as the waypoint whose pods `proxies` describes.
    pub fn acts_as(&self, proxies: &WaypointProxies) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::NodeProxy { node } => proxies.nodes.contains(node),
            Caller::Workload { identity } => identity
                .as_ref()
                .is_some_and(|i| proxies.identities.contains(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies() -> WaypointProxies {
        WaypointProxies {
            identities: ["spiffe://cluster.local/ns/shop/sa/waypoint".to_string()].into(),
            nodes: ["node-a".to_string()].into(),
        }
    }

    fn claims(node: &str, identity: Option<&str>) -> Claims {
        Claims {
            node: node.into(),
            identity: identity.map(str::to_string),
            exp: u64::MAX,
        }
    }

    #[test]
    fn only_the_waypoints_identity_or_its_nodes_proxy_acts_as_it() {
        let acts = |c: Claims| Caller::from_claims(&c).acts_as(&proxies());
        assert!(
            acts(claims("node-a", None)),
            "the node proxy of its pod's node"
        );
        assert!(acts(claims(
            "node-b",
            Some("spiffe://cluster.local/ns/shop/sa/waypoint")
        )));
        assert!(!acts(claims("node-b", None)), "another node's proxy");
        assert!(
            !acts(claims(
                "node-a",
                Some("spiffe://cluster.local/ns/shop/sa/web")
            )),
            "a workload's token on the waypoint's node is not the node proxy"
        );
        assert!(!acts(claims("node-a", Some("not a spiffe id"))));
        assert!(!Caller::Anonymous.acts_as(&proxies()));
    }
}

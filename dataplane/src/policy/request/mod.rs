//! Authorization of a request at the waypoint: every attribute of an AuthorizationPolicy,
//! L7 ones included (policy-semantics §2.4), compiled once per configuration and evaluated
//! per request (HTTP) or per connection (a port that does not speak HTTP).
//!
//! What a value means is decided when the policy is compiled, never per request: `prefix*`,
//! `*suffix`, `*` (present), path templates (`{*}`, `{**}`), CIDRs and ports. A value that
//! cannot be compiled makes its policy *unevaluable*, and an unevaluable policy denies every
//! request it covers, whatever its action (closed by default; istiod's validation refuses
//! such values, so this is a last line).

mod compile;
mod evaluate;
mod path;

use std::net::IpAddr;

pub use compile::compile;
pub use evaluate::{Explanation, RequestDecision, evaluate, explain};
pub use path::normalize;

use super::{Cidr, StringMatch};
use crate::identity::Identity;

/// What a waypoint does with a policy that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAction {
    Allow,
    Deny,
    /// Marks the request for audit logging; never changes the decision.
    Audit,
    /// Asks an external authorizer. The waypoint has no extension providers, so a CUSTOM
    /// policy that matches cannot be decided and denies (closed by default).
    Custom {
        provider: String,
    },
}

/// One compiled AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPolicy {
    pub namespace: String,
    pub name: String,
    pub action: RequestAction,
    /// `istio.io/dry-run`: evaluated and reported, never enforced.
    pub dry_run: bool,
    /// OR-ed; none means the policy never matches (an ALLOW that allows nothing).
    pub rules: Vec<RequestRule>,
    /// Why the policy could not be compiled; such a policy denies all it covers.
    pub unevaluable: Option<String>,
}

impl RequestPolicy {
    /// `<namespace>/<name>`, as the access log and explanations name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `from`, `to` and `when` AND-ed; an absent section is "any".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestRule {
    /// OR-ed sources; each source's attributes AND-ed.
    pub from: Vec<Vec<Attribute>>,
    /// OR-ed operations; each operation's attributes AND-ed.
    pub to: Vec<Vec<Attribute>>,
    /// AND-ed conditions (a condition's `values` and `notValues` are two attributes).
    pub when: Vec<Attribute>,
    /// Some attribute is HTTP-only: an ALLOW rule that cannot match off HTTP.
    pub http_only: bool,
}

/// One field of a source, operation or condition: the request's value of `key` must match
/// one of `values` (or, `negated`, none of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Where it was written, for explanations: `from[0].principals`, `when[1].notValues`.
    pub field: String,
    pub key: Key,
    pub negated: bool,
    pub values: Vec<Value>,
}

/// What an attribute reads from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `<trust-domain>/ns/<ns>/sa/<sa>` of the verified peer certificate.
    Principal,
    /// The namespace inside the peer identity.
    Namespace,
    /// `ns/sa` of the peer identity, trust domain ignored.
    ServiceAccount,
    TrustDomain,
    /// The connection's source address (the client's address as the waypoint sees it).
    SourceIp,
    /// The client address after trusted proxies; with none trusted (the default), the
    /// source address.
    RemoteIp,
    /// The original destination: a Service VIP, or a pod IP for workload-addressed traffic.
    DestinationIp,
    /// The original destination port: the Service port for service-addressed traffic.
    DestinationPort,
    /// TLS SNI of the client's connection; the waypoint sees tunnelled plaintext, so absent.
    Sni,
    /// HTTP-only from here on.
    Host,
    Method,
    Path,
    /// `request.headers[name]`, `name` lower-cased.
    Header(String),
    /// `requestPrincipals` and `request.auth.*`: a JWT's claims. RequestAuthentication is not
    /// modelled, so a request never carries them (absent).
    RequestAuth(String),
    /// A key this waypoint has no value for (`experimental.envoy.filters.*`): absent.
    Unmodelled(String),
}

impl Key {
    /// Whether only an HTTP request has this attribute (policy-semantics §2.4, §2.5).
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Key::Host | Key::Method | Key::Path | Key::Header(_) | Key::RequestAuth(_)
        )
    }
}

/// One compiled value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    String(StringMatch),
    /// Hosts match case-insensitively, with or without the request's `:port`.
    Host(StringMatch),
    Cidr(Cidr),
    Port(u16),
    /// `ns/sa`.
    ServiceAccount {
        namespace: String,
        name: String,
    },
    Path(path::PathPattern),
}

/// What is known about a request (or a connection, with `http: None`) when it is
/// authorized at the waypoint.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The verified peer identity; the waypoint accepts only mTLS, but the type allows none.
    pub identity: Option<&'a Identity>,
    /// `identity`'s principal, computed once per connection.
    pub principal: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub http: Option<HttpAttributes<'a>>,
}

/// The HTTP request's attributes; the path is already normalized and without its query.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

#[cfg(test)]
mod tests;

//! A waypoint's `AuthorizationPolicy` (xDS) → [`RequestPolicy`]: every value interpreted
//! once, every field named for explanations.

use super::path::PathPattern;
use super::{Attribute, Key, RequestAction, RequestPolicy, RequestRule, Value};
use crate::policy::StringMatch;
use crate::xds::proto::ambient::waypoint as pb;

/// Collects the attributes of one source, operation or condition; the first value that
/// cannot be compiled is kept as the policy's reason to be unevaluable.
struct Builder<'a> {
    attributes: Vec<Attribute>,
    error: &'a mut Option<String>,
}

impl Builder<'_> {
    fn add(
        &mut self,
        field: String,
        key: Key,
        negated: bool,
        raw: &[String],
        value: impl Fn(&str) -> Result<Value, String>,
    ) {
        if raw.is_empty() {
            return;
        }
        let mut values = Vec::with_capacity(raw.len());
        for v in raw {
            match value(v) {
                Ok(v) => values.push(v),
                Err(e) => {
                    self.error.get_or_insert_with(|| format!("{field}: {e}"));
                }
            }
        }
        self.attributes.push(Attribute {
            field,
            key,
            negated,
            values,
        });
    }
}

fn string(v: &str) -> Result<Value, String> {
    Ok(Value::String(StringMatch::written(v)))
}

fn host(v: &str) -> Result<Value, String> {
    Ok(Value::Host(StringMatch::written(&v.to_ascii_lowercase())))
}

fn cidr(v: &str) -> Result<Value, String> {
    v.parse()
        .map(Value::Cidr)
        .map_err(|e| format!("{v:?} is not an IP or CIDR: {e}"))
}

fn port(v: &str) -> Result<Value, String> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(Value::Port(p)),
        _ => Err(format!("{v:?} is not a port (1-65535)")),
    }
}

fn service_account(v: &str) -> Result<Value, String> {
    match v.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Ok(Value::ServiceAccount {
                namespace: ns.to_string(),
                name: sa.to_string(),
            })
        }
        _ => Err(format!("{v:?} is not <namespace>/<service account>")),
    }
}

fn path(v: &str) -> Result<Value, String> {
    PathPattern::parse(v).map(Value::Path)
}

fn source(at: &str, s: &pb::Source, error: &mut Option<String>) -> Vec<Attribute> {
    let mut b = Builder {
        attributes: Vec::new(),
        error,
    };
    let f = |name: &str| format!("{at}.{name}");
    b.add(
        f("principals"),
        Key::Principal,
        false,
        &s.principals,
        string,
    );
    b.add(
        f("notPrincipals"),
        Key::Principal,
        true,
        &s.not_principals,
        string,
    );
    let request_principal = || Key::RequestAuth("principal".into());
    b.add(
        f("requestPrincipals"),
        request_principal(),
        false,
        &s.request_principals,
        string,
    );
    b.add(
        f("notRequestPrincipals"),
        request_principal(),
        true,
        &s.not_request_principals,
        string,
    );
    b.add(
        f("namespaces"),
        Key::Namespace,
        false,
        &s.namespaces,
        string,
    );
    b.add(
        f("notNamespaces"),
        Key::Namespace,
        true,
        &s.not_namespaces,
        string,
    );
    b.add(
        f("serviceAccounts"),
        Key::ServiceAccount,
        false,
        &s.service_accounts,
        service_account,
    );
    b.add(
        f("notServiceAccounts"),
        Key::ServiceAccount,
        true,
        &s.not_service_accounts,
        service_account,
    );
    b.add(f("ipBlocks"), Key::SourceIp, false, &s.ip_blocks, cidr);
    b.add(
        f("notIpBlocks"),
        Key::SourceIp,
        true,
        &s.not_ip_blocks,
        cidr,
    );
    b.add(
        f("remoteIpBlocks"),
        Key::RemoteIp,
        false,
        &s.remote_ip_blocks,
        cidr,
    );
    b.add(
        f("notRemoteIpBlocks"),
        Key::RemoteIp,
        true,
        &s.not_remote_ip_blocks,
        cidr,
    );
    b.add(
        f("trustDomains"),
        Key::TrustDomain,
        false,
        &s.trust_domains,
        string,
    );
    b.add(
        f("notTrustDomains"),
        Key::TrustDomain,
        true,
        &s.not_trust_domains,
        string,
    );
    b.attributes
}

fn operation(at: &str, o: &pb::Operation, error: &mut Option<String>) -> Vec<Attribute> {
    let mut b = Builder {
        attributes: Vec::new(),
        error,
    };
    let f = |name: &str| format!("{at}.{name}");
    let ports = |list: &[u32]| list.iter().map(u32::to_string).collect::<Vec<_>>();
    b.add(f("hosts"), Key::Host, false, &o.hosts, host);
    b.add(f("notHosts"), Key::Host, true, &o.not_hosts, host);
    b.add(
        f("ports"),
        Key::DestinationPort,
        false,
        &ports(&o.ports),
        port,
    );
    b.add(
        f("notPorts"),
        Key::DestinationPort,
        true,
        &ports(&o.not_ports),
        port,
    );
    b.add(f("methods"), Key::Method, false, &o.methods, string);
    b.add(f("notMethods"), Key::Method, true, &o.not_methods, string);
    b.add(f("paths"), Key::Path, false, &o.paths, path);
    b.add(f("notPaths"), Key::Path, true, &o.not_paths, path);
    b.attributes
}

/// A condition's key, and how its values are read. Unknown keys are refused by istiod's
/// validation; one that arrives anyway makes the policy unevaluable.
/// Reads one written value.
type ValueParser = fn(&str) -> Result<Value, String>;

fn condition_key(key: &str) -> Result<(Key, ValueParser), String> {
    let string: ValueParser = string;
    Ok(match key {
        "source.ip" => (Key::SourceIp, cidr),
        "remote.ip" => (Key::RemoteIp, cidr),
        "source.namespace" => (Key::Namespace, string),
        "source.principal" => (Key::Principal, string),
        "source.serviceAccount" => (Key::ServiceAccount, service_account),
        "source.trustDomain" => (Key::TrustDomain, string),
        "destination.ip" => (Key::DestinationIp, cidr),
        "destination.port" => (Key::DestinationPort, port),
        "connection.sni" => (Key::Sni, string),
        "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "request.auth.claims" => (Key::RequestAuth(key.to_string()), string),
        _ => {
            if let Some(name) = key
                .strip_prefix("request.headers[")
                .and_then(|k| k.strip_suffix(']'))
                .filter(|n| !n.is_empty())
            {
                return Ok((Key::Header(name.to_ascii_lowercase()), string));
            }
            if key.starts_with("request.auth.claims[") && key.ends_with(']') {
                return Ok((Key::RequestAuth(key.to_string()), string));
            }
            if key.starts_with("experimental.envoy.filters.") {
                return Ok((Key::Unmodelled(key.to_string()), string));
            }
            return Err(format!("unknown condition key {key:?}"));
        }
    })
}

fn condition(at: &str, c: &pb::Condition, error: &mut Option<String>) -> Vec<Attribute> {
    if c.values.is_empty() && c.not_values.is_empty() {
        error.get_or_insert_with(|| format!("{at}: neither values nor notValues"));
        return Vec::new();
    }
    let (key, value) = match condition_key(&c.key) {
        Ok(k) => k,
        Err(e) => {
            error.get_or_insert_with(|| format!("{at}.key: {e}"));
            return Vec::new();
        }
    };
    let mut b = Builder {
        attributes: Vec::new(),
        error,
    };
    b.add(format!("{at}.values"), key.clone(), false, &c.values, value);
    b.add(format!("{at}.notValues"), key, true, &c.not_values, value);
    b.attributes
}

fn rule(index: usize, r: &pb::Rule, error: &mut Option<String>) -> RequestRule {
    let at = format!("rules[{index}]");
    let mut compiled = RequestRule {
        from: r
            .from
            .iter()
            .enumerate()
            .map(|(i, s)| source(&format!("{at}.from[{i}]"), s, error))
            .collect(),
        to: r
            .to
            .iter()
            .enumerate()
            .map(|(i, o)| operation(&format!("{at}.to[{i}]"), o, error))
            .collect(),
        when: r
            .when
            .iter()
            .enumerate()
            .flat_map(|(i, c)| condition(&format!("{at}.when[{i}]"), c, error))
            .collect(),
        http_only: false,
    };
    compiled.http_only = compiled
        .from
        .iter()
        .chain(&compiled.to)
        .flatten()
        .chain(&compiled.when)
        .any(|a| a.key.http_only());
    compiled
}

/// Compiles one policy. Never fails: what cannot be compiled is kept as
/// [`RequestPolicy::unevaluable`], which denies.
pub fn compile(policy: &pb::AuthorizationPolicy) -> RequestPolicy {
    let mut error = None;
    let action = match pb::Action::try_from(policy.action) {
        Ok(pb::Action::Allow) => RequestAction::Allow,
        Ok(pb::Action::Deny) => RequestAction::Deny,
        Ok(pb::Action::Audit) => RequestAction::Audit,
        Ok(pb::Action::Custom) => RequestAction::Custom {
            provider: policy.provider.clone(),
        },
        Err(_) => {
            error = Some(format!("unknown action {}", policy.action));
            RequestAction::Deny
        }
    };
    let rules = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(i, r, &mut error))
        .collect();
    RequestPolicy {
        namespace: policy.namespace.clone(),
        name: policy.name.clone(),
        action,
        dry_run: policy.dry_run,
        rules,
        unevaluable: error,
    }
}

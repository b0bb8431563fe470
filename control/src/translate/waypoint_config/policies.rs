//! L7 AuthorizationPolicies: attached by `targetRefs` to the waypoint, its GatewayClass or a
//! bound Service, and carried with every attribute, L7 ones included.

use super::*;
use crate::translate::authorization;

/// Adds `policy` to what its `targetRefs` (and the older single `targetRef`) name: the
/// waypoint Gateway, the `istio-waypoint` GatewayClass from the root namespace (every
/// waypoint), or a Service bound to a waypoint (policy-semantics §2.6). A reference into
/// another namespace is ignored; a Service without a waypoint enforces it nowhere.
pub(super) fn attach_policy(
    mesh: &MeshConfig,
    policy: &AuthorizationPolicy,
    bound: &BTreeMap<(String, String), String>,
    building: &mut BTreeMap<String, Building>,
) {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
    let name = policy.metadata.name.as_deref().unwrap_or("");
    let refs: Vec<&PolicyTargetReference> = policy
        .spec
        .target_ref
        .iter()
        .chain(&policy.spec.target_refs)
        .collect();
    if refs.is_empty() || policy.spec.selector.is_some() {
        return;
    }
    let key = format!("{namespace}/{name}");
    let converted = convert_policy(mesh, namespace, name, policy);
    for r in refs {
        if r.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            continue;
        }
        match (r.group.as_str(), r.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") => {
                if let Some(waypoint) = building.get_mut(&format!("{namespace}/{}", r.name)) {
                    waypoint.policies.insert(key.clone(), converted.clone());
                }
            }
            (GATEWAY_GROUP, "GatewayClass")
                if r.name == waypoints::WAYPOINT_CLASS && namespace == mesh.root_namespace =>
            {
                for waypoint in building.values_mut() {
                    waypoint.policies.insert(key.clone(), converted.clone());
                }
            }
            ("" | "core", "Service") => {
                let Some(waypoint) = bound.get(&(namespace.to_string(), r.name.clone())) else {
                    continue;
                };
                let service = building.get_mut(waypoint).and_then(|b| {
                    b.services
                        .values_mut()
                        .find(|s| s.service.namespace == namespace && s.service.name == r.name)
                });
                if let Some(service) = service {
                    service.policies.insert(key.clone(), converted.clone());
                }
            }
            _ => {}
        }
    }
}

/// With `ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES`: each `selector` policy that
/// selects one of a waypoint's pods (labels a superset of `matchLabels`; from the pod's
/// namespace or the root namespace; empty `matchLabels` selects nothing) is also enforced by
/// that waypoint at HBONE termination (policy-semantics §2.6).
pub(super) fn attach_layered(
    store: &Store,
    mesh: &MeshConfig,
    building: &mut BTreeMap<String, Building>,
) {
    let pods = store.pods();
    for policy in store.authorization_policies() {
        let Some(selector) = &policy.spec.selector else {
            continue;
        };
        if selector.match_labels.is_empty() {
            continue;
        }
        let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
        let name = policy.metadata.name.as_deref().unwrap_or("");
        for pod in pods.iter().filter(|p| !p.terminated) {
            let Some(gateway) = pod.labels.get(waypoints::GATEWAY_NAME) else {
                continue;
            };
            let selected = (namespace == pod.namespace || namespace == mesh.root_namespace)
                && selector
                    .match_labels
                    .iter()
                    .all(|(k, v)| pod.labels.get(k) == Some(v));
            if !selected {
                continue;
            }
            if let Some(waypoint) = building.get_mut(&format!("{}/{gateway}", pod.namespace)) {
                waypoint.layered.insert(
                    format!("{namespace}/{name}"),
                    convert_policy(mesh, namespace, name, policy),
                );
            }
        }
    }
}

pub(super) fn convert_policy(
    mesh: &MeshConfig,
    namespace: &str,
    name: &str,
    policy: &AuthorizationPolicy,
) -> pb::AuthorizationPolicy {
    let spec = crate::translate::trust_domain_aliases::apply(&policy.spec, mesh);
    let action = match spec.action {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        AuthorizationAction::Audit => Action::Audit,
        AuthorizationAction::Custom => Action::Custom,
    };
    // Waypoints honour dry-run whatever istiod's ztunnel flag says, as upstream's do.
    let dry_run = authorization::is_dry_run(&policy.metadata);
    pb::AuthorizationPolicy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        action: action.into(),
        provider: spec
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        dry_run,
        rules: spec.rules.iter().map(|r| rule(namespace, r)).collect(),
    }
}

pub(super) fn rule(namespace: &str, rule: &Rule) -> pb::Rule {
    pb::Rule {
        from: rule
            .from
            .iter()
            .flatten()
            .map(|f| source(namespace, &f.source))
            .collect(),
        to: rule
            .to
            .iter()
            .flatten()
            .map(|t| operation(&t.operation))
            .collect(),
        when: rule.when.iter().flatten().map(condition).collect(),
    }
}

/// A bare service account means one in the policy's namespace.
pub(super) fn service_accounts(namespace: &str, values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|sa| {
            if sa.contains('/') {
                sa.clone()
            } else {
                format!("{namespace}/{sa}")
            }
        })
        .collect()
}

pub(super) fn source(namespace: &str, s: &Source) -> pb::Source {
    pb::Source {
        principals: s.principals.clone(),
        not_principals: s.not_principals.clone(),
        request_principals: s.request_principals.clone(),
        not_request_principals: s.not_request_principals.clone(),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        service_accounts: service_accounts(namespace, &s.service_accounts),
        not_service_accounts: service_accounts(namespace, &s.not_service_accounts),
        ip_blocks: s.ip_blocks.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
        trust_domains: s.trust_domains.clone(),
        not_trust_domains: s.not_trust_domains.clone(),
    }
}

/// Ports were validated as 1..65535 when the store took the policy.
pub(super) fn ports(values: &[String]) -> Vec<u32> {
    values.iter().filter_map(|p| p.parse().ok()).collect()
}

pub(super) fn operation(o: &Operation) -> pb::Operation {
    pb::Operation {
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        ports: ports(&o.ports),
        not_ports: ports(&o.not_ports),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
    }
}

pub(super) fn condition(c: &Condition) -> pb::Condition {
    pb::Condition {
        key: c.key.clone(),
        values: c.values.clone(),
        not_values: c.not_values.clone(),
    }
}

//! What the API server (and istiod's validating webhook) would refuse: objects in a namespace
//! that does not exist, addresses and CIDRs that do not parse, out-of-range ports, fields that
//! may not be combined, values outside what a CRD's schema allows (HTTPRoute retries, our
//! FaultInjection). Checked on apply so a bad object never reaches translation.

use std::net::IpAddr;
use std::str::FromStr;

use dataplane::policy::Cidr;
use gateway_api::experimental::httproutes::{HttpRoute, HttpRouteRulesRetry};
use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1::{Node, Pod, Service};

use super::{Store, StoreError};
use crate::object::Object;
use crate::types::fault::{FaultInjection, Fraction};
use crate::types::security::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, PeerAuthentication, Source,
};

/// The most replicas a Deployment may ask for. Each is a pod the store schedules, translates
/// and publishes, so `replicas: 2147483647` (a dozen bytes) would be gigabytes; no mesh this
/// istiod serves runs ten thousand copies of one Deployment.
pub const MAX_REPLICAS: i32 = 10_000;

/// Collects the first problem found, with its field path.
struct Check<'a> {
    object: &'a Object,
}

impl Check<'_> {
    fn fail(&self, field: impl Into<String>, message: impl Into<String>) -> StoreError {
        StoreError {
            object: self.object.key().to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn cidrs(&self, field: &str, values: &[String]) -> Result<(), StoreError> {
        for (i, value) in values.iter().enumerate() {
            if let Err(e) = value.parse::<Cidr>() {
                return Err(self.fail(format!("{field}[{i}]"), format!("invalid CIDR: {e}")));
            }
        }
        Ok(())
    }

    fn ports(&self, field: &str, values: &[String]) -> Result<(), StoreError> {
        for (i, value) in values.iter().enumerate() {
            // Digits only, as upstream's ParseUint: Rust would also take a leading `+`.
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            if !digits || value.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(self.fail(
                    format!("{field}[{i}]"),
                    format!("invalid port {value:?}: must be 1..65535"),
                ));
            }
        }
        Ok(())
    }

    fn ip(&self, field: &str, value: &str) -> Result<(), StoreError> {
        value
            .parse::<IpAddr>()
            .map(|_| ())
            .map_err(|_| self.fail(field, format!("invalid IP address {value:?}")))
    }

    /// A GEP-2257 duration, as the Gateway API CRDs' pattern admits it.
    fn duration(&self, field: &str, value: &str) -> Result<(), StoreError> {
        gateway_api::Duration::from_str(value)
            .map(|_| ())
            .map_err(|e| {
                self.fail(
                    field,
                    format!(
                        "invalid duration {value:?} ({e}): GEP-2257 wants 1 to 4 parts of 1 to 5 \
                         digits and a unit h, m, s or ms, like 500ms or 1h30m"
                    ),
                )
            })
    }

    /// `value` within `range`, else an error naming the field and the range.
    fn within(
        &self,
        field: &str,
        what: &str,
        value: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<(), StoreError> {
        if range.contains(&value) {
            return Ok(());
        }
        Err(self.fail(
            field,
            format!(
                "invalid {what} {value}: must be {}..{}",
                range.start(),
                range.end()
            ),
        ))
    }
}

pub(super) fn object(object: &Object, store: &Store) -> Result<(), StoreError> {
    let check = Check { object };
    if object.name().is_empty() {
        return Err(check.fail("metadata.name", "missing"));
    }
    if object.kind().namespaced() {
        let namespace = object.namespace();
        if namespace.is_empty() {
            return Err(check.fail("metadata.namespace", "missing"));
        }
        if store.config.require_namespaces && !store.namespace_exists(namespace) {
            return Err(check.fail(
                "metadata.namespace",
                format!("namespace {namespace:?} does not exist"),
            ));
        }
    }
    match object {
        Object::AuthorizationPolicy(policy) => authorization_policy(&check, policy),
        Object::PeerAuthentication(pa) => peer_authentication(&check, pa),
        Object::Service(service) => self::service(&check, service),
        Object::Node(node) => self::node(&check, node),
        Object::Pod(pod) => self::pod(&check, pod),
        Object::Deployment(d) => match d.spec.as_ref().and_then(|s| s.replicas) {
            Some(r) if r < 0 => Err(check.fail("spec.replicas", "must not be negative")),
            Some(r) if r > MAX_REPLICAS => Err(check.fail(
                "spec.replicas",
                format!(
                    "at most {MAX_REPLICAS}: each replica is a pod this istiod schedules and serves"
                ),
            )),
            _ => Ok(()),
        },
        Object::Gateway(gateway) => self::gateway(&check, gateway),
        Object::HttpRoute(route) => http_route(&check, route),
        Object::FaultInjection(fault) => fault_injection(&check, fault),
        _ => Ok(()),
    }
}

/// Upstream's cap on `serviceAccounts` entries ("to avoid unbounded configuration sizes").
const MAX_SERVICE_ACCOUNTS: usize = 16;
/// Upstream's cap on one `serviceAccounts` entry.
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;

impl Check<'_> {
    /// No entry of a list may be empty (upstream's `CheckEmptyValues`): `""` would otherwise
    /// be an exact match on nothing, or a port that does not parse.
    fn non_empty_values(&self, field: &str, values: &[String]) -> Result<(), StoreError> {
        match values.iter().position(String::is_empty) {
            Some(i) => Err(self.fail(format!("{field}[{i}]"), "empty value not allowed")),
            None => Ok(()),
        }
    }

    /// `serviceAccounts` entries as upstream's `CheckServiceAccount` takes them: at most 16,
    /// each `sa` or `ns/sa` with neither part empty, no wildcard (they are compared exactly,
    /// so a `*` would silently match nothing), at most 320 characters.
    fn service_accounts(&self, field: &str, values: &[String]) -> Result<(), StoreError> {
        if values.len() > MAX_SERVICE_ACCOUNTS {
            return Err(self.fail(
                field,
                format!(
                    "{} entries: may not have more than {MAX_SERVICE_ACCOUNTS}",
                    values.len()
                ),
            ));
        }
        for (i, value) in values.iter().enumerate() {
            let at = format!("{field}[{i}]");
            if value.contains('*') {
                return Err(self.fail(at, format!("wildcard not allowed in {value:?}")));
            }
            if value.len() > MAX_SERVICE_ACCOUNT_LEN {
                return Err(self.fail(
                    at,
                    format!("longer than {MAX_SERVICE_ACCOUNT_LEN} characters"),
                ));
            }
            let well_formed = match value.split_once('/') {
                Some((ns, sa)) => !ns.is_empty() && !sa.is_empty() && !sa.contains('/'),
                None => !value.is_empty(),
            };
            if !well_formed {
                return Err(self.fail(
                    at,
                    format!("{value:?}: expected 'serviceAccount' or 'namespace/serviceAccount'"),
                ));
            }
        }
        Ok(())
    }
}

fn source(check: &Check<'_>, field: &str, s: &Source) -> Result<(), StoreError> {
    let lists: [(&str, &[String]); 14] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ];
    if lists.iter().all(|(_, list)| list.is_empty()) {
        return Err(check.fail(
            field,
            "must not be empty: a source with no field set matches nothing (omit `from` to \
             match any source)",
        ));
    }
    for (name, list) in lists {
        check.non_empty_values(&format!("{field}.{name}"), list)?;
    }
    // A source is one identity test: upstream refuses mixing the serviceAccounts form with
    // the principal/namespace form rather than define how they combine.
    let identity = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    for (name, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if identity && !list.is_empty() {
            return Err(check.fail(
                format!("{field}.{name}"),
                "cannot be combined with principals, notPrincipals, namespaces or \
                 notNamespaces in the same source",
            ));
        }
        check.service_accounts(&format!("{field}.{name}"), list)?;
    }
    check.cidrs(&format!("{field}.ipBlocks"), &s.ip_blocks)?;
    check.cidrs(&format!("{field}.notIpBlocks"), &s.not_ip_blocks)?;
    check.cidrs(&format!("{field}.remoteIpBlocks"), &s.remote_ip_blocks)?;
    check.cidrs(
        &format!("{field}.notRemoteIpBlocks"),
        &s.not_remote_ip_blocks,
    )
}

fn operation(check: &Check<'_>, field: &str, o: &Operation) -> Result<(), StoreError> {
    let lists: [(&str, &[String]); 8] = [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ];
    if lists.iter().all(|(_, list)| list.is_empty()) {
        return Err(check.fail(
            field,
            "must not be empty: an operation with no field set matches nothing (omit `to` \
             to match any operation)",
        ));
    }
    for (name, list) in lists {
        check.non_empty_values(&format!("{field}.{name}"), list)?;
    }
    check.ports(&format!("{field}.ports"), &o.ports)?;
    check.ports(&format!("{field}.notPorts"), &o.not_ports)
}

/// `name[key]` with a non-empty key, as upstream's `validateMapKey` wants for
/// `request.headers[...]` and the other keyed attributes.
fn map_key(key: &str) -> bool {
    key.find('[')
        .is_some_and(|open| open > 0 && key.ends_with(']') && open < key.len() - 2)
}

/// One `when` condition: a key upstream's `ValidateAttribute` knows, with at least one of
/// `values`/`notValues`, and values of the key's form. Unknown keys are refused because a
/// typo would otherwise turn into an attribute nothing sends: an ALLOW rule that never
/// matches, or a DENY rule that never fires.
fn condition(check: &Check<'_>, field: &str, c: &Condition) -> Result<(), StoreError> {
    let key = c.key.as_str();
    if key.is_empty() {
        return Err(check.fail(format!("{field}.key"), "must not be empty"));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(check.fail(
            field,
            format!("at least one of values or notValues must be set for key {key}"),
        ));
    }
    let lists = [("values", &c.values), ("notValues", &c.not_values)];
    for (name, list) in lists {
        check.non_empty_values(&format!("{field}.{name}"), list)?;
    }
    let keyed = |prefix: &str| key.starts_with(prefix);
    let refuse = |message: String| Err(check.fail(format!("{field}.key"), message));
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => {
            for (name, list) in lists {
                check.cidrs(&format!("{field}.{name}"), list)?;
            }
        }
        "destination.port" => {
            for (name, list) in lists {
                check.ports(&format!("{field}.{name}"), list)?;
            }
        }
        "source.serviceAccount" => {
            for (name, list) in lists {
                check.service_accounts(&format!("{field}.{name}"), list)?;
            }
        }
        "source.namespace"
        | "source.principal"
        | "source.trustDomain"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => {}
        _ if keyed("request.headers")
            || keyed("request.experimental.inline.headers")
            || keyed("request.auth.claims")
            || keyed("experimental.envoy.filters.") =>
        {
            if !map_key(key) {
                return refuse(format!("bad key {key:?}: should have the form name[key]"));
            }
        }
        "destination.namespace" => {
            return refuse(format!(
                "attribute {key} is replaced by the policy's metadata.namespace"
            ));
        }
        _ if keyed("destination.labels") => {
            return refuse(format!(
                "attribute {key} is replaced by the workload selector"
            ));
        }
        "destination.name" | "destination.user" => {
            return refuse(format!(
                "deprecated attribute {key}: only supported in v1alpha1"
            ));
        }
        _ => return refuse(format!("unknown attribute {key:?}")),
    }
    Ok(())
}

/// What upstream's validating webhook refuses (`ValidateAuthorizationPolicy`), each naming
/// the field. Translation still copes with a policy built in code that skipped this: it
/// then behaves as upstream's translation would (an empty source matches nothing, a DENY
/// without rules never fires, unknown `when` keys count as HTTP-only).
fn authorization_policy(check: &Check<'_>, policy: &AuthorizationPolicy) -> Result<(), StoreError> {
    let spec = &policy.spec;
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        return Err(check.fail(
            "spec",
            "only one of selector, targetRef or targetRefs may be set",
        ));
    }
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        return Err(check.fail(
            "spec",
            "only one of selector, targetRef or targetRefs may be set",
        ));
    }
    if let Some(selector) = &spec.selector {
        for (k, v) in &selector.match_labels {
            let field = format!("spec.selector.matchLabels[{k}]");
            if k.is_empty() {
                return Err(check.fail(field, "empty key is not supported in a selector"));
            }
            if k.contains('*') || v.contains('*') {
                return Err(check.fail(field, "wildcard is not supported in a selector"));
            }
        }
    }
    match spec.action {
        AuthorizationAction::Deny if spec.rules.is_empty() => {
            return Err(check.fail(
                "spec.rules",
                "a DENY policy without rules never matches: add an empty rule `{}` to deny \
                 everything it applies to",
            ));
        }
        AuthorizationAction::Custom if spec.rules.is_empty() => {
            return Err(check.fail(
                "spec.rules",
                "a CUSTOM policy without rules never matches: add an empty rule `{}` to \
                 check every request",
            ));
        }
        _ => {}
    }
    for (r, rule) in spec.rules.iter().enumerate() {
        if rule.from.as_ref().is_some_and(Vec::is_empty) {
            return Err(check.fail(
                format!("spec.rules[{r}].from"),
                "must not be empty: omit `from` to match any source",
            ));
        }
        for (f, from) in rule.from.iter().flatten().enumerate() {
            source(
                check,
                &format!("spec.rules[{r}].from[{f}].source"),
                &from.source,
            )?;
        }
        if rule.to.as_ref().is_some_and(Vec::is_empty) {
            return Err(check.fail(
                format!("spec.rules[{r}].to"),
                "must not be empty: omit `to` to match any operation",
            ));
        }
        for (t, to) in rule.to.iter().flatten().enumerate() {
            operation(
                check,
                &format!("spec.rules[{r}].to[{t}].operation"),
                &to.operation,
            )?;
        }
        for (w, when) in rule.when.iter().flatten().enumerate() {
            condition(check, &format!("spec.rules[{r}].when[{w}]"), when)?;
        }
    }
    Ok(())
}

fn peer_authentication(check: &Check<'_>, pa: &PeerAuthentication) -> Result<(), StoreError> {
    if !pa.spec.port_level_mtls.is_empty() && pa.spec.selector.is_none() {
        return Err(check.fail(
            "spec.portLevelMtls",
            "only allowed together with a selector",
        ));
    }
    for port in pa.spec.port_level_mtls.keys() {
        if *port == 0 || *port > u32::from(u16::MAX) {
            return Err(check.fail(
                format!("spec.portLevelMtls[{port}]"),
                "port must be 1..65535",
            ));
        }
    }
    Ok(())
}

fn service(check: &Check<'_>, service: &Service) -> Result<(), StoreError> {
    let Some(spec) = &service.spec else {
        return Ok(());
    };
    let headless = |ip: &str| ip.is_empty() || ip == "None";
    if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !headless(ip)) {
        check.ip("spec.clusterIP", ip)?;
    }
    for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
        if !headless(ip) {
            check.ip(&format!("spec.clusterIPs[{i}]"), ip)?;
        }
    }
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        if u16::try_from(port.port).map_or(true, |p| p == 0) {
            return Err(check.fail(
                format!("spec.ports[{i}].port"),
                format!("invalid port {}: must be 1..65535", port.port),
            ));
        }
    }
    Ok(())
}

/// Listener ports, as the Gateway CRD's schema bounds them: a waypoint's become its Service's
/// ports.
fn gateway(check: &Check<'_>, gateway: &Gateway) -> Result<(), StoreError> {
    for (i, listener) in gateway.spec.listeners.iter().enumerate() {
        if u16::try_from(listener.port).map_or(true, |p| p == 0) {
            return Err(check.fail(
                format!("spec.listeners[{i}].port"),
                format!("invalid port {}: must be 1..65535", listener.port),
            ));
        }
    }
    Ok(())
}

fn node(check: &Check<'_>, node: &Node) -> Result<(), StoreError> {
    let Some(spec) = &node.spec else {
        return Ok(());
    };
    if let Some(cidr) = &spec.pod_cidr {
        check.cidrs("spec.podCIDR", std::slice::from_ref(cidr))?;
    }
    check.cidrs(
        "spec.podCIDRs",
        spec.pod_cidrs.as_deref().unwrap_or_default(),
    )
}

fn pod(check: &Check<'_>, pod: &Pod) -> Result<(), StoreError> {
    let Some(status) = &pod.status else {
        return Ok(());
    };
    if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
        check.ip("status.podIP", ip)?;
    }
    for (i, ip) in status.pod_ips.iter().flatten().enumerate() {
        check.ip(&format!("status.podIPs[{i}].ip"), &ip.ip)?;
    }
    Ok(())
}

/// GEP-1731 retries, bounded as the experimental CRD bounds them: `attempts` not negative,
/// `codes` 400–599, `backoff` a GEP-2257 duration. Translation copies them as they are.
fn http_route(check: &Check<'_>, route: &HttpRoute) -> Result<(), StoreError> {
    for (r, rule) in route.spec.rules.iter().flatten().enumerate() {
        if let Some(retry) = &rule.retry {
            self::retry(check, &format!("spec.rules[{r}].retry"), retry)?;
        }
        rule_filters(check, &format!("spec.rules[{r}]"), rule)?;
    }
    Ok(())
}

/// What the HTTPRoute CRD's rules refuse about a rule's filters: a filter type listed twice
/// (only RequestMirror and ExtensionRef may repeat), RequestRedirect together with
/// URLRewrite, and a rule-level RequestRedirect on a rule that also has backendRefs.
fn rule_filters(
    check: &Check<'_>,
    field: &str,
    rule: &gateway_api::experimental::httproutes::HttpRouteRules,
) -> Result<(), StoreError> {
    use gateway_api::experimental::httproutes::HttpRouteRulesFiltersType as T;
    let filters = rule.filters.as_deref().unwrap_or_default();
    let mut seen: Vec<&T> = Vec::new();
    for (f, filter) in filters.iter().enumerate() {
        let repeatable = matches!(filter.r#type, T::RequestMirror | T::ExtensionRef);
        if !repeatable && seen.contains(&&filter.r#type) {
            return Err(check.fail(
                format!("{field}.filters[{f}].type"),
                format!(
                    "{:?} is listed more than once in this rule; only RequestMirror and ExtensionRef may repeat",
                    filter.r#type
                ),
            ));
        }
        seen.push(&filter.r#type);
    }
    if seen.contains(&&T::RequestRedirect) && seen.contains(&&T::UrlRewrite) {
        return Err(check.fail(
            format!("{field}.filters"),
            "RequestRedirect and URLRewrite cannot be combined in one rule",
        ));
    }
    if seen.contains(&&T::RequestRedirect)
        && !rule.backend_refs.as_deref().unwrap_or_default().is_empty()
    {
        return Err(check.fail(
            format!("{field}.backendRefs"),
            "a rule with a RequestRedirect filter cannot have backendRefs",
        ));
    }
    Ok(())
}

fn retry(check: &Check<'_>, field: &str, retry: &HttpRouteRulesRetry) -> Result<(), StoreError> {
    if let Some(attempts) = retry.attempts {
        check.within(
            &format!("{field}.attempts"),
            "attempts",
            attempts,
            0..=i64::from(u32::MAX),
        )?;
    }
    for (c, code) in retry.codes.iter().flatten().enumerate() {
        check.within(
            &format!("{field}.codes[{c}]"),
            "status code",
            *code,
            400..=599,
        )?;
    }
    if let Some(backoff) = &retry.backoff {
        check.duration(&format!("{field}.backoff"), backoff)?;
    }
    Ok(())
}

/// Our FaultInjection: something to inject, a GEP-2257 delay, exactly one abort error with
/// its code in range, and shares of 0–100 %.
fn fault_injection(check: &Check<'_>, fault: &FaultInjection) -> Result<(), StoreError> {
    let spec = &fault.spec;
    if spec.delay.is_none() && spec.abort.is_none() {
        return Err(check.fail("spec", "at least one of delay or abort is required"));
    }
    if let Some(delay) = &spec.delay {
        check.duration("spec.delay.fixedDelay", &delay.fixed_delay)?;
        share(
            check,
            "spec.delay",
            delay.percentage,
            delay.fraction.as_ref(),
        )?;
    }
    if let Some(abort) = &spec.abort {
        let errors = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.reset == Some(true),
        ];
        if errors.into_iter().filter(|set| *set).count() != 1 {
            return Err(check.fail(
                "spec.abort",
                "exactly one of httpStatus, grpcStatus or reset: true is required",
            ));
        }
        if let Some(status) = abort.http_status {
            check.within("spec.abort.httpStatus", "HTTP status", status, 200..=599)?;
        }
        if let Some(status) = abort.grpc_status {
            check.within("spec.abort.grpcStatus", "gRPC status", status, 0..=16)?;
        }
        share(
            check,
            "spec.abort",
            abort.percentage,
            abort.fraction.as_ref(),
        )?;
    }
    Ok(())
}

/// A share of requests: `percentage` 0–100 or a `fraction` with 0 ≤ numerator ≤ denominator,
/// not both.
fn share(
    check: &Check<'_>,
    field: &str,
    percentage: Option<i64>,
    fraction: Option<&Fraction>,
) -> Result<(), StoreError> {
    match (percentage, fraction) {
        (Some(_), Some(_)) => {
            Err(check.fail(field, "only one of percentage or fraction may be set"))
        }
        (Some(p), None) => check.within(&format!("{field}.percentage"), "percentage", p, 0..=100),
        (None, Some(f)) => {
            let denominator = f.denominator.unwrap_or(100);
            check.within(
                &format!("{field}.fraction.denominator"),
                "denominator",
                denominator,
                1..=i64::from(u32::MAX),
            )?;
            check.within(
                &format!("{field}.fraction.numerator"),
                "numerator",
                f.numerator,
                0..=denominator,
            )
        }
        (None, None) => Ok(()),
    }
}

//! Routes: HTTPRoute and GRPCRoute rules attached to a waypoint's Services, turned into
//! precedence-sorted [`RouteRule`]s with their matches, backends, timeouts and retries; the
//! rules' filters are converted in the sibling `filters` module.

use super::*;

pub(super) fn attach_http(
    ctx: &Context<'_>,
    route: &HttpRoute,
    bound: &BTreeMap<(String, String), String>,
    building: &mut BTreeMap<String, Building>,
) {
    let parents = route.spec.parent_refs.iter().flatten().map(|p| ParentRef {
        group: p.group.as_deref(),
        kind: p.kind.as_deref(),
        name: &p.name,
        namespace: p.namespace.as_deref(),
        port: p.port,
        section_name: p.section_name.as_deref(),
    });
    let hostnames = route.spec.hostnames.clone().unwrap_or_default();
    let targets = attachments(
        ctx.store,
        &route.metadata,
        &hostnames,
        parents,
        bound,
        building,
    );
    if targets.is_empty() {
        return;
    }
    let route_ns = route.metadata.namespace.clone().unwrap_or_default();
    let route_name = route.metadata.name.clone().unwrap_or_default();
    let order_of = |rule: usize, m: usize| {
        (
            created(&route.metadata),
            format!("{route_ns}/{route_name}"),
            rule,
            m,
        )
    };
    // No rules: the API's default, one rule matching everything with no backends (500).
    let default_rules = [HttpRouteRules::default()];
    let rules = route.spec.rules.as_deref().unwrap_or(&default_rules);
    let mut entries = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let action = http_action(ctx, &route_ns, rule);
        let default_matches = [HttpRouteRulesMatches::default()];
        let matches = rule.matches.as_deref().unwrap_or(&default_matches);
        let matches = if matches.is_empty() {
            &default_matches[..]
        } else {
            matches
        };
        for (m, spec) in matches.iter().enumerate() {
            let matched = http_match(spec);
            let path = matched.path.clone().unwrap_or_default();
            let precedence = (
                match path.r#type() {
                    MatchType::Exact => 0,
                    MatchType::Prefix => 1,
                    MatchType::Regex => 2,
                },
                Reverse(prefix_len(&path)),
                Reverse(!matched.method.is_empty()),
                Reverse(matched.headers.len()),
                Reverse(matched.query_params.len()),
                order_of(index, m),
            );
            let entry = RouteRule {
                kind: RouteKind::Http.into(),
                route_namespace: route_ns.clone(),
                route_name: route_name.clone(),
                rule_index: u32::try_from(index).unwrap_or(u32::MAX),
                rule_name: rule.name.clone().unwrap_or_default(),
                r#match: Some(route_rule::Match::Http(matched)),
                ..action.clone()
            };
            entries.push((precedence, entry));
        }
    }
    for target in &targets {
        if let Some(port) = port_entry(building, target) {
            port.http.extend(entries.iter().map(|(p, e)| {
                let mut e = e.clone();
                e.consumer_namespace = target.3.clone();
                (p.clone(), e)
            }));
        }
    }
}

pub(super) fn attach_grpc(
    ctx: &Context<'_>,
    route: &GrpcRoute,
    bound: &BTreeMap<(String, String), String>,
    building: &mut BTreeMap<String, Building>,
) {
    let parents = route.spec.parent_refs.iter().flatten().map(|p| ParentRef {
        group: p.group.as_deref(),
        kind: p.kind.as_deref(),
        name: &p.name,
        namespace: p.namespace.as_deref(),
        port: p.port,
        section_name: p.section_name.as_deref(),
    });
    let hostnames = route.spec.hostnames.clone().unwrap_or_default();
    let targets = attachments(
        ctx.store,
        &route.metadata,
        &hostnames,
        parents,
        bound,
        building,
    );
    if targets.is_empty() {
        return;
    }
    let route_ns = route.metadata.namespace.clone().unwrap_or_default();
    let route_name = route.metadata.name.clone().unwrap_or_default();
    let default_rules = [GrpcRouteRules::default()];
    let rules = route.spec.rules.as_deref().unwrap_or(&default_rules);
    let mut entries = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let action = grpc_action(ctx, &route_ns, rule);
        let default_matches = [GrpcRouteRulesMatches::default()];
        let matches = rule.matches.as_deref().unwrap_or(&default_matches);
        let matches = if matches.is_empty() {
            &default_matches[..]
        } else {
            matches
        };
        for (m, spec) in matches.iter().enumerate() {
            let matched = grpc_match(spec);
            let precedence = (
                Reverse(matched.service.len()),
                Reverse(matched.method.len()),
                Reverse(matched.headers.len()),
                (
                    created(&route.metadata),
                    format!("{route_ns}/{route_name}"),
                    index,
                    m,
                ),
            );
            let entry = RouteRule {
                kind: RouteKind::Grpc.into(),
                route_namespace: route_ns.clone(),
                route_name: route_name.clone(),
                rule_index: u32::try_from(index).unwrap_or(u32::MAX),
                rule_name: rule.name.clone().unwrap_or_default(),
                r#match: Some(route_rule::Match::Grpc(matched)),
                ..action.clone()
            };
            entries.push((precedence, entry));
        }
    }
    for target in &targets {
        if let Some(port) = port_entry(building, target) {
            port.grpc.extend(entries.iter().map(|(p, e)| {
                let mut e = e.clone();
                e.consumer_namespace = target.3.clone();
                (p.clone(), e)
            }));
        }
    }
}

/// The length that ranks a path: a prefix's trailing `/` does not count (`/match/` matches
/// like `/match`).
pub(super) fn prefix_len(path: &PathMatch) -> usize {
    match path.r#type() {
        MatchType::Prefix if path.value.len() > 1 => path.value.trim_end_matches('/').len(),
        _ => path.value.len(),
    }
}

/// The text Kubernetes spells an enum value with (`GET`, `https`, …).
pub(super) fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub(super) fn http_match(spec: &HttpRouteRulesMatches) -> HttpMatch {
    let path = spec.path.as_ref();
    let r#type = match path.and_then(|p| p.r#type.as_ref()) {
        Some(HttpRouteRulesMatchesPathType::Exact) => MatchType::Exact,
        Some(HttpRouteRulesMatchesPathType::RegularExpression) => MatchType::Regex,
        Some(HttpRouteRulesMatchesPathType::PathPrefix) | None => MatchType::Prefix,
    };
    let value = path
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    // Only the first entry per name counts (§8.1); header names are case-insensitive.
    let mut seen = BTreeSet::new();
    let headers = spec
        .headers
        .iter()
        .flatten()
        .filter(|h| seen.insert(h.name.to_ascii_lowercase()))
        .map(|h| ValueMatch {
            name: h.name.clone(),
            r#type: match h.r#type {
                Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => MatchType::Regex,
                _ => MatchType::Exact,
            }
            .into(),
            value: h.value.clone(),
        })
        .collect();
    let mut seen = BTreeSet::new();
    let query_params = spec
        .query_params
        .iter()
        .flatten()
        .filter(|q| seen.insert(q.name.clone()))
        .map(|q| ValueMatch {
            name: q.name.clone(),
            r#type: match q.r#type {
                Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => MatchType::Regex,
                _ => MatchType::Exact,
            }
            .into(),
            value: q.value.clone(),
        })
        .collect();
    HttpMatch {
        path: Some(PathMatch {
            r#type: r#type.into(),
            value,
        }),
        headers,
        query_params,
        method: spec.method.as_ref().map(wire_name).unwrap_or_default(),
    }
}

pub(super) fn grpc_match(spec: &GrpcRouteRulesMatches) -> GrpcMatch {
    let method = spec.method.as_ref();
    let regex = method
        .and_then(|m| m.r#type.as_ref())
        .is_some_and(|t| wire_name(t) == "RegularExpression");
    let mut seen = BTreeSet::new();
    let headers = spec
        .headers
        .iter()
        .flatten()
        .filter(|h| seen.insert(h.name.to_ascii_lowercase()))
        .map(|h| ValueMatch {
            name: h.name.clone(),
            r#type: if h
                .r#type
                .as_ref()
                .is_some_and(|t| wire_name(t) == "RegularExpression")
            {
                MatchType::Regex
            } else {
                MatchType::Exact
            }
            .into(),
            value: h.value.clone(),
        })
        .collect();
    GrpcMatch {
        service: method.and_then(|m| m.service.clone()).unwrap_or_default(),
        method: method.and_then(|m| m.method.clone()).unwrap_or_default(),
        r#type: if regex {
            MatchType::Regex
        } else {
            MatchType::Exact
        }
        .into(),
        headers,
    }
}

/// A rule's action (filters, backends, timeouts, retries), to be copied into each of its
/// matches.
pub(super) fn http_action(ctx: &Context<'_>, route_ns: &str, rule: &HttpRouteRules) -> RouteRule {
    let backends = rule
        .backend_refs
        .iter()
        .flatten()
        .map(|b| {
            let mut backend = backend(ctx, route_ns, backend_ref!(b));
            backend.weight = weight(b.weight);
            backend.filters = filters(ctx, route_ns, b.filters.as_deref().unwrap_or_default());
            backend
        })
        .collect();
    RouteRule {
        filters: filters(ctx, route_ns, rule.filters.as_deref().unwrap_or_default()),
        backends,
        timeouts: rule.timeouts.as_ref().map(timeouts),
        retry: rule.retry.as_ref().map(retry),
        ..RouteRule::default()
    }
}

pub(super) fn grpc_action(ctx: &Context<'_>, route_ns: &str, rule: &GrpcRouteRules) -> RouteRule {
    let backends = rule
        .backend_refs
        .iter()
        .flatten()
        .map(|b| {
            let mut backend = backend(ctx, route_ns, backend_ref!(b));
            backend.weight = weight(b.weight);
            backend.filters = filters(ctx, route_ns, b.filters.as_deref().unwrap_or_default());
            backend
        })
        .collect();
    RouteRule {
        filters: filters(ctx, route_ns, rule.filters.as_deref().unwrap_or_default()),
        backends,
        ..RouteRule::default()
    }
}

/// Weight default 1; negative (refused by validation) counts as 0.
pub(super) fn weight(weight: Option<i32>) -> u32 {
    weight.map_or(1, |w| u32::try_from(w).unwrap_or(0))
}

/// The [`BackendRef`] view of any generated backendRef struct (HTTP, gRPC or a mirror's):
/// they are distinct types with the same fields.
macro_rules! backend_ref {
    ($b:expr) => {
        BackendRef {
            group: $b.group.as_deref(),
            kind: $b.kind.as_deref(),
            name: &$b.name,
            namespace: $b.namespace.as_deref(),
            port: $b.port,
        }
    };
}
pub(super) use backend_ref;

/// A backendRef or a mirror's backendRef.
pub(super) struct BackendRef<'a> {
    pub(super) group: Option<&'a str>,
    pub(super) kind: Option<&'a str>,
    pub(super) name: &'a str,
    pub(super) namespace: Option<&'a str>,
    pub(super) port: Option<i32>,
}

pub(super) fn backend(ctx: &Context<'_>, route_ns: &str, r: BackendRef<'_>) -> Backend {
    let namespace = r.namespace.unwrap_or(route_ns);
    let group = r.group.unwrap_or("");
    let kind = r.kind.unwrap_or("Service");
    let port = r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    let error = if !(group.is_empty() || group == "core") || kind != "Service" {
        BackendError::InvalidKind
    } else if !matches!(
        ctx.store.get(Kind::Service, namespace, r.name),
        Some(Object::Service(_))
    ) {
        BackendError::NotFound
    } else if port == 0 {
        BackendError::InvalidPort
    } else {
        BackendError::None
    };
    let service = if error == BackendError::InvalidKind {
        format!("{namespace}/{}", r.name)
    } else {
        format!(
            "{namespace}/{}",
            services::hostname(ctx.mesh, namespace, r.name)
        )
    };
    // The backend port's name and appProtocol decide what the waypoint speaks to it.
    let (port_name, app_protocol) = match ctx.store.get(Kind::Service, namespace, r.name) {
        Some(Object::Service(s)) if error == BackendError::None => s
            .spec
            .as_ref()
            .and_then(|spec| spec.ports.as_ref())
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| u32::try_from(p.port).ok() == Some(port))
            })
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.app_protocol.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_default(),
        _ => Default::default(),
    };
    Backend {
        service,
        port,
        weight: 1,
        filters: Vec::new(),
        error: error.into(),
        app_protocol,
        port_name,
    }
}

pub(super) fn timeouts(t: &HttpRouteRulesTimeouts) -> Timeouts {
    Timeouts {
        request_ms: t.request.as_deref().and_then(duration_ms),
        backend_request_ms: t.backend_request.as_deref().and_then(duration_ms),
    }
}

/// GEP-1731 retries. `attempts` unset is 1 (see the module doc); `codes` keep their listed
/// order without repeats; `backoff` unset is 0 (no minimum wait). Validation has already
/// refused codes outside 400–599, negative attempts and durations that do not parse.
pub(super) fn retry(r: &HttpRouteRulesRetry) -> Retry {
    let mut seen = BTreeSet::new();
    Retry {
        attempts: r
            .attempts
            .map_or(1, |a| u32::try_from(a.max(0)).unwrap_or(u32::MAX)),
        codes: r
            .codes
            .iter()
            .flatten()
            .filter_map(|c| u32::try_from(*c).ok())
            .filter(|c| seen.insert(*c))
            .collect(),
        backoff_ms: r.backoff.as_deref().and_then(duration_ms).unwrap_or(0),
    }
}

/// A GEP-2257 duration (`1h30m`, `500ms`, `0s`) in milliseconds; `None` when it does not
/// parse (validation refuses those), which leaves the waypoint's default.
pub fn duration_ms(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(value.checked_mul(unit)?)?;
    }
    Some(total)
}

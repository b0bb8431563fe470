//! Route filters: header and path modifiers, redirects, mirrors, `ExtensionRef`s to our
//! FaultInjection objects, and the filter types the waypoint does not implement, read from
//! any of the generated filter structs.

use super::*;

/// The rule-level HTTPRoute filter type, from any route filter type. The gateway-api crate
/// generates one struct per place a filter may appear (rule or backendRef, HTTP or gRPC), all
/// with the same fields and the same YAML; reading the others through that YAML keeps one
/// conversion for all of them.
pub(super) fn as_http_filter<T: Serialize + Any>(
    filter: &T,
) -> Result<HttpRouteRulesFilters, String> {
    if let Some(f) = (filter as &dyn Any).downcast_ref::<HttpRouteRulesFilters>() {
        return Ok(f.clone());
    }
    serde_json::to_value(filter)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("unreadable filter: {e}"))
}

pub(super) fn filters<T: Serialize + Any>(
    ctx: &Context<'_>,
    route_ns: &str,
    list: &[T],
) -> Vec<Filter> {
    list.iter()
        .filter_map(|f| match as_http_filter(f) {
            Ok(f) => convert_filter(ctx, route_ns, &f),
            Err(e) => Some(filter::Kind::Unsupported(e)),
        })
        .map(|kind| Filter { kind: Some(kind) })
        .collect()
}

pub(super) fn header_modifier<S: Serialize>(modifier: Option<&S>) -> Option<HeaderModifier> {
    // Request and response modifiers have the same shape (and distinct generated types).
    #[derive(serde::Deserialize)]
    struct NameValue {
        name: String,
        value: String,
    }
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(default)]
        set: Vec<NameValue>,
        #[serde(default)]
        add: Vec<NameValue>,
        #[serde(default)]
        remove: Vec<String>,
    }
    let shape: Shape = serde_json::to_value(modifier?)
        .and_then(serde_json::from_value)
        .ok()?;
    let headers = |list: Vec<NameValue>| {
        list.into_iter()
            .map(|h| pb::Header {
                name: h.name,
                value: h.value,
            })
            .collect()
    };
    Some(HeaderModifier {
        set: headers(shape.set),
        add: headers(shape.add),
        remove: shape.remove,
    })
}

pub(super) fn path_modifier(
    full: Option<&String>,
    prefix: Option<&String>,
    replace_prefix: bool,
) -> PathModifier {
    let kind = if replace_prefix {
        path_modifier::Kind::ReplacePrefixMatch(prefix.cloned().unwrap_or_default())
    } else {
        path_modifier::Kind::ReplaceFullPath(full.cloned().unwrap_or_default())
    };
    PathModifier { kind: Some(kind) }
}

/// One filter; `None` when it is dropped (a mirror to a backend that cannot be used).
pub(super) fn convert_filter(
    ctx: &Context<'_>,
    route_ns: &str,
    f: &HttpRouteRulesFilters,
) -> Option<filter::Kind> {
    let missing = || {
        Some(filter::Kind::Unsupported(format!(
            "{} filter without its settings",
            wire_name(&f.r#type)
        )))
    };
    match f.r#type {
        FilterType::RequestHeaderModifier => {
            match header_modifier(f.request_header_modifier.as_ref()) {
                Some(m) => Some(filter::Kind::RequestHeaderModifier(m)),
                None => missing(),
            }
        }
        FilterType::ResponseHeaderModifier => {
            match header_modifier(f.response_header_modifier.as_ref()) {
                Some(m) => Some(filter::Kind::ResponseHeaderModifier(m)),
                None => missing(),
            }
        }
        FilterType::RequestRedirect => {
            let Some(r) = &f.request_redirect else {
                return missing();
            };
            Some(filter::Kind::RequestRedirect(RequestRedirect {
                scheme: r.scheme.as_ref().map(wire_name).unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(|p| {
                    path_modifier(
                        p.replace_full_path.as_ref(),
                        p.replace_prefix_match.as_ref(),
                        wire_name(&p.r#type) == "ReplacePrefixMatch",
                    )
                }),
                port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                status_code: r
                    .status_code
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(302),
            }))
        }
        FilterType::UrlRewrite => {
            let Some(r) = &f.url_rewrite else {
                return missing();
            };
            Some(filter::Kind::UrlRewrite(UrlRewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(|p| {
                    path_modifier(
                        p.replace_full_path.as_ref(),
                        p.replace_prefix_match.as_ref(),
                        p.r#type == RewritePathType::ReplacePrefixMatch,
                    )
                }),
            }))
        }
        FilterType::RequestMirror => {
            let Some(m) = &f.request_mirror else {
                return missing();
            };
            let mut backend = backend(ctx, route_ns, backend_ref!(m.backend_ref));
            // An unusable mirror is dropped; the primary traffic is unaffected (§8.5).
            if backend.error() != BackendError::None {
                return None;
            }
            backend.weight = 1;
            let (numerator, denominator) = match (m.percent, &m.fraction) {
                (Some(p), _) => (p, 100),
                (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
                (None, None) => (100, 100),
            };
            Some(filter::Kind::RequestMirror(RequestMirror {
                backend: Some(backend),
                numerator: u32::try_from(numerator).unwrap_or(0),
                denominator: u32::try_from(denominator).unwrap_or(100),
            }))
        }
        FilterType::Cors => {
            let Some(c) = &f.cors else {
                return missing();
            };
            Some(filter::Kind::Cors(Cors {
                allow_origins: c.allow_origins.clone().unwrap_or_default(),
                allow_methods: c.allow_methods.clone().unwrap_or_default(),
                allow_headers: c.allow_headers.clone().unwrap_or_default(),
                expose_headers: c.expose_headers.clone().unwrap_or_default(),
                allow_credentials: c.allow_credentials.unwrap_or(false),
                max_age_seconds: c.max_age.and_then(|a| u32::try_from(a).ok()).unwrap_or(5),
            }))
        }
        FilterType::ExtensionRef => match &f.extension_ref {
            Some(e) => Some(extension_ref(ctx, route_ns, e)),
            None => missing(),
        },
        // Must fail closed, and the waypoint has no external authorization: 500.
        FilterType::ExternalAuth => Some(filter::Kind::Unsupported(
            "ExternalAuth filter (not implemented by the waypoint)".into(),
        )),
    }
}

/// An `ExtensionRef`: a `fault` filter when it names one of our FaultInjection objects in the
/// route's namespace, else `unsupported` (the request gets 500; gateway-api-semantics §8.3
/// forbids skipping a filter that cannot be resolved).
pub(super) fn extension_ref(
    ctx: &Context<'_>,
    route_ns: &str,
    e: &HttpRouteRulesFiltersExtensionRef,
) -> filter::Kind {
    let unsupported = |why: &str| {
        filter::Kind::Unsupported(format!(
            "ExtensionRef {}/{} {}: {why}",
            e.group, e.kind, e.name
        ))
    };
    if e.group != fault_types::GROUP || e.kind != fault_types::KIND {
        return unsupported("unknown extension kind");
    }
    let Some(object) = ctx.store.fault_injection(route_ns, &e.name) else {
        return unsupported(&format!("no such object in namespace {route_ns:?}"));
    };
    match fault(&object.spec) {
        Ok(fault) => filter::Kind::Fault(fault),
        Err(why) => unsupported(&why),
    }
}

/// A FaultInjection spec as the waypoint applies it. The store validated it, so the errors
/// are for specs that somehow were not: they make the filter `unsupported`, never a panic.
pub(super) fn fault(spec: &FaultInjectionSpec) -> Result<pb::FaultInjection, String> {
    let delay = match &spec.delay {
        Some(d) => Some(FaultDelay {
            fixed_delay_ms: duration_ms(&d.fixed_delay)
                .ok_or_else(|| format!("invalid fixedDelay {:?}", d.fixed_delay))?,
            percentage: Some(fraction(d.percentage, d.fraction.as_ref())?),
        }),
        None => None,
    };
    let abort = match &spec.abort {
        Some(a) => {
            let status = |v: i64| u32::try_from(v).map_err(|_| format!("invalid status {v}"));
            let error = match (a.http_status, a.grpc_status, a.reset) {
                (Some(s), None, None | Some(false)) => fault_abort::Error::HttpStatus(status(s)?),
                (None, Some(s), None | Some(false)) => fault_abort::Error::GrpcStatus(status(s)?),
                (None, None, Some(true)) => fault_abort::Error::Reset(true),
                _ => {
                    return Err(
                        "abort needs exactly one of httpStatus, grpcStatus or reset: true".into(),
                    );
                }
            };
            Some(FaultAbort {
                error: Some(error),
                percentage: Some(fraction(a.percentage, a.fraction.as_ref())?),
            })
        }
        None => None,
    };
    if delay.is_none() && abort.is_none() {
        return Err("neither delay nor abort".into());
    }
    Ok(pb::FaultInjection { delay, abort })
}

/// `percentage: P` is P/100, a `fraction` is itself (denominator 100 when omitted), neither
/// is every request (100/100); the denominator is always filled in.
fn fraction(
    percentage: Option<i64>,
    fraction: Option<&fault_types::Fraction>,
) -> Result<pb::Fraction, String> {
    let (numerator, denominator) = match (percentage, fraction) {
        (Some(p), None) => (p, 100),
        (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
        (None, None) => (100, 100),
        (Some(_), Some(_)) => return Err("both percentage and fraction".into()),
    };
    let numerator = u32::try_from(numerator).map_err(|_| format!("invalid share {numerator}"))?;
    let denominator = u32::try_from(denominator)
        .ok()
        .filter(|d| *d > 0 && *d >= numerator)
        .ok_or_else(|| format!("invalid share {numerator}/{denominator}"))?;
    Ok(pb::Fraction {
        numerator,
        denominator,
    })
}

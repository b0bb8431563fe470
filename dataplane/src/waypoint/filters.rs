//! HTTPRoute filters as pure functions over request and response parts: header modifiers,
//! URL rewrites, redirects and CORS (gateway-api-semantics §8.4, §8.8, §8.9, §8.11).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::routes::Matcher;
use crate::xds::proto::ambient::waypoint::{self as pb, path_modifier};

/// Applies `set`, `add` and `remove` (names compare case-insensitively; `set` replaces every
/// value, `add` appends a separate value, `remove` deletes every value). Entries whose name
/// or value is not valid HTTP are left out.
pub(crate) fn modify_headers(headers: &mut HeaderMap, m: &pb::HeaderModifier) {
    let parse = |h: &pb::Header| {
        Some((
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_str(&h.value).ok()?,
        ))
    };
    for (name, value) in m.set.iter().filter_map(parse) {
        headers.insert(name, value);
    }
    for (name, value) in m.add.iter().filter_map(parse) {
        headers.append(name, value);
    }
    for name in &m.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// The matched prefix of an entry, for `ReplacePrefixMatch`.
pub(crate) fn matched_prefix(matcher: &Matcher) -> Option<&str> {
    matcher.prefix()
}

/// The path after a path modifier: `ReplaceFullPath` replaces it whole; `ReplacePrefixMatch`
/// replaces the matched prefix segment-wise (§8.8's table: `/foo/bar` with `/foo` → `/xyz`
/// is `/xyz/bar`; replacement `` or `/` leaves `/bar`, never `//bar`; a trailing slash stays).
pub(crate) fn rewrite_path(path: &str, prefix: Option<&str>, m: &pb::PathModifier) -> String {
    match &m.kind {
        Some(path_modifier::Kind::ReplaceFullPath(full)) => full.clone(),
        Some(path_modifier::Kind::ReplacePrefixMatch(replacement)) => {
            let prefix = prefix.unwrap_or("");
            let rest = path.get(prefix.len()..).unwrap_or("");
            let replacement = replacement.trim_end_matches('/');
            let joined = format!("{replacement}{rest}");
            if joined.is_empty() {
                "/".to_string()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
        None => path.to_string(),
    }
}

/// Splits a request target into path and query (the `?` and what follows).
pub(crate) fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    }
}

/// What a redirect needs from the request.
pub(crate) struct RedirectFrom<'a> {
    pub(crate) scheme: &'a str,
    /// The Host header without its port.
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// The port the client dialled (the Service port).
    pub(crate) port: u16,
}

/// The `Location` and status of a RequestRedirect (§8.9): scheme, host and path default to
/// the request's; the port is explicit, else 80/443 when the scheme is set, else the port
/// dialled; a scheme's default port is left out. The query is kept.
pub(crate) fn redirect(
    r: &pb::RequestRedirect,
    from: &RedirectFrom<'_>,
    prefix: Option<&str>,
) -> (StatusCode, String) {
    let scheme = if r.scheme.is_empty() {
        from.scheme
    } else {
        r.scheme.as_str()
    };
    let host = if r.hostname.is_empty() {
        from.host
    } else {
        r.hostname.as_str()
    };
    let default_port = |s: &str| if s == "https" { 443 } else { 80 };
    let port = match u16::try_from(r.port).ok().filter(|p| *p != 0) {
        Some(p) => p,
        None if !r.scheme.is_empty() => default_port(scheme),
        None => from.port,
    };
    let path = match &r.path {
        Some(m) => rewrite_path(from.path, prefix, m),
        None => from.path.to_string(),
    };
    let mut location = format!("{scheme}://{host}");
    if port != default_port(scheme) {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(q) = from.query {
        location.push('?');
        location.push_str(q);
    }
    let status = u16::try_from(r.status_code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| s.is_redirection())
        .unwrap_or(StatusCode::FOUND);
    (status, location)
}

/// Whether `origin` is admitted by one of `allowed` (`*`, exact, or `scheme://*.domain`
/// matching any number of labels left of the `*`).
fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| {
        if a == "*" || a == origin {
            return true;
        }
        match a.split_once("://*") {
            Some((scheme, suffix)) => origin
                .strip_prefix(scheme)
                .and_then(|o| o.strip_prefix("://"))
                .is_some_and(|host| host.ends_with(suffix) && host.len() > suffix.len()),
            None => false,
        }
    })
}

/// CORS for one request: a preflight is answered by the waypoint itself (`Some(headers)` of
/// the answer, empty when the origin is not allowed); an ordinary cross-origin request gets
/// the response headers to add.
pub(crate) enum CorsOutcome {
    Preflight(HeaderMap),
    Actual(HeaderMap),
    NotCors,
}

pub(crate) fn cors(c: &pb::Cors, method: &Method, request: &HeaderMap) -> CorsOutcome {
    let Some(origin) = request.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return CorsOutcome::NotCors;
    };
    let preflight =
        method == Method::OPTIONS && request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut out = HeaderMap::new();
    if origin_allowed(&c.allow_origins, origin) {
        // With credentials a `*` is never the answer: the origin itself is.
        let allow_origin = if c.allow_origins.iter().any(|a| a == "*") && !c.allow_credentials {
            "*"
        } else {
            origin
        };
        insert(&mut out, header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if c.allow_credentials {
            insert(&mut out, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        }
        if preflight {
            let list = |values: &[String], requested: Option<&HeaderValue>| {
                if values.iter().any(|v| v == "*") {
                    if c.allow_credentials {
                        // Echo what was asked for instead of `*`.
                        requested
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    } else {
                        "*".to_string()
                    }
                } else {
                    values.join(",")
                }
            };
            let methods = list(
                &c.allow_methods,
                request.get(header::ACCESS_CONTROL_REQUEST_METHOD),
            );
            if !methods.is_empty() {
                insert(&mut out, header::ACCESS_CONTROL_ALLOW_METHODS, &methods);
            }
            let headers = list(
                &c.allow_headers,
                request.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
            );
            if !headers.is_empty() {
                insert(&mut out, header::ACCESS_CONTROL_ALLOW_HEADERS, &headers);
            }
            let max_age = if c.max_age_seconds == 0 {
                5
            } else {
                c.max_age_seconds
            };
            insert(
                &mut out,
                header::ACCESS_CONTROL_MAX_AGE,
                &max_age.to_string(),
            );
        } else if !c.expose_headers.is_empty() {
            insert(
                &mut out,
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                &c.expose_headers.join(","),
            );
        }
    }
    if preflight {
        CorsOutcome::Preflight(out)
    } else {
        CorsOutcome::Actual(out)
    }
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix_rewrite(replacement: &str) -> pb::PathModifier {
        pb::PathModifier {
            kind: Some(path_modifier::Kind::ReplacePrefixMatch(replacement.into())),
        }
    }

    #[test]
    fn replace_prefix_match_follows_the_table_of_the_reference() {
        // (request, matched prefix as normalised, replacement, result): §8.8
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/anything", "", "/api", "/api/anything"),
        ];
        for (request, prefix, replacement, expected) in cases {
            assert_eq!(
                rewrite_path(request, Some(prefix), &prefix_rewrite(replacement)),
                expected,
                "{request} with {prefix} -> {replacement:?}"
            );
        }
        let full = pb::PathModifier {
            kind: Some(path_modifier::Kind::ReplaceFullPath("/one".into())),
        };
        assert_eq!(rewrite_path("/a/b/c", None, &full), "/one");
    }

    fn from<'a>(path: &'a str, query: Option<&'a str>) -> RedirectFrom<'a> {
        RedirectFrom {
            scheme: "http",
            host: "echo",
            path,
            query,
            port: 80,
        }
    }

    #[test]
    fn redirects_default_to_the_request_and_leave_default_ports_out() {
        let r = |r: pb::RequestRedirect| redirect(&r, &from("/p", Some("a=1")), None);
        assert_eq!(
            r(pb::RequestRedirect::default()),
            (StatusCode::FOUND, "http://echo/p?a=1".into())
        );
        assert_eq!(
            r(pb::RequestRedirect {
                scheme: "https".into(),
                ..Default::default()
            }),
            (StatusCode::FOUND, "https://echo/p?a=1".into())
        );
        assert_eq!(
            r(pb::RequestRedirect {
                hostname: "example.org".into(),
                port: 8443,
                status_code: 308,
                ..Default::default()
            }),
            (
                StatusCode::PERMANENT_REDIRECT,
                "http://example.org:8443/p?a=1".into()
            )
        );
        // no scheme, no port: the port dialled, left out when it is the scheme's default
        let mut f = from("/p", None);
        f.port = 8080;
        assert_eq!(
            redirect(&pb::RequestRedirect::default(), &f, None).1,
            "http://echo:8080/p"
        );
        let with_path = pb::RequestRedirect {
            path: Some(prefix_rewrite("/new")),
            status_code: 301,
            ..Default::default()
        };
        assert_eq!(
            redirect(&with_path, &from("/old/x", None), Some("/old")),
            (StatusCode::MOVED_PERMANENTLY, "http://echo/new/x".into())
        );
    }

    #[test]
    fn header_modifiers_set_add_and_remove_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Header-Set", HeaderValue::from_static("old"));
        headers.append("x-header-add", HeaderValue::from_static("one"));
        headers.insert("x-header-remove", HeaderValue::from_static("gone"));
        let h = |n: &str, v: &str| pb::Header {
            name: n.into(),
            value: v.into(),
        };
        modify_headers(
            &mut headers,
            &pb::HeaderModifier {
                set: vec![h("x-header-set", "new")],
                add: vec![h("X-Header-Add", "two")],
                remove: vec!["X-HEADER-REMOVE".into()],
            },
        );
        assert_eq!(headers.get_all("x-header-set").iter().count(), 1);
        assert_eq!(headers["x-header-set"], "new");
        let added: Vec<_> = headers.get_all("x-header-add").iter().collect();
        assert_eq!(added, ["one", "two"]);
        assert!(!headers.contains_key("x-header-remove"));
    }

    #[test]
    fn cors_preflights_are_answered_and_wildcard_origins_match_subdomains() {
        let policy = pb::Cors {
            allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["x-header-1".into()],
            expose_headers: vec!["x-header-3".into()],
            allow_credentials: true,
            max_age_seconds: 0,
        };
        let mut request = HeaderMap::new();
        request.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.b.bar.com"),
        );
        request.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        let CorsOutcome::Preflight(answer) = cors(&policy, &Method::OPTIONS, &request) else {
            panic!("a preflight")
        };
        assert_eq!(
            answer[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://a.b.bar.com"
        );
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_METHODS], "GET,OPTIONS");
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(answer[header::ACCESS_CONTROL_MAX_AGE], "5");
        // an origin not allowed: still answered by the proxy, without CORS headers
        request.insert(header::ORIGIN, HeaderValue::from_static("https://bar.com"));
        let CorsOutcome::Preflight(answer) = cors(&policy, &Method::OPTIONS, &request) else {
            panic!("a preflight")
        };
        assert!(answer.is_empty());
        // an actual request gets the exposed headers
        request.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://www.foo.com"),
        );
        let CorsOutcome::Actual(add) = cors(&policy, &Method::GET, &request) else {
            panic!("an actual request")
        };
        assert_eq!(add[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-header-3");
    }
}

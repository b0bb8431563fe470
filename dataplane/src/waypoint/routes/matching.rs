//! One route entry's match, compiled: path, headers, query parameters and method for HTTP;
//! service, method and headers for gRPC (gateway-api-semantics §8.1).

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::xds::proto::ambient::waypoint::{self as pb, MatchType, route_rule};

/// Why an entry could not be compiled: the entry is kept and answers 500, never skipped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MatchError {
    #[error("invalid regular expression {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("invalid method {0:?}")]
    Method(String),
}

/// A string match: exact, or a regular expression that must match the whole value.
#[derive(Debug, Clone)]
pub(crate) enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn compile(kind: MatchType, value: &str) -> Result<Self, MatchError> {
        match kind {
            MatchType::Regex => full_regex(value).map(ValueMatcher::Regex),
            MatchType::Exact | MatchType::Prefix => Ok(ValueMatcher::Exact(value.to_string())),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(expected) => expected == value,
            ValueMatcher::Regex(re) => re.is_match(value),
        }
    }
}

/// A regular expression anchored at both ends, as Gateway API implementations match them.
fn full_regex(pattern: &str) -> Result<Regex, MatchError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| MatchError::Regex {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })
}

/// How the path is matched; the index uses it to find candidate entries.
#[derive(Debug, Clone)]
pub(crate) enum PathMatcher {
    Exact(String),
    /// Segment-wise prefix, normalised without a trailing `/` (`/` becomes ``).
    Prefix(String),
    Regex(Regex),
}

/// A prefix value as the index keys it: without its trailing slashes.
pub(crate) fn normalize_prefix(value: &str) -> &str {
    value.trim_end_matches('/')
}

/// Whether `path` starts with `prefix` at a segment boundary.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => p == path,
            PathMatcher::Prefix(p) => prefix_matches(p, path),
            PathMatcher::Regex(re) => re.is_match(path),
        }
    }
}

/// What a request offers to matching.
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a Method,
    /// The path without its query.
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
}

/// The first value of query parameter `name` (names and values are case-sensitive).
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

/// The first value of header `name`, as text.
fn header_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Http {
        path: PathMatcher,
        headers: Vec<(HeaderName, ValueMatcher)>,
        query: Vec<(String, ValueMatcher)>,
        method: Option<Method>,
    },
    Grpc {
        service: Option<ValueMatcher>,
        method: Option<ValueMatcher>,
        headers: Vec<(HeaderName, ValueMatcher)>,
    },
}

fn compile_headers(list: &[pb::ValueMatch]) -> Result<Vec<(HeaderName, ValueMatcher)>, MatchError> {
    let mut out: Vec<(HeaderName, ValueMatcher)> = Vec::new();
    for h in list {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| MatchError::HeaderName(h.name.clone()))?;
        // Only the first entry per name counts.
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        out.push((name, ValueMatcher::compile(h.r#type(), &h.value)?));
    }
    Ok(out)
}

impl Matcher {
    pub(crate) fn compile(m: Option<&route_rule::Match>) -> Result<Self, MatchError> {
        match m {
            None => Ok(Matcher::Http {
                path: PathMatcher::Prefix(String::new()),
                headers: Vec::new(),
                query: Vec::new(),
                method: None,
            }),
            Some(route_rule::Match::Http(h)) => {
                let path = match &h.path {
                    None => PathMatcher::Prefix(String::new()),
                    Some(p) => match p.r#type() {
                        MatchType::Exact => PathMatcher::Exact(p.value.clone()),
                        MatchType::Prefix => {
                            PathMatcher::Prefix(normalize_prefix(&p.value).to_string())
                        }
                        MatchType::Regex => PathMatcher::Regex(full_regex(&p.value)?),
                    },
                };
                let mut query: Vec<(String, ValueMatcher)> = Vec::new();
                for q in &h.query_params {
                    if query.iter().any(|(n, _)| *n == q.name) {
                        continue;
                    }
                    query.push((q.name.clone(), ValueMatcher::compile(q.r#type(), &q.value)?));
                }
                let method = if h.method.is_empty() {
                    None
                } else {
                    Some(
                        Method::from_bytes(h.method.as_bytes())
                            .map_err(|_| MatchError::Method(h.method.clone()))?,
                    )
                };
                Ok(Matcher::Http {
                    path,
                    headers: compile_headers(&h.headers)?,
                    query,
                    method,
                })
            }
            Some(route_rule::Match::Grpc(g)) => {
                let part = |v: &str| {
                    (!v.is_empty())
                        .then(|| ValueMatcher::compile(g.r#type(), v))
                        .transpose()
                };
                Ok(Matcher::Grpc {
                    service: part(&g.service)?,
                    method: part(&g.method)?,
                    headers: compile_headers(&g.headers)?,
                })
            }
        }
    }

    /// The path part the index files this entry under.
    pub(crate) fn path(&self) -> Option<&PathMatcher> {
        match self {
            Matcher::Http { path, .. } => Some(path),
            Matcher::Grpc { .. } => None,
        }
    }

    /// The matched prefix of a `PathPrefix` entry (normalised), for `ReplacePrefixMatch`.
    pub(crate) fn prefix(&self) -> Option<&str> {
        match self.path() {
            Some(PathMatcher::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn matches(&self, request: &RequestView<'_>) -> bool {
        let headers_match = |headers: &[(HeaderName, ValueMatcher)]| {
            headers
                .iter()
                .all(|(name, m)| header_value(request.headers, name).is_some_and(|v| m.matches(v)))
        };
        match self {
            Matcher::Http {
                path,
                headers,
                query,
                method,
            } => {
                path.matches(request.path)
                    && method.as_ref().is_none_or(|m| m == request.method)
                    && headers_match(headers)
                    && query.iter().all(|(name, m)| {
                        query_value(request.query, name).is_some_and(|v| m.matches(v))
                    })
            }
            Matcher::Grpc {
                service,
                method,
                headers,
            } => {
                // `/package.Service/Method`
                let Some((svc, meth)) = request
                    .path
                    .strip_prefix('/')
                    .and_then(|p| p.split_once('/'))
                else {
                    return false;
                };
                service.as_ref().is_none_or(|m| m.matches(svc))
                    && method.as_ref().is_none_or(|m| m.matches(meth))
                    && headers_match(headers)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_by_segment() {
        assert!(prefix_matches("/v2", "/v2"));
        assert!(prefix_matches("/v2", "/v2/"));
        assert!(prefix_matches("/v2", "/v2/x"));
        assert!(!prefix_matches("/v2", "/v2example"));
        assert!(prefix_matches("", "/anything"));
        assert_eq!(normalize_prefix("/match/"), "/match");
        assert_eq!(normalize_prefix("/"), "");
    }

    #[test]
    fn query_parameters_are_case_sensitive_and_first_wins() {
        assert_eq!(
            query_value(Some("animal=whale&animal=dolphin"), "animal"),
            Some("whale")
        );
        assert_eq!(query_value(Some("ANIMAL=Whale"), "animal"), None);
        assert_eq!(query_value(Some("flag"), "flag"), Some(""));
        assert_eq!(query_value(None, "x"), None);
    }

    #[test]
    fn regexes_match_whole_values_and_bad_ones_are_errors() {
        let m = ValueMatcher::compile(MatchType::Regex, "/v[0-9]+").unwrap();
        assert!(m.matches("/v12"));
        assert!(!m.matches("/v12/x"));
        assert!(matches!(
            ValueMatcher::compile(MatchType::Regex, "(unclosed"),
            Err(MatchError::Regex { .. })
        ));
    }
}

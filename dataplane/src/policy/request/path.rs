//! `paths` values: exact, `prefix*`, `*suffix`, `*`, and the templates `{*}` (one segment)
//! and `{**}` (the rest of the path, last only); and the one normalization every path gets
//! before it is routed or authorized, so that what a policy judged is what the backend sees.

use std::borrow::Cow;

use crate::policy::StringMatch;

/// One compiled `paths` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Plain(StringMatch),
    /// Segments after the leading `/`.
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: zero or more segments; only last.
    Rest,
}

impl PathPattern {
    pub(super) fn parse(value: &str) -> Result<PathPattern, String> {
        if !value.contains('{') {
            return Ok(PathPattern::Plain(StringMatch::written(value)));
        }
        let Some(rest) = value.strip_prefix('/') else {
            return Err(format!("path template {value:?} must start with /"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Rest,
                "{**}" => return Err(format!("{value:?}: {{**}} must be the last segment")),
                p if p.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "{value:?}: a segment is a literal, {{*}} or {{**}}, not {p:?}"
                    ));
                }
                p => Segment::Literal(p.to_string()),
            };
            segments.push(segment);
        }
        Ok(PathPattern::Template(segments))
    }

    pub(super) fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(m) => m.matches(path),
            PathPattern::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for segment in segments {
                    match segment {
                        // The rest of the path after a `/`: `/files/{**}` takes `/files/`
                        // and `/files/a/b`, not `/files`.
                        Segment::Rest => return parts.next().is_some(),
                        Segment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => {
                            if parts.next() != Some(l.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// A request path with its dot segments removed (RFC 3986 §5.2.4), `%2e`/`%2E` counted as a
/// dot, as Envoy's path normalization does for Istio (`BASE`). Slashes are not merged.
/// Borrowed when nothing changes, which is every ordinary path.
pub fn normalize(path: &str) -> Cow<'_, str> {
    let suspicious = path.contains("/.")
        || path.contains("%2e")
        || path.contains("%2E")
        || !path.starts_with('/');
    if !suspicious {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let body = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        let dots = dot_segment(segment);
        match dots {
            Some(1) => trailing_slash = i == last,
            Some(2) => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(path.len());
    normalized.push('/');
    normalized.push_str(&out.join("/"));
    if trailing_slash && !normalized.ends_with('/') {
        normalized.push('/');
    }
    Cow::Owned(normalized)
}

/// `Some(1)` for `.`, `Some(2)` for `..` (either possibly percent-encoded), else `None`.
fn dot_segment(segment: &str) -> Option<usize> {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest
            .as_bytes()
            .get(..3)
            .is_some_and(|b| b.eq_ignore_ascii_case(b"%2e"))
        {
            rest = &rest[3..];
        } else {
            return None;
        }
        dots += 1;
    }
    (dots == 1 || dots == 2).then_some(dots)
}

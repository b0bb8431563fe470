//! Comparing one answer with what a request expects, as upstream's harness compares
//! (gateway-api-semantics §3): the status from an allowed list (408 and 504 interchangeable),
//! then on a 2xx the echo's report (backend, namespace, path, host, method, the request
//! headers it saw), the response headers, and on a 3xx the redirect's `Location` field by
//! field. A mismatch says what was expected and what came.

use crate::case::{Expect, Redirect, RequestSpec};
use crate::profiles::Profile;
use crate::targets::{Answer, Observation, Response};
use sim::apps::echo::EchoBody;

/// Whether `status` is allowed by `allowed` (408 and 504 stand for each other).
fn status_allowed(allowed: &[u16], status: u16) -> bool {
    let timeout = |s: u16| s == 408 || s == 504;
    allowed
        .iter()
        .any(|&a| a == status || (timeout(a) && timeout(status)))
}

/// Compares one try with `request`'s expectations.
pub fn check(
    profile: Profile,
    request: &RequestSpec,
    observed: &Observation,
) -> Result<(), String> {
    let expect = &request.expect;
    let response = match &observed.answer {
        Answer::Response(r) => r,
        Answer::Refused => return Err("the connection was refused or closed".into()),
        Answer::Echoed => return Err("a TCP echo, not an HTTP answer".into()),
        // Even where a timeout status is expected, the proxy must answer it.
        Answer::Timeout => return Err("no answer within the request's timeout".into()),
    };
    let allowed = expect
        .status
        .as_ref()
        .map(|s| s.list())
        .unwrap_or_else(|| vec![200]);
    if !status_allowed(&allowed, response.status) {
        return Err(format!(
            "status {} (expected {}){}",
            response.status,
            allowed
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            body_hint(response)
        ));
    }
    check_response_headers(expect, response)?;
    if (300..400).contains(&response.status)
        && let Some(redirect) = &expect.redirect
    {
        return check_redirect(redirect, request, response);
    }
    if !(200..300).contains(&response.status) {
        return Ok(());
    }
    let echo: Option<EchoBody> = serde_json::from_str(&response.body).ok();
    if expect.not_echo {
        return match echo {
            Some(e) => Err(format!(
                "answered by the echo in {} (the proxy must answer itself)",
                e.pod
            )),
            None => Ok(()),
        };
    }
    let needs_echo = expect.backend.is_some()
        || expect.namespace.is_some()
        || expect.path.is_some()
        || expect.host.is_some()
        || expect.method.is_some()
        || !expect.request_headers.is_empty()
        || !expect.absent_request_headers.is_empty()
        || profile == Profile::GatewayHttp;
    if !needs_echo {
        return Ok(());
    }
    let Some(echo) = echo else {
        return Err(format!(
            "the answer is not an echo report{}",
            body_hint(response)
        ));
    };
    check_echo(profile, expect, request, &echo)
}

fn body_hint(response: &Response) -> String {
    let body = response.body.trim();
    if body.is_empty() || body.starts_with('{') {
        String::new()
    } else {
        format!(": {:?}", body.chars().take(80).collect::<String>())
    }
}

fn check_echo(
    profile: Profile,
    expect: &Expect,
    request: &RequestSpec,
    echo: &EchoBody,
) -> Result<(), String> {
    if let Some(prefix) = &expect.backend
        && !echo.pod.starts_with(prefix.as_str())
    {
        return Err(format!("answered by {}, not a {prefix}* pod", echo.pod));
    }
    if let Some(ns) = &expect.namespace
        && &echo.namespace != ns
    {
        return Err(format!(
            "answered from namespace {:?}, expected {ns:?}",
            echo.namespace
        ));
    }
    // The path is compared by default only where upstream compares it (gateway tests).
    let path = match (&expect.path, profile) {
        (Some(p), _) => Some(p.clone()),
        (None, Profile::GatewayHttp) => Some(request.path.clone()),
        (None, Profile::MeshHttp) => None,
    };
    if let Some(path) = path
        && echo.path != path
    {
        return Err(format!(
            "the backend saw path {:?}, expected {path:?}",
            echo.path
        ));
    }
    if let Some(host) = &expect.host
        && &echo.host != host
    {
        return Err(format!(
            "the backend saw host {:?}, expected {host:?}",
            echo.host
        ));
    }
    if let Some(method) = &expect.method
        && &echo.method != method
    {
        return Err(format!(
            "the backend saw method {}, expected {method}",
            echo.method
        ));
    }
    let seen = |name: &str| {
        echo.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.join(","))
    };
    for (name, value) in &expect.request_headers {
        match seen(name) {
            Some(got) if &got == value => {}
            Some(got) => {
                return Err(format!(
                    "the backend saw {name}: {got:?}, expected {value:?}"
                ));
            }
            None => return Err(format!("the backend did not see header {name}")),
        }
    }
    for name in &expect.absent_request_headers {
        if let Some(got) = seen(name) {
            return Err(format!(
                "the backend saw {name}: {got:?}, which must be absent"
            ));
        }
    }
    Ok(())
}

fn check_response_headers(expect: &Expect, response: &Response) -> Result<(), String> {
    for (name, accepted) in &expect.response_headers {
        let values = response.values(name);
        if values.is_empty() {
            return Err(format!("the response has no header {name}"));
        }
        let got = values.join(",");
        let accepted = accepted.list();
        if !accepted.iter().any(|a| a == &got) {
            return Err(format!(
                "response header {name}: {got:?}, expected {}",
                accepted
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        }
    }
    for name in &expect.absent_response_headers {
        let values = response.values(name);
        if !values.is_empty() {
            return Err(format!(
                "response header {name}: {:?} must be absent",
                values.join(",")
            ));
        }
    }
    Ok(())
}

/// `scheme://host[:port]/path?query` split into its parts (`None` if it is not absolute).
fn split_location(location: &str) -> Option<(String, String, Option<u16>, String)> {
    let (scheme, rest) = location.split_once("://")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_string(), Some(p.parse().ok()?))
        }
        _ => (authority.to_string(), None),
    };
    let path = path.split('?').next().unwrap_or_default();
    Some((scheme.to_string(), host, port, path.to_string()))
}

fn check_redirect(
    redirect: &Redirect,
    request: &RequestSpec,
    response: &Response,
) -> Result<(), String> {
    let Some(location) = response.values("location").first().map(|s| s.to_string()) else {
        return Err("a redirect without a Location".into());
    };
    let Some((scheme, host, port, path)) = split_location(&location) else {
        return Err(format!("Location {location:?} is not an absolute URL"));
    };
    let want_scheme = redirect.scheme.clone().unwrap_or_else(|| "http".into());
    if scheme != want_scheme {
        return Err(format!(
            "Location {location:?}: scheme {scheme}, expected {want_scheme}"
        ));
    }
    if let Some(h) = &redirect.hostname
        && &host != h
    {
        return Err(format!("Location {location:?}: host {host}, expected {h}"));
    }
    match (redirect.port, port) {
        (Some(want), got) if got != Some(want) => {
            return Err(format!(
                "Location {location:?}: port {}, expected {want}",
                got.map_or("none".into(), |p| p.to_string())
            ));
        }
        (None, Some(got)) => {
            let well_known = if scheme == "https" { 443 } else { 80 };
            if got != well_known {
                return Err(format!(
                    "Location {location:?}: port {got}, expected none or {well_known}"
                ));
            }
        }
        _ => {}
    }
    let request_path = request.path.split('?').next().unwrap_or_default();
    let want_path = redirect.path.as_deref().unwrap_or(request_path);
    if path != want_path {
        return Err(format!(
            "Location {location:?}: path {path}, expected {want_path}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_their_fields() {
        assert_eq!(
            split_location("https://example.org:8443/a/b?x=1"),
            Some((
                "https".into(),
                "example.org".into(),
                Some(8443),
                "/a/b".into()
            ))
        );
        assert_eq!(
            split_location("http://echo/p"),
            Some(("http".into(), "echo".into(), None, "/p".into()))
        );
        assert_eq!(split_location("/relative"), None);
        assert!(status_allowed(&[504], 408));
        assert!(!status_allowed(&[200], 404));
    }
}

//! The waypoint's decision (policy-semantics §2.1): CUSTOM, then AUDIT (marks only), then
//! DENY, then ALLOW — with no ALLOW policy everything is allowed, otherwise one must match.
//! Dry-run policies are evaluated and reported, never enforced.
//!
//! On a port that does not speak HTTP (`http: None`) an HTTP-only attribute cannot be read:
//! an ALLOW rule that names one anywhere is dropped (never matches, more restrictive); in
//! any other action the attribute counts as matched, so `DENY methods: [POST]` refuses the
//! whole port — what istiod builds for Envoy's TCP chain (§2.5).
//!
//! [`evaluate`] is the per-request path and builds no text; [`explain`] walks the same
//! functions and says which policy, rule and attribute decided.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::policy::StringMatch;

use super::path::{PathPattern, Segment};
use super::{Attribute, Key, RequestAction, RequestContext, RequestPolicy, RequestRule, Value};

/// A decision, by index into the policies it was made against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestDecision {
    pub allowed: bool,
    /// The policy that decided, if one did (none: no ALLOW policy applies, or none matched).
    pub policy: Option<usize>,
    /// Its matching rule (none for an unevaluable policy).
    pub rule: Option<usize>,
    /// A matching AUDIT policy marked the request for audit logging.
    pub audited: bool,
    /// Dry-run policies that matched, and whether each would have allowed.
    pub dry_run: Vec<(usize, bool)>,
}

/// Why a decision is what it is, in words: the deciding policy and rule, and for each
/// policy considered the attribute that matched or failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    pub allowed: bool,
    /// `<namespace>/<name>` of the deciding policy.
    pub policy: Option<String>,
    pub rule: Option<usize>,
    /// One line: the decision and its reason, as the access log and admin API say it.
    pub reason: String,
    /// One line per policy considered, in evaluation order.
    pub steps: Vec<String>,
}

/// What the request has for a key.
enum Seen<'a> {
    Absent,
    Text(Cow<'a, str>),
    Ip(IpAddr),
    Port(u16),
    ServiceAccount(&'a str, &'a str),
    /// An HTTP-only key on a connection that is not HTTP.
    NotHttp,
}

fn seen<'a>(key: &Key, ctx: &RequestContext<'a>) -> Seen<'a> {
    let text = |s: Option<&'a str>| s.map_or(Seen::Absent, |s| Seen::Text(Cow::Borrowed(s)));
    match key {
        Key::Principal => text(ctx.principal),
        Key::Namespace => text(ctx.identity.map(|i| i.namespace.as_str())),
        Key::TrustDomain => text(ctx.identity.map(|i| i.trust_domain.as_str())),
        Key::ServiceAccount => ctx.identity.map_or(Seen::Absent, |i| {
            Seen::ServiceAccount(&i.namespace, &i.service_account)
        }),
        Key::SourceIp | Key::RemoteIp => Seen::Ip(ctx.source_ip),
        Key::DestinationIp => Seen::Ip(ctx.destination_ip),
        Key::DestinationPort => Seen::Port(ctx.destination_port),
        Key::Sni | Key::Unmodelled(_) => Seen::Absent,
        Key::Host | Key::Method | Key::Path | Key::Header(_) | Key::RequestAuth(_) => {
            let Some(http) = ctx.http else {
                return Seen::NotHttp;
            };
            match key {
                Key::Host => Seen::Text(if http.host.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(http.host.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(http.host)
                }),
                Key::Method => text(Some(http.method)),
                Key::Path => text(Some(http.path)),
                Key::Header(name) => {
                    let mut values = http.headers.get_all(name.as_str()).iter();
                    match (values.next(), values.next()) {
                        (None, _) => Seen::Absent,
                        // Bytes that are not UTF-8 are compared as replacement characters,
                        // never skipped: a value cannot dodge a DENY by being malformed.
                        (Some(one), None) => Seen::Text(String::from_utf8_lossy(one.as_bytes())),
                        (Some(first), Some(second)) => {
                            let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
                            for v in std::iter::once(second).chain(values) {
                                joined.push(',');
                                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                            }
                            Seen::Text(Cow::Owned(joined))
                        }
                    }
                }
                _ => Seen::Absent,
            }
        }
    }
}

fn host_without_port(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, _)| h)
}

fn value_matches(value: &Value, seen: &Seen<'_>) -> bool {
    match (value, seen) {
        (Value::String(m), Seen::Text(t)) => m.matches(t),
        (Value::Path(p), Seen::Text(t)) => p.matches(t),
        (Value::Host(m), Seen::Text(t)) => {
            m.matches(t) || host_without_port(t).is_some_and(|h| m.matches(h))
        }
        (Value::Cidr(c), Seen::Ip(ip)) => c.contains(*ip),
        (Value::Port(p), Seen::Port(port)) => p == port,
        (Value::ServiceAccount { namespace, name }, Seen::ServiceAccount(ns, sa)) => {
            namespace == ns && name == sa
        }
        _ => false,
    }
}

/// Whether one attribute holds. `allow`: the policy's action is ALLOW (decides what an
/// HTTP-only attribute on a non-HTTP connection counts as).
fn attribute_holds(attribute: &Attribute, ctx: &RequestContext<'_>, allow: bool) -> bool {
    let seen = seen(&attribute.key, ctx);
    if matches!(seen, Seen::NotHttp) {
        return !allow;
    }
    let hit = attribute.values.iter().any(|v| value_matches(v, &seen));
    hit != attribute.negated
}

/// A source or operation: all its attributes; one with none matches nothing.
fn group_holds(group: &[Attribute], ctx: &RequestContext<'_>, allow: bool) -> bool {
    !group.is_empty() && group.iter().all(|a| attribute_holds(a, ctx, allow))
}

fn rule_matches(rule: &RequestRule, ctx: &RequestContext<'_>, allow: bool) -> bool {
    if allow && rule.http_only && ctx.http.is_none() {
        return false;
    }
    (rule.from.is_empty() || rule.from.iter().any(|g| group_holds(g, ctx, allow)))
        && (rule.to.is_empty() || rule.to.iter().any(|g| group_holds(g, ctx, allow)))
        && rule.when.iter().all(|a| attribute_holds(a, ctx, allow))
}

impl RequestPolicy {
    fn allow(&self) -> bool {
        self.action == RequestAction::Allow
    }

    /// The first rule that matches. An unevaluable policy "matches" every request, with no
    /// rule, whatever its action: it is treated as a denial by the caller.
    fn matching_rule(&self, ctx: &RequestContext<'_>) -> Option<Option<usize>> {
        if self.unevaluable.is_some() {
            return Some(None);
        }
        let allow = self.allow();
        self.rules
            .iter()
            .position(|r| rule_matches(r, ctx, allow))
            .map(Some)
    }
}

/// Decides one request (or connection) against the policies that apply to it, in a stable
/// order (the deciding policy is the first that decides).
pub fn evaluate(ctx: &RequestContext<'_>, policies: &[RequestPolicy]) -> RequestDecision {
    let mut decision = RequestDecision::default();
    for (i, p) in policies.iter().enumerate() {
        if p.dry_run && p.matching_rule(ctx).is_some() {
            let would_allow = p.unevaluable.is_none()
                && matches!(p.action, RequestAction::Allow | RequestAction::Audit);
            decision.dry_run.push((i, would_allow));
        }
    }
    let enforced = || policies.iter().enumerate().filter(|(_, p)| !p.dry_run);
    // Policies that cannot be evaluated deny whatever they cover.
    for (i, p) in enforced() {
        if p.unevaluable.is_some() {
            decision.policy = Some(i);
            return decision;
        }
    }
    for (i, p) in enforced().filter(|(_, p)| matches!(p.action, RequestAction::Custom { .. })) {
        if let Some(rule) = p.matching_rule(ctx) {
            decision.policy = Some(i);
            decision.rule = rule;
            return decision;
        }
    }
    decision.audited = enforced()
        .filter(|(_, p)| p.action == RequestAction::Audit)
        .any(|(_, p)| p.matching_rule(ctx).is_some());
    for (i, p) in enforced().filter(|(_, p)| p.action == RequestAction::Deny) {
        if let Some(rule) = p.matching_rule(ctx) {
            decision.policy = Some(i);
            decision.rule = rule;
            return decision;
        }
    }
    let mut allows = enforced().filter(|(_, p)| p.allow()).peekable();
    if allows.peek().is_none() {
        decision.allowed = true;
        return decision;
    }
    for (i, p) in allows {
        if let Some(rule) = p.matching_rule(ctx) {
            decision.allowed = true;
            decision.policy = Some(i);
            decision.rule = rule;
            return decision;
        }
    }
    decision
}

fn describe_values(attribute: &Attribute) -> String {
    let mut out = String::from("[");
    for (i, v) in attribute.values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = match v {
            Value::String(m) | Value::Host(m) => write!(out, "{}", written(m)),
            Value::Cidr(c) => write!(out, "{c}"),
            Value::Port(p) => write!(out, "{p}"),
            Value::ServiceAccount { namespace, name } => write!(out, "{namespace}/{name}"),
            Value::Path(PathPattern::Plain(m)) => write!(out, "{}", written(m)),
            Value::Path(PathPattern::Template(segments)) => {
                for s in segments {
                    let _ = match s {
                        Segment::Literal(l) => write!(out, "/{l}"),
                        Segment::One => write!(out, "/{{*}}"),
                        Segment::Rest => write!(out, "/{{**}}"),
                    };
                }
                Ok(())
            }
        };
    }
    out.push(']');
    out
}

/// A string matcher as a policy writes it.
fn written(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(s) => format!("{s:?}"),
        StringMatch::Prefix(s) => format!("{:?}", format!("{s}*")),
        StringMatch::Suffix(s) => format!("{:?}", format!("*{s}")),
        StringMatch::Presence => "\"*\"".into(),
    }
}

fn describe_seen(seen: &Seen<'_>) -> String {
    match seen {
        Seen::Absent => "nothing".into(),
        Seen::Text(t) => format!("{t:?}"),
        Seen::Ip(ip) => ip.to_string(),
        Seen::Port(p) => p.to_string(),
        Seen::ServiceAccount(ns, sa) => format!("{ns}/{sa}"),
        Seen::NotHttp => "no HTTP request".into(),
    }
}

/// `field: seen in/not in values`, for one attribute.
fn describe_attribute(attribute: &Attribute, ctx: &RequestContext<'_>, allow: bool) -> String {
    let seen = seen(&attribute.key, ctx);
    let holds = attribute_holds(attribute, ctx, allow);
    if matches!(seen, Seen::NotHttp) {
        let counted = if holds { "counts as matched" } else { "fails" };
        return format!(
            "{}: HTTP-only, on a non-HTTP port it {counted}",
            attribute.field
        );
    }
    let relation = match (attribute.negated, holds) {
        (false, true) => "in",
        (false, false) => "not in",
        (true, true) => "in none of",
        (true, false) => "in",
    };
    format!(
        "{}: {} {relation} {}",
        attribute.field,
        describe_seen(&seen),
        describe_values(attribute)
    )
}

/// Why a rule matched (every attribute that was checked) or did not (the first that failed).
fn describe_rule(rule: &RequestRule, ctx: &RequestContext<'_>, allow: bool) -> (bool, String) {
    if allow && rule.http_only && ctx.http.is_none() {
        return (
            false,
            "an ALLOW rule with HTTP-only attributes is dropped on a non-HTTP port".into(),
        );
    }
    let mut matched = Vec::new();
    for (section, groups) in [("from", &rule.from), ("to", &rule.to)] {
        if groups.is_empty() {
            continue;
        }
        match groups.iter().find(|g| group_holds(g, ctx, allow)) {
            Some(g) => matched.extend(g.iter().map(|a| describe_attribute(a, ctx, allow))),
            None => {
                let why = groups
                    .iter()
                    .map(
                        |g| match g.iter().find(|a| !attribute_holds(a, ctx, allow)) {
                            Some(a) => describe_attribute(a, ctx, allow),
                            None => format!("an empty {section} entry matches nothing"),
                        },
                    )
                    .collect::<Vec<_>>()
                    .join("; ");
                return (false, format!("no {section} entry matched ({why})"));
            }
        }
    }
    for a in &rule.when {
        let line = describe_attribute(a, ctx, allow);
        if !attribute_holds(a, ctx, allow) {
            return (false, line);
        }
        matched.push(line);
    }
    if matched.is_empty() {
        matched.push("an empty rule matches every request".into());
    }
    (true, matched.join(", "))
}

fn action_name(action: &RequestAction) -> &'static str {
    match action {
        RequestAction::Allow => "ALLOW",
        RequestAction::Deny => "DENY",
        RequestAction::Audit => "AUDIT",
        RequestAction::Custom { .. } => "CUSTOM",
    }
}

/// One line per rule of a policy, or why it cannot be evaluated.
fn describe_policy(p: &RequestPolicy, ctx: &RequestContext<'_>) -> String {
    let mut line = format!(
        "{} {}{}: ",
        action_name(&p.action),
        p.key(),
        if p.dry_run { " (dry-run)" } else { "" }
    );
    if let Some(why) = &p.unevaluable {
        let _ = write!(line, "cannot be evaluated ({why}): denies every request");
        return line;
    }
    if p.rules.is_empty() {
        line.push_str("no rules, matches nothing");
        return line;
    }
    let allow = p.allow();
    let mut parts = Vec::new();
    for (i, rule) in p.rules.iter().enumerate() {
        let (matched, why) = describe_rule(rule, ctx, allow);
        parts.push(format!(
            "rules[{i}] {}: {why}",
            if matched { "matched" } else { "did not match" }
        ));
        if matched {
            break;
        }
    }
    line.push_str(&parts.join(" | "));
    line
}

impl RequestDecision {
    /// One line: the decision and its reason, naming the deciding policy and rule (what the
    /// access log says; no per-policy detail, so it costs one string).
    pub fn summary(&self, policies: &[RequestPolicy]) -> String {
        let policy = self.policy.and_then(|i| policies.get(i));
        let rule = self.rule.unwrap_or_default();
        let mut line = match (self.allowed, policy) {
            (false, Some(p)) if p.unevaluable.is_some() => format!(
                "denied: {} cannot be evaluated ({})",
                p.key(),
                p.unevaluable.as_deref().unwrap_or_default()
            ),
            (false, Some(p)) if matches!(p.action, RequestAction::Custom { .. }) => format!(
                "denied: CUSTOM {} rules[{rule}] matched and no external authorizer is reachable",
                p.key()
            ),
            (false, Some(p)) => format!("denied: DENY {} rules[{rule}] matched", p.key()),
            (true, Some(p)) => format!("allowed: ALLOW {} rules[{rule}] matched", p.key()),
            (true, None) => "allowed: no ALLOW policy applies".into(),
            (false, None) => "denied: ALLOW policies apply, but none matched".into(),
        };
        if self.audited {
            line.push_str("; audited");
        }
        for (i, would_allow) in &self.dry_run {
            if let Some(p) = policies.get(*i) {
                let _ = write!(
                    line,
                    "; dry-run {} {} matched (would {})",
                    action_name(&p.action),
                    p.key(),
                    if *would_allow { "allow" } else { "deny" }
                );
            }
        }
        line
    }
}

/// The decision and its reasons in words; the same decision [`evaluate`] makes.
pub fn explain(ctx: &RequestContext<'_>, policies: &[RequestPolicy]) -> Explanation {
    let decision = evaluate(ctx, policies);
    Explanation {
        allowed: decision.allowed,
        policy: decision.policy.map(|i| policies[i].key()),
        rule: decision.rule,
        reason: decision.summary(policies),
        steps: policies.iter().map(|p| describe_policy(p, ctx)).collect(),
    }
}

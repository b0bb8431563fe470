mod differential;

use std::net::IpAddr;

use super::path::normalize;
use super::*;
use crate::xds::proto::ambient::waypoint as pb;

fn identity(ns: &str, sa: &str) -> Identity {
    Identity {
        trust_domain: "cluster.local".into(),
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

struct Request {
    identity: Option<Identity>,
    principal: Option<String>,
    source_ip: IpAddr,
    method: String,
    host: String,
    path: String,
    headers: http::HeaderMap,
    http: bool,
    port: u16,
}

impl Request {
    fn get(path: &str) -> Request {
        let id = identity("client-ns", "client");
        Request {
            principal: Some(id.principal()),
            identity: Some(id),
            source_ip: "10.0.0.5".parse().unwrap(),
            method: "GET".into(),
            host: "svc.ns.svc.cluster.local".into(),
            path: path.into(),
            headers: http::HeaderMap::new(),
            http: true,
            port: 80,
        }
    }

    fn tcp() -> Request {
        Request {
            http: false,
            ..Request::get("/")
        }
    }

    fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }

    fn host(mut self, h: &str) -> Self {
        self.host = h.into();
        self
    }

    fn from(mut self, ns: &str, sa: &str) -> Self {
        let id = identity(ns, sa);
        self.principal = Some(id.principal());
        self.identity = Some(id);
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers
            .append(name, http::HeaderValue::from_str(value).unwrap());
        self
    }

    fn ctx(&self) -> RequestContext<'_> {
        RequestContext {
            identity: self.identity.as_ref(),
            principal: self.principal.as_deref(),
            source_ip: self.source_ip,
            destination_ip: "10.96.0.10".parse().unwrap(),
            destination_port: self.port,
            http: self.http.then_some(HttpAttributes {
                method: &self.method,
                host: &self.host,
                path: &self.path,
                headers: &self.headers,
            }),
        }
    }
}

fn policy(name: &str, action: pb::Action, rules: Vec<pb::Rule>) -> RequestPolicy {
    compile(&pb::AuthorizationPolicy {
        namespace: "ns".into(),
        name: name.into(),
        action: action.into(),
        rules,
        ..Default::default()
    })
}

fn to(o: pb::Operation) -> pb::Rule {
    pb::Rule {
        to: vec![o],
        ..Default::default()
    }
}

fn from(s: pb::Source) -> pb::Rule {
    pb::Rule {
        from: vec![s],
        ..Default::default()
    }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> pb::Rule {
    pb::Rule {
        when: vec![pb::Condition {
            key: key.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            not_values: not_values.iter().map(|v| v.to_string()).collect(),
        }],
        ..Default::default()
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn allowed(request: &Request, policies: &[RequestPolicy]) -> bool {
    let decision = evaluate(&request.ctx(), policies);
    // explain() must reach the same decision as the per-request path.
    assert_eq!(explain(&request.ctx(), policies).allowed, decision.allowed);
    decision.allowed
}

#[test]
fn no_policy_allows_and_an_allow_with_no_rules_allows_nothing() {
    assert!(allowed(&Request::get("/"), &[]));
    let nothing = policy("nothing", pb::Action::Allow, vec![]);
    assert!(!allowed(&Request::get("/"), &[nothing]));
    let everything = policy("all", pb::Action::Allow, vec![pb::Rule::default()]);
    assert!(allowed(&Request::get("/"), &[everything]));
    let deny_all = policy("deny", pb::Action::Deny, vec![pb::Rule::default()]);
    assert!(!allowed(&Request::get("/"), &[deny_all]));
}

#[test]
fn methods_paths_and_their_negations() {
    let p = policy(
        "get-api",
        pb::Action::Allow,
        vec![to(pb::Operation {
            methods: strings(&["GET", "HEAD"]),
            paths: strings(&["/api/*", "/health"]),
            not_paths: strings(&["/api/admin*"]),
            ..Default::default()
        })],
    );
    let policies = [p];
    assert!(allowed(&Request::get("/api/items"), &policies));
    assert!(allowed(&Request::get("/health"), &policies));
    assert!(!allowed(&Request::get("/healthz"), &policies));
    assert!(!allowed(&Request::get("/api/admin/users"), &policies));
    assert!(!allowed(
        &Request::get("/api/items").method("POST"),
        &policies
    ));
    // Methods are case-sensitive, as HTTP says.
    assert!(!allowed(
        &Request::get("/api/items").method("get"),
        &policies
    ));
}

#[test]
fn path_templates_match_whole_segments() {
    let p = policy(
        "t",
        pb::Action::Allow,
        vec![to(pb::Operation {
            paths: strings(&["/books/{*}/pages", "/files/{**}"]),
            ..Default::default()
        })],
    );
    let policies = [p];
    assert!(allowed(&Request::get("/books/7/pages"), &policies));
    assert!(!allowed(&Request::get("/books/7/8/pages"), &policies));
    assert!(!allowed(&Request::get("/books//pages"), &policies));
    assert!(allowed(&Request::get("/files/a/b/c"), &policies));
    assert!(allowed(&Request::get("/files/"), &policies));
    assert!(!allowed(&Request::get("/files"), &policies));
    // A template in the wrong shape cannot be compiled: the policy denies all it covers.
    let bad = policy(
        "bad",
        pb::Action::Allow,
        vec![to(pb::Operation {
            paths: strings(&["/a/{**}/b"]),
            ..Default::default()
        })],
    );
    assert!(bad.unevaluable.is_some());
    assert!(!allowed(&Request::get("/a/x/b"), &[bad]));
}

#[test]
fn dot_segments_are_removed_before_matching() {
    assert_eq!(normalize("/a/b/../c"), "/a/c");
    assert_eq!(normalize("/public/%2e%2E/admin"), "/admin");
    assert_eq!(normalize("/a/./b/."), "/a/b/");
    assert_eq!(normalize("/.."), "/");
    assert_eq!(normalize("/a/..."), "/a/...");
    assert!(matches!(
        normalize("/plain/path"),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(normalize("/caf\u{e9}/%2"), "/caf\u{e9}/%2");
}

#[test]
fn hosts_match_without_case_and_with_or_without_a_port() {
    let p = policy(
        "h",
        pb::Action::Allow,
        vec![to(pb::Operation {
            hosts: strings(&["svc.ns.svc.cluster.local", "*.example.com"]),
            ..Default::default()
        })],
    );
    let policies = [p];
    assert!(allowed(&Request::get("/"), &policies));
    assert!(allowed(
        &Request::get("/").host("SVC.ns.svc.cluster.local:80"),
        &policies
    ));
    assert!(allowed(
        &Request::get("/").host("api.Example.com:8080"),
        &policies
    ));
    assert!(!allowed(&Request::get("/").host("svc.ns"), &policies));
}

#[test]
fn sources_principals_namespaces_service_accounts_and_trust_domains() {
    let p = policy(
        "src",
        pb::Action::Allow,
        vec![
            from(pb::Source {
                principals: strings(&["cluster.local/ns/a/sa/reader"]),
                ..Default::default()
            }),
            from(pb::Source {
                namespaces: strings(&["b*"]),
                not_service_accounts: strings(&["bravo/blocked"]),
                ..Default::default()
            }),
            from(pb::Source {
                service_accounts: strings(&["c/writer"]),
                trust_domains: strings(&["cluster.local"]),
                ..Default::default()
            }),
        ],
    );
    let policies = [p];
    let get = Request::get("/");
    assert!(allowed(&get.from("a", "reader"), &policies));
    assert!(!allowed(&Request::get("/").from("a", "other"), &policies));
    assert!(allowed(&Request::get("/").from("bravo", "x"), &policies));
    assert!(!allowed(
        &Request::get("/").from("bravo", "blocked"),
        &policies
    ));
    assert!(allowed(&Request::get("/").from("c", "writer"), &policies));
    let mut other_domain = Request::get("/").from("c", "writer");
    if let Some(id) = other_domain.identity.as_mut() {
        id.trust_domain = "other.domain".into();
    }
    assert!(!allowed(&other_domain, &policies));
}

#[test]
fn no_identity_fails_positive_source_fields_and_passes_negative_ones() {
    let mut anonymous = Request::get("/");
    anonymous.identity = None;
    anonymous.principal = None;
    let must_be_someone = policy(
        "p",
        pb::Action::Allow,
        vec![from(pb::Source {
            principals: strings(&["*"]),
            ..Default::default()
        })],
    );
    assert!(!allowed(&anonymous, &[must_be_someone]));
    let not_ns = policy(
        "n",
        pb::Action::Allow,
        vec![from(pb::Source {
            not_namespaces: strings(&["bad"]),
            ..Default::default()
        })],
    );
    assert!(allowed(&anonymous, &[not_ns]));
}

#[test]
fn ip_blocks_ports_and_conditions() {
    let p = policy(
        "l4",
        pb::Action::Deny,
        vec![
            from(pb::Source {
                ip_blocks: strings(&["10.0.0.0/24"]),
                not_ip_blocks: strings(&["10.0.0.9"]),
                ..Default::default()
            }),
            when("destination.port", &["8080"], &[]),
        ],
    );
    let policies = [p];
    assert!(!allowed(&Request::get("/"), &policies));
    let mut excepted = Request::get("/");
    excepted.source_ip = "10.0.0.9".parse().unwrap();
    assert!(allowed(&excepted, &policies));
    let mut on_8080 = Request::get("/");
    on_8080.source_ip = "192.168.1.1".parse().unwrap();
    on_8080.port = 8080;
    assert!(!allowed(&on_8080, &policies));
}

#[test]
fn header_conditions_with_values_and_not_values() {
    let p = policy(
        "hdr",
        pb::Action::Allow,
        vec![when("request.headers[X-Version]", &["v1*"], &["v1-beta"])],
    );
    let policies = [p];
    assert!(allowed(
        &Request::get("/").header("x-version", "v1.2"),
        &policies
    ));
    assert!(!allowed(
        &Request::get("/").header("x-version", "v1-beta"),
        &policies
    ));
    assert!(!allowed(&Request::get("/"), &policies));
    // Several values are read joined by commas.
    assert!(allowed(
        &Request::get("/")
            .header("x-version", "v1")
            .header("x-version", "v2"),
        &policies
    ));
}

#[test]
fn request_auth_is_absent_without_request_authentication() {
    let needs_jwt = policy(
        "jwt",
        pb::Action::Allow,
        vec![from(pb::Source {
            request_principals: strings(&["*"]),
            ..Default::default()
        })],
    );
    assert!(!allowed(&Request::get("/"), &[needs_jwt]));
    let claims = policy(
        "claims",
        pb::Action::Allow,
        vec![when("request.auth.claims[groups]", &["admin"], &[])],
    );
    assert!(!allowed(&Request::get("/"), &[claims]));
}

#[test]
fn on_a_tcp_port_http_attributes_fail_allow_rules_and_widen_deny_rules() {
    let allow_get = policy(
        "allow-get",
        pb::Action::Allow,
        vec![to(pb::Operation {
            methods: strings(&["GET"]),
            ..Default::default()
        })],
    );
    assert!(!allowed(&Request::tcp(), &[allow_get]));
    let deny_post = policy(
        "deny-post",
        pb::Action::Deny,
        vec![to(pb::Operation {
            methods: strings(&["POST"]),
            ..Default::default()
        })],
    );
    assert!(!allowed(&Request::tcp(), std::slice::from_ref(&deny_post)));
    // Over HTTP the same DENY only refuses POST.
    assert!(allowed(&Request::get("/"), &[deny_post]));
    let explanation = explain(
        &Request::tcp().ctx(),
        &[policy(
            "deny-post",
            pb::Action::Deny,
            vec![to(pb::Operation {
                methods: strings(&["POST"]),
                ..Default::default()
            })],
        )],
    );
    assert!(
        explanation.steps[0].contains("HTTP-only"),
        "{explanation:?}"
    );
}

#[test]
fn deny_beats_allow_custom_denies_and_audit_only_marks() {
    let allow_all = policy("allow-all", pb::Action::Allow, vec![pb::Rule::default()]);
    let deny_admin = policy(
        "deny-admin",
        pb::Action::Deny,
        vec![to(pb::Operation {
            paths: strings(&["/admin*"]),
            ..Default::default()
        })],
    );
    let audit = policy("audit", pb::Action::Audit, vec![pb::Rule::default()]);
    let policies = [allow_all.clone(), deny_admin, audit];
    let decision = evaluate(&Request::get("/admin/x").ctx(), &policies);
    assert!(!decision.allowed);
    assert_eq!(decision.policy, Some(1));
    assert!(decision.audited);
    let decision = evaluate(&Request::get("/ok").ctx(), &policies);
    assert!(decision.allowed && decision.audited);
    assert_eq!(decision.policy, Some(0));

    let custom = compile(&pb::AuthorizationPolicy {
        namespace: "ns".into(),
        name: "ext".into(),
        action: pb::Action::Custom.into(),
        provider: "opa".into(),
        rules: vec![to(pb::Operation {
            paths: strings(&["/ext*"]),
            ..Default::default()
        })],
        ..Default::default()
    });
    let policies = [allow_all, custom];
    assert!(!allowed(&Request::get("/ext/1"), &policies));
    assert!(allowed(&Request::get("/other"), &policies));
    let why = explain(&Request::get("/ext/1").ctx(), &policies);
    assert!(why.reason.contains("CUSTOM ns/ext"), "{why:?}");
}

#[test]
fn dry_run_policies_are_reported_never_enforced() {
    let mut deny_all = policy("shadow", pb::Action::Deny, vec![pb::Rule::default()]);
    deny_all.dry_run = true;
    let decision = evaluate(&Request::get("/").ctx(), std::slice::from_ref(&deny_all));
    assert!(decision.allowed);
    assert_eq!(decision.dry_run, vec![(0, false)]);
    let why = explain(&Request::get("/").ctx(), &[deny_all]);
    assert!(
        why.reason
            .contains("dry-run DENY ns/shadow matched (would deny)")
    );
}

#[test]
fn a_policy_that_cannot_be_compiled_denies_what_it_covers() {
    let bad_cidr = policy(
        "bad",
        pb::Action::Allow,
        vec![from(pb::Source {
            ip_blocks: strings(&["10.0.0.0/99"]),
            ..Default::default()
        })],
    );
    assert!(
        bad_cidr
            .unevaluable
            .as_deref()
            .unwrap()
            .contains("ipBlocks")
    );
    let allow_all = policy("all", pb::Action::Allow, vec![pb::Rule::default()]);
    assert!(!allowed(&Request::get("/"), &[allow_all.clone(), bad_cidr]));
    let unknown_key = policy(
        "k",
        pb::Action::Deny,
        vec![when("request.size", &["1"], &[])],
    );
    assert!(!allowed(
        &Request::get("/"),
        &[allow_all.clone(), unknown_key]
    ));
    let unknown_action = compile(&pb::AuthorizationPolicy {
        namespace: "ns".into(),
        name: "odd".into(),
        action: 42,
        rules: vec![],
        ..Default::default()
    });
    assert!(!allowed(&Request::get("/"), &[allow_all, unknown_action]));
}

#[test]
fn an_empty_source_or_operation_matches_nothing() {
    let p = policy(
        "empty",
        pb::Action::Allow,
        vec![from(pb::Source::default())],
    );
    assert!(!allowed(&Request::get("/"), &[p]));
}

#[test]
fn explanations_name_the_policy_rule_and_attribute() {
    let p = policy(
        "readers",
        pb::Action::Allow,
        vec![
            from(pb::Source {
                principals: strings(&["cluster.local/ns/a/sa/reader"]),
                ..Default::default()
            }),
            to(pb::Operation {
                methods: strings(&["GET"]),
                ..Default::default()
            }),
        ],
    );
    let why = explain(
        &Request::get("/").method("DELETE").ctx(),
        std::slice::from_ref(&p),
    );
    assert!(!why.allowed);
    assert_eq!(why.reason, "denied: ALLOW policies apply, but none matched");
    assert!(
        why.steps[0].contains("rules[0].from[0].principals"),
        "{why:?}"
    );
    assert!(
        why.steps[0].contains("rules[1].to[0].methods: \"DELETE\" not in [\"GET\"]"),
        "{why:?}"
    );
    let why = explain(&Request::get("/").ctx(), &[p]);
    assert_eq!(why.policy.as_deref(), Some("ns/readers"));
    assert_eq!(why.rule, Some(1));
    assert_eq!(why.reason, "allowed: ALLOW ns/readers rules[1] matched");
}

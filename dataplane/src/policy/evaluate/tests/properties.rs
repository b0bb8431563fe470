//! Property tests: generated policies and connections against the reference evaluator,
//! and properties stated by construction.

use super::*;

// Generators draw from small pools of realistic values so that every field both hits and
// misses often.

const TRUST_DOMAINS: [&str; 2] = ["cluster.local", "other.td"];
const NAMESPACES: [&str; 4] = ["shop", "shopping", "pay", ""];
const SERVICE_ACCOUNTS: [&str; 3] = ["web", "api", ""];
const IPS: [&str; 10] = [
    "10.0.1.5",
    "10.0.1.4",
    "10.0.1.200",
    "10.0.2.7",
    "10.1.0.9",
    "192.168.3.4",
    "fd00::1",
    "fd00::",
    "fd00:1::7",
    "2001:db8::5",
];
const PORTS: [u16; 4] = [80, 443, 8080, 9090];

fn some_of<T: Clone + std::fmt::Debug>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(s, 1..=2),
    ]
}

fn arb_identity() -> impl Strategy<Value = Identity> {
    (
        prop::sample::select(&TRUST_DOMAINS[..]),
        prop::sample::select(&NAMESPACES[..]),
        prop::sample::select(&SERVICE_ACCOUNTS[..]),
    )
        .prop_map(|(td, ns, sa)| Identity::new(td, ns, sa))
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop::sample::select(&IPS[..]).prop_map(|s| s.parse().unwrap())
}

/// A pool address with a prefix length, often one where two pool addresses part: the
/// IPv4 ones first differ at bit 0, 15, 22, 24 or 31, the IPv6 ones at 0, 31 or 127.
fn arb_cidr() -> impl Strategy<Value = Cidr> {
    arb_ip()
        .prop_flat_map(|a| {
            let (max, edges) = if a.is_ipv4() {
                (32u32, vec![0, 1, 15, 16, 22, 23, 24, 25, 31, 32])
            } else {
                (128, vec![0, 1, 31, 32, 64, 127, 128])
            };
            (
                Just(a),
                prop_oneof![1 => 0..=max, 2 => prop::sample::select(edges)],
            )
        })
        .prop_map(|(a, len)| Cidr::new(a, len).unwrap())
}

fn arb_port() -> impl Strategy<Value = u16> {
    prop::sample::select(&PORTS[..])
}

fn arb_namespace_match() -> impl Strategy<Value = StringMatch> {
    prop_oneof![
        prop::sample::select(vec!["shop", "shopping", "pay", "", "other"])
            .prop_map(|s| StringMatch::Exact(s.into())),
        prop::sample::select(vec!["sh", "shop", "p", "", "x"])
            .prop_map(|s| StringMatch::Prefix(s.into())),
        prop::sample::select(vec!["op", "ping", "ay", "", "x"])
            .prop_map(|s| StringMatch::Suffix(s.into())),
        Just(StringMatch::Presence),
    ]
}

fn arb_principal_match() -> impl Strategy<Value = StringMatch> {
    prop_oneof![
        arb_identity().prop_map(|id| StringMatch::Exact(format!(
            "{}/ns/{}/sa/{}",
            id.trust_domain, id.namespace, id.service_account
        ))),
        prop::sample::select(vec![
            "cluster.local/",
            "cluster.local/ns/shop/",
            "cluster.local/ns/shop",
            "other.td/ns/pay/sa/",
            "spiffe://",
            "",
        ])
        .prop_map(|s| StringMatch::Prefix(s.into())),
        prop::sample::select(vec![
            "/sa/web",
            "web",
            "/ns/shop/sa/api",
            "local/ns/pay/sa/web",
            "/sa/",
            "",
        ])
        .prop_map(|s| StringMatch::Suffix(s.into())),
        Just(StringMatch::Presence),
    ]
}

fn arb_service_account_match() -> impl Strategy<Value = ServiceAccountMatch> {
    (
        prop::sample::select(&NAMESPACES[..]),
        prop::sample::select(&SERVICE_ACCOUNTS[..]),
    )
        .prop_map(|(ns, sa)| ServiceAccountMatch {
            namespace: ns.into(),
            service_account: sa.into(),
        })
}

fn arb_match() -> impl Strategy<Value = Match> {
    let identity = (
        some_of(arb_namespace_match()),
        some_of(arb_namespace_match()),
        some_of(arb_principal_match()),
        some_of(arb_principal_match()),
        some_of(arb_service_account_match()),
        some_of(arb_service_account_match()),
    );
    let network = (
        some_of(arb_cidr()),
        some_of(arb_cidr()),
        some_of(arb_cidr()),
        some_of(arb_cidr()),
        some_of(arb_port()),
        some_of(arb_port()),
    );
    (identity, network).prop_map(
        |(
            (namespaces, not_namespaces, principals, not_principals, sas, not_sas),
            (src, not_src, dst, not_dst, ports, not_ports),
        )| Match {
            namespaces,
            not_namespaces,
            principals,
            not_principals,
            service_accounts: sas,
            not_service_accounts: not_sas,
            source_ips: src,
            not_source_ips: not_src,
            destination_ips: dst,
            not_destination_ips: not_dst,
            destination_ports: ports,
            not_destination_ports: not_ports,
        },
    )
}

fn arb_policy() -> impl Strategy<Value = Authorization> {
    (
        prop::bool::ANY,
        prop::bool::weighted(0.2),
        prop::collection::vec(
            prop::collection::vec(prop::collection::vec(arb_match(), 0..3), 0..3),
            0..3,
        ),
    )
        .prop_map(|(deny, dry_run, rules)| Authorization {
            name: String::new(),
            namespace: "ns".into(),
            scope: Scope::Global,
            action: if deny { Action::Deny } else { Action::Allow },
            dry_run,
            rules: rules
                .into_iter()
                .map(|clauses| Rule {
                    clauses: clauses
                        .into_iter()
                        .map(|matches| Clause { matches })
                        .collect(),
                })
                .collect(),
        })
}

/// Policies with unique keys, as in the state.
fn arb_policies(max: usize) -> impl Strategy<Value = Vec<Authorization>> {
    prop::collection::vec(arb_policy(), 0..max).prop_map(|ps| {
        ps.into_iter()
            .enumerate()
            .map(|(i, p)| Authorization {
                name: format!("p{i}"),
                ..p
            })
            .collect()
    })
}

fn arb_ctx() -> impl Strategy<Value = ConnectionContext> {
    (
        prop_oneof![1 => Just(None), 3 => arb_identity().prop_map(Some)],
        arb_ip(),
        arb_ip(),
        arb_port(),
    )
        .prop_map(|(id, src, dst, port)| ConnectionContext {
            source_identity: id,
            source_ip: src,
            destination_ip: dst,
            destination_port: port,
        })
}

fn with_peer(peer: Option<Identity>) -> ConnectionContext {
    ConnectionContext {
        source_identity: peer,
        ..ctx(None)
    }
}

/// The generators reach every outcome often enough for the properties to mean something.
#[test]
fn generators_reach_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let cases = (arb_policies(5), arb_ctx());
    let groups = (arb_match(), arb_ctx());
    let (mut outcomes, mut group_hits, mut group_misses) = ([0u32; 4], 0u32, 0u32);
    let n = 2000;
    for _ in 0..n {
        let (policies, c) = cases.new_tree(&mut runner).unwrap().current();
        let d = reference::decide(&c, &policies);
        outcomes[usize::from(d.allowed()) * 2 + usize::from(d.policy.is_some())] += 1;
        let (m, c) = groups.new_tree(&mut runner).unwrap().current();
        if m != Match::default() {
            if reference::group(&m, &c) {
                group_hits += 1;
            } else {
                group_misses += 1;
            }
        }
    }
    // [default deny, explicit deny, default allow, explicit allow]
    assert!(outcomes.iter().all(|&k| k > n / 20), "{outcomes:?}");
    assert!(
        group_hits > n / 10 && group_misses > n / 10,
        "{group_hits} {group_misses}"
    );
}

proptest! {
    /// The whole decision (verdict, deciding policy and rule, dry-run report) equals the
    /// independent reference evaluator's.
    #[test]
    fn decision_matches_reference_evaluator(policies in arb_policies(5), c in arb_ctx()) {
        prop_assert_eq!(evaluate(&c, &policies), reference::decide(&c, &policies));
    }

    /// Single match groups with every field kind agree with the reference.
    #[test]
    fn match_group_matches_reference(m in arb_match(), c in arb_ctx()) {
        prop_assert_eq!(m.matches(&c), reference::group(&m, &c));
    }

    /// A plaintext peer never satisfies a positive principal, namespace or service-account
    /// list, whatever else the group says (by construction, no oracle).
    #[test]
    fn plaintext_never_satisfies_positive_identity_fields(
        mut m in arb_match(),
        which in 0usize..3,
        ns in arb_namespace_match(),
        principal in arb_principal_match(),
        sa in arb_service_account_match(),
        c in arb_ctx(),
    ) {
        match which {
            0 => m.namespaces.push(ns),
            1 => m.principals.push(principal),
            _ => m.service_accounts.push(sa),
        }
        let c = ConnectionContext { source_identity: None, ..c };
        prop_assert!(!m.matches(&c));
        let p = policy("p", Action::Allow, vec![rule(m)]);
        prop_assert!(!evaluate(&c, [&p]).allowed());
    }

    /// Negative identity lists are always satisfied by a plaintext peer, and a group of only
    /// such lists therefore matches it; a peer that one of the lists names is excluded.
    #[test]
    fn plaintext_satisfies_negative_identity_fields(
        not_namespaces in prop::collection::vec(arb_namespace_match(), 0..3),
        not_principals in prop::collection::vec(arb_principal_match(), 0..3),
        not_service_accounts in prop::collection::vec(arb_service_account_match(), 1..3),
        peer in arb_identity(),
        which in 0usize..3,
    ) {
        let mut m = Match { not_namespaces, not_principals, not_service_accounts, ..Match::default() };
        let plaintext = with_peer(None);
        prop_assert!(m.matches(&plaintext));
        prop_assert!(evaluate(&plaintext, [&policy("a", Action::Allow, vec![rule(m.clone())])]).allowed());
        prop_assert!(!evaluate(&plaintext, [&policy("d", Action::Deny, vec![rule(m.clone())])]).allowed());
        match which {
            0 => m.not_namespaces.push(StringMatch::Exact(peer.namespace.clone())),
            1 => m.not_principals.push(StringMatch::Exact(format!(
                "{}/ns/{}/sa/{}", peer.trust_domain, peer.namespace, peer.service_account
            ))),
            _ => m.not_service_accounts.push(ServiceAccountMatch {
                namespace: peer.namespace.clone(),
                service_account: peer.service_account.clone(),
            }),
        }
        prop_assert!(!m.matches(&with_peer(Some(peer))));
    }

    /// Principal and namespace wildcards, by construction from the peer's own values:
    /// exact, any prefix `p*`, any suffix `*s` and `*` hit; the `spiffe://` form and
    /// anything longer miss. Service accounts ignore the trust domain.
    #[test]
    fn identity_wildcards_by_construction(
        td in "[a-z0-9]([a-z0-9.-]{0,12}[a-z0-9])?",
        ns in "[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?",
        sa in "[a-z0-9]([a-z0-9.-]{0,12}[a-z0-9])?",
        other_td in "[a-z]{1,5}",
        cut in 0.0f64..=1.0,
    ) {
        let peer = with_peer(Some(Identity::new(&td, &ns, &sa)));
        let full = format!("{td}/ns/{ns}/sa/{sa}");
        let (k, j) = ((full.len() as f64 * cut) as usize, (ns.len() as f64 * cut) as usize);
        let principals = [
            (StringMatch::Exact(full.clone()), true),
            (StringMatch::Prefix(full[..k].into()), true),
            (StringMatch::Suffix(full[k..].into()), true),
            (StringMatch::Presence, true),
            (StringMatch::Exact(format!("spiffe://{full}")), false),
            (StringMatch::Prefix("spiffe://".into()), false),
            (StringMatch::Exact(format!("{full}x")), false),
            (StringMatch::Exact(full[..k].into()), k == full.len()),
            (StringMatch::Prefix(format!("{full}/")), false),
            (StringMatch::Suffix(format!("/{full}")), false),
        ];
        for (pattern, hit) in principals {
            let positive = Match { principals: vec![pattern.clone()], ..Match::default() };
            let negative = Match { not_principals: vec![pattern.clone()], ..Match::default() };
            prop_assert_eq!(positive.matches(&peer), hit, "principal {:?}", pattern);
            prop_assert_eq!(negative.matches(&peer), !hit, "not principal {:?}", pattern);
        }
        let namespaces = [
            (StringMatch::Exact(ns.clone()), true),
            (StringMatch::Prefix(ns[..j].into()), true),
            (StringMatch::Suffix(ns[j..].into()), true),
            (StringMatch::Presence, true),
            // the namespace is compared alone, not the principal
            (StringMatch::Exact(full.clone()), false),
            (StringMatch::Prefix(format!("{td}/")), false),
            (StringMatch::Exact(format!("{ns}-x")), false),
        ];
        for (pattern, hit) in namespaces {
            let positive = Match { namespaces: vec![pattern.clone()], ..Match::default() };
            let negative = Match { not_namespaces: vec![pattern.clone()], ..Match::default() };
            prop_assert_eq!(positive.matches(&peer), hit, "namespace {:?}", pattern);
            prop_assert_eq!(negative.matches(&peer), !hit, "not namespace {:?}", pattern);
        }
        // the trust domain is ignored
        let elsewhere = with_peer(Some(Identity::new(other_td, &ns, &sa)));
        let service_accounts = [
            ((ns.clone(), sa.clone()), true),
            ((format!("{ns}x"), sa.clone()), false),
            ((ns.clone(), format!("{sa}x")), false),
            ((sa.clone(), ns.clone()), ns == sa),
        ];
        for ((namespace, service_account), hit) in service_accounts {
            let sam = ServiceAccountMatch { namespace, service_account };
            let positive = Match { service_accounts: vec![sam.clone()], ..Match::default() };
            let negative = Match { not_service_accounts: vec![sam.clone()], ..Match::default() };
            for c in [&peer, &elsewhere] {
                prop_assert_eq!(positive.matches(c), hit, "service account {:?}", sam);
                prop_assert_eq!(negative.matches(c), !hit, "not service account {:?}", sam);
            }
        }
    }

    /// CIDR containment by construction: flipping address bit `i` (most significant first)
    /// of a block's address stays inside a `/len` block iff `i >= len`; the block's own
    /// address is always inside; the other family never is, not even for `/0`. Checked for
    /// source and destination blocks and their negations.
    #[test]
    fn cidr_containment_by_construction(
        v4 in any::<u32>(),
        v6 in any::<u128>(),
        len4 in 0u32..=32,
        len6 in 0u32..=128,
        bit4 in 0u32..32,
        bit6 in 0u32..128,
    ) {
        let ip4 = |x: u32| IpAddr::V4(x.into());
        let ip6 = |x: u128| IpAddr::V6(x.into());
        let cases = [
            (ip4(v4), len4, ip4(v4), true),
            (ip4(v4), len4, ip4(v4 ^ (1 << (31 - bit4))), bit4 >= len4),
            (ip4(v4), len4, ip6(v6), false),
            (ip6(v6), len6, ip6(v6), true),
            (ip6(v6), len6, ip6(v6 ^ (1 << (127 - bit6))), bit6 >= len6),
            (ip6(v6), len6, ip4(v4), false),
        ];
        for (net, len, ip, inside) in cases {
            let block = vec![Cidr::new(net, len).unwrap()];
            let c = ConnectionContext { source_ip: ip, destination_ip: ip, ..ctx(None) };
            let src = Match { source_ips: block.clone(), ..Match::default() };
            let not_src = Match { not_source_ips: block.clone(), ..Match::default() };
            let dst = Match { destination_ips: block.clone(), ..Match::default() };
            let not_dst = Match { not_destination_ips: block, ..Match::default() };
            prop_assert_eq!(src.matches(&c), inside, "{}/{} {}", net, len, ip);
            prop_assert_eq!(not_src.matches(&c), !inside, "{}/{} {}", net, len, ip);
            prop_assert_eq!(dst.matches(&c), inside, "{}/{} {}", net, len, ip);
            prop_assert_eq!(not_dst.matches(&c), !inside, "{}/{} {}", net, len, ip);
        }
    }

    /// Dry-run policies never change the verdict.
    #[test]
    fn dry_run_is_inert(policies in arb_policies(5), c in arb_ctx()) {
        let enforced: Vec<Authorization> = policies.iter().filter(|p| !p.dry_run).cloned().collect();
        prop_assert_eq!(evaluate(&c, &policies).verdict, evaluate(&c, &enforced).verdict);
    }

    /// The verdict does not depend on the order of the policies (only the explanation may).
    #[test]
    fn verdict_is_independent_of_policy_order(policies in arb_policies(5), c in arb_ctx()) {
        let mut reversed = policies.clone();
        reversed.reverse();
        prop_assert_eq!(evaluate(&c, &policies).verdict, evaluate(&c, &reversed).verdict);
    }

    /// Adding a DENY policy can only turn allow into deny, never the reverse.
    #[test]
    fn deny_is_monotonic(
        policies in arb_policies(4),
        mut extra in arb_policy(),
        c in arb_ctx(),
    ) {
        extra.action = Action::Deny;
        extra.name = "extra".into();
        let before = evaluate(&c, &policies).allowed();
        let mut more = policies.clone();
        more.push(extra);
        let after = evaluate(&c, &more).allowed();
        prop_assert!(before || !after);
    }
}

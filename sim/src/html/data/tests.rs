use super::*;
use crate::html::axis::time_label;

#[test]
fn ticks_are_round_and_cover_the_run() {
    let a = axis(15_000);
    assert_eq!(a.tick, 2000);
    assert_eq!(a.ticks.first().map(|t| t.at), Some(0));
    assert_eq!(a.ticks.last().map(|t| t.at), Some(14_000));
    assert_eq!(a.ticks[1].label, "2s");
    assert_eq!(axis(900).tick, 100);
    assert_eq!(axis(900).ticks[3].label, "0.3s");
    assert_eq!(axis(0).end, 1);
    let long = axis(598_000);
    assert_eq!(long.tick, 60_000);
    assert_eq!(long.ticks[2].label, "2m");
    assert_eq!(axis(45_000).tick, 5000);
    assert_eq!(axis(3 * 3_600_000).tick, 20 * 60_000);
    assert_eq!(time_label(125_000), "2m05s");
    assert_eq!(time_label(600_000), "10m");
    assert_eq!(time_label(1_250), "1.25s");
    assert_eq!(time_label(7_200_000), "2h");
}

#[test]
fn decisions_name_their_policy_or_the_default_rule() {
    let e = |d| {
        let (v, b, p, r) = explain(d);
        (v, b, p.unwrap_or_default(), r.unwrap_or_default())
    };
    assert_eq!(
        e("explicitly denied by shop/deny-web rule 0"),
        ("deny", "policy", "shop/deny-web".into(), "rule 0".into())
    );
    assert_eq!(
        e("allowed by shop/allow rule 2"),
        ("allow", "policy", "shop/allow".into(), "rule 2".into())
    );
    assert_eq!(
        e("allowed: ALLOW shop/allow-web rules[1] matched; audited"),
        ("allow", "policy", "shop/allow-web".into(), "rule 1".into())
    );
    assert_eq!(
        e("denied: DENY shop/d rules[0] matched"),
        ("deny", "policy", "shop/d".into(), "rule 0".into())
    );
    assert_eq!(
        e("denied: shop/bad cannot be evaluated (unknown field)"),
        ("deny", "policy", "shop/bad".into(), String::new())
    );
    for d in [
        "denied: allow policies exist, but none allowed",
        "denied: ALLOW policies apply, but none matched",
    ] {
        let (v, b, p, r) = e(d);
        assert_eq!((v, b, p.as_str()), ("deny", "default", ""));
        assert!(r.starts_with("default: deny"), "{r}");
    }
    assert_eq!(e("allowed: no ALLOW policy applies").1, "default");
    assert_eq!(e("closed by a policy change").1, "other");
}

#[test]
fn overlapping_requests_get_rows_of_their_own() {
    let (rows, used) = pack(&[(0, 10), (5, 15), (10, 20), (12, 13), (14, 30)], 4);
    assert_eq!(rows, [0, 1, 0, 2, 2]);
    assert_eq!(used, 3);
    let (rows, used) = pack(&[(0, 10), (0, 10), (0, 10)], 2);
    assert_eq!(used, 2);
    assert_eq!(rows, [0, 1, 0]);
}

#[test]
fn the_dial_line_names_source_destination_and_route() {
    assert_eq!(
        dial("tcp shop/web-0 (10.244.2.2) -> 10.96.0.2:9000 via 192.168.0.3:15001"),
        Some((
            "tcp".into(),
            "shop/web-0 (10.244.2.2)".into(),
            "10.96.0.2:9000".into(),
            "192.168.0.3:15001".into()
        ))
    );
    assert_eq!(dial("outcome succeed"), None);
}

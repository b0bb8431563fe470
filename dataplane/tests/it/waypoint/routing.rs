//! Routing: where requests go, and what routes do to them.

use dataplane::xds::proto::ambient::waypoint as pb;

use super::super::common::*;
use super::*;

#[tokio::test]
async fn without_routes_requests_reach_the_service_and_the_backend_sees_the_waypoint() {
    let mesh = Mesh::start().await;
    assert!(
        !mesh.waypoint.is_ready(),
        "not ready before a configuration"
    );
    mesh.waypoint.configure(mesh.service(Vec::new()));
    assert!(mesh.waypoint.is_ready());
    let (status, headers, body) = mesh.get("/hello?x=1", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-backend"], "echo-v1-0");
    assert!(body.contains("path=/hello?x=1"), "{body}");
    assert!(body.contains("host: echo.shop.svc.cluster.local"), "{body}");
    // node-b's ztunnel saw the waypoint's identity, never the client's
    let line = log_line(&[
        "direction=\"inbound\"",
        &format!("src.addr={}:", ip(mesh.net, 4)),
    ])
    .await;
    assert!(
        line.contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/waypoint\""),
        "{line}"
    );
    // the waypoint counted the request with upstream's labels
    let metrics = mesh.waypoint.metrics().encode();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("istio_requests_total{reporter=\"waypoint\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"")
                && l.contains("destination_service=\"echo.shop.svc.cluster.local\"")
                && l.contains("response_code=\"200\"")
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn routes_pick_backends_by_path_and_answer_404_when_nothing_matches() {
    let mesh = Mesh::start().await;
    mesh.waypoint.configure(mesh.service(vec![
        rule("v2", prefix("/v2"), vec![backend("echo-v2", 1)]),
        rule("v1", prefix("/v1"), vec![backend("echo", 1)]),
    ]));
    let (status, headers, _) = mesh.get("/v2/items", &[]).await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (200, &"echo-v2-0".parse().unwrap())
    );
    let (status, headers, _) = mesh.get("/v1", &[]).await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (200, &"echo-v1-0".parse().unwrap())
    );
    // segment-wise: /v2example is not under /v2
    let (status, _, _) = mesh.get("/v2example", &[]).await;
    assert_eq!(status, 404);
    log_line(&["path=\"/v2example\"", "status=404", "response_flags=NR"]).await;
}

#[tokio::test]
async fn filters_modify_headers_redirect_and_invalid_backends_answer_500() {
    let mesh = Mesh::start().await;
    let mut modify = rule("modify", prefix("/modify"), vec![backend("echo", 1)]);
    modify.filters = vec![
        pb::Filter {
            kind: Some(pb::filter::Kind::RequestHeaderModifier(
                pb::HeaderModifier {
                    set: vec![pb::Header {
                        name: "x-set".into(),
                        value: "set-value".into(),
                    }],
                    add: vec![pb::Header {
                        name: "x-add".into(),
                        value: "added".into(),
                    }],
                    remove: vec!["x-remove".into()],
                },
            )),
        },
        pb::Filter {
            kind: Some(pb::filter::Kind::ResponseHeaderModifier(
                pb::HeaderModifier {
                    set: vec![pb::Header {
                        name: "x-backend".into(),
                        value: "rewritten".into(),
                    }],
                    ..pb::HeaderModifier::default()
                },
            )),
        },
    ];
    let mut redirect = rule("redirect", prefix("/old"), Vec::new());
    redirect.filters = vec![pb::Filter {
        kind: Some(pb::filter::Kind::RequestRedirect(pb::RequestRedirect {
            hostname: "example.org".into(),
            status_code: 301,
            ..pb::RequestRedirect::default()
        })),
    }];
    let mut invalid = backend("missing", 1);
    invalid.error = pb::BackendError::NotFound.into();
    mesh.waypoint.configure(mesh.service(vec![
        modify,
        redirect,
        rule("invalid", prefix("/invalid"), vec![invalid]),
        rule("none", prefix("/none"), Vec::new()),
    ]));
    let (status, headers, body) = mesh
        .get(
            "/modify",
            &[("x-set", "old"), ("x-add", "first"), ("x-remove", "gone")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-set: set-value\n"), "{body}");
    assert!(!body.contains("x-set: old"), "{body}");
    assert!(body.contains("x-add: first\nx-add: added\n"), "{body}");
    assert!(!body.contains("x-remove"), "{body}");
    assert_eq!(headers["x-backend"], "rewritten");

    let (status, headers, _) = mesh.get("/old/page?q=1", &[]).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "http://example.org/old/page?q=1");

    let (status, _, _) = mesh.get("/invalid", &[]).await;
    assert_eq!(status, 500);
    let (status, _, _) = mesh.get("/none", &[]).await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn weights_split_traffic_and_weight_zero_gets_nothing() {
    let mesh = Mesh::start().await;
    mesh.waypoint.configure(mesh.service(vec![rule(
        "split",
        None,
        vec![backend("echo", 0), backend("echo-v2", 1)],
    )]));
    for _ in 0..10 {
        let (status, headers, _) = mesh.get("/", &[]).await;
        assert_eq!(
            (status, &headers["x-backend"]),
            (200, &"echo-v2-0".parse().unwrap())
        );
    }
    mesh.waypoint.configure(mesh.service(vec![rule(
        "split",
        None,
        vec![backend("echo", 1), backend("echo-v2", 1)],
    )]));
    let mut v1 = 0;
    for _ in 0..40 {
        let (_, headers, _) = mesh.get("/", &[]).await;
        if headers["x-backend"] == "echo-v1-0" {
            v1 += 1;
        }
    }
    // 50/50 over 40 requests: 8..=32 covers far more than 3 standard deviations
    assert!((8..=32).contains(&v1), "{v1} of 40 to v1");
}

#[tokio::test]
async fn an_invalid_backend_answers_500_for_its_share_only() {
    let mesh = Mesh::start().await;
    let mut invalid = backend("missing", 1);
    invalid.error = pb::BackendError::NotFound.into();
    mesh.waypoint.configure(mesh.service(vec![rule(
        "half-invalid",
        None,
        vec![backend("echo", 1), invalid],
    )]));
    let mut errors = 0;
    for _ in 0..60 {
        match mesh.get("/", &[]).await.0 {
            200 => {}
            500 => errors += 1,
            other => panic!("status {other}"),
        }
    }
    // Half the weight is invalid: 30 of 60 expected; 15..=45 is far beyond 3 sigma.
    assert!((15..=45).contains(&errors), "{errors} of 60 answered 500");
}

//! Two ztunnels with no local config, fed only by istiod: they become ready only once xDS has
//! answered, get their certificates from istiod's CA, carry traffic, follow policy pushes, and
//! keep serving while istiod is gone.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnels_fed_by_istiod_carry_traffic_and_follow_policy() {
    let net = subnet();
    let root = new_ca();
    let istiod = start_istiod(net, &root).await;
    let bundle = istiod.trust_bundle();
    echo_server(SocketAddr::new(ip(net, 3), ECHO_PORT)).await;

    let a_token = istiod.issue_token("node-a", None, Duration::from_secs(3600));
    let b_token = istiod.issue_token("node-b", None, Duration::from_secs(3600));
    let a = start_ztunnel(net, "node-a", ip(net, 2), &bundle, a_token).await;
    let b = start_ztunnel(net, "node-b", ip(net, 3), &bundle, b_token).await;

    // Both types are answered even though nothing is published yet: ready with empty state.
    assert!(
        eventually(WAIT, || a.is_ready() && b.is_ready()).await,
        "ztunnels never became ready"
    );
    assert_eq!(a.state().read(|s| s.workloads().count()), 0);
    let metrics = a.metrics().encode();
    for url in ["istio.workload.Address", "istio.security.Authorization"] {
        assert!(
            metrics.contains(&format!(
                "istio_xds_message_total{{url=\"type.googleapis.com/{url}\"}} 1"
            )),
            "{metrics}"
        );
    }

    istiod.publish(snapshot(net, &allow_only("cluster.local/ns/shop/sa/web")));
    assert!(
        eventually(WAIT, || b.state().read(|s| s.policies().count()) == 1).await,
        "the policy never reached node-b"
    );
    assert!(web_reaches_echo(net, &a).await, "allowed traffic must flow");

    // A policy change reaches the ztunnels and changes the outcome of new connections.
    istiod.publish(snapshot(net, &allow_only("cluster.local/ns/shop/sa/other")));
    assert!(
        eventually(WAIT, || {
            b.state()
                .read(|s| s.policies().any(|p| format!("{p:?}").contains("sa/other")))
        })
        .await
    );
    assert!(!web_reaches_echo(net, &a).await, "denied after the push");

    istiod.publish(snapshot(net, ""));
    assert!(eventually(WAIT, || b.state().read(|s| s.policies().count()) == 0).await);
    assert!(web_reaches_echo(net, &a).await);
    assert_eq!(
        istiod
            .stats()
            .nacks
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing we send may be rejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_flowing_while_istiod_is_away_and_resyncs_after() {
    let net = subnet();
    let root = new_ca();
    let istiod = start_istiod(net, &root).await;
    let bundle = istiod.trust_bundle();
    echo_server(SocketAddr::new(ip(net, 3), ECHO_PORT)).await;
    istiod.publish(snapshot(net, ""));
    let a_token = istiod.issue_token("node-a", None, Duration::from_secs(3600));
    let b_token = istiod.issue_token("node-b", None, Duration::from_secs(3600));
    let a = start_ztunnel(net, "node-a", ip(net, 2), &bundle, a_token).await;
    let b = start_ztunnel(net, "node-b", ip(net, 3), &bundle, b_token).await;
    assert!(eventually(WAIT, || a.is_ready() && b.is_ready()).await);
    assert!(eventually(WAIT, || b.state().read(|s| s.workloads().count()) == 2).await);

    let socks = a.addresses().socks5.unwrap();
    let vip = SocketAddr::new(ip(net, 100), 80);
    let (code, stream) = socks5(socks, ip(net, 2), vip).await;
    assert_eq!(code, 0);
    let mut open = stream.unwrap();
    assert_eq!(round_trip(&mut open, b"before").await.unwrap(), b"before");

    // istiod goes away: the open connection and new ones keep working from the last state
    // and the cached certificates.
    istiod.shutdown();
    drop(istiod);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(round_trip(&mut open, b"during").await.unwrap(), b"during");
    assert!(
        web_reaches_echo(net, &a).await,
        "new connections while istiod is down"
    );
    assert!(a.is_ready(), "readiness stays once synced");

    // A new istiod with the same root and token key: the ztunnels reconnect and resync; the
    // open connection survives.
    let istiod = start_istiod(net, &root).await;
    istiod.publish(snapshot(net, &allow_only("cluster.local/ns/shop/sa/other")));
    assert!(
        eventually(WAIT, || b.state().read(|s| s.policies().count()) == 1).await,
        "the restarted istiod's push never arrived"
    );
    // The new policy denies web: the open connection is re-checked and closed, new ones are
    // refused — so the stream really is the new istiod's.
    assert!(!web_reaches_echo(net, &a).await);
    let _ = open.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_the_ztunnel_cannot_apply_is_nacked_by_name_and_the_rest_apply() {
    use control::xds::{PublishedResources, resource};
    use dataplane::xds::AUTHORIZATION_TYPE_URL;
    use dataplane::xds::proto::istio::security::Authorization;
    use prost::Message;

    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    let bundle = istiod.trust_bundle();
    let token = istiod.issue_token("node-b", None, Duration::from_secs(3600));
    let b = start_ztunnel(net, "node-b", ip(net, 3), &bundle, token).await;
    assert!(eventually(WAIT, || b.is_ready()).await);

    // A good policy and one with an action no ztunnel knows (enum value 7).
    let good = snapshot(net, &allow_only("cluster.local/ns/shop/sa/web"));
    let mut resources = PublishedResources::encode(&good, 1);
    let bad = Authorization {
        name: "bad".into(),
        namespace: "shop".into(),
        action: 7,
        ..Authorization::default()
    };
    resources
        .by_type
        .get_mut(AUTHORIZATION_TYPE_URL)
        .unwrap()
        .insert(
            "shop/bad".into(),
            resource(
                AUTHORIZATION_TYPE_URL,
                "shop/bad".into(),
                Vec::new(),
                bad.encode_to_vec(),
            ),
        );
    istiod.publish_resources(resources);
    assert!(
        eventually(WAIT, || istiod
            .stats()
            .nacks
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
        .await,
        "no NACK"
    );
    let nacks = istiod.stats().recent_nacks.lock().unwrap().clone();
    assert!(nacks[0].contains("shop/bad: "), "{nacks:?}");
    assert!(
        nacks[0].contains("action"),
        "the reason is given: {nacks:?}"
    );
    b.state().read(|s| {
        let names: Vec<String> = s.policies().map(|p| p.key()).collect();
        assert_eq!(names, ["shop/echo-policy"], "the good policy applied");
        assert_eq!(s.workloads().count(), 2, "the addresses applied");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_store_changes_becomes_one_push() {
    use control::istiod::SharedStore;
    use control::sources::parse_str;
    use control::store::{Store, StoreConfig};
    use std::sync::atomic::Ordering;

    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    let store = SharedStore::new(Store::new(StoreConfig::default()));
    istiod.follow(store.clone());
    let bundle = istiod.trust_bundle();
    let token = istiod.issue_token("node-a", None, Duration::from_secs(3600));
    let a = start_ztunnel(net, "node-a", ip(net, 2), &bundle, token).await;
    assert!(eventually(WAIT, || a.is_ready()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = istiod.stats().responses_sent.load(Ordering::Relaxed);

    // Twenty policies, one every 2 ms: well inside one 100 ms debounce window.
    for i in 0..20 {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p{i}, namespace: default}}\nspec: {{action: DENY, rules: [{{}}]}}\n"
        );
        let object = parse_str(&yaml, "burst.yaml").unwrap().remove(0).object;
        store.update(|s| s.apply(object).unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(eventually(WAIT, || a.state().read(|s| s.policies().count()) == 20).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushes = istiod.stats().responses_sent.load(Ordering::Relaxed) - before;
    assert_eq!(pushes, 1, "the burst is debounced into one push");
}

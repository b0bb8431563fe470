//! The API server crashes and comes back (same etcd, same port) under a running istiod:
//! istiod keeps serving what it knows meanwhile — to the client it had and to one that
//! connects during the outage — then re-lists, and what changed right after the restart
//! reaches the client.
//!
//! This test kills its API server, so it has one of its own (without a controller manager,
//! to save the machine a process: the ServiceAccount is created by hand).

use std::time::{Duration, Instant};

use harness::{Components, Options};

use super::ads::describe;
use super::{Istiod, PUSH_LIMIT, objects};

const NS: &str = "kube-restart";
const NODE: &str = "node-restart";

/// The API server's outage plus the watchers' backoff (0.8 s doubling, jittered) and a
/// re-list: the measured time is printed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn istiod_serves_through_an_api_server_restart_and_catches_up() {
    let test = "kube::restart";
    let Some(components) = Components::find_or_skip(test) else {
        return;
    };
    let options = Options {
        controller_manager: false,
        ..Options::default()
    };
    let mut cluster = super::start(components, options).await.unwrap();
    let admin = cluster.admin_client().await.unwrap();
    objects::ambient_namespace(&admin, NS, false).await;
    objects::node(&admin, NODE, "10.244.2.0/24").await;
    objects::pod(&admin, NS, "before", NODE, "web").await;
    objects::pod_running(&admin, NS, "before", "10.244.2.5").await;

    let istiod = Istiod::start("restart", &cluster);
    let mut ads = istiod.client("ztunnel~restart").await;
    ads.wait(PUSH_LIMIT, |v| v.workload(NS, "before").is_some())
        .await
        .unwrap_or_else(|| panic!("initial list: {}", describe(&ads.view())));

    cluster.kill_apiserver();
    let down = Instant::now();
    // istiod serves on from memory: a client connecting now gets the last state.
    let mut late = istiod.client("ztunnel~restart-late").await;
    late.wait(PUSH_LIMIT, |v| v.workload(NS, "before").is_some())
        .await
        .unwrap_or_else(|| panic!("served nothing while down: {}", describe(&late.view())));
    // Long enough for every watch to notice and start backing off.
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.start_apiserver().await.unwrap();
    let back = Instant::now();
    println!(
        "API server down for {:?} (killed, restarted, ready)",
        back - down
    );
    let admin = cluster.admin_client().await.unwrap();
    objects::pod(&admin, NS, "after", NODE, "web").await;
    objects::pod_running(&admin, NS, "after", "10.244.2.6").await;
    objects::delete_pod(&admin, NS, "before").await;

    let took = ads
        .wait(RECOVERY_LIMIT, |v| {
            v.workload(NS, "after").is_some() && v.workload(NS, "before").is_none()
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "never caught up after the restart: {}\nistiod:\n{}",
                describe(&ads.view()),
                istiod.log()
            )
        });
    println!(
        "kube restart: changes written after the restart seen {took:?} after the writes, \
         {:?} after the API server was ready",
        back.elapsed()
    );
    for client in [&ads, &late] {
        let view = client.view();
        assert!(
            view.ended.is_none(),
            "an ADS stream ended: {:?}",
            view.ended
        );
    }
    assert!(
        !istiod.logged("watch failed").is_empty(),
        "istiod never noticed the outage:\n{}",
        istiod.log()
    );
    let relisted = istiod
        .logged("watch failed")
        .iter()
        .any(|l| l.contains("too old") || l.contains("Expired") || l.contains("410"));
    println!("kube restart: watches answered 'too old resource version' and re-listed: {relisted}");
}

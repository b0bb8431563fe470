//! The table and the ZDS server together, with nft stood in for (no root): what a ztunnel is
//! told, in which order, and what happens when it refuses, stalls or goes away.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::support::{FakeRules, TempDir, agent_in, inode};
use crate::node_agent::{PodError, PodSpec};
use crate::zds::{PodInfo, Request, ZdsClient, ZdsError, ZdsSocket};

const OWN_NETNS: &str = "/proc/self/ns/net";

fn spec(uid: &str) -> PodSpec {
    PodSpec {
        uid: uid.into(),
        pod: PodInfo {
            name: format!("{uid}-pod"),
            namespace: "shop".into(),
            service_account: "web".into(),
        },
        netns: OWN_NETNS.into(),
    }
}

/// The next request, as `add UID`, `del UID` or `snapshot`; an add's namespace must be ours.
async fn next(client: &ZdsClient) -> String {
    let request = tokio::time::timeout(Duration::from_secs(2), client.next())
        .await
        .expect("a request in time")
        .expect("a request");
    match request {
        Request::Add { uid, pod, netns } => {
            assert_eq!(pod.name, format!("{uid}-pod"));
            let own = std::fs::metadata(OWN_NETNS).unwrap().ino();
            assert_eq!(inode(netns.as_fd()), own, "the pod's namespace");
            format!("add {uid}")
        }
        Request::Keep { uid } => format!("keep {uid}"),
        Request::Del { uid } => format!("del {uid}"),
        Request::SnapshotSent => "snapshot".into(),
    }
}

/// Reads and acks `expected.len()` requests, which must be `expected`.
async fn expect_acked(client: &ZdsClient, expected: &[&str]) {
    for want in expected {
        assert_eq!(next(client).await, *want);
        client.ack(Ok(())).await.unwrap();
    }
}

#[tokio::test]
async fn a_ztunnel_gets_the_snapshot_then_each_change_and_a_new_one_replaces_it() {
    let dir = TempDir::new("flow");
    let agent = agent_in(&dir, Arc::new(FakeRules::default()), Duration::from_secs(1)).await;
    let pods = agent.pods().clone();
    // Captured before any ztunnel: each add succeeds at once.
    pods.add(spec("b")).await.unwrap();
    pods.add(spec("a")).await.unwrap();

    let first = ZdsClient::connect(agent.zds_socket()).await.unwrap();
    expect_acked(&first, &["add a", "add b", "snapshot"]).await;

    // Later changes arrive one by one, and an add answers once ztunnel acked it.
    let adding = tokio::spawn({
        let pods = pods.clone();
        async move { pods.add(spec("c")).await }
    });
    expect_acked(&first, &["add c"]).await;
    adding.await.unwrap().unwrap();
    let removing = tokio::spawn({
        let pods = pods.clone();
        async move { pods.remove("a").await }
    });
    expect_acked(&first, &["del a"]).await;
    assert!(removing.await.unwrap().unwrap(), "a was captured");

    // A restarted ztunnel is given everything again; the old connection is closed.
    let second = ZdsClient::connect(agent.zds_socket()).await.unwrap();
    expect_acked(&second, &["add b", "add c", "snapshot"]).await;
    assert!(matches!(first.next().await, Err(ZdsError::Closed)));
    let adding = tokio::spawn({
        let pods = pods.clone();
        async move { pods.add(spec("d")).await }
    });
    expect_acked(&second, &["add d"]).await;
    adding.await.unwrap().unwrap();

    // Stopping tells ztunnel and releases every pod.
    let stopping = tokio::spawn(agent.shutdown());
    expect_acked(&second, &["del b", "del c", "del d"]).await;
    assert!(stopping.await.unwrap().is_empty());
    assert!(!dir.path().join("run/ztunnel.sock").exists());
    assert!(!dir.path().join("run/pods.sock").exists());
    assert!(matches!(pods.add(spec("e")).await, Err(PodError::Stopping)));
}

#[tokio::test]
async fn a_refused_pod_is_an_error_and_stays_captured() {
    let dir = TempDir::new("refused");
    let rules = Arc::new(FakeRules::default());
    let agent = agent_in(&dir, rules.clone(), Duration::from_secs(1)).await;
    let client = ZdsClient::connect(agent.zds_socket()).await.unwrap();
    expect_acked(&client, &["snapshot"]).await;
    let adding = tokio::spawn({
        let pods = agent.pods().clone();
        async move { pods.add(spec("a")).await }
    });
    assert_eq!(next(&client).await, "add a");
    client.ack(Err("no room".into())).await.unwrap();
    let err = adding.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, PodError::Refused { reason, .. } if reason == "no room"),
        "{err}"
    );
    assert_eq!(agent.pods().list().await.len(), 1, "the pod stays captured");
    let kinds: Vec<_> = rules.events().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["install"], "its rules stay");
    // The connection is still the one served.
    let removing = tokio::spawn({
        let pods = agent.pods().clone();
        async move { pods.remove("a").await }
    });
    expect_acked(&client, &["del a"]).await;
    assert!(removing.await.unwrap().unwrap());
    assert!(agent.shutdown().await.is_empty());
}

#[tokio::test]
async fn a_silent_or_gone_ztunnel_is_forgotten_and_pods_stay_captured() {
    let dir = TempDir::new("silent");
    let timeout = Duration::from_millis(200);
    let agent = agent_in(&dir, Arc::new(FakeRules::default()), timeout).await;
    let pods = agent.pods().clone();

    // Never acks: the add completes after the timeout, the pod captured.
    let silent = ZdsClient::connect(agent.zds_socket()).await.unwrap();
    expect_acked(&silent, &["snapshot"]).await;
    let started = Instant::now();
    let adding = tokio::spawn({
        let pods = pods.clone();
        async move { pods.add(spec("a")).await }
    });
    assert_eq!(next(&silent).await, "add a");
    adding.await.unwrap().unwrap();
    assert!(started.elapsed() >= timeout);
    assert!(matches!(silent.next().await, Err(ZdsError::Closed)));

    // Gone: the next add finds out, succeeds, and the pod waits for the next ztunnel.
    let gone = ZdsClient::connect(agent.zds_socket()).await.unwrap();
    expect_acked(&gone, &["add a", "snapshot"]).await;
    drop(gone);
    pods.add(spec("b")).await.unwrap();
    let again = ZdsClient::connect(agent.zds_socket()).await.unwrap();
    expect_acked(&again, &["add a", "add b", "snapshot"]).await;

    // A connection that never says a valid hello does not disturb the one served.
    let garbage = ZdsSocket::connect(agent.zds_socket()).await.unwrap();
    garbage.send(&[0xff, 0xff], None).await.unwrap();
    assert!(
        matches!(garbage.recv().await, Ok(None)),
        "closed by the agent"
    );
    let adding = tokio::spawn({
        let pods = pods.clone();
        async move { pods.add(spec("c")).await }
    });
    expect_acked(&again, &["add c"]).await;
    adding.await.unwrap().unwrap();
    drop(again);
    assert!(agent.shutdown().await.is_empty());
}

#[tokio::test]
async fn rules_that_cannot_be_removed_keep_the_pod() {
    let dir = TempDir::new("keep");
    let rules = Arc::new(FakeRules::default());
    let agent = agent_in(&dir, rules.clone(), Duration::from_secs(1)).await;
    let pods = agent.pods().clone();
    pods.add(spec("a")).await.unwrap();
    rules.fail_remove.store(true, Ordering::SeqCst);
    let err = pods.remove("a").await.unwrap_err();
    assert!(err.to_string().contains("simulated failure"), "{err}");
    assert_eq!(pods.list().await.len(), 1, "still captured");
    rules.fail_remove.store(false, Ordering::SeqCst);
    assert!(pods.remove("a").await.unwrap());
    assert!(!pods.remove("a").await.unwrap(), "gone");

    // At stop, a failure is reported, and the pod forgotten all the same.
    pods.add(spec("b")).await.unwrap();
    rules.fail_remove.store(true, Ordering::SeqCst);
    let failed = agent.shutdown().await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "b");
    assert!(pods.list().await.is_empty());
}

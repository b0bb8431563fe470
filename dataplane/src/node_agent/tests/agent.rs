//! The whole agent in-process with the real nft, in real namespaces (root): pods in through
//! the pod socket, out to a ztunnel over ZDS with their namespaces, rules in and out.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use super::support::{TempDir, TestNetns, agent_in, inode, root_or_skip};
use crate::node_agent::{AddPod, DelPod, ListPods, Nft, PodClient, PodRequest, PodResponse};
use crate::zds::{Request, ZdsClient};

fn add(uid: &str, netns: &TestNetns) -> PodRequest {
    PodRequest::Add(AddPod {
        uid: uid.into(),
        name: format!("{uid}-pod"),
        namespace: "shop".into(),
        service_account: "web".into(),
        netns: netns.path().to_path_buf(),
    })
}

async fn next(client: &ZdsClient) -> Request {
    tokio::time::timeout(Duration::from_secs(2), client.next())
        .await
        .expect("a request in time")
        .expect("a request")
}

/// Expects an add of `uid` in `netns`'s namespace, and acks it.
async fn expect_add(client: &ZdsClient, uid: &str, netns: &TestNetns) {
    match next(client).await {
        Request::Add {
            uid: got,
            pod,
            netns: fd,
        } => {
            assert_eq!(got, uid);
            assert_eq!(pod.name, format!("{uid}-pod"));
            assert_eq!(pod.namespace, "shop");
            assert_eq!(pod.service_account, "web");
            assert_eq!(inode(fd.as_fd()), netns.inode(), "the pod's own namespace");
        }
        other => panic!("expected add {uid}, got {other:?}"),
    }
    client.ack(Ok(())).await.unwrap();
}

async fn expect_snapshot(client: &ZdsClient) {
    assert!(matches!(next(client).await, Request::SnapshotSent));
    client.ack(Ok(())).await.unwrap();
}

#[tokio::test]
async fn pods_flow_from_the_pod_socket_to_ztunnel_with_their_rules() {
    if !root_or_skip("pods_flow_from_the_pod_socket_to_ztunnel_with_their_rules") {
        return;
    }
    let dir = TempDir::new("agent");
    let first = TestNetns::create("pod1");
    let second = TestNetns::create("pod2");
    let agent = agent_in(&dir, Arc::new(Nft::default()), Duration::from_secs(1)).await;
    let mut pods = PodClient::connect(agent.pod_socket()).await.unwrap();
    let ok = PodResponse::Ok { ok: true };

    // Captured before ztunnel is there.
    assert_eq!(pods.request(&add("uid-1", &first)).await.unwrap(), ok);
    assert!(first.has_table());

    // ztunnel connects: the snapshot, with the namespace itself.
    let ztunnel = ZdsClient::connect(agent.zds_socket()).await.unwrap();
    expect_add(&ztunnel, "uid-1", &first).await;
    expect_snapshot(&ztunnel).await;

    // A second pod arrives incrementally; its add answers after ztunnel's ack.
    let socket = agent.pod_socket().to_path_buf();
    let request = add("uid-2", &second);
    let adding = tokio::spawn(async move {
        let mut client = PodClient::connect(&socket).await.unwrap();
        client.request(&request).await.unwrap()
    });
    expect_add(&ztunnel, "uid-2", &second).await;
    assert_eq!(adding.await.unwrap(), ok);
    assert!(second.has_table());

    // Deleted: ztunnel told, the table gone from that namespace only.
    let socket = agent.pod_socket().to_path_buf();
    let deleting = tokio::spawn(async move {
        let mut client = PodClient::connect(&socket).await.unwrap();
        let del = PodRequest::Del(DelPod {
            uid: "uid-1".into(),
        });
        client.request(&del).await.unwrap()
    });
    assert!(matches!(next(&ztunnel).await, Request::Del { uid } if uid == "uid-1"));
    ztunnel.ack(Ok(())).await.unwrap();
    assert_eq!(deleting.await.unwrap(), ok);
    assert!(!first.has_table());
    assert!(second.has_table());

    // A reconnecting ztunnel gets the snapshot again.
    drop(ztunnel);
    let ztunnel = ZdsClient::connect(agent.zds_socket()).await.unwrap();
    expect_add(&ztunnel, "uid-2", &second).await;
    expect_snapshot(&ztunnel).await;
    let listed = pods.request(&PodRequest::List(ListPods {})).await.unwrap();
    match listed {
        PodResponse::Pods { pods } => {
            let uids: Vec<_> = pods.iter().map(|p| p.uid.as_str()).collect();
            assert_eq!(uids, ["uid-2"]);
        }
        other => panic!("expected pods, got {other:?}"),
    }

    // Stopping leaves no rules behind.
    let stopping = tokio::spawn(agent.shutdown());
    assert!(matches!(next(&ztunnel).await, Request::Del { uid } if uid == "uid-2"));
    ztunnel.ack(Ok(())).await.unwrap();
    assert!(stopping.await.unwrap().is_empty());
    assert!(!second.has_table());
}

#[tokio::test]
async fn a_pod_added_again_in_a_new_namespace_leaves_the_old_one_clean() {
    if !root_or_skip("a_pod_added_again_in_a_new_namespace_leaves_the_old_one_clean") {
        return;
    }
    let dir = TempDir::new("readd");
    let old = TestNetns::create("old");
    let new = TestNetns::create("new");
    let agent = agent_in(&dir, Arc::new(Nft::default()), Duration::from_secs(1)).await;
    let mut pods = PodClient::connect(agent.pod_socket()).await.unwrap();
    let ok = PodResponse::Ok { ok: true };
    assert_eq!(pods.request(&add("uid-1", &old)).await.unwrap(), ok);
    assert_eq!(pods.request(&add("uid-1", &old)).await.unwrap(), ok);
    assert!(old.has_table());
    // The sandbox was recreated: same pod, another namespace.
    assert_eq!(pods.request(&add("uid-1", &new)).await.unwrap(), ok);
    assert!(!old.has_table());
    assert!(new.has_table());
    assert!(agent.shutdown().await.is_empty());
    assert!(!new.has_table());
}

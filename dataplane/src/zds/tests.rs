use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use super::*;

fn some_descriptor() -> (OwnedFd, u64) {
    let file = std::fs::File::open("/proc/self/ns/net").expect("every Linux process has one");
    let ino = file.metadata().expect("fstat").ino();
    (OwnedFd::from(file), ino)
}

async fn connected() -> (ZdsClient, ZdsServerConn) {
    let (agent, ztunnel) = ZdsSocket::pair().unwrap();
    let hello = proto::ZdsHello {
        version: proto::Version::V1 as i32,
    };
    ztunnel.send(&hello.encode_to_vec(), None).await.unwrap();
    let server = ZdsServerConn::handshake(agent).await.unwrap();
    (ZdsClient { socket: ztunnel }, server)
}

#[test]
fn messages_encode_with_upstream_field_numbers() {
    let (snapshot, _) = Request::SnapshotSent.encode();
    assert_eq!(snapshot, [0x1a, 0x00], "snapshot_sent is field 3");
    let (del, _) = Request::Del { uid: "u".into() }.encode();
    assert_eq!(
        del,
        [0x12, 0x03, 0x12, 0x01, b'u'],
        "del is 2, its uid is 2"
    );
    let (keep, _) = Request::Keep { uid: "u".into() }.encode();
    assert_eq!(
        keep,
        [0x2a, 0x03, 0x0a, 0x01, b'u'],
        "keep is 5, its uid is 1"
    );
    let hello = proto::ZdsHello {
        version: proto::Version::V1 as i32,
    };
    assert_eq!(hello.encode_to_vec(), [0x08, 0x01]);
}

#[tokio::test]
async fn a_pod_and_its_namespace_cross_the_socket_and_every_request_is_acked() {
    let (client, server) = connected().await;
    let (netns, ino) = some_descriptor();
    let pod = PodInfo {
        name: "web-0".into(),
        namespace: "shop".into(),
        service_account: "web".into(),
    };
    let add = Request::Add {
        uid: "uid-1".into(),
        pod: pod.clone(),
        netns,
    };
    let agent = tokio::spawn(async move {
        let mut acks = Vec::new();
        for request in [
            add,
            Request::Keep { uid: "k".into() },
            Request::SnapshotSent,
            Request::Del {
                uid: "uid-1".into(),
            },
        ] {
            acks.push(server.request(&request).await.unwrap());
        }
        acks
    });
    match client.next().await.unwrap() {
        Request::Add {
            uid,
            pod: got,
            netns,
        } => {
            assert_eq!(uid, "uid-1");
            assert_eq!(got, pod);
            let file = std::fs::File::from(netns);
            assert_eq!(file.metadata().unwrap().ino(), ino, "the same namespace");
        }
        other => panic!("expected an add, got {other:?}"),
    }
    client.ack(Ok(())).await.unwrap();
    assert!(matches!(client.next().await.unwrap(), Request::Keep { uid } if uid == "k"));
    client.ack(Err("no such pod".into())).await.unwrap();
    assert!(matches!(
        client.next().await.unwrap(),
        Request::SnapshotSent
    ));
    client.ack(Ok(())).await.unwrap();
    assert!(matches!(client.next().await.unwrap(), Request::Del { uid } if uid == "uid-1"));
    client.ack(Ok(())).await.unwrap();
    let acks = agent.await.unwrap();
    assert_eq!(
        acks,
        vec![Ok(()), Err("no such pod".into()), Ok(()), Ok(())]
    );
}

#[tokio::test]
async fn bad_input_is_a_clear_error() {
    // An add without its namespace.
    let (agent, ztunnel) = ZdsSocket::pair().unwrap();
    let add = proto::WorkloadRequest {
        payload: Some(RequestPayload::Add(proto::AddWorkload {
            uid: "u".into(),
            workload_info: None,
        })),
    };
    agent.send(&add.encode_to_vec(), None).await.unwrap();
    let client = ZdsClient { socket: ztunnel };
    let err = client.next().await.unwrap_err();
    assert!(
        err.to_string().contains("without its network namespace"),
        "{err}"
    );
    // Garbage.
    agent.send(&[0xff, 0xff, 0xff], None).await.unwrap();
    assert!(matches!(client.next().await, Err(ZdsError::Decode(_))));
    // A request with no payload.
    agent.send(&[0x22, 0x00], None).await.unwrap();
    assert!(matches!(client.next().await, Err(ZdsError::Protocol(_))));
    // A packet past the limit is refused, not cut and misread.
    agent.send(&vec![0u8; MAX_PACKET + 1], None).await.unwrap();
    let err = client.next().await.unwrap_err();
    assert!(err.to_string().contains("longer than"), "{err}");
    // The peer going away.
    drop(agent);
    assert!(matches!(client.next().await, Err(ZdsError::Closed)));
}

#[tokio::test]
async fn a_hello_of_another_version_is_refused() {
    let (agent, ztunnel) = ZdsSocket::pair().unwrap();
    ztunnel.send(&[0x08, 0x02], None).await.unwrap();
    let err = ZdsServerConn::handshake(agent).await.unwrap_err();
    assert!(err.to_string().contains("not V1"), "{err}");
}

#[tokio::test]
async fn client_and_listener_meet_on_a_path() {
    let dir = std::env::temp_dir().join(format!("zds-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ztunnel.sock");
    let listener = ZdsListener::bind(&path).unwrap();
    // A stale socket file is replaced.
    let listener2 = ZdsListener::bind(&path).unwrap();
    drop(listener);
    let accept = tokio::spawn(async move { ZdsServerConn::accept(&listener2).await });
    let client = ZdsClient::connect(&path).await.unwrap();
    let server = accept.await.unwrap().unwrap();
    let request = tokio::spawn(async move { server.request(&Request::SnapshotSent).await });
    assert!(matches!(
        client.next().await.unwrap(),
        Request::SnapshotSent
    ));
    client.ack(Ok(())).await.unwrap();
    assert_eq!(request.await.unwrap().unwrap(), Ok(()));
    let _ = std::fs::remove_dir_all(&dir);
}

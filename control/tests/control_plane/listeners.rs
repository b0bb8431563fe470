//! istiod's listeners against clients that connect and say nothing (or part of their
//! preface): dropped at the handshake timeout before their whole HTTP/2 preface, so idle
//! sockets cannot pile up on 15010 (and starve 15012) while established xDS streams may idle
//! as long as they like; and each port holds at most its share of the process's
//! descriptors, so a flood on one is refused there while the other keeps serving.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use dataplane::DescriptorPlan;

use crate::common::*;

/// An HTTP/2 client preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the server closes `stream` within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_client_that_never_sends_its_preface_is_dropped_and_others_are_served() {
    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    let (plaintext, tls) = istiod.addresses();
    // handshake_timeout is 1 s in these tests.
    let mut silent = TcpStream::connect(plaintext).await.unwrap();
    let mut silent_tls = TcpStream::connect(tls).await.unwrap();
    let mut speaking = TcpStream::connect(plaintext).await.unwrap();
    speaking.write_all(PREFACE).await.unwrap();
    // Half a preface and then nothing is no better than silence.
    let mut stalled = TcpStream::connect(plaintext).await.unwrap();
    stalled.write_all(&PREFACE[..12]).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(closed_within(&mut silent_tls, Duration::from_secs(3)).await);
    assert!(
        closed_within(&mut stalled, Duration::from_secs(3)).await,
        "a client that sent part of its preface was kept"
    );
    assert!(
        !closed_within(&mut speaking, Duration::from_secs(2)).await,
        "a client past its preface may idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_15010_is_capped_and_ztunnels_still_get_15012() {
    let net = subnet();
    let root = new_ca();
    // 256 descriptors: 88 connections for each port.
    let plan = DescriptorPlan::for_limit(256);
    let cap = plan.traffic / 2;
    let istiod = start_istiod_planned(net, &root, plan).await;
    let (plaintext, _) = istiod.addresses();
    let mut flood = Vec::new();
    for _ in 0..cap {
        flood.push(TcpStream::connect(plaintext).await.unwrap());
    }
    // Past the cap: closed at once, not at the handshake timeout.
    let mut over = TcpStream::connect(plaintext).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_millis(500)).await,
        "a connection past 15010's cap was kept"
    );
    // The flood itself is held (until its handshake timeout), and 15012 serves a ztunnel.
    assert!(!closed_within(&mut flood[0], Duration::from_millis(100)).await);
    let token = istiod.issue_token("node-a", None, Duration::from_secs(3600));
    let a = start_ztunnel(net, "node-a", ip(net, 2), &istiod.trust_bundle(), token).await;
    assert!(
        eventually(Duration::from_secs(5), || a.is_ready()).await,
        "a ztunnel could not sync over 15012 while 15010 was flooded"
    );
    // Once the flood is gone (its sockets seen closed), 15010 takes connections again.
    drop(flood);
    let mut taken = false;
    for _ in 0..20 {
        let mut after = TcpStream::connect(plaintext).await.unwrap();
        after.write_all(PREFACE).await.unwrap();
        if !closed_within(&mut after, Duration::from_millis(300)).await {
            taken = true;
            break;
        }
    }
    assert!(taken, "15010 stayed full after the flood left");
}

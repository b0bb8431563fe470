//! Each listener holds at most its share of the process's descriptors: past its cap a new
//! connection is closed at once, and a flood on one port leaves every other port serving.
//! The ztunnels here plan for a 160-descriptor limit (22 connections per traffic listener,
//! 3 per HTTP endpoint, 89 descriptors for all traffic), so the floods stay small.

use std::time::Duration;

use dataplane::DescriptorPlan;
use tokio::net::TcpStream;

use super::common::*;

fn plan() -> DescriptorPlan {
    DescriptorPlan::for_limit(160)
}

/// `n` silent connections to `port`, which it holds (until its handshake timeout, 2 s here),
/// then one more, which it must close at once.
async fn flood_past_the_cap(port: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut flood = Vec::new();
    for _ in 0..n {
        flood.push(TcpStream::connect(port).await.unwrap());
    }
    assert!(
        !closed_within(&mut flood[n - 1], Duration::from_millis(100)).await,
        "{port}: a connection within the cap was closed"
    );
    let mut over = TcpStream::connect(port).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_millis(500)).await,
        "{port}: a connection past the cap of {n} was kept"
    );
    flood
}

#[tokio::test]
async fn an_http_endpoint_at_its_cap_refuses_and_readiness_still_answers() {
    let pair = Pair::start_planned("", plan()).await;
    let addresses = pair.a.addresses();
    let _metrics = flood_past_the_cap(addresses.metrics, plan().endpoint).await;
    let _admin = flood_past_the_cap(addresses.admin, plan().admin).await;
    let (status, _) = http_get(addresses.readiness, "/healthz/ready").await;
    assert_eq!(status, 200);
    pair.still_serves().await;
}

#[tokio::test]
async fn a_traffic_listener_at_its_cap_refuses_and_the_others_carry_traffic() {
    let pair = Pair::start_planned("", plan()).await;
    let addresses = pair.a.addresses();
    // A's own HBONE port: silent connections wait there for a TLS handshake.
    let flood = flood_past_the_cap(addresses.inbound, plan().per_traffic_listener).await;
    // SOCKS5 on the same node, and HBONE on the other, still carry a connection.
    pair.still_serves().await;
    let (status, _) = http_get(addresses.readiness, "/healthz/ready").await;
    assert_eq!(status, 200);
    // The flood gone, the port takes connections again.
    drop(flood);
    let mut taken = false;
    for _ in 0..20 {
        let mut s = TcpStream::connect(addresses.inbound).await.unwrap();
        if !closed_within(&mut s, Duration::from_millis(200)).await {
            taken = true;
            break;
        }
    }
    assert!(taken, "the HBONE port stayed full after the flood left");
}

#[tokio::test]
async fn tunnels_past_the_traffic_budget_are_answered_503_and_given_back() {
    let pair = Pair::start_planned("", plan()).await;
    let mut send = pair.raw_as(&identity("shop", "web")).await.unwrap();
    let authority = pair.echo().to_string();
    // The connection holds one descriptor; every tunnel on it holds one for its upstream.
    let room = plan().traffic - 1;
    let mut held = Vec::new();
    let status = loop {
        let mut ready = send.clone().ready().await.unwrap();
        let (response, stream) = ready
            .send_request(connect_request(&authority), false)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("an answer to CONNECT")
            .unwrap();
        if response.status() != 200 {
            break response.status();
        }
        held.push((response, stream));
        assert!(held.len() <= room, "more tunnels than the budget allows");
    };
    assert_eq!(status, 503);
    assert_eq!(held.len(), room);
    // Closing the tunnels gives their descriptors back.
    drop(held);
    let mut reopened = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if raw_request(&mut send, connect_request(&authority)).await == Ok(200) {
            reopened = true;
            break;
        }
    }
    assert!(reopened, "tunnels closed, yet no room for a new one");
}

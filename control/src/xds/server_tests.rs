//! The stream driver against a client that does not read: one response waits, whatever the
//! publishes; requests are still handled; reading again brings the client to the latest state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use dataplane::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use super::{Caller, RESPONSES_WAITING, XdsStats, drive};
use crate::xds::MAX_RESPONSE_BYTES;
use crate::xds::resources::SharedResources;
use crate::xds::stream::tests::{Client, publish, subscribe};

/// Waits until `condition` holds (checked every millisecond, up to five seconds).
async fn until(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..5_000 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    condition()
}

struct Driven {
    requests: mpsc::UnboundedSender<Result<DeltaDiscoveryRequest, Status>>,
    responses: mpsc::Receiver<Result<DeltaDiscoveryResponse, Status>>,
    publishes: watch::Sender<SharedResources>,
    stats: Arc<XdsStats>,
}

/// A stream driven as the service drives one, with the service's channel between it and the
/// transport (here: the test, which reads when it wants to).
fn start(initial: SharedResources) -> Driven {
    let (requests, mut incoming) = mpsc::unbounded_channel();
    let (tx, responses) = mpsc::channel(RESPONSES_WAITING);
    let (publishes, watched) = watch::channel(initial);
    let stats = Arc::new(XdsStats::default());
    let requests_stream = futures_util::stream::poll_fn(move |cx| incoming.poll_recv(cx));
    tokio::spawn(drive(
        requests_stream,
        Caller::Anonymous,
        watched,
        tx,
        stats.clone(),
    ));
    Driven {
        requests,
        responses,
        publishes,
        stats,
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_one_bounded_response_whatever_the_publishes() {
    // About 1 MiB of addresses: several responses' worth.
    let mut published = publish(1, 1_000, 1_024, 5, 0, None);
    let mut driven = start(published.clone());
    for type_url in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        driven.requests.send(Ok(subscribe(type_url))).unwrap();
    }
    let stats = driven.stats.clone();
    assert!(until(|| stats.responses_sent.load(Ordering::Relaxed) == 1).await);

    // 50 publishes, each changing every address, while the client reads nothing.
    for g in 2..52u64 {
        let next = publish(g, 1_000, 1_024, 5, g, Some(&published));
        driven.publishes.send_replace(next.clone());
        published = next;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Requests are still handled: an ACK arrives and is counted.
    let ack = DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        response_nonce: "1".into(),
        ..DeltaDiscoveryRequest::default()
    };
    driven.requests.send(Ok(ack)).unwrap();
    assert!(until(|| stats.acks.load(Ordering::Relaxed) == 1).await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        stats.responses_sent.load(Ordering::Relaxed),
        1,
        "nothing computed while the first response waits"
    );
    assert_eq!(driven.responses.len(), 1, "one response waiting");

    // Reading: the first response (generation 1's first piece), then only what the latest
    // publish needs, and the client ends with it.
    let mut client = Client::default();
    let mut read = 0;
    while client.held != Client::expected(&published) {
        let response = tokio::time::timeout(Duration::from_secs(5), driven.responses.recv())
            .await
            .expect("the stream goes on until the client is up to date")
            .expect("the stream is open")
            .expect("a response, not an error");
        let bytes: usize = response.resources.iter().map(Message::encoded_len).sum();
        assert!(bytes < 2 * MAX_RESPONSE_BYTES, "a {bytes} byte response");
        client.apply(&response);
        read += 1;
    }
    // One piece of generation 1, then at most one state's worth of pieces of the latest.
    assert!(read <= 1 + 1_100 * 1_100 / MAX_RESPONSE_BYTES + 2, "{read}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(driven.responses.try_recv().is_err(), "nothing more");
    assert_eq!(stats.responses_sent.load(Ordering::Relaxed), read as u64);
}

#[tokio::test]
async fn the_stream_ends_when_the_client_goes_away() {
    let driven = start(publish(1, 10, 100, 1, 0, None));
    driven
        .requests
        .send(Ok(subscribe(ADDRESS_TYPE_URL)))
        .unwrap();
    let Driven {
        requests,
        mut responses,
        ..
    } = driven;
    assert!(responses.recv().await.is_some());
    drop(requests);
    let ended = tokio::time::timeout(Duration::from_secs(5), responses.recv()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the driver stopped and dropped its sender"
    );
}

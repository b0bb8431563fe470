//! HBONE stream and connection semantics through two ztunnels: half-close, pooling limits,
//! and drain.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::*;

#[tokio::test]
async fn half_close_is_carried_across_the_tunnel() {
    let pair = Pair::start("").await;
    let mut s = pair.tunnel(pair.echo()).await;
    s.write_all(b"last words").await.unwrap();
    // TCP FIN → END_STREAM → FIN at the echo server, which echoes and closes in turn.
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"last words");
}

#[tokio::test]
async fn pool_opens_another_connection_past_100_streams() {
    let pair = Pair::start("").await;
    let mut open = Vec::new();
    for _ in 0..101 {
        let (code, stream) = pair.connect(pair.echo()).await;
        assert_eq!(code, 0);
        open.push(stream.unwrap());
    }
    assert_eq!(pair.a.pooled_connections(), 2);
    assert_eq!(pair.b.open_inbound_connections(), 101);
    for s in &mut open {
        assert_eq!(round_trip(s, b"x").await.unwrap(), b"x");
    }
}

#[tokio::test]
async fn drain_lets_open_streams_finish_and_refuses_new_ones() {
    let Pair {
        net,
        ca,
        clock,
        a,
        b,
    } = Pair::start("").await;
    let pair_a = a;
    let echo = std::net::SocketAddr::new(ip(net, 3), ECHO_PORT);
    let socks = pair_a.addresses().socks5.unwrap();
    let (code, stream) = socks5(socks, ip(net, 2), echo).await;
    assert_eq!(code, 0);
    let mut s = stream.unwrap();
    assert_eq!(round_trip(&mut s, b"before").await.unwrap(), b"before");

    // node-b drains: GOAWAY on its HBONE connections, 500 ms for open streams
    let draining = tokio::spawn(b.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(round_trip(&mut s, b"during").await.unwrap(), b"during");
    let (code, _) = socks5(socks, ip(net, 2), echo).await;
    assert_ne!(code, 0, "a new stream during drain must be refused");
    draining.await.unwrap();
    // after the deadline, the stream is gone
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    drop((ca, clock));
    pair_a.shutdown().await;
}

#[tokio::test]
async fn a_client_reset_cancels_the_stream_and_closes_the_far_side() {
    let pair = Pair::start("").await;
    let mut s = pair.tunnel(pair.echo()).await;
    assert_eq!(round_trip(&mut s, b"x").await.unwrap(), b"x");
    assert_eq!(pair.b.open_inbound_connections(), 1);
    // The client aborts (TCP RST): node-a resets the stream (RST_STREAM CANCEL), and node-b,
    // taking that as a normal close, closes its connection to the echo server, which would
    // otherwise wait for more bytes forever.
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), async {
        while pair.b.open_inbound_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node-b closed the reset stream's upstream");
    let line = log_line(&[
        "\taccess\tconnection complete\t",
        &format!("src.addr={}:", ip(pair.net, 2)),
        "direction=\"inbound\"",
        "bytes_recv=1 ",
    ])
    .await;
    assert!(!line.contains("error="), "CANCEL is a normal close: {line}");
    // the HBONE connection under the stream is unharmed
    assert_eq!(pair.a.pooled_connections(), 1);
    pair.still_serves().await;
}

//! istiod's listeners against clients that connect and say nothing: dropped at the
//! handshake timeout before their HTTP/2 preface, so idle sockets cannot pile up on 15010
//! (and starve 15012) while established xDS streams may idle as long as they like.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

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
    speaking
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(closed_within(&mut silent_tls, Duration::from_secs(3)).await);
    assert!(
        !closed_within(&mut speaking, Duration::from_secs(2)).await,
        "a client past its preface may idle"
    );
}

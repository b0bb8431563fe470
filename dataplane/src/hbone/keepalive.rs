//! HTTP/2 PING keepalive: a peer that stops answering is a dead peer, even while its TCP
//! connection looks open (a partition hangs streams silently).

use std::time::Duration;

/// Sends a PING every `interval` and returns when one is not answered within `timeout`
/// (or when the connection can no longer carry PINGs).
pub(crate) async fn run(mut ping_pong: h2::PingPong, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(err)) => {
                tracing::debug!(%err, "keepalive ping failed");
                return;
            }
            Err(_) => {
                tracing::warn!(timeout = ?timeout, "keepalive: peer did not answer PING; dropping connection");
                return;
            }
        }
    }
}

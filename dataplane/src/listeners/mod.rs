//! What both proxies do with their listeners: bind through the network seam, accept until
//! told to stop (each connection on its own task), and serve the admin-type HTTP endpoints
//! (readiness, metrics, admin) with the same refusals.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod caps;
mod idle;

pub use caps::{Admitted, DescriptorPlan, ListenerCap, REFUSAL_LOG_INTERVAL, TrafficBudget};
pub use idle::IdleLimit;

use crate::seams::{Accepted, Listener, Network};
use crate::ztunnel::StartError;

/// Where admin (config dumps, `/quitquitquit`) listens: loopback, as upstream binds it to
/// localhost, unless the listen address is itself a loopback address (several proxies on
/// one machine, each on its own 127.x address).
pub(crate) fn admin_ip(listen: IpAddr) -> IpAddr {
    match listen {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Binds one listener, naming it in the error.
pub(crate) async fn bind(
    network: &dyn Network,
    listener: &'static str,
    address: SocketAddr,
) -> Result<Box<dyn Listener>, StartError> {
    network
        .bind(address)
        .await
        .map_err(|source| StartError::Bind {
            listener,
            address,
            source,
        })
}

/// Resolves once `signal` is (or becomes) true, or its sender is gone.
pub(crate) async fn signalled(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|s| *s).await;
}

/// How long to wait after a failed accept: 10 ms, doubling to 1 s while failures continue
/// (out of descriptors, each failure would otherwise be retried - and logged - at once),
/// and back to nothing after an accept succeeds.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    wait: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);

    pub fn failed(&mut self) -> Duration {
        self.wait = (self.wait * 2).clamp(Self::FIRST, Self::MOST);
        self.wait
    }

    pub fn succeeded(&mut self) {
        self.wait = Duration::ZERO;
    }
}

/// Accepts until `stop` turns true, each connection on its own task. A connection `cap` has
/// no room for is closed at once; how many were is logged at most once a second.
pub(crate) fn spawn_accept_loop<F, Fut>(
    listener: Box<dyn Listener>,
    mut stop: watch::Receiver<bool>,
    cap: ListenerCap,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(Accepted) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        let local = listener.local_addr();
        let mut backoff = AcceptBackoff::default();
        let mut next_refusal_log = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                () = signalled(&mut stop) => return,
                incoming = listener.accept() => match incoming {
                    Ok(incoming) => {
                        backoff.succeeded();
                        let Some(admitted) = cap.admit() else {
                            drop(incoming);
                            let now = tokio::time::Instant::now();
                            if now >= next_refusal_log {
                                next_refusal_log = now + REFUSAL_LOG_INTERVAL;
                                tracing::warn!(%local, cap = cap.limit(), refused = cap.take_refused(), "listener at its connection cap; closing new connections");
                            }
                            continue;
                        };
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            let _admitted = admitted;
                            match incoming.await {
                                Ok(accepted) => handler(accepted).await,
                                Err(err) => tracing::warn!(%local, %err, "accepted connection lost before it was resolved"),
                            }
                        });
                    }
                    Err(err) => {
                        let wait = backoff.failed();
                        tracing::warn!(%local, %err, retry_in = ?wait, "accept failed");
                        tokio::time::sleep(wait).await;
                    }
                },
            }
        }
    })
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// `/healthz/ready`: 200 `ready`, or 500 naming what readiness still waits for (upstream's
/// answer).
pub(crate) fn readiness(pending: Option<&str>) -> Response<Full<Bytes>> {
    match pending {
        None => text(StatusCode::OK, "ready\n"),
        Some(pending) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("not ready, pending: {pending}\n"),
        ),
    }
}

/// Prometheus text, as upstream serves `/metrics` and `/stats/prometheus`.
pub(crate) fn metrics(encoded: String) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, encoded);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON answer (`/config_dump`, explanations).
pub(crate) fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::OK,
        serde_json::to_vec_pretty(value).unwrap_or_default(),
    );
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Requests no admin-type endpoint serves, whatever the path: an absolute-form or
/// authority-form target asks this server to act as a proxy, which it is not; and stopping
/// the proxy is for the node itself, so `/quitquitquit` from a peer that is not on loopback
/// is refused (admin is reachable from elsewhere only when a proxy listens on a routable
/// loopback-less address).
pub(crate) fn refusal(
    peer: IpAddr,
    method: &Method,
    uri: &http::Uri,
) -> Option<(StatusCode, &'static str)> {
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Some((
            StatusCode::BAD_REQUEST,
            "only origin-form request targets are served\n",
        ));
    }
    if method == Method::POST && uri.path() == "/quitquitquit" && !peer.to_canonical().is_loopback()
    {
        return Some((
            StatusCode::FORBIDDEN,
            "only loopback peers may stop the proxy\n",
        ));
    }
    None
}

/// Serves one HTTP/1.1 connection on an admin-type listener: every request that passes
/// [`refusal`] goes to `handle`. `deadline` bounds both a client's silence (before its
/// first byte, or kept alive between requests) and the time it takes to send a request
/// head, so an idle or trickling client cannot hold the port.
pub(crate) async fn serve_http<H>(accepted: Accepted, deadline: Duration, handle: H)
where
    H: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let peer = accepted.peer;
    let handle = Arc::new(handle);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = match refusal(peer.ip(), request.method(), request.uri()) {
            Some((status, reason)) => text(status, reason),
            None => handle(&request),
        };
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .auto_date_header(false)
        .header_read_timeout(deadline)
        .serve_connection(
            TokioIo::new(IdleLimit::new(accepted.stream, deadline)),
            service,
        )
        .await
    {
        tracing::debug!(%peer, %err, "admin connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(peer: &str, method: Method, target: &str) -> Option<StatusCode> {
        refusal(peer.parse().unwrap(), &method, &target.parse().unwrap()).map(|(s, _)| s)
    }

    #[test]
    fn accept_failures_back_off_to_a_second_and_reset() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<u128> = (0..9).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed().as_millis(), 10);
    }

    #[test]
    fn quitquitquit_is_for_loopback_peers_only() {
        for peer in ["127.0.0.1", "127.77.1.2", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(refused(peer, Method::POST, "/quitquitquit"), None, "{peer}");
        }
        for peer in ["10.0.0.7", "192.0.2.1", "::ffff:10.0.0.7", "fd00::1"] {
            assert_eq!(
                refused(peer, Method::POST, "/quitquitquit"),
                Some(StatusCode::FORBIDDEN),
                "{peer}"
            );
            // reading is not stopping
            assert_eq!(refused(peer, Method::GET, "/config_dump"), None, "{peer}");
        }
    }

    #[test]
    fn only_origin_form_targets_are_served() {
        assert_eq!(refused("127.0.0.1", Method::GET, "/metrics"), None);
        for target in [
            "http://evil.example/metrics",
            "evil.example:80",
            "https://x/",
        ] {
            assert_eq!(
                refused("127.0.0.1", Method::GET, target),
                Some(StatusCode::BAD_REQUEST),
                "{target}"
            );
        }
    }

    #[test]
    fn admin_binds_loopback_unless_the_listen_address_is_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(admin_ip(ip("0.0.0.0")), ip("127.0.0.1"));
        assert_eq!(admin_ip(ip("10.1.2.3")), ip("127.0.0.1"));
        assert_eq!(admin_ip(ip("127.77.1.3")), ip("127.77.1.3"));
        assert_eq!(admin_ip(ip("::")), ip("::1"));
    }
}

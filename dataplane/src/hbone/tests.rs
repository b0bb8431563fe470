//! The client pool and HTTP/2 settings against a real HBONE server on loopback: pool keys,
//! one connection per burst, moving off a connection whose peer sent GOAWAY, window sizes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::*;
use crate::identity::{Identity, LocalCa, client_config, server_config};
use crate::seams::{Clock, RealNetwork, SystemClock};

fn client_id() -> Identity {
    Identity::new("cluster.local", "shop", "web")
}

fn server_id() -> Identity {
    Identity::new("cluster.local", "shop", "echo")
}

/// An HBONE server answering every CONNECT with 200 and holding the stream open; each of its
/// connections can be drained on its own.
struct Server {
    address: SocketAddr,
    accepted: AtomicUsize,
    drains: Mutex<Vec<watch::Sender<bool>>>,
    /// The receive window each accepted stream started with.
    windows: Mutex<Vec<isize>>,
    /// Answer a CONNECT only once its first DATA frame has arrived, recorded here.
    first_flights: Option<Mutex<Vec<Bytes>>>,
}

impl Server {
    async fn start(ca: &LocalCa) -> Arc<Server> {
        Server::start_with(ca, false).await
    }

    /// `answer_after_data`: answers each CONNECT only after its first DATA frame (a client
    /// that waits for the answer before it sends never gets one).
    async fn start_with(ca: &LocalCa, answer_after_data: bool) -> Arc<Server> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let cert = ca.issue(&server_id(), Duration::from_secs(3600), SystemTime::now());
        let tls = Arc::new(server_config(&cert.unwrap(), clock).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Arc::new(Server {
            address: listener.local_addr().unwrap(),
            accepted: AtomicUsize::new(0),
            drains: Mutex::new(Vec::new()),
            windows: Mutex::new(Vec::new()),
            first_flights: answer_after_data.then(|| Mutex::new(Vec::new())),
        });
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = listener.accept().await.unwrap();
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let (drain_tx, drain) = watch::channel(false);
                s.drains.lock().unwrap().push(drain_tx);
                let options = ServerOptions {
                    tunnels: None,
                    handshake_timeout: Duration::from_secs(5),
                    drain,
                    drain_deadline: Duration::from_secs(30),
                };
                let server = s.clone();
                let handler = move |mut incoming: IncomingConnect| {
                    let server = server.clone();
                    async move {
                        if let Some(flights) = &server.first_flights {
                            let Some(Ok(data)) = incoming.body().data().await else {
                                return;
                            };
                            flights.lock().unwrap().push(data);
                        }
                        let Ok(mut stream) = incoming.accept(HeaderMap::new()) else {
                            return;
                        };
                        // Stream 1 may open before our SETTINGS are acknowledged (prior
                        // knowledge); its window grows to the setting once they are.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let window = stream.recv.flow_control().available_capacity();
                        server.windows.lock().unwrap().push(window);
                        // hold the stream until the client goes away
                        while let Some(Ok(_)) = stream.recv.data().await {}
                    }
                };
                tokio::spawn(serve_connection(
                    Box::new(tcp),
                    peer,
                    peer,
                    tls.clone(),
                    options,
                    handler,
                ));
            }
        });
        server
    }

    fn drain_all(&self) {
        for drain in self.drains.lock().unwrap().iter() {
            let _ = drain.send(true);
        }
    }
}

struct Client {
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    fn new(ca: &LocalCa, expected: Vec<Identity>) -> Client {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let cert = ca.issue(&client_id(), Duration::from_secs(3600), SystemTime::now());
        Client {
            tls: Arc::new(client_config(&cert.unwrap(), expected, clock).unwrap()),
        }
    }

    async fn stream(
        &self,
        pool: &Pool,
        key: &PoolKey,
        server: &Server,
    ) -> Result<(H2Stream, Lease), HboneError> {
        self.stream_with(pool, key, server, Bytes::new()).await
    }

    async fn stream_with(
        &self,
        pool: &Pool,
        key: &PoolKey,
        server: &Server,
        first_flight: Bytes,
    ) -> Result<(H2Stream, Lease), HboneError> {
        let open = || async {
            open_connection(
                &RealNetwork::default(),
                self.tls.clone(),
                key.source_ip,
                server.address,
            )
            .await
        };
        let authority = "127.0.0.1:8080";
        pool.open_stream(
            key,
            open,
            authority,
            &ConnectHeaders::default(),
            &first_flight,
        )
        .await
    }
}

fn key(server: &Server) -> PoolKey {
    PoolKey {
        source_identity: client_id(),
        expected_identities: vec![server_id()],
        destination: server.address,
        source_ip: None,
    }
}

fn ca() -> LocalCa {
    LocalCa::generate("cluster.local", SystemTime::now()).unwrap()
}

#[tokio::test]
async fn streams_share_a_connection_only_under_the_same_key() {
    let ca = ca();
    let server = Server::start(&ca).await;
    let pool = Pool::new();
    let client = Client::new(&ca, vec![server_id()]);
    let base = key(&server);
    let mut held = Vec::new();
    held.push(client.stream(&pool, &base, &server).await.unwrap());
    held.push(client.stream(&pool, &base, &server).await.unwrap());
    assert_eq!(pool.connection_count(), 1, "same key, one connection");
    // each part of the key separates connections
    let other_expected = PoolKey {
        expected_identities: vec![server_id(), Identity::new("cluster.local", "shop", "db")],
        ..base.clone()
    };
    let other_source = PoolKey {
        source_identity: Identity::new("cluster.local", "shop", "admin"),
        ..base.clone()
    };
    let other_ip = PoolKey {
        source_ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))),
        ..base.clone()
    };
    for (n, key) in [other_expected, other_source, other_ip].iter().enumerate() {
        let client = Client::new(&ca, key.expected_identities.clone());
        held.push(client.stream(&pool, key, &server).await.unwrap());
        assert_eq!(pool.connection_count(), n + 2, "{key:?}");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_burst_of_new_streams_opens_one_connection() {
    let ca = ca();
    let server = Server::start(&ca).await;
    let pool = Pool::new();
    let client = Arc::new(Client::new(&ca, vec![server_id()]));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (pool, client, server) = (pool.clone(), client.clone(), server.clone());
            tokio::spawn(async move {
                let key = key(&server);
                client.stream(&pool, &key, &server).await.map(|_| ())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(pool.connection_count(), 1);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn after_goaway_new_streams_move_to_a_new_connection() {
    let ca = ca();
    let server = Server::start(&ca).await;
    let pool = Pool::new();
    let client = Client::new(&ca, vec![server_id()]);
    let key = key(&server);
    let (mut open_stream, _lease) = client.stream(&pool, &key, &server).await.unwrap();
    // the server starts draining that connection; the open stream keeps it alive
    server.drain_all();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_second, _lease2) = client
        .stream(&pool, &key, &server)
        .await
        .expect("a new stream after GOAWAY goes to a new connection");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.connection_count(), 1, "the draining one left the pool");
    // the stream that was open before the GOAWAY still works
    open_stream
        .send
        .send_data(bytes::Bytes::from_static(b"still"), false)
        .unwrap();
}

#[tokio::test]
async fn windows_are_upstreams_4_mib_per_stream_each_way() {
    let ca = ca();
    let server = Server::start(&ca).await;
    let pool = Pool::new();
    let client = Client::new(&ca, vec![server_id()]);
    let (mut stream, _lease) = client.stream(&pool, &key(&server), &server).await.unwrap();
    // what each side lets the other send on a new stream
    assert_eq!(stream.recv.flow_control().available_capacity(), 4 << 20);
    let server_window = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(w) = server.windows.lock().unwrap().first().copied() {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(server_window, 4 << 20);
    // and the client may really have its whole send buffer in flight at once: the
    // connection window (16 MiB) is not HTTP/2's 64 KiB default
    stream.send.reserve_capacity(2 * STREAM_WINDOW as usize);
    let granted = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let now = stream.send.capacity();
            if now >= CLIENT_SEND_BUFFER {
                return now;
            }
            let _ = std::future::poll_fn(|cx| stream.send.poll_capacity(cx)).await;
        }
    })
    .await
    .expect("the send buffer's worth is granted");
    assert_eq!(granted, CLIENT_SEND_BUFFER);
    const { assert!(CLIENT_SEND_BUFFER > 65_535) };
}

#[tokio::test]
async fn the_first_flight_goes_with_the_connect_before_its_answer() {
    let ca = ca();
    // This server answers only once data has arrived: a client waiting for the 200 before
    // sending would wait forever.
    let server = Server::start_with(&ca, true).await;
    let client = Client::new(&ca, vec![server_id()]);
    let pool = Pool::new();
    let first = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n");
    let opened = tokio::time::timeout(
        Duration::from_secs(5),
        client.stream_with(&pool, &key(&server), &server, first.clone()),
    )
    .await;
    assert!(
        matches!(opened, Ok(Ok(_))),
        "the CONNECT was not answered: its first flight did not go before the answer"
    );
    let flights = server.first_flights.as_ref().unwrap().lock().unwrap();
    assert_eq!(flights.as_slice(), &[first]);
}

//! The pods' applications: per declared container port, the simulator's HTTP echo
//! (`sim::apps::echo`, for ports named `http`/`http-*`) or a TCP echo, recording every request
//! marker they receive (`sim::wire::markers_in`) as a delivery to `namespace/pod`. That record,
//! not anything the mesh says, is what "a denied request must not reach the app" is judged by.
//!
//! They are not echo processes: they run in this runner's tokio runtime (on its `LocalSet`),
//! but every listener is created inside its pod's network namespace, so connections reach them
//! by the same kernel path (the pod's veth, its capture rules, the in-pod ztunnel) as they
//! would reach a process of that pod.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use harness::Netns;
use sim::Delivery;
use sim::apps::AppKind;
use sim::apps::echo::{self, EchoContext, EchoHooks};
use sim::wire::markers_in;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::Error;
use crate::placement::{PodInfo, identity};

/// The run's time base: scenario times count from when the cluster became ready.
#[derive(Debug)]
pub struct Clock {
    t0: Cell<Instant>,
    /// The wall time at zero: what the processes' log lines are stamped with
    /// ([`crate::logs`]).
    wall0: Cell<SystemTime>,
}

impl Clock {
    /// A clock whose zero is now, until [`Clock::start`] moves it: shared (`Rc`) by the apps,
    /// which stamp deliveries, and the traffic, which stamps requests, so both use one zero.
    pub fn new() -> Rc<Clock> {
        Rc::new(Clock {
            t0: Cell::new(Instant::now()),
            wall0: Cell::new(SystemTime::now()),
        })
    }

    /// Scenario time zero is now.
    pub fn start(&self) {
        self.t0.set(Instant::now());
        self.wall0.set(SystemTime::now());
    }

    /// The wall time of scenario time zero.
    pub fn wall_zero(&self) -> SystemTime {
        self.wall0.get()
    }

    /// Scenario time (zero before the start).
    pub fn now(&self) -> Duration {
        self.t0.get().elapsed()
    }

    /// The instant of scenario time `at`.
    pub fn instant(&self, at: Duration) -> Instant {
        self.t0.get() + at
    }
}

/// What the applications received, in arrival order.
#[derive(Debug, Default)]
pub struct Deliveries(RefCell<Vec<Delivery>>);

impl Deliveries {
    fn push(&self, delivery: Delivery) {
        self.0.borrow_mut().push(delivery);
    }

    /// A copy of everything recorded so far, for judging after the run.
    pub fn all(&self) -> Vec<Delivery> {
        self.0.borrow().clone()
    }
}

/// One pod's applications: the listeners' accept loops and every open connection.
struct Running {
    tasks: Rc<RefCell<JoinSet<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.tasks.borrow_mut().abort_all();
    }
}

/// Every pod's applications.
pub struct Apps {
    clock: Rc<Clock>,
    deliveries: Rc<Deliveries>,
    /// Peer IP → SPIFFE identity, for the HTTP echo's `peerIdentity` (as the simulator's echo
    /// infers it from the peer's address).
    identities: Rc<BTreeMap<IpAddr, String>>,
    running: RefCell<BTreeMap<String, Running>>,
}

/// What one connection's echo knows.
struct Served {
    pod: String,
    clock: Rc<Clock>,
    deliveries: Rc<Deliveries>,
    /// Requests per flaky path, per pod (shared by the pod's connections).
    counters: Rc<RefCell<BTreeMap<String, u64>>>,
}

impl Served {
    fn received(&self, bytes: &[u8]) {
        for (traffic, request) in markers_in(bytes) {
            self.deliveries.push(Delivery {
                traffic,
                request,
                pod: self.pod.clone(),
                at: self.clock.now(),
            });
        }
    }
}

impl EchoHooks for Served {
    fn received(&self, request: &http::request::Parts, body: &[u8]) {
        for value in request.headers.values() {
            Served::received(self, value.as_bytes());
        }
        Served::received(self, body);
    }

    fn count(&self, path: &str) -> u64 {
        let mut counters = self.counters.borrow_mut();
        let count = counters.entry(path.to_string()).or_insert(0);
        *count += 1;
        *count
    }
}

impl Apps {
    /// No app running yet; `pods` are every pod of the cluster, whose identities the HTTP
    /// echo reports for its peers.
    pub fn new(clock: Rc<Clock>, pods: &[PodInfo]) -> Apps {
        Apps {
            clock,
            deliveries: Rc::default(),
            identities: Rc::new(pods.iter().map(|p| (p.ip, identity(p))).collect()),
            running: RefCell::default(),
        }
    }

    /// The record every app writes to.
    pub fn deliveries(&self) -> Rc<Deliveries> {
        self.deliveries.clone()
    }

    /// Starts `pod`'s applications: every declared port, listening on all of the pod's
    /// addresses inside `netns`. Must be called on the runtime's `LocalSet`.
    pub fn serve(&self, pod: &PodInfo, netns: &Netns) -> Result<(), Error> {
        let key = format!("{}/{}", pod.namespace, pod.name);
        let tasks = Rc::new(RefCell::new(JoinSet::new()));
        let counters = Rc::new(RefCell::new(BTreeMap::new()));
        for (&port, (_, kind)) in &pod.ports {
            let at = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            let listener = crate::net::listen_in(netns, at)
                .map_err(|e| Error::io(format!("{key}: listening on {at}"), e))?;
            let served = Rc::new(Served {
                pod: key.clone(),
                clock: self.clock.clone(),
                deliveries: self.deliveries.clone(),
                counters: counters.clone(),
            });
            let context = EchoContext {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                ..EchoContext::default()
            };
            let (kind, identities, set) = (*kind, self.identities.clone(), tasks.clone());
            tasks.borrow_mut().spawn_local(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let mut context = context.clone();
                    context.peer = Some(peer);
                    context.peer_identity = identities.get(&peer.ip()).cloned();
                    context.local = stream.local_addr().ok();
                    let served = served.clone();
                    let mut set = set.borrow_mut();
                    while set.try_join_next().is_some() {}
                    set.spawn_local(connection(kind, stream, context, served));
                }
            });
        }
        self.running.borrow_mut().insert(key, Running { tasks });
        Ok(())
    }

    /// Stops `namespace/name`'s applications: listeners closed, open connections dropped.
    pub fn stop(&self, pod: &str) {
        self.running.borrow_mut().remove(pod);
    }

    /// Stops every application.
    pub fn stop_all(&self) {
        self.running.borrow_mut().clear();
    }
}

async fn connection(kind: AppKind, stream: TcpStream, context: EchoContext, served: Rc<Served>) {
    match kind {
        AppKind::Http => echo::serve(stream, Rc::new(context), served).await,
        AppKind::Tcp => {
            let mut stream = stream;
            tcp_echo(&mut stream, &served).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// Writes back what it reads until the peer closes, recording the markers (also one split
/// across reads).
async fn tcp_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, served: &Served) {
    let mut buf = vec![0u8; 8 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = &buf[..n];
        tail.extend_from_slice(data);
        if markers_in(&tail).is_empty() {
            if tail.len() > 64 {
                tail.drain(..tail.len() - 64);
            }
        } else {
            served.received(&tail);
            tail.clear();
        }
        if stream.write_all(data).await.is_err() {
            return;
        }
    }
}

//! The traffic: a runtime whose threads live in the client pod's namespace (so its sockets
//! are the pod's, made by a plain `connect`), the server pod's echo and sink, and the
//! measurements.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use benches::{bulk_send, round_trip, spawn_echo_server, spawn_sink_server};
use harness::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

const MIB: u64 = 1024 * 1024;
static CHUNK: [u8; 256 * 1024] = [0x5a; 256 * 1024];
const REQUEST: [u8; 1024] = [0x42; 1024];

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub rounds: usize,
    tp1_bytes: u64,
    tp8_bytes_per_stream: u64,
    rtts: usize,
    conns: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                rounds: 1,
                tp1_bytes: 64 * MIB,
                tp8_bytes_per_stream: 16 * MIB,
                rtts: 2_000,
                conns: 300,
            }
        } else {
            Sizes {
                rounds: 5,
                tp1_bytes: 512 * MIB,
                tp8_bytes_per_stream: 128 * MIB,
                rtts: 20_000,
                conns: 3_000,
            }
        }
    }
}

/// One path's numbers in one round.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// MiB/s.
    pub tp1: f64,
    pub tp8: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub conns_per_s: f64,
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "1 stream {:.0} MiB/s, 8 streams {:.0} MiB/s, p50 {:.1} µs, p99 {:.1} µs, {:.0} conns/s",
            self.tp1, self.tp8, self.p50_us, self.p99_us, self.conns_per_s
        )
    }
}

/// A runtime whose worker threads are started inside `client`'s namespace: every socket its
/// tasks make is the pod's.
pub fn client_runtime(client: &Netns) -> Result<Runtime, String> {
    client
        .enter(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Runs `work` on the runtime's workers (never on the calling thread, which is not in the
/// pod) and waits for it.
pub fn run<T: Send + 'static>(rt: &Runtime, work: impl Future<Output = T> + Send + 'static) -> T {
    match rt.block_on(rt.spawn(work)) {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The server pod's echo (8080) and sink (8081): bound from a thread inside its namespace,
/// served by the runtime.
pub fn serve_apps(server: &Netns, rt: &Runtime) -> Result<(), String> {
    let handle = rt.handle().clone();
    server
        .enter(move || {
            handle.block_on(async {
                spawn_echo_server(SocketAddr::from((super::SERVER_IP, super::ECHO_PORT))).await?;
                spawn_sink_server(SocketAddr::from((super::SERVER_IP, super::SINK_PORT))).await
            })
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("server apps: {e}"))
}

async fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(to)).await??;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn throughput(sink: SocketAddr, streams: usize, bytes: u64) -> std::io::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        tasks.push(tokio::spawn(async move {
            let mut s = connect(sink).await?;
            bulk_send(&mut s, &CHUNK, bytes).await
        }));
    }
    for task in tasks {
        task.await.map_err(std::io::Error::other)??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((streams as u64 * bytes) as f64 / MIB as f64 / secs)
}

async fn latency(echo: SocketAddr, n: usize) -> std::io::Result<(f64, f64)> {
    let mut s = connect(echo).await?;
    let mut answer = [0u8; 1024];
    // Warm the path (certificates, pool) before counting.
    for _ in 0..50 {
        round_trip(&mut s, &REQUEST, &mut answer).await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        round_trip(&mut s, &REQUEST, &mut answer).await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.50).as_secs_f64() * 1e6, at(0.99).as_secs_f64() * 1e6))
}

async fn connections(echo: SocketAddr, n: usize) -> std::io::Result<f64> {
    let start = Instant::now();
    for _ in 0..n {
        let mut s = connect(echo).await?;
        // Closed with a reset, so no TIME_WAIT is left in the client pod: rounds of tens of
        // thousands of connections otherwise leave every later round searching the port range
        // for a reusable one (the rate fell from ~10,000/s to a few hundred on every path
        // after the first round). The same on every path; what is timed is the setup and one
        // exchange.
        s.set_zero_linger()?;
        s.write_all(&[0x2a]).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Every measurement, one after another, on the path the kernel's rules currently make.
pub fn measure(
    rt: &Runtime,
    sizes: Sizes,
    echo: SocketAddr,
    sink: SocketAddr,
) -> Result<Measured, String> {
    run(rt, async move {
        let e = |what: &str, err: std::io::Error| format!("{what}: {err}");
        // One connection first, so certificates are fetched before anything is timed.
        connections(echo, 5)
            .await
            .map_err(|err| e("warm-up", err))?;
        let tp1 = throughput(sink, 1, sizes.tp1_bytes)
            .await
            .map_err(|err| e("1 stream", err))?;
        let tp8 = throughput(sink, 8, sizes.tp8_bytes_per_stream)
            .await
            .map_err(|err| e("8 streams", err))?;
        let (p50_us, p99_us) = latency(echo, sizes.rtts)
            .await
            .map_err(|err| e("latency", err))?;
        let conns_per_s = connections(echo, sizes.conns)
            .await
            .map_err(|err| e("connections", err))?;
        Ok(Measured {
            tp1,
            tp8,
            p50_us,
            p99_us,
            conns_per_s,
        })
    })
}

/// The rounds as JSON, for whoever compares runs.
pub fn json(rounds: &[Vec<(&str, &Measured)>]) -> String {
    let rounds: Vec<serde_json::Value> = rounds
        .iter()
        .map(|round| {
            serde_json::Value::Object(
                round
                    .iter()
                    .map(|(path, m)| {
                        (
                            path.to_string(),
                            serde_json::json!({
                                "throughput_1_stream_mib_s": m.tp1,
                                "throughput_8_streams_mib_s": m.tp8,
                                "latency_1kib_p50_us": m.p50_us,
                                "latency_1kib_p99_us": m.p99_us,
                                "connections_per_s": m.conns_per_s,
                            }),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "rounds": rounds })).unwrap_or_default()
}

//! HBONE through two in-process ztunnels on loopback against plain loopback TCP, in one run:
//! bulk throughput (1 and 8 streams), 1 KiB request/response latency (p50/p99) and new
//! connections per second, plus allocations per MiB tunnelled.
//!
//! The criterion groups (`latency_1KiB`, `new_connection`, `throughput`) give criterion's
//! usual statistics. The summary at the end comes from separate, interleaved plain/HBONE
//! passes (percentiles need every sample, which criterion does not keep), is printed as a
//! table, and is written to `target/bench-hbone.json`.
//!
//! `BENCH_QUICK=1` (and `cargo test --benches`) shrinks everything to a smoke run of about 10 s.
//! `--profile-time N <filter>` runs only the chosen criterion benchmark (no summary), e.g.
//! under `perf record` or `heaptrack`.

mod summary;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use benches::{CountingAlloc, Dialer, Path, Testbed, bulk_send, connect_round_trip, round_trip};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const MIB: u64 = 1024 * 1024;
const PAYLOAD_LEN: usize = 256 * 1024;
static PAYLOAD: [u8; PAYLOAD_LEN] = [0x5a; PAYLOAD_LEN];
const REQUEST: [u8; 1024] = [0x42; 1024];
/// Bytes per criterion throughput iteration; the same in quick and full runs so criterion's
/// saved baselines stay comparable.
const CRIT_TP1_BYTES: u64 = 8 * MIB;
const CRIT_TP8_BYTES_PER_STREAM: u64 = 2 * MIB;

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    quick: bool,
    /// Summary throughput: bytes for the single stream, and per stream with 8 streams.
    tp1_bytes: u64,
    tp8_bytes_per_stream: u64,
    /// Summary throughput repetitions per path (medians are reported; the ratio is the median
    /// of the ratios of back-to-back plain/HBONE pairs).
    tp_reps: usize,
    /// Summary latency: round trips per path, and per interleaved block.
    rtts: usize,
    rtt_block: usize,
    /// Summary connection rate: connections per path, and per interleaved block.
    conns: usize,
    conn_block: usize,
    /// Allocation counting: two transfer sizes (the difference gives the per-MiB cost
    /// without the per-connection set-up) and a number of connections.
    alloc_small: u64,
    alloc_large: u64,
    alloc_conns: usize,
    /// Criterion.
    crit_samples: usize,
    crit_warm_up: Duration,
    crit_measure: Duration,
    crit_tp1_bytes: u64,
    crit_tp8_bytes_per_stream: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                quick,
                tp1_bytes: 32 * MIB,
                tp8_bytes_per_stream: 8 * MIB,
                tp_reps: 1,
                rtts: 2_000,
                rtt_block: 500,
                conns: 300,
                conn_block: 100,
                alloc_small: 4 * MIB,
                alloc_large: 16 * MIB,
                alloc_conns: 100,
                crit_samples: 10,
                crit_warm_up: Duration::from_millis(200),
                crit_measure: Duration::from_millis(500),
                crit_tp1_bytes: CRIT_TP1_BYTES,
                crit_tp8_bytes_per_stream: CRIT_TP8_BYTES_PER_STREAM,
            }
        } else {
            Sizes {
                quick,
                tp1_bytes: 128 * MIB,
                tp8_bytes_per_stream: 32 * MIB,
                tp_reps: 11,
                rtts: 20_000,
                rtt_block: 1_000,
                conns: 4_000,
                conn_block: 250,
                alloc_small: 16 * MIB,
                alloc_large: 64 * MIB,
                alloc_conns: 500,
                crit_samples: 20,
                crit_warm_up: Duration::from_secs(1),
                crit_measure: Duration::from_secs(3),
                crit_tp1_bytes: CRIT_TP1_BYTES,
                crit_tp8_bytes_per_stream: CRIT_TP8_BYTES_PER_STREAM,
            }
        }
    }
}

/// Everything a measurement needs; absent when criterion only lists benchmarks.
struct Env {
    rt: Runtime,
    testbed: Testbed,
    plain: Dialer,
    hbone: Dialer,
    echo: SocketAddr,
    sink: SocketAddr,
}

impl Env {
    fn start() -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let testbed = rt
            .block_on(Testbed::start())
            .expect("testbed starts (are 127.99.0.2/.3 ports free?)");
        let env = Env {
            plain: testbed.dialer(Path::Plain),
            hbone: testbed.dialer(Path::Hbone),
            echo: testbed.echo_addr(),
            sink: testbed.sink_addr(),
            rt,
            testbed,
        };
        // Open the pooled HBONE connection (mTLS + HTTP/2 handshake) outside any measurement.
        for d in [env.plain, env.hbone] {
            env.run(async move { connect_round_trip(&d, env_echo()).await })
                .unwrap_or_else(|e| panic!("{} warm-up failed: {e}", d.path.name()));
        }
        env
    }

    fn dialer(&self, path: Path) -> Dialer {
        match path {
            Path::Plain => self.plain,
            Path::Hbone => self.hbone,
        }
    }

    /// Runs `fut` as a task on the runtime's workers (not on the bench thread) and waits.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        self.rt
            .block_on(self.rt.spawn(fut))
            .expect("benchmark task panicked")
    }

    fn connect(&self, path: Path) -> TcpStream {
        let d = self.dialer(path);
        let echo = self.echo;
        self.run(async move { d.connect(echo).await })
            .unwrap_or_else(|e| panic!("{} connect failed: {e}", path.name()))
    }

    /// `streams` concurrent connections each sending `per_stream` bytes into the sink; the
    /// wall time until the last sink has confirmed its count.
    fn transfer(&self, path: Path, streams: usize, per_stream: u64) -> Duration {
        let d = self.dialer(path);
        let sink = self.sink;
        self.run(async move {
            let start = Instant::now();
            let tasks: Vec<_> = (0..streams)
                .map(|_| {
                    tokio::spawn(async move {
                        let mut s = d.connect(sink).await?;
                        bulk_send(&mut s, &PAYLOAD, per_stream).await
                    })
                })
                .collect();
            for t in tasks {
                t.await.map_err(io::Error::other)??;
            }
            Ok::<_, io::Error>(start.elapsed())
        })
        .unwrap_or_else(|e| panic!("{} transfer failed: {e}", path.name()))
    }

    /// `n` 1 KiB round trips on `s`; each one's duration in ns is appended to `out`.
    fn rtts(&self, s: TcpStream, n: usize, out: Vec<u64>) -> (TcpStream, Vec<u64>) {
        self.run(async move {
            let (mut s, mut out) = (s, out);
            let mut response = [0u8; 1024];
            for _ in 0..n {
                let t = Instant::now();
                round_trip(&mut s, &REQUEST, &mut response)
                    .await
                    .expect("1 KiB round trip");
                out.push(t.elapsed().as_nanos() as u64);
            }
            (s, out)
        })
    }

    /// `n` sequential new connections with a 1-byte round trip; durations appended to `out`.
    fn conns(&self, path: Path, n: usize, out: Vec<u64>) -> Vec<u64> {
        let d = self.dialer(path);
        let echo = self.echo;
        self.run(async move {
            let mut out = out;
            for _ in 0..n {
                let t = Instant::now();
                connect_round_trip(&d, echo)
                    .await
                    .unwrap_or_else(|e| panic!("{} connection failed: {e}", d.path.name()));
                out.push(t.elapsed().as_nanos() as u64);
            }
            out
        })
    }
}

fn env_echo() -> SocketAddr {
    SocketAddr::new(benches::ip(benches::SERVER_HOST), benches::ECHO_PORT)
}

const PATHS: [Path; 2] = [Path::Plain, Path::Hbone];

fn criterion_groups(c: &mut Criterion, env: Option<&Env>, sizes: &Sizes) {
    let mut group = c.benchmark_group("latency_1KiB");
    group.throughput(Throughput::Elements(1));
    for path in PATHS {
        group.bench_function(path.name(), |b| {
            let env = env.expect("benchmarks run only with an environment");
            let mut slot = Some(env.connect(path));
            b.iter_custom(|iters| {
                let s = slot.take().expect("connection");
                let (s, times) = env.rtts(s, iters as usize, Vec::with_capacity(iters as usize));
                slot = Some(s);
                Duration::from_nanos(times.iter().sum())
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("new_connection");
    group.throughput(Throughput::Elements(1));
    for path in PATHS {
        group.bench_function(path.name(), |b| {
            let env = env.expect("benchmarks run only with an environment");
            b.iter_custom(|iters| {
                let start = Instant::now();
                env.conns(path, iters as usize, Vec::with_capacity(iters as usize));
                start.elapsed()
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("throughput");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for (streams, per_stream) in [
        (1usize, sizes.crit_tp1_bytes),
        (8, sizes.crit_tp8_bytes_per_stream),
    ] {
        group.throughput(Throughput::Bytes(per_stream * streams as u64));
        for path in PATHS {
            group.bench_function(BenchmarkId::new(path.name(), streams), |b| {
                let env = env.expect("benchmarks run only with an environment");
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| env.transfer(path, streams, per_stream))
                        .sum()
                });
            });
        }
    }
    group.finish();
}

fn main() {
    // As the ztunnel binary does first thing; `BENCH_ALLOCATOR=default` leaves glibc's
    // defaults, to measure what the setting buys.
    let keep_freed = if std::env::var("BENCH_ALLOCATOR").is_ok_and(|v| v == "default") {
        false
    } else {
        dataplane::memory::keep_freed_buffers()
    };
    // Only look for flags here; criterion parses (and validates) the command line itself.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let listing = has("--list");
    // `--profile-time N [filter]`: only the selected criterion benchmarks, for a profiler.
    let profiling = args.iter().any(|a| a.starts_with("--profile-time"));
    // Without `--bench` (e.g. `cargo test --benches`) criterion runs each benchmark once.
    let testing = !has("--bench") || has("--test");
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1") || testing;
    let sizes = Sizes::new(quick);

    let mut c = Criterion::default()
        .sample_size(sizes.crit_samples)
        .warm_up_time(sizes.crit_warm_up)
        .measurement_time(sizes.crit_measure)
        .configure_from_args();

    let env = (!listing).then(Env::start);
    criterion_groups(&mut c, env.as_ref(), &sizes);

    if let Some(env) = env {
        if !profiling {
            summary::run(&env, &sizes, keep_freed);
        }
        let Env { rt, testbed, .. } = env;
        rt.block_on(testbed.shutdown());
        rt.shutdown_timeout(Duration::from_millis(200));
    }
    c.final_summary();
}

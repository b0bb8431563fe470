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

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Debug, Default, Clone, Copy)]
struct PathResult {
    tp1_bytes_per_s: f64,
    tp8_bytes_per_s: f64,
    /// Slowest and fastest repetition, 1 and 8 streams.
    tp1_range: (f64, f64),
    tp8_range: (f64, f64),
    rtt_p50_ns: u64,
    rtt_p99_ns: u64,
    rtt_mean_ns: f64,
    conns_per_s: f64,
    conn_p50_ns: u64,
    conn_p99_ns: u64,
    allocs_per_mib: f64,
    alloc_bytes_per_mib: f64,
    allocs_per_conn: f64,
}

/// HBONE against plain, each the median over back-to-back pairs (a throughput repetition, a
/// block of connections), so that the machine's drift — it is shared — cancels out of each pair.
#[derive(Debug, Default, Clone, Copy)]
struct Ratios {
    tp1: f64,
    tp8: f64,
    conns: f64,
}

/// The summary passes: each metric alternates plain and HBONE so that drift (the machine is
/// shared) hits both alike.
fn summary_passes(env: &Env, sizes: &Sizes) -> ([PathResult; 2], Ratios) {
    let mut out = [PathResult::default(); 2];
    let mut ratios = Ratios::default();

    // Throughput.
    for (streams, per_stream) in [(1usize, sizes.tp1_bytes), (8, sizes.tp8_bytes_per_stream)] {
        let mut rates = [Vec::new(), Vec::new()];
        // One small untimed transfer first, so buffers and tasks are warm.
        for path in PATHS {
            env.transfer(path, streams, per_stream / 8);
        }
        for _ in 0..sizes.tp_reps {
            for (i, path) in PATHS.into_iter().enumerate() {
                let t = env.transfer(path, streams, per_stream);
                rates[i].push((per_stream * streams as u64) as f64 / t.as_secs_f64());
            }
        }
        let pairs: Vec<f64> = rates[1]
            .iter()
            .zip(&rates[0])
            .map(|(hbone, plain)| hbone / plain)
            .collect();
        if streams == 1 {
            ratios.tp1 = median_f64(pairs);
        } else {
            ratios.tp8 = median_f64(pairs);
        }
        for (i, r) in rates.into_iter().enumerate() {
            let range = (
                r.iter().copied().fold(f64::INFINITY, f64::min),
                r.iter().copied().fold(0.0, f64::max),
            );
            let m = median_f64(r);
            if streams == 1 {
                out[i].tp1_bytes_per_s = m;
                out[i].tp1_range = range;
            } else {
                out[i].tp8_bytes_per_s = m;
                out[i].tp8_range = range;
            }
        }
    }

    // 1 KiB request/response latency, one established connection per path.
    let mut streams = PATHS.map(|p| Some(env.connect(p)));
    let mut samples = [
        Vec::with_capacity(sizes.rtts),
        Vec::with_capacity(sizes.rtts),
    ];
    for s in streams.iter_mut() {
        let (back, _) = env.rtts(s.take().unwrap(), sizes.rtt_block.min(500), Vec::new());
        *s = Some(back);
    }
    for _ in 0..sizes.rtts.div_ceil(sizes.rtt_block) {
        for i in 0..2 {
            let v = std::mem::take(&mut samples[i]);
            let (back, v) = env.rtts(streams[i].take().unwrap(), sizes.rtt_block, v);
            streams[i] = Some(back);
            samples[i] = v;
        }
    }
    drop(streams);
    for (i, mut v) in samples.into_iter().enumerate() {
        v.sort_unstable();
        out[i].rtt_p50_ns = percentile(&v, 0.50);
        out[i].rtt_p99_ns = percentile(&v, 0.99);
        out[i].rtt_mean_ns = v.iter().sum::<u64>() as f64 / v.len() as f64;
    }

    // New connections per second.
    let mut samples = [
        Vec::with_capacity(sizes.conns),
        Vec::with_capacity(sizes.conns),
    ];
    for path in PATHS {
        env.conns(path, sizes.conn_block.min(100), Vec::new());
    }
    let mut pairs = Vec::new();
    for _ in 0..sizes.conns.div_ceil(sizes.conn_block) {
        let mut block_ns = [0u64; 2];
        for (i, path) in PATHS.into_iter().enumerate() {
            let v = std::mem::take(&mut samples[i]);
            let before = v.len();
            samples[i] = env.conns(path, sizes.conn_block, v);
            block_ns[i] = samples[i][before..].iter().sum();
        }
        // Same number of connections in both blocks: the rate ratio is the time ratio.
        pairs.push(block_ns[0] as f64 / block_ns[1] as f64);
    }
    ratios.conns = median_f64(pairs);
    for (i, mut v) in samples.into_iter().enumerate() {
        out[i].conns_per_s = v.len() as f64 / (v.iter().sum::<u64>() as f64 / 1e9);
        v.sort_unstable();
        out[i].conn_p50_ns = percentile(&v, 0.50);
        out[i].conn_p99_ns = percentile(&v, 0.99);
    }

    // Allocations, counted in separate untimed runs.
    for (i, path) in PATHS.into_iter().enumerate() {
        CountingAlloc::start();
        env.transfer(path, 1, sizes.alloc_small);
        let (a_small, b_small) = CountingAlloc::stop();
        CountingAlloc::start();
        env.transfer(path, 1, sizes.alloc_large);
        let (a_large, b_large) = CountingAlloc::stop();
        let mib = ((sizes.alloc_large - sizes.alloc_small) / MIB) as f64;
        out[i].allocs_per_mib = (a_large as f64 - a_small as f64).max(0.0) / mib;
        out[i].alloc_bytes_per_mib = (b_large as f64 - b_small as f64).max(0.0) / mib;

        CountingAlloc::start();
        env.conns(
            path,
            sizes.alloc_conns,
            Vec::with_capacity(sizes.alloc_conns),
        );
        // Let the proxies finish tearing the last connections down.
        std::thread::sleep(Duration::from_millis(50));
        let (a, _) = CountingAlloc::stop();
        out[i].allocs_per_conn = a as f64 / sizes.alloc_conns as f64;
    }
    (out, ratios)
}

const TARGET_TP1_RATIO: f64 = 0.35;
const TARGET_ADDED_P50_US: f64 = 100.0;
const TARGET_CONN_RATIO: f64 = 0.30;

fn report(sizes: &Sizes, keep_freed: bool, r: &[PathResult; 2], ratios: Ratios) {
    let (p, h) = (&r[0], &r[1]);
    let mibs = |b: f64| b / MIB as f64;
    let us = |ns: u64| ns as f64 / 1e3;
    let Ratios {
        tp1: tp1_ratio,
        tp8: tp8_ratio,
        conns: conn_ratio,
    } = ratios;
    let added_p50 = us(h.rtt_p50_ns) - us(p.rtt_p50_ns);
    let added_p99 = us(h.rtt_p99_ns) - us(p.rtt_p99_ns);
    let p99_ratio = h.rtt_p99_ns as f64 / p.rtt_p99_ns as f64;
    let yes = |ok: bool| if ok { "yes" } else { "NO" };

    println!();
    println!(
        "HBONE (SOCKS5 -> node-a -> HTTP/2 CONNECT over mTLS -> node-b -> server) vs plain TCP, loopback, 2 tokio workers, {}{}",
        if keep_freed {
            "allocator keeps freed buffers"
        } else {
            "allocator defaults"
        },
        if sizes.quick { " [QUICK]" } else { "" }
    );
    println!(
        "{:<26}{:>14}{:>14}{:>22}{:>16}{:>6}",
        "metric", "plain", "hbone", "hbone vs plain", "target", "met"
    );
    let row = |m: &str, a: String, b: String, cmp: String, target: &str, met: &str| {
        println!("{m:<26}{a:>14}{b:>14}{cmp:>22}{target:>16}{met:>6}");
    };
    row(
        "throughput 1 stream",
        format!("{:.0} MiB/s", mibs(p.tp1_bytes_per_s)),
        format!("{:.0} MiB/s", mibs(h.tp1_bytes_per_s)),
        format!("ratio {tp1_ratio:.3}"),
        ">= 0.35",
        yes(tp1_ratio >= TARGET_TP1_RATIO),
    );
    row(
        "throughput 8 streams",
        format!("{:.0} MiB/s", mibs(p.tp8_bytes_per_s)),
        format!("{:.0} MiB/s", mibs(h.tp8_bytes_per_s)),
        format!("ratio {tp8_ratio:.3}"),
        "-",
        "",
    );
    row(
        "1 KiB RTT p50",
        format!("{:.1} us", us(p.rtt_p50_ns)),
        format!("{:.1} us", us(h.rtt_p50_ns)),
        format!("+{added_p50:.1} us added"),
        "<= 100 us",
        yes(added_p50 <= TARGET_ADDED_P50_US),
    );
    row(
        "1 KiB RTT p99",
        format!("{:.1} us", us(p.rtt_p99_ns)),
        format!("{:.1} us", us(h.rtt_p99_ns)),
        format!("+{added_p99:.1} us ({p99_ratio:.2}x)"),
        "-",
        "",
    );
    row(
        "new connections",
        format!("{:.0} /s", p.conns_per_s),
        format!("{:.0} /s", h.conns_per_s),
        format!("ratio {conn_ratio:.3}"),
        ">= 0.30",
        yes(conn_ratio >= TARGET_CONN_RATIO),
    );
    row(
        "  connection p50 / p99",
        format!("{:.0}/{:.0} us", us(p.conn_p50_ns), us(p.conn_p99_ns)),
        format!("{:.0}/{:.0} us", us(h.conn_p50_ns), us(h.conn_p99_ns)),
        String::new(),
        "",
        "",
    );
    row(
        "allocations per MiB",
        format!("{:.1}", p.allocs_per_mib),
        format!("{:.1}", h.allocs_per_mib),
        format!("{:.0} B alloc'd/MiB", h.alloc_bytes_per_mib),
        "",
        "",
    );
    row(
        "allocations per conn",
        format!("{:.1}", p.allocs_per_conn),
        format!("{:.1}", h.allocs_per_conn),
        String::new(),
        "",
        "",
    );
    println!(
        "(throughput: median of {} run(s), {} MiB on 1 stream / 8 x {} MiB, ratio = median of back-to-back pairs; latency: {} round trips per path; connections: {} per path, ratio = median over blocks of {}; allocations: whole process, marginal between {} and {} MiB transfers)",
        sizes.tp_reps,
        sizes.tp1_bytes / MIB,
        sizes.tp8_bytes_per_stream / MIB,
        sizes.rtts,
        sizes.conns,
        sizes.conn_block,
        sizes.alloc_small / MIB,
        sizes.alloc_large / MIB,
    );

    let side = |x: &PathResult| {
        serde_json::json!({
            "throughput_1_stream_bytes_per_s": x.tp1_bytes_per_s,
            "throughput_8_streams_bytes_per_s": x.tp8_bytes_per_s,
            "throughput_1_stream_min_max_bytes_per_s": [x.tp1_range.0, x.tp1_range.1],
            "throughput_8_streams_min_max_bytes_per_s": [x.tp8_range.0, x.tp8_range.1],
            "rtt_1kib_p50_us": us(x.rtt_p50_ns),
            "rtt_1kib_p99_us": us(x.rtt_p99_ns),
            "rtt_1kib_mean_us": x.rtt_mean_ns / 1e3,
            "new_connections_per_s": x.conns_per_s,
            "new_connection_p50_us": us(x.conn_p50_ns),
            "new_connection_p99_us": us(x.conn_p99_ns),
            "allocations_per_mib": x.allocs_per_mib,
            "allocated_bytes_per_mib": x.alloc_bytes_per_mib,
            "allocations_per_connection": x.allocs_per_conn,
        })
    };
    let json = serde_json::json!({
        "quick": sizes.quick,
        "allocator_keeps_freed_buffers": keep_freed,
        "sizes": {
            "throughput_1_stream_bytes": sizes.tp1_bytes,
            "throughput_8_streams_bytes_per_stream": sizes.tp8_bytes_per_stream,
            "throughput_repetitions": sizes.tp_reps,
            "rtt_samples": sizes.rtts,
            "connections": sizes.conns,
        },
        "plain": side(p),
        "hbone": side(h),
        "comparison": {
            "throughput_1_stream_ratio": tp1_ratio,
            "throughput_8_streams_ratio": tp8_ratio,
            "rtt_p50_added_us": added_p50,
            "rtt_p99_added_us": added_p99,
            "rtt_p99_ratio": p99_ratio,
            "new_connections_ratio": conn_ratio,
        },
        "targets": {
            "throughput_1_stream_ratio_min": TARGET_TP1_RATIO,
            "rtt_p50_added_us_max": TARGET_ADDED_P50_US,
            "new_connections_ratio_min": TARGET_CONN_RATIO,
            "throughput_1_stream_met": tp1_ratio >= TARGET_TP1_RATIO,
            "rtt_p50_added_met": added_p50 <= TARGET_ADDED_P50_US,
            "new_connections_met": conn_ratio >= TARGET_CONN_RATIO,
        },
    });
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let benches = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            benches.parent().unwrap_or(benches).join("target")
        });
    let file = dir.join("bench-hbone.json");
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            &file,
            serde_json::to_string_pretty(&json).expect("JSON") + "\n",
        )
    });
    match written {
        Ok(()) => println!("wrote {}", file.display()),
        Err(e) => eprintln!("could not write {}: {e}", file.display()),
    }
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
            let (results, ratios) = summary_passes(&env, &sizes);
            report(&sizes, keep_freed, &results, ratios);
        }
        let Env { rt, testbed, .. } = env;
        rt.block_on(testbed.shutdown());
        rt.shutdown_timeout(Duration::from_millis(200));
    }
    c.final_summary();
}

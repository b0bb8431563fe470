//! The summary that follows criterion's groups: interleaved plain/HBONE passes whose every
//! sample is kept (criterion keeps none, and percentiles need them), printed as a table against
//! the targets and written to `target/bench-hbone.json`.

use std::time::Duration;

use benches::CountingAlloc;

use super::{Env, MIB, PATHS, Sizes};

/// Runs the passes and reports them; `keep_freed` says which allocator setting was measured.
pub(super) fn run(env: &Env, sizes: &Sizes, keep_freed: bool) {
    let (results, ratios) = summary_passes(env, sizes);
    report(sizes, keep_freed, &results, ratios);
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

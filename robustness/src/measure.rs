//! Measurement: for each listener, how many idle connections it tolerates before the happy
//! path degrades, at the descriptor limit the processes get by default (their soft
//! `RLIMIT_NOFILE` is left as the environment sets it). Each listener gets a fresh mesh with
//! the binaries' default deadlines; each step opens that many connections at once, asks
//! the happy path while they are held, and closes them. The first step that fails (the
//! happy path, or connects themselves) ends that listener's row.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::hold::{self, Held};
use crate::mesh::{Mesh, Options, Process, ports};
use crate::probe;

/// Connections held at each step: fixed ones, then around the processes' soft limit (just
/// under it, and past it).
fn steps(soft_limit: u64) -> Vec<usize> {
    let soft = soft_limit as usize;
    let mut steps = vec![100, 200, 500, 1000, 2000, 5000, 10_000];
    steps.extend([
        soft / 2,
        soft * 3 / 4,
        soft.saturating_sub(200),
        soft + 1000,
    ]);
    steps.retain(|s| *s > 0);
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// One listener to measure: which process, which port, and what each idle connection
/// says before it goes silent (nothing, for most).
#[derive(Debug, Clone, Copy)]
struct Target {
    process: &'static str,
    port: u16,
    prefix: &'static [u8],
}

const fn silent(process: &'static str, port: u16) -> Target {
    Target {
        process,
        port,
        prefix: b"",
    }
}

/// The listeners, each on the process whose exhaustion the happy path would feel first: the
/// SOCKS5 side (node-a) for the ztunnel's listeners except 15008, node-b for the HBONE port
/// it serves the happy path on, istiod for its own. The last row is istiod's plaintext port
/// again with clients that send the first byte of the HTTP/2 preface and then nothing (its
/// handshake deadline once stopped at the first byte, so these were never dropped).
const TARGETS: [Target; 10] = [
    silent("node-a", ports::OUTBOUND),
    silent("node-a", ports::INBOUND_PLAINTEXT),
    silent("node-b", ports::HBONE),
    silent("node-a", ports::SOCKS5),
    silent("node-a", ports::READINESS),
    silent("node-a", ports::METRICS),
    silent("node-a", ports::ADMIN),
    silent("istiod", ports::XDS_PLAINTEXT),
    silent("istiod", ports::XDS_TLS),
    Target {
        process: "istiod",
        port: ports::XDS_PLAINTEXT,
        prefix: b"P",
    },
];

fn address(mesh: &Mesh, t: Target) -> SocketAddr {
    let ip = match t.process {
        "node-a" => mesh.node_a_ip(),
        "node-b" => mesh.node_b_ip(),
        _ => mesh.istiod_ip(),
    };
    SocketAddr::new(ip, t.port)
}

/// Measures every listener; the JSON report.
pub async fn run(options: &Options, runner_limit: u64) -> anyhow::Result<serde_json::Value> {
    let steps = steps(options.nofile.soft);
    let mut rows = Vec::new();
    let plan = dataplane::DescriptorPlan::for_limit(options.nofile.hard);
    println!(
        "default descriptor limit of the processes: soft {} (ulimit -n), hard {} (the binaries raise soft to hard at start); the runner's own: {}",
        options.nofile.soft, options.nofile.hard, runner_limit
    );
    println!(
        "the ztunnels' plan at that limit: reserve {}, readiness and metrics {} each, admin {}, traffic {} ({} per traffic listener)",
        plan.reserve, plan.endpoint, plan.admin, plan.traffic, plan.per_traffic_listener
    );
    println!(
        "istiod's, from the same plan: {} connections per xDS port",
        plan.traffic / 2
    );
    println!(
        "{:<8} {:<9} {:>10} {:>9} {:>8}  what failed first",
        "process", "port", "tolerated", "max held", "max fds"
    );
    for (i, target) in TARGETS.iter().enumerate() {
        let mut opts = options.clone();
        opts.dir = options.dir.join(format!("measure-{i}"));
        let mesh = Mesh::start(opts).await?;
        let row = measure_one(&mesh, *target, &steps).await;
        let tolerated = row["tolerated"].as_u64().unwrap_or(0);
        let first = row["first_failure"]
            .as_str()
            .unwrap_or("none up to the largest step");
        let port = if target.prefix.is_empty() {
            target.port.to_string()
        } else {
            format!(
                "{}+{:?}",
                target.port,
                String::from_utf8_lossy(target.prefix)
            )
        };
        println!(
            "{:<8} {:<9} {:>10} {:>9} {:>8}  {}",
            target.process,
            port,
            tolerated,
            row["max_held"].as_u64().unwrap_or(0),
            row["max_process_fds"].as_u64().unwrap_or(0),
            first
        );
        rows.push(row);
        drop(mesh);
    }
    Ok(json!({
        "soft_limit": options.nofile.soft,
        "hard_limit": options.nofile.hard,
        "runner_limit": runner_limit,
        "ztunnel_plan": {
            "reserve": plan.reserve,
            "endpoint": plan.endpoint,
            "admin": plan.admin,
            "traffic": plan.traffic,
            "per_traffic_listener": plan.per_traffic_listener,
        },
        "handshake_timeout": "the binaries' defaults (ztunnel 10s, istiod 10s)",
        "happy_path_within_ms": probe::WITHIN.as_millis() as u64,
        "steps": steps,
        "listeners": rows,
    }))
}

/// One step: `count` connections held on `to` while the happy path is asked; the step's
/// record, and why it failed if it did.
async fn trial(
    mesh: &Mesh,
    process: &Process,
    to: SocketAddr,
    target: Target,
    count: usize,
) -> (serde_json::Value, Option<String>) {
    let started = Instant::now();
    let (helpers, held) = match hold::hold(to, count, target.prefix).await {
        Ok(h) => h,
        Err(e) => {
            let why = format!("at {count}: the helpers failed: {e:#}");
            return (json!({"connections": count, "error": why}), Some(why));
        }
    };
    let opened_in = started.elapsed();
    let Held {
        opened,
        failed,
        held,
        error,
    } = held;
    let usage = process.usage();
    let happy = probe::happy_path(mesh).await;
    let alive = process.alive();
    let step = json!({
        "connections": count,
        "opened": opened,
        "failed": failed,
        "held_by_server": held,
        "opened_in_ms": opened_in.as_millis() as u64,
        "process_fds": usage.map(|u| u.fds),
        "happy_path": match &happy { Ok(d) => json!({"ok": true, "ms": d.as_millis() as u64}), Err(e) => json!({"ok": false, "error": e}) },
    });
    let _ = tokio::task::spawn_blocking(move || drop(helpers)).await;
    let failure = if let Err(why) = alive {
        Some(why)
    } else if let Err(why) = &happy {
        Some(format!("at {count}: happy path: {why}"))
    } else if failed > count / 2 {
        Some(format!(
            "at {count}: {failed} connects failed ({})",
            error.unwrap_or_default()
        ))
    } else {
        None
    };
    (step, failure)
}

/// How many more trials may narrow the gap between the last step that passed and the first
/// that failed, and the gap (a twentieth of the count, at least this) that is close enough.
const BISECTIONS: usize = 5;
const CLOSE_ENOUGH: usize = 8;

async fn measure_one(mesh: &Mesh, target: Target, steps_to_take: &[usize]) -> serde_json::Value {
    let to = address(mesh, target);
    let process = match target.process {
        "node-a" => &mesh.node_a,
        "node-b" => &mesh.node_b,
        _ => &mesh.istiod,
    };
    let baseline = process.usage();
    let mut steps = Vec::new();
    let mut tolerated = 0usize;
    let mut first_failure: Option<(usize, String)> = None;
    for &count in steps_to_take {
        let (step, failure) = trial(mesh, process, to, target, count).await;
        steps.push(step);
        settle(process, baseline).await;
        if let Some(why) = failure {
            first_failure = Some((count, why));
            break;
        }
        tolerated = count;
    }
    // Between the last step that passed and the first that failed: bisect, so that a cap
    // of 128 reads as about 128, not "100".
    if let Some((mut failed_at, _)) = first_failure.clone() {
        for _ in 0..BISECTIONS {
            if process.alive().is_err()
                || failed_at - tolerated <= (tolerated / 20).max(CLOSE_ENOUGH)
            {
                break;
            }
            let mid = tolerated + (failed_at - tolerated) / 2;
            let (step, failure) = trial(mesh, process, to, target, mid).await;
            steps.push(step);
            settle(process, baseline).await;
            match failure {
                Some(why) => {
                    failed_at = mid;
                    first_failure = Some((mid, why));
                }
                None => tolerated = mid,
            }
        }
    }
    let most = |key: &str| steps.iter().filter_map(|s| s[key].as_u64()).max();
    json!({
        "sends_first": String::from_utf8_lossy(target.prefix),
        "max_held": most("held_by_server"),
        "max_process_fds": most("process_fds"),
        "process": target.process,
        "port": target.port,
        "address": to.to_string(),
        "tolerated": tolerated,
        "first_failure": first_failure.map(|(_, why)| why),
        "baseline_fds": baseline.map(|u| u.fds),
        "steps": steps,
    })
}

/// Waits (up to 15 s) for the process's descriptors to come back after a step.
async fn settle(process: &Process, baseline: Option<crate::procfs::Usage>) {
    let Some(baseline) = baseline else { return };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match process.usage() {
            Some(u) if u.fds <= crate::verdict::fd_limit(baseline.fds) => return,
            None => return,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

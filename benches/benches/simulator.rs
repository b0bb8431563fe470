//! The simulator's speed on the 50-node, 1,000-pod scenario: simulated seconds per wall second
//! and trace events per wall second, against the target of ten simulated minutes in under a
//! minute of wall time.
//!
//! `BENCH_QUICK=1` (and `cargo test --benches`) runs `partition-and-repair` instead, a smoke
//! run of under a second. `BENCH_SIM_RUNS=N` repeats the large run N times (default 1: one run
//! is about forty seconds of wall time on two cores).

use std::time::Duration;

use sim::{Scenario, run_scenario, scenarios_dir};

/// Ten simulated minutes in under this much wall time.
const TARGET_WALL_FOR_TEN_MINUTES: Duration = Duration::from_secs(60);

fn main() {
    let testing = std::env::args().any(|a| a == "--test" || a == "--list");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1") || testing;
    let name = if quick {
        "partition-and-repair"
    } else {
        "large-cluster-churn"
    };
    let runs: usize = std::env::var("BENCH_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let scenario = match Scenario::load(&scenarios_dir().join(format!("{name}.yaml"))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simulator bench: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "simulator: {} ({} nodes), seed {}, {runs} run(s)",
        scenario.name,
        scenario.nodes.len(),
        scenario.seed
    );
    let mut speeds = Vec::new();
    for run in 1..=runs {
        let report = run_scenario(&scenario, scenario.seed);
        if !report.passed() {
            eprintln!("simulator bench: the run failed: {}", report.line());
            std::process::exit(1);
        }
        let sim_seconds = report.output.sim_time.as_secs_f64();
        let wall = report.wall.as_secs_f64();
        let wall_for_ten_minutes = Duration::from_secs_f64(wall * 600.0 / sim_seconds.max(1e-9));
        println!(
            "  run {run}: {sim_seconds:.1} s simulated in {wall:.2} s wall: {:.1} simulated s per wall s, \
             {:.0} events per wall s ({} events, {} steps); ten simulated minutes take {:.1} s \
             (target < {} s: {})",
            report.speed(),
            report.events_per_second(),
            report.output.events.len(),
            report.output.steps,
            wall_for_ten_minutes.as_secs_f64(),
            TARGET_WALL_FOR_TEN_MINUTES.as_secs(),
            if wall_for_ten_minutes < TARGET_WALL_FOR_TEN_MINUTES {
                "met"
            } else {
                "not met"
            }
        );
        speeds.push(report.speed());
    }
    speeds.sort_by(f64::total_cmp);
    println!(
        "  median: {:.1} simulated s per wall s",
        speeds[speeds.len() / 2]
    );
}

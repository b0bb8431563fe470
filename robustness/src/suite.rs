//! The suite: each attack against the running mesh, then the same four checks for all of
//! them — every process alive, the happy path within 2 s, descriptors and memory back within
//! the slack of [`crate::verdict`] — one line per attack and a summary.

use std::time::{Duration, Instant};

use crate::attacks::{self, Attack, Ctx, Findings};
use crate::mesh::{Mesh, Options};
use crate::probe;
use crate::procfs::Usage;
use crate::verdict::{self, Status};

/// How long one attack may run before it counts as hung.
const ATTACK_LIMIT: Duration = Duration::from_secs(120);

/// What the suite runs with.
pub struct Settings {
    pub mesh: Options,
    pub private_netns: bool,
    pub verbose: bool,
    /// istiod's handshake deadline (its binary has no setting for it).
    pub istiod_deadline: Duration,
}

/// The outcome of one attack, for the summary.
pub struct Outcome {
    pub name: &'static str,
    pub status: Status,
}

/// Starts (or restarts, after a process died) the mesh.
async fn fresh_mesh(settings: &Settings, generation: usize) -> anyhow::Result<Mesh> {
    let mut options = settings.mesh.clone();
    options.dir = options.dir.join(format!("mesh-{generation}"));
    Mesh::start(options).await
}

/// Runs `attacks`; false if any failed.
pub async fn run(settings: &Settings, attacks: Vec<Attack>) -> anyhow::Result<Vec<Outcome>> {
    let mut generation = 0;
    let mut mesh = fresh_mesh(settings, generation).await?;
    let mut outcomes = Vec::new();
    for attack in attacks {
        if mesh.processes().iter().any(|p| p.alive().is_err()) {
            generation += 1;
            drop(mesh);
            println!("     (a process died: the mesh is started again for the next attack)");
            mesh = fresh_mesh(settings, generation).await?;
        }
        let status = run_one(settings, &mesh, &attack).await;
        outcomes.push(Outcome {
            name: attack.name,
            status,
        });
    }
    Ok(outcomes)
}

/// Runs the attack once and asks what every attack is asked right after: alive, and the
/// happy path. The findings and the failures so far.
async fn attempt(ctx: &Ctx<'_>, attack: &Attack) -> (Findings, Vec<String>) {
    let findings = match tokio::time::timeout(ATTACK_LIMIT, (attack.run)(ctx)).await {
        Ok(Ok(findings)) => findings,
        Ok(Err(err)) => Findings {
            violations: vec![format!("the attack could not run: {err:#}")],
            ..Findings::default()
        },
        Err(_) => Findings {
            violations: vec![format!("the attack did not finish within {ATTACK_LIMIT:?}")],
            ..Findings::default()
        },
    };
    let mut failures = findings.violations.clone();
    for p in ctx.mesh.processes() {
        if let Err(why) = p.alive() {
            failures.push(format!("{why}; its log ends:\n{}", p.log_tail(8)));
        }
    }
    if let Err(why) = probe::happy_path(ctx.mesh).await {
        failures.push(format!("happy path after the attack: {why}"));
    }
    (findings, failures)
}

/// Polls the processes' usage until descriptors are back within the slack of `before` (or
/// `bound` has passed), then gives memory a little longer; the last reading.
async fn recover(mesh: &Mesh, before: &[Option<Usage>], bound: Duration) -> Vec<Option<Usage>> {
    let started = Instant::now();
    let read = || -> Vec<Option<Usage>> { mesh.processes().iter().map(|p| p.usage()).collect() };
    let fds_back = |after: &[Option<Usage>]| {
        before.iter().zip(after).all(|(b, a)| match (b, a) {
            (Some(b), Some(a)) => a.fds <= verdict::fd_limit(b.fds),
            _ => true,
        })
    };
    let all_back = |after: &[Option<Usage>]| {
        before.iter().zip(after).all(|(b, a)| match (b, a) {
            (Some(b), Some(a)) => verdict::came_back(*b, *a).is_ok(),
            _ => true,
        })
    };
    let mut after = read();
    while !fds_back(&after) && started.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = read();
    }
    let memory_until = Instant::now() + MEMORY_GRACE;
    while !all_back(&after) && Instant::now() < memory_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = read();
    }
    after
}

/// How long memory gets after descriptors are back.
const MEMORY_GRACE: Duration = Duration::from_secs(2);

async fn run_one(settings: &Settings, mesh: &Mesh, attack: &Attack) -> Status {
    let ctx = Ctx {
        mesh,
        private_netns: settings.private_netns,
        ztunnel_deadline: mesh
            .options
            .handshake_timeout
            .unwrap_or(Duration::from_secs(10)),
        istiod_deadline: settings.istiod_deadline,
        dir: mesh.options.dir.clone(),
    };
    // Descriptors come back once every listener's deadline has passed, with room to spare.
    let bound = ctx.istiod_deadline.max(ctx.ztunnel_deadline) + Duration::from_secs(5);
    let before: Vec<Option<Usage>> = mesh.processes().iter().map(|p| p.usage()).collect();
    let started = Instant::now();
    let (findings, mut failures) = attempt(&ctx, attack).await;
    let mut after = recover(mesh, &before, bound).await;
    let mut kept = Vec::new();
    let mut memory_only = Vec::new();
    for (i, p) in mesh.processes().iter().enumerate() {
        let (Some(b), Some(a)) = (before[i], after[i]) else {
            continue;
        };
        if let Err(why) = verdict::came_back(b, a) {
            if a.fds > verdict::fd_limit(b.fds) {
                failures.push(format!(
                    "{} did not come back within {bound:?}: {}",
                    p.name,
                    why.join("; ")
                ));
            } else {
                memory_only.push(i);
            }
        }
    }
    // Memory above the slack, and nothing else wrong: more runs tell a plateau (the
    // allocator keeping freed pages for reuse) from a leak (as much again every run).
    if !memory_only.is_empty() && failures.is_empty() && findings.skipped.is_none() {
        let mut readings = vec![after.clone()];
        for run in 2..=verdict::MEMORY_REPEATS + 1 {
            let (_, again) = attempt(&ctx, attack).await;
            failures.extend(again.into_iter().map(|f| format!("run {run}: {f}")));
            let last = readings.last().cloned().unwrap_or_default();
            readings.push(recover(mesh, &last, bound).await);
        }
        after = readings.last().cloned().unwrap_or_default();
        let mib = |kib: u64| kib as f64 / 1024.0;
        for i in memory_only {
            let name = mesh.processes()[i].name;
            let rss: Vec<u64> = readings
                .iter()
                .filter_map(|r| r[i].map(|u| u.rss_kib))
                .collect();
            let Some(b) = before[i] else { continue };
            let growths: Vec<i64> = std::iter::once(b.rss_kib)
                .chain(rss.iter().copied())
                .collect::<Vec<_>>()
                .windows(2)
                .map(|w| w[1] as i64 - w[0] as i64)
                .collect();
            let shown: Vec<String> = std::iter::once(b.rss_kib)
                .chain(rss.iter().copied())
                .map(|k| format!("{:.1}", mib(k)))
                .collect();
            if verdict::levelled_off(&growths) {
                kept.push(format!(
                    "{name} memory over the slack after one run but levelling off over {} runs (MiB: {}): kept by the allocator, not leaked",
                    rss.len(),
                    shown.join(" -> ")
                ));
            } else {
                failures.push(format!(
                    "{name} memory grows with every run (MiB: {})",
                    shown.join(" -> ")
                ));
            }
        }
    }
    let status = if findings.skipped.is_some() {
        Status::Skip
    } else if failures.is_empty() {
        Status::Pass
    } else {
        Status::Fail
    };
    let rows: Vec<(String, Option<Usage>, Option<Usage>)> = mesh
        .processes()
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(p, (b, a))| (p.name.to_string(), *b, *a))
        .collect();
    println!(
        "{}",
        verdict::line(&status, attack.name, started.elapsed(), &rows)
    );
    if let Some(why) = &findings.skipped {
        println!("     skipped: {why}");
    }
    for f in &failures {
        println!("     - {f}");
    }
    for k in &kept {
        println!("     ~ {k}");
    }
    if settings.verbose || status == Status::Fail {
        for n in &findings.notes {
            println!("     . {n}");
        }
    }
    status
}

/// The attacks named by `only` (all when empty); an error names an unknown one.
pub fn select(only: &[String]) -> anyhow::Result<Vec<Attack>> {
    let all = attacks::all();
    if only.is_empty() {
        return Ok(all);
    }
    for name in only {
        if !all.iter().any(|a| a.name == name) {
            anyhow::bail!("no attack named {name:?}; `--list` names them");
        }
    }
    Ok(all
        .into_iter()
        .filter(|a| only.iter().any(|n| n == a.name))
        .collect())
}

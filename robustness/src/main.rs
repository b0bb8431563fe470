//! `cargo robustness`: replays hostile input and resource attacks against the real `ztunnel`
//! and `istiod` binaries on loopback (in a private network namespace when it may make one),
//! checking after each that every process is alive, the happy path answers within 2 s, and
//! descriptors and memory come back. `cargo robustness measure` finds, per listener, the idle
//! connections it tolerates before the happy path degrades at the default descriptor limit.
//!
//! ```text
//! cargo robustness [--list] [--only NAME]... [--repeat N] [--verbose] [--keep] [--no-build]
//!                  [--host-network]
//! cargo robustness measure [--no-build] [--host-network] [--keep]
//! ```
//!
//! The binaries come from the release build next to this one (`target/release`); unless
//! `--no-build`, the runner first runs `cargo build --release -p dataplane -p control --bins`
//! itself, so that the suite and the binaries it attacks share one release build.

mod attacks;
mod canary;
mod hold;
mod limits;
mod measure;
mod mesh;
mod netns;
mod probe;
mod procfs;
mod suite;
mod verdict;
mod wire;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::verdict::Status;

const USAGE: &str = "usage: cargo robustness [--list] [--only NAME]... [--repeat N] [--verbose] [--keep] [--no-build] [--host-network]
       cargo robustness measure [--no-build] [--host-network] [--keep]";

/// The ztunnels' `HANDSHAKE_TIMEOUT` in the suite: short, so that the suite waits little for
/// slow clients to be dropped (the binary's default is 10 s; `measure` keeps it).
const SUITE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// istiod's handshake timeout: its binary has no setting for it, so the default.
const ISTIOD_DEADLINE: Duration = Duration::from_secs(10);

/// With this set to 1 (CI), what the suite would otherwise skip for want of privilege (the
/// private network namespace, and the attacks that need it) fails the run instead.
const REQUIRED: &str = "ROBUSTNESS_REQUIRED";

#[derive(Default)]
struct Args {
    measure: bool,
    list: bool,
    only: Vec<String>,
    verbose: bool,
    keep: bool,
    no_build: bool,
    host_network: bool,
    /// Runs the chosen attacks this many times over (to tell a leak from a plateau).
    repeat: usize,
}

fn parse(raw: Vec<String>) -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "measure" => args.measure = true,
            "--list" => args.list = true,
            "--only" => args.only.push(it.next().context("--only needs a name")?),
            "--verbose" | "-v" => args.verbose = true,
            "--keep" => args.keep = true,
            "--no-build" => args.no_build = true,
            "--host-network" => args.host_network = true,
            "--repeat" => {
                args.repeat = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("--repeat needs a count")?
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

/// The workspace root (this crate's parent).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where `ztunnel` and `istiod` are: `ROBUSTNESS_BIN_DIR`, else next to this binary.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ROBUSTNESS_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .context("no directory for this binary")?
        .to_path_buf())
}

/// Builds the binaries under test in the same release build as this runner.
fn build() -> anyhow::Result<()> {
    harness::build::cargo_build(&["-p", "dataplane", "-p", "control", "--bins"], "release")
        .map_err(anyhow::Error::msg)
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("robustness: {err:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("hold") && (3..=4).contains(&raw.len()) {
        hold::serve(
            &raw[1],
            &raw[2],
            raw.get(3).map(String::as_str).unwrap_or(""),
        )?;
        return Ok(true);
    }
    let args = parse(raw)?;
    if args.list {
        for attack in attacks::all() {
            println!("{:<28} {}", attack.name, attack.about);
        }
        return Ok(true);
    }
    let mut attacks = Vec::new();
    for _ in 0..args.repeat.max(1) {
        attacks.extend(suite::select(&args.only)?);
    }
    // Before anything else: the build may need the network, and the namespace has none.
    if !args.no_build {
        build()?;
    }
    let bin_dir = bin_dir()?;
    for bin in ["ztunnel", "istiod"] {
        if !bin_dir.join(bin).is_file() {
            bail!(
                "{} not found: run `cargo build --release --bins` first or set ROBUSTNESS_BIN_DIR",
                bin_dir.join(bin).display()
            );
        }
    }
    let (nofile, runner_limit) = limits::raise_own().context("raising RLIMIT_NOFILE")?;
    // Still one thread: the namespace then holds every thread and child started later.
    let required = std::env::var_os(REQUIRED).is_some_and(|v| v == "1");
    let private_netns = !args.host_network
        && match netns::enter_private() {
            Ok(()) => true,
            Err(err) if required => {
                bail!("no private network namespace ({err}) and {REQUIRED}=1: run as root")
            }
            Err(err) => {
                println!(
                    "note: no private network namespace ({err}); running on the host's loopback, \
                     attacks that need one are skipped (set {REQUIRED}=1 to fail instead)"
                );
                false
            }
        };
    let net = if private_netns {
        [127, 10, 0]
    } else {
        [127, 66, (std::process::id() % 200) as u8 + 1]
    };
    let dir = std::env::temp_dir().join(format!("robustness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = mesh::Options {
        bin_dir,
        handshake_timeout: (!args.measure).then_some(SUITE_HANDSHAKE_TIMEOUT),
        nofile,
        net,
        dir: dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ok = if args.measure {
        let report = runtime.block_on(measure::run(&options, runner_limit))?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let path = target.join("robustness-measure.json");
        std::fs::create_dir_all(&target)?;
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", path.display());
        true
    } else {
        println!(
            "robustness: {} attacks; {}; ztunnel HANDSHAKE_TIMEOUT={:?} (default 10s), istiod's {:?}; processes' descriptor limit {} (soft), runner's {}",
            attacks.len(),
            if private_netns {
                "private network namespace"
            } else {
                "host loopback"
            },
            SUITE_HANDSHAKE_TIMEOUT,
            ISTIOD_DEADLINE,
            nofile.soft,
            runner_limit
        );
        let settings = suite::Settings {
            mesh: options,
            private_netns,
            verbose: args.verbose,
            istiod_deadline: ISTIOD_DEADLINE,
        };
        let started = Instant::now();
        let outcomes = runtime.block_on(suite::run(&settings, attacks))?;
        let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
        let names = |keep: &dyn Fn(&Status) -> bool| -> Vec<&str> {
            outcomes
                .iter()
                .filter(|o| keep(&o.status))
                .map(|o| o.name)
                .collect()
        };
        let failed = names(&|s| *s == Status::Fail);
        let required_skips = if required {
            names(&|s| *s == Status::Skip)
        } else {
            Vec::new()
        };
        println!(
            "\nrobustness: {} passed, {} failed, {} skipped in {:.0}s",
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skip),
            started.elapsed().as_secs_f64()
        );
        if !failed.is_empty() {
            println!("failed: {}", failed.join(", "));
        }
        if !required_skips.is_empty() {
            println!(
                "skipped although {REQUIRED}=1: {}",
                required_skips.join(", ")
            );
        }
        failed.is_empty() && required_skips.is_empty()
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    if ok && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("logs and state kept in {}", dir.display());
    }
    Ok(ok)
}

//! `cargo e2e`: the simulator's scenarios on the real kernel (see the crate docs).
//!
//! ```text
//! cargo e2e [--no-dataplane] [--no-build] [--keep] [--long]     every sim/scenarios/*.yaml
//! cargo e2e run FILE... [--no-dataplane] [--no-build] [--keep] [--long]
//! ```
//!
//! One line per scenario (`PASS name duration=… requests=…`, `FAIL name: why`, `SKIP name:
//! why`) and a summary; the exit status is 1 if any failed. Progress and the processes' logs of
//! a failure go to stderr. Without root this prints `SKIP e2e: why` and exits 0, unless
//! `E2E_REQUIRED=1`. Unless `--no-build`, it first builds istiod and the data plane's binaries
//! in its own profile, so they match the source. Ctrl-C removes everything it made and exits
//! 130.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use e2e::processes::Binaries;
use e2e::runner::NOT_CHECKED;
use e2e::{Options, Verdict};

const USAGE: &str = "usage: cargo e2e [--no-dataplane] [--no-build] [--keep] [--long]
       cargo e2e run FILE... [--no-dataplane] [--no-build] [--keep] [--long]

  --no-dataplane  start no node agent or ztunnel: only scenarios where no pod is enrolled run
  --no-build      use the binaries already built beside this one (or in E2E_BIN_DIR)
  --keep          keep each run directory (config, logs, nft rules) and say where
  --long          also run scenarios longer than 3 minutes of wall time (root-rotation: 15)
  --upstream-ztunnel  run upstream's ztunnel (../shared/bin) on every node, driven by our node agent
Environment: E2E_REQUIRED=1 fails instead of skipping without root; E2E_BIN_DIR.";

/// With this set to 1 (CI), a machine that cannot run the cluster fails the run.
const REQUIRED: &str = "E2E_REQUIRED";

#[derive(Default)]
struct Args {
    files: Vec<PathBuf>,
    no_dataplane: bool,
    no_build: bool,
    keep: bool,
    long: bool,
    upstream: bool,
}

fn parse(raw: Vec<String>) -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut run = false;
    for (i, arg) in raw.into_iter().enumerate() {
        match arg.as_str() {
            "run" if i == 0 => run = true,
            "--no-dataplane" => args.no_dataplane = true,
            "--no-build" => args.no_build = true,
            "--keep" => args.keep = true,
            "--long" => args.long = true,
            "--upstream-ztunnel" => args.upstream = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            flag if flag.starts_with('-') => bail!("unknown flag {flag:?}\n{USAGE}"),
            file if run => args.files.push(PathBuf::from(file)),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if run && args.files.is_empty() {
        bail!("run needs scenario files\n{USAGE}");
    }
    Ok(args)
}

/// Builds istiod and the data plane in this binary's profile, so the cluster runs the current
/// source.
fn build(bin_dir: &Path) -> anyhow::Result<()> {
    let profile = bin_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    e2e::processes::build(profile).map_err(anyhow::Error::msg)
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("e2e: {err:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = parse(std::env::args().skip(1).collect())?;
    let required = std::env::var_os(REQUIRED).is_some_and(|v| v == "1");
    if let Err(why) = harness::netns::check().and_then(|()| tools()) {
        println!("SKIP e2e: {why}");
        return Ok(!required);
    }
    // Before the first namespace or child: Ctrl-C must leave nothing behind.
    harness::exit_on_signals(130).context("installing the SIGINT/SIGTERM handler")?;
    let files = if args.files.is_empty() {
        sim::scenario::files_in(&sim::scenarios_dir()).context("listing sim/scenarios")?
    } else {
        args.files.clone()
    };
    let binaries = Binaries::beside_current_exe()?;
    if !args.no_build && std::env::var_os("E2E_BIN_DIR").is_none() {
        build(&binaries.dir)?;
    }
    let options = Options {
        dataplane: !args.no_dataplane,
        keep: args.keep,
        max_wall: (!args.long).then_some(e2e::cluster::DEFAULT_MAX_WALL),
        upstream_ztunnel: if args.upstream {
            Some(harness::components::find(
                harness::components::Component::UpstreamZtunnel,
            )?)
        } else {
            None
        },
        ..Options::new(binaries)
    };
    eprintln!("not checked on a kernel (listed once):");
    for (invariant, why) in NOT_CHECKED {
        eprintln!("  {invariant}: {why}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let mut verdicts: Vec<Verdict> = Vec::new();
    for file in &files {
        let verdict = match sim::Scenario::load(file) {
            Err(e) => Verdict::Fail {
                name: file.display().to_string(),
                reason: e.to_string(),
            },
            Ok(scenario) => local.block_on(&runtime, e2e::run_scenario(&scenario, &options)),
        };
        println!("{}", verdict.line());
        verdicts.push(verdict);
    }
    let failed = verdicts.iter().filter(|v| v.failed()).count();
    let skipped = verdicts.iter().filter(|v| v.skipped()).count();
    let passed = verdicts.len() - failed - skipped;
    println!("e2e: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(failed == 0)
}

/// `nft` and `sysctl` are there (`ip` is checked by the harness).
fn tools() -> Result<(), String> {
    for (tool, arg, package) in [("nft", "--version", "nftables"), ("sysctl", "-V", "procps")] {
        match Command::new(tool).arg(arg).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Err(format!("`{tool} {arg}` exited with {}", out.status)),
            Err(e) => {
                return Err(format!(
                    "`{tool}` not found ({e}): apt-get install -y {package}"
                ));
            }
        }
    }
    Ok(())
}

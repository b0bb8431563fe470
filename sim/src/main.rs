//! `cargo sim`: runs scenarios and prints one line per run, a summary, and the command that
//! replays each failure. Exits non-zero when any run failed.
//!
//! When there is more than one run, each runs in a process of its own (this binary again, with
//! `--one-of-many`), several at a time. A run then starts from the same state as its replay
//! does: tokio numbers tasks process-wide, and the order in which a crashed host's tasks are
//! torn down (so which peer learns of the crash first) follows those numbers, so a run in a
//! process that has already run others can differ from `cargo sim run <file> --seed <n>`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use sim::{Report, Scenario, run_scenario};

const USAGE: &str = "\
usage:
  sim                                   run every scenario in sim/scenarios/ with its own seed
  sim run [SCENARIO...] [--seed N | --seeds A..B | --seeds A..=B]
          [--trace OUT.jsonl] [--timeline OUT.html] [--print-trace] [--jobs N]
                                        SCENARIO: a name (sim/scenarios/NAME.yaml or
                                        must-fail/NAME.yaml), a file or a directory;
                                        several runs go N at a time (default: one per
                                        core), each in its own process
  sim list                              list the scenarios
";

#[derive(Debug)]
struct Options {
    files: Vec<PathBuf>,
    seeds: Option<Range<u64>>,
    trace: Option<PathBuf>,
    timeline: Option<PathBuf>,
    print_trace: bool,
    /// How many runs at a time, when there are several.
    jobs: usize,
    /// This process is one run of several a parent started: name output files per run and
    /// end with a [`TALLY`] line.
    one_of_many: bool,
}

impl Options {
    fn new(files: Vec<PathBuf>) -> Self {
        Options {
            files,
            seeds: None,
            trace: None,
            timeline: None,
            print_trace: false,
            jobs: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            one_of_many: false,
        }
    }
}

/// The last line a run started by a parent prints: `<TALLY> <passed 0|1> <simulated seconds>
/// <events>`.
const TALLY: &str = "sim-run-tally";

enum Command {
    Run(Options),
    List,
    Help,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("{s:?} is not a seed"))
}

/// `A..B` (B excluded) or `A..=B` (B included).
fn parse_seeds(s: &str) -> Result<Range<u64>, String> {
    let range = if let Some((a, b)) = s.split_once("..=") {
        let end = parse_u64(b)?
            .checked_add(1)
            .ok_or_else(|| format!("{s:?}: range too large"))?;
        parse_u64(a)?..end
    } else if let Some((a, b)) = s.split_once("..") {
        parse_u64(a)?..parse_u64(b)?
    } else {
        return Err(format!("{s:?} is not a seed range like 1..100 or 1..=100"));
    };
    if range.is_empty() {
        return Err(format!("seed range {s:?} is empty"));
    }
    Ok(range)
}

/// A name, file or directory on the command line, as scenario files.
fn resolve(arg: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(arg);
    if path.is_dir() {
        return sim::scenario::files_in(path).map_err(|e| format!("{arg}: {e}"));
    }
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    for dir in [sim::scenarios_dir(), sim::must_fail_dir()] {
        let candidate = dir.join(format!("{arg}.yaml"));
        if candidate.is_file() {
            return Ok(vec![candidate]);
        }
    }
    Err(format!(
        "no scenario {arg:?} (not a file, a directory or a name in sim/scenarios)"
    ))
}

fn parse(args: &[String]) -> Result<Command, String> {
    let default = || -> Result<Vec<PathBuf>, String> {
        sim::scenario::files_in(&sim::scenarios_dir()).map_err(|e| e.to_string())
    };
    let Some((first, rest)) = args.split_first() else {
        return Ok(Command::Run(Options::new(default()?)));
    };
    match first.as_str() {
        "list" if rest.is_empty() => return Ok(Command::List),
        "help" | "-h" | "--help" => return Ok(Command::Help),
        "run" => {}
        other => return Err(format!("unknown command {other:?}")),
    }
    let mut options = Options::new(Vec::new());
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "--seed" => {
                let seed = parse_u64(&value("--seed")?)?;
                options.seeds = Some(seed..seed.saturating_add(1));
            }
            "--seeds" => options.seeds = Some(parse_seeds(&value("--seeds")?)?),
            "--trace" => options.trace = Some(value("--trace")?.into()),
            "--timeline" => options.timeline = Some(value("--timeline")?.into()),
            "--print-trace" => options.print_trace = true,
            "--jobs" => {
                let jobs = value("--jobs")?;
                options.jobs = jobs
                    .parse::<NonZeroUsize>()
                    .map_err(|_| format!("--jobs {jobs:?}: not a number of runs above 0"))?
                    .get();
            }
            "--one-of-many" => options.one_of_many = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            name => options.files.extend(resolve(name)?),
        }
    }
    if options.files.is_empty() {
        options.files = default()?;
    }
    Ok(Command::Run(options))
}

fn write_outputs(report: &Report, options: &Options, many: bool) -> Result<(), String> {
    let path = |p: &Path| -> PathBuf {
        if !many {
            return p.to_path_buf();
        }
        // One file per run: OUT-<scenario>-<seed>.ext.
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = p
            .extension()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        p.with_file_name(format!("{stem}-{}-{}.{ext}", report.scenario, report.seed))
    };
    if let Some(p) = &options.trace {
        let p = path(p);
        std::fs::write(&p, sim::jsonl(report)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &options.timeline {
        let p = path(p);
        std::fs::write(&p, sim::html::timeline(report))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn print_report(report: &Report, print_trace: bool) {
    println!("{}", report.line());
    if print_trace {
        for event in &report.output.events {
            println!("    {event}");
        }
        println!("    wire between nodes: {}", report.output.wire.summary());
    }
    if let Some(v) = &report.output.violation
        && (!report.passed() || print_trace)
    {
        println!("    last events before the violation:");
        for e in &v.before {
            println!("      {e}");
        }
    }
    if !report.passed() {
        println!("    replay: {}", report.replay_command());
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::List) => {
            for dir in [sim::scenarios_dir(), sim::must_fail_dir()] {
                match sim::load_dir(&dir) {
                    Ok(list) => {
                        for s in list {
                            let tag = s
                                .must_fail
                                .as_deref()
                                .map(|m| format!(" [must fail: {m}]"))
                                .unwrap_or_default();
                            println!("{:<32} seed={:<4} {}{tag}", s.name, s.seed, s.about);
                        }
                    }
                    Err(e) => {
                        eprintln!("sim: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sim: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut scenarios = Vec::new();
    for file in &options.files {
        match Scenario::load(file) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprintln!("sim: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let runs: Vec<Run> = scenarios
        .iter()
        .zip(&options.files)
        .flat_map(|(scenario, file)| {
            let seeds = options
                .seeds
                .clone()
                .unwrap_or(scenario.seed..scenario.seed + 1);
            seeds.map(move |seed| Run {
                file: file.clone(),
                scenario,
                seed,
            })
        })
        .collect();
    if let [run] = runs.as_slice() {
        return run_here(run, &options);
    }
    let progress = options.seeds.as_ref().is_some_and(|r| r.end - r.start > 1);
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut sim_seconds = 0.0;
    let mut events = 0usize;
    let total = runs.len();
    in_processes(&runs, &options, |done, run, finished| {
        sim_seconds += finished.sim_seconds;
        events += finished.events;
        if finished.passed {
            passed += 1;
        } else {
            failed += 1;
        }
        if progress && finished.passed && !options.print_trace {
            // Sweeps print failures in full and passes as progress only.
            let line = format!(
                "[{done}/{total}] {} seed={} ok ({failed} failed so far)",
                run.scenario.name, run.seed
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else if done % 20 == 0 || done == total {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
        } else {
            if progress && tty {
                eprint!("\r\x1b[K");
            }
            print!("{}", finished.printed);
            let _ = std::io::stdout().flush();
        }
    });
    if progress && tty {
        eprintln!();
    }
    print_summary(passed, failed, total, sim_seconds, events, started);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One run: a scenario under one seed.
struct Run<'a> {
    file: PathBuf,
    scenario: &'a Scenario,
    seed: u64,
}

/// What a run in its own process ended with.
struct Finished {
    /// What it printed, less the tally.
    printed: String,
    passed: bool,
    sim_seconds: f64,
    events: usize,
}

/// Runs `run` in this process: the only run, or one of many a parent started.
fn run_here(run: &Run<'_>, options: &Options) -> ExitCode {
    let started = Instant::now();
    let report = run_scenario(run.scenario, run.seed);
    if let Err(e) = write_outputs(&report, options, options.one_of_many) {
        eprintln!("sim: {e}");
        return ExitCode::from(2);
    }
    print_report(&report, options.print_trace);
    let sim_seconds = report.output.sim_time.as_secs_f64();
    let events = report.output.events.len();
    if options.one_of_many {
        println!(
            "{TALLY} {} {sim_seconds} {events}",
            u8::from(report.passed())
        );
    } else {
        let (passed, failed) = if report.passed() { (1, 0) } else { (0, 1) };
        print_summary(passed, failed, 1, sim_seconds, events, started);
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs each of `runs` in a process of its own, `options.jobs` at a time, and hands each
/// result to `done` in the order of `runs` (with how many have been handed over so far).
fn in_processes(
    runs: &[Run<'_>],
    options: &Options,
    mut done: impl FnMut(usize, &Run<'_>, Finished),
) {
    let next = AtomicUsize::new(0);
    let (results, finished) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.min(runs.len()) {
            let results = results.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(run) = runs.get(i) else { break };
                    if results.send((i, in_a_process(run, options))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(results);
        // Results arrive in any order; they are printed in the order of the runs.
        let mut waiting = BTreeMap::new();
        let mut handed = 0;
        for (i, result) in finished {
            waiting.insert(i, result);
            while let Some(result) = waiting.remove(&handed) {
                done(handed + 1, &runs[handed], result);
                handed += 1;
            }
        }
    });
}

/// Runs `run` as `sim run <file> --seed <n> --one-of-many` and reads its result.
fn in_a_process(run: &Run<'_>, options: &Options) -> Finished {
    let failed = |why: String| Finished {
        printed: format!(
            "FAIL {} seed={}: {why}\n    replay: cargo sim run {} --seed {}\n",
            run.scenario.name,
            run.seed,
            run.file.display(),
            run.seed
        ),
        passed: false,
        sim_seconds: 0.0,
        events: 0,
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return failed(format!("cannot find the sim binary: {e}")),
    };
    let mut command = std::process::Command::new(exe);
    command
        .arg("run")
        .arg(&run.file)
        .args(["--seed", &run.seed.to_string(), "--one-of-many"])
        .stdin(std::process::Stdio::null());
    if let Some(trace) = &options.trace {
        command.arg("--trace").arg(trace);
    }
    if let Some(timeline) = &options.timeline {
        command.arg("--timeline").arg(timeline);
    }
    if options.print_trace {
        command.arg("--print-trace");
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(e) => return failed(format!("cannot start the run's process: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let Some((printed, tally)) = stdout
        .trim_end()
        .rsplit_once('\n')
        .filter(|(_, last)| last.starts_with(TALLY))
    else {
        return failed(format!(
            "the run's process ended ({}) without a result{}",
            output.status,
            stderr
                .lines()
                .last()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ));
    };
    let fields: Vec<&str> = tally.split_whitespace().skip(1).collect();
    match fields.as_slice() {
        [passed, sim_seconds, events] => Finished {
            printed: format!("{printed}\n"),
            passed: *passed == "1",
            sim_seconds: sim_seconds.parse().unwrap_or(0.0),
            events: events.parse().unwrap_or(0),
        },
        _ => failed(format!("unreadable result {tally:?}")),
    }
}

fn print_summary(
    passed: u64,
    failed: u64,
    runs: usize,
    sim_seconds: f64,
    events: usize,
    started: Instant,
) {
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{passed} passed, {failed} failed; {runs} runs, {sim_seconds:.0} simulated seconds in {wall:.1}s wall ({:.0}x), {events} events ({:.0}/s)",
        sim_seconds / wall.max(1e-6),
        events as f64 / wall.max(1e-6)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn seeds_names_and_outputs() {
        let Ok(Command::Run(o)) = parse(&args("run basic-mtls --seeds 5..=7 --trace t.jsonl"))
        else {
            panic!("expected a run");
        };
        assert_eq!(o.files.len(), 1);
        assert_eq!(o.seeds, Some(5..8));
        assert_eq!(o.trace, Some(PathBuf::from("t.jsonl")));
        assert!(parse(&args("run --seeds 3..3")).is_err());
        assert!(parse(&args("run --seed x")).is_err());
        assert!(parse(&args("run nope")).is_err());
        assert!(parse(&args("run --seed")).is_err());
        assert!(parse(&args("frobnicate")).is_err());
        assert!(parse(&args("run --jobs 0")).is_err());
        let Ok(Command::Run(o)) = parse(&args("run --jobs 3")) else {
            panic!("expected a run");
        };
        assert_eq!(o.jobs, 3);
        assert!(!o.one_of_many);
    }
}

//! `cargo sim`: runs scenarios and prints one line per run, a summary, and the command that
//! replays each failure. Exits non-zero when any run failed.

use std::io::{IsTerminal, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use sim::{Report, Scenario, run_scenario};

const USAGE: &str = "\
usage:
  sim                                   run every scenario in sim/scenarios/ with its own seed
  sim run [SCENARIO...] [--seed N | --seeds A..B | --seeds A..=B]
          [--trace OUT.jsonl] [--timeline OUT.html] [--print-trace]
                                        SCENARIO: a name (sim/scenarios/NAME.yaml or
                                        must-fail/NAME.yaml), a file or a directory
  sim list                              list the scenarios
";

#[derive(Debug)]
struct Options {
    files: Vec<PathBuf>,
    seeds: Option<Range<u64>>,
    trace: Option<PathBuf>,
    timeline: Option<PathBuf>,
    print_trace: bool,
}

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
        return Ok(Command::Run(Options {
            files: default()?,
            seeds: None,
            trace: None,
            timeline: None,
            print_trace: false,
        }));
    };
    match first.as_str() {
        "list" if rest.is_empty() => return Ok(Command::List),
        "help" | "-h" | "--help" => return Ok(Command::Help),
        "run" => {}
        other => return Err(format!("unknown command {other:?}")),
    }
    let mut options = Options {
        files: Vec::new(),
        seeds: None,
        trace: None,
        timeline: None,
        print_trace: false,
    };
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
    let runs: u64 = scenarios
        .iter()
        .map(|_| options.seeds.as_ref().map_or(1, |r| r.end - r.start))
        .sum();
    let progress = runs > 1 && options.seeds.as_ref().is_some_and(|r| r.end - r.start > 1);
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let (mut passed, mut failed, mut done) = (0u64, 0u64, 0u64);
    let mut sim_seconds = 0.0;
    let mut events = 0usize;
    for scenario in &scenarios {
        let seeds = options
            .seeds
            .clone()
            .unwrap_or(scenario.seed..scenario.seed + 1);
        for seed in seeds {
            let report = run_scenario(scenario, seed);
            done += 1;
            sim_seconds += report.output.sim_time.as_secs_f64();
            events += report.output.events.len();
            if let Err(e) = write_outputs(&report, &options, runs > 1) {
                eprintln!("sim: {e}");
                return ExitCode::from(2);
            }
            if report.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
            if progress && report.passed() && !options.print_trace {
                // Sweeps print failures in full and passes as progress only.
                let line = format!(
                    "[{done}/{runs}] {} seed={seed} ok ({failed} failed so far)",
                    scenario.name
                );
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else if done % 20 == 0 || done == runs {
                    eprintln!("{line}");
                }
                let _ = std::io::stderr().flush();
            } else {
                if progress && tty {
                    eprint!("\r\x1b[K");
                }
                print_report(&report, options.print_trace);
            }
        }
    }
    if progress && tty {
        eprintln!();
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{passed} passed, {failed} failed; {runs} runs, {sim_seconds:.0} simulated seconds in {wall:.1}s wall ({:.0}x), {events} events ({:.0}/s)",
        sim_seconds / wall.max(1e-6),
        events as f64 / wall.max(1e-6)
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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
    }
}

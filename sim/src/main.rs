//! `cargo sim`: runs the built-in scenarios and prints one line per run, a summary, and the
//! command that replays each failure. Exits non-zero when any run failed.

use std::ops::Range;
use std::process::ExitCode;

use sim::{Report, SCENARIOS, Scenario, run_scenario};

const USAGE: &str = "\
usage:
  sim                              run every scenario with its default seed
  sim run [NAME...] [--seed N | --seeds A..B | --seeds A..=B] [--print-trace]
                                   run the named scenarios (default: all) with other seeds
  sim list                         list the scenarios
";

/// What the command line asked for.
enum Command {
    Run {
        scenarios: Vec<&'static Scenario>,
        /// `None`: each scenario's default seed.
        seeds: Option<Range<u64>>,
        print_trace: bool,
    },
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

fn parse(args: &[String]) -> Result<Command, String> {
    let Some((first, rest)) = args.split_first() else {
        return Ok(Command::Run {
            scenarios: SCENARIOS.iter().collect(),
            seeds: None,
            print_trace: false,
        });
    };
    match first.as_str() {
        "list" if rest.is_empty() => return Ok(Command::List),
        "help" | "-h" | "--help" => return Ok(Command::Help),
        "run" => {}
        other => return Err(format!("unknown command {other:?}")),
    }
    let mut scenarios = Vec::new();
    let mut seeds = None;
    let mut print_trace = false;
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
                seeds = Some(seed..seed.saturating_add(1));
            }
            "--seeds" => seeds = Some(parse_seeds(&value("--seeds")?)?),
            "--print-trace" => print_trace = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            name => match sim::scenarios::find(name) {
                Some(s) => scenarios.push(s),
                None => {
                    let known: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
                    return Err(format!(
                        "no scenario named {name:?} (known: {})",
                        known.join(", ")
                    ));
                }
            },
        }
    }
    if scenarios.is_empty() {
        scenarios = SCENARIOS.iter().collect();
    }
    Ok(Command::Run {
        scenarios,
        seeds,
        print_trace,
    })
}

fn print_report(report: &Report, print_trace: bool) {
    println!("{}", report.line());
    if print_trace {
        for event in &report.events {
            println!("    {event}");
        }
        println!("    wire node-a <-> node-b: {}", report.wire.summary());
    }
    if !report.passed() {
        println!("    replay: {}", report.replay_command());
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("sim: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (scenarios, seeds, print_trace) = match command {
        Command::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::List => {
            for s in &SCENARIOS {
                println!("{:<30} seed={:<4} {}", s.name, s.default_seed, s.about);
            }
            return ExitCode::SUCCESS;
        }
        Command::Run {
            scenarios,
            seeds,
            print_trace,
        } => (scenarios, seeds, print_trace),
    };

    let (mut passed, mut failed) = (0usize, 0usize);
    for scenario in scenarios {
        let seeds = seeds
            .clone()
            .unwrap_or(scenario.default_seed..scenario.default_seed + 1);
        for seed in seeds {
            let report = run_scenario(scenario, seed);
            print_report(&report, print_trace);
            if report.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
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
    fn no_arguments_runs_everything_with_default_seeds() {
        let Ok(Command::Run {
            scenarios,
            seeds,
            print_trace,
        }) = parse(&[])
        else {
            panic!("expected a run");
        };
        assert_eq!(scenarios.len(), SCENARIOS.len());
        assert_eq!(seeds, None);
        assert!(!print_trace);
    }

    #[test]
    fn seeds_and_names() {
        let Ok(Command::Run {
            scenarios, seeds, ..
        }) = parse(&args("run basic-mtls --seeds 5..=7"))
        else {
            panic!("expected a run");
        };
        assert_eq!(scenarios.len(), 1);
        assert_eq!(seeds, Some(5..8));
        assert!(matches!(
            parse(&args("run --seed 9")),
            Ok(Command::Run { seeds: Some(r), .. }) if r == (9..10)
        ));
        assert!(parse(&args("run --seeds 3..3")).is_err());
        assert!(parse(&args("run --seed x")).is_err());
        assert!(parse(&args("run nope")).is_err());
        assert!(parse(&args("run --seed")).is_err());
        assert!(parse(&args("frobnicate")).is_err());
    }
}

//! `cargo conformance [--target sim|local] [--suite gateway-api|policy|all] [--case ID]
//! [--seed N] [--report FILE] [--keep]` (`--keep`: the local target's run directories stay): runs the suites, prints a line per case (and a policy case's failing
//! attempts under it), the cases by verdict and the summary line `N cases, M attempts: P
//! passed, F failed`, writes the Gateway API ConformanceReport (gateway-api cases only), and
//! exits non-zero on any failure.

use std::process::ExitCode;

use anyhow::{Context, bail};
use conformance::{DEFAULT_SEED, Summary, case, report, run_suite, targets};

struct Args {
    target: String,
    suite: String,
    case: Option<String>,
    seed: u64,
    report: Option<String>,
    keep: bool,
}

const USAGE: &str = "usage: cargo conformance [--target sim|local] [--suite gateway-api|policy|all] [--case ID] [--seed N] [--report FILE] [--keep]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        target: "sim".into(),
        suite: "all".into(),
        case: None,
        seed: DEFAULT_SEED,
        report: None,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--target" => args.target = value()?,
            "--suite" => args.suite = value()?,
            "--case" => args.case = Some(value()?),
            "--seed" => args.seed = value()?.parse().context("--seed takes a number")?,
            "--report" => args.report = Some(value()?),
            "--keep" => args.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = parse_args()?;
    let target = targets::by_name(&args.target, args.seed, args.keep)?;
    let suites = match args.suite.as_str() {
        "all" => case::suites(),
        one => vec![one.to_string()],
    };
    let mut results = Vec::new();
    for suite in &suites {
        let dir = case::suite_dir(suite);
        if !dir.is_dir() {
            bail!("no suite {suite:?} (looked in {})", dir.display());
        }
        results.extend(run_suite(
            &dir,
            target.as_ref(),
            args.case.as_deref(),
            |r| println!("{r}"),
        )?);
    }
    if let Some(id) = &args.case
        && results.is_empty()
    {
        bail!("no case {id:?} in {}", suites.join(", "));
    }
    let summary = Summary::of(&results);
    println!("cases: {}", summary.cases_line());
    println!("{summary}");
    if let Some(file) = &args.report {
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or_default();
        let date = report::date_from_unix_days(i64::try_from(days).unwrap_or_default());
        let yaml = report::to_yaml(&report::conformance_report(&results, &date))?;
        std::fs::write(file, yaml).with_context(|| format!("writing {file}"))?;
        println!("report written to {file}");
    }
    Ok(summary.failed == 0)
}

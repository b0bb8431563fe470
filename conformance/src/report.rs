//! The Gateway API `ConformanceReport` (apiVersion `gateway.networking.k8s.io/v1`), with
//! upstream's field names, so a run can be compared with (and submitted like) upstream
//! reports. Results are counted into profiles exactly as gateway-api-semantics §2 says: a
//! case counts in its profile only if all its features belong to it, as core when they are
//! all core features. Only MESH-HTTP is reported: the GATEWAY-HTTP cases run the gateway
//! tests' data-plane semantics on a waypoint, without a Gateway listener, so they prove
//! behaviour but not that profile.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::profiles::{Level, Profile};
use crate::runner::{CaseResult, Verdict};

/// The Gateway API release the suite follows.
pub const GATEWAY_API_VERSION: &str = "v1.6.1";

/// Who made the implementation under test.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Implementation {
    pub organization: String,
    pub project: String,
    pub url: String,
    pub version: String,
    pub contact: Vec<String>,
}

impl Default for Implementation {
    fn default() -> Self {
        Implementation {
            organization: "ambient-testbed".into(),
            project: "ambient-testbed".into(),
            url: "https://github.com/ambient-testbed/ambient-testbed".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contact: vec!["@ambient-testbed/maintainers".into()],
        }
    }
}

/// Passed, failed and skipped tests (upstream spells the keys capitalised).
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct Statistics {
    #[serde(rename = "Passed")]
    pub passed: u32,
    #[serde(rename = "Failed")]
    pub failed: u32,
    #[serde(rename = "Skipped")]
    pub skipped: u32,
}

/// One support level's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `success`, `partial` (something skipped, nothing failed) or `failure`.
    pub result: String,
    pub statistics: Statistics,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_tests: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_tests: Vec<String>,
}

/// The extended level, with the features declared supported and not.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExtendedStatus {
    #[serde(flatten)]
    pub status: Status,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supported_features: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported_features: Vec<String>,
}

/// One profile's report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProfileReport {
    pub name: String,
    pub summary: String,
    pub core: Status,
    pub extended: ExtendedStatus,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConformanceReport {
    pub api_version: String,
    pub kind: String,
    pub implementation: Implementation,
    pub date: String,
    #[serde(rename = "gatewayAPIVersion")]
    pub gateway_api_version: String,
    #[serde(rename = "gatewayAPIChannel")]
    pub gateway_api_channel: String,
    pub mode: String,
    pub profiles: Vec<ProfileReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub succeeded_provisional_tests: Vec<String>,
}

fn status(results: &[&CaseResult]) -> Status {
    let mut s = Status {
        result: String::new(),
        statistics: Statistics::default(),
        skipped_tests: Vec::new(),
        failed_tests: Vec::new(),
    };
    for r in results {
        match r.verdict {
            Verdict::Pass => s.statistics.passed += 1,
            Verdict::Fail(_) => {
                s.statistics.failed += 1;
                s.failed_tests.push(r.test.clone());
            }
            Verdict::Skip(_) => {
                s.statistics.skipped += 1;
                s.skipped_tests.push(r.test.clone());
            }
        }
    }
    s.skipped_tests.sort();
    s.failed_tests.sort();
    s.result = if s.statistics.failed > 0 {
        "failure"
    } else if s.statistics.skipped > 0 {
        "partial"
    } else {
        "success"
    }
    .into();
    s
}

/// The report of `profile` over `results` (cases of other profiles are left out).
pub fn profile_report(profile: Profile, results: &[CaseResult]) -> ProfileReport {
    let counted: Vec<(&CaseResult, Level)> = results
        .iter()
        .filter(|r| r.profile == Some(profile))
        .filter_map(|r| profile.level_of(&r.features).map(|level| (r, level)))
        .collect();
    let at = |level: Level| -> Vec<&CaseResult> {
        counted
            .iter()
            .filter(|(_, l)| *l == level)
            .map(|(r, _)| *r)
            .collect()
    };
    let core = status(&at(Level::Core));
    let extended = status(&at(Level::Extended));
    // An extended feature is supported when some case needing it was run (not skipped).
    let exercised: BTreeSet<&str> = results
        .iter()
        .filter(|r| r.profile == Some(profile) && !matches!(r.verdict, Verdict::Skip(_)))
        .flat_map(|r| r.features.iter().map(String::as_str))
        .collect();
    let (supported, unsupported): (Vec<&str>, Vec<&str>) = profile
        .extended()
        .iter()
        .partition(|f| exercised.contains(**f));
    let sorted = |list: Vec<&str>| {
        let mut v: Vec<String> = list.into_iter().map(str::to_string).collect();
        v.sort();
        v
    };
    let summary = format!(
        "Core tests {} ({} passed, {} failed, {} skipped). Extended tests {} ({} passed, {} failed, {} skipped).",
        core.result,
        core.statistics.passed,
        core.statistics.failed,
        core.statistics.skipped,
        extended.result,
        extended.statistics.passed,
        extended.statistics.failed,
        extended.statistics.skipped
    );
    ProfileReport {
        name: profile.name().into(),
        summary,
        core,
        extended: ExtendedStatus {
            status: extended,
            supported_features: sorted(supported),
            unsupported_features: sorted(unsupported),
        },
    }
}

/// The report for `results`, dated `date` (`YYYY-MM-DD`, or any text the caller chooses).
pub fn conformance_report(results: &[CaseResult], date: &str) -> ConformanceReport {
    let mut provisional: Vec<String> = results
        .iter()
        // Only cases of a reported profile: GATEWAY-HTTP ones run without a Gateway.
        .filter(|r| {
            r.profile == Some(Profile::MeshHttp) && r.provisional && r.verdict == Verdict::Pass
        })
        .map(|r| r.test.clone())
        .collect();
    provisional.sort();
    provisional.dedup();
    ConformanceReport {
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "ConformanceReport".into(),
        implementation: Implementation::default(),
        date: date.into(),
        gateway_api_version: GATEWAY_API_VERSION.into(),
        gateway_api_channel: "standard".into(),
        mode: "default".into(),
        profiles: vec![profile_report(Profile::MeshHttp, results)],
        succeeded_provisional_tests: provisional,
    }
}

/// The report as YAML.
pub fn to_yaml(report: &ConformanceReport) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(report)
}

/// Today's date (UTC) as `YYYY-MM-DD`, from days since the Unix epoch (civil calendar).
pub fn date_from_unix_days(days: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(date_from_unix_days(0), "1970-01-01");
        assert_eq!(date_from_unix_days(20_454), "2026-01-01");
    }
}

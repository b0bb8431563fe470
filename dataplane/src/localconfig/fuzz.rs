//! Fuzz targets for the local-config YAML (`LOCAL_XDS_PATH` / `LOCAL_XDS`): the reference
//! example with its structure mutated (values retyped, removed, repeated, replaced with
//! hostile text and numbers) and its text edited (syntax broken, cut short), plus nesting
//! far deeper than any real file. A hand-written file must load or be refused with a message
//! naming where, in bounded time, never panic the ztunnel at start-up; and what loads must
//! keep its documented promises (unique uids, service and policy keys) and apply to a state.

use proptest::prelude::*;

use super::tests::EXAMPLE;
use super::*;
use crate::fuzzing::{bounded, config, edit_text, edits, mutate, text_edits};

/// The local-config field names, so insertions often hit real fields.
const KEYS: &[&str] = &[
    "workloads",
    "services",
    "policies",
    "uid",
    "name",
    "namespace",
    "workloadIps",
    "protocol",
    "node",
    "serviceAccount",
    "trustDomain",
    "network",
    "waypoint",
    "networkGateway",
    "destination",
    "hboneMtlsPort",
    "capacity",
    "status",
    "vips",
    "ports",
    "hostname",
    "scope",
    "action",
    "dryRun",
    "rules",
    "principals",
    "sourceIps",
    "destinationPorts",
    "serviceAccounts",
    "authorizationPolicies",
    "nativeTunnel",
    "workloadType",
    "networkMode",
    "subjectAltNames",
];

/// What a loaded config promises, and that it applies.
fn check(yaml: &str) -> Result<(), TestCaseError> {
    let parsed = bounded("parsing the local config", || LocalConfig::parse(yaml))?;
    match parsed {
        Ok(config) => {
            let uids: std::collections::BTreeSet<_> =
                config.workloads.iter().map(|w| &w.uid).collect();
            prop_assert_eq!(uids.len(), config.workloads.len());
            let services: std::collections::BTreeSet<_> =
                config.services.iter().map(Service::key).collect();
            prop_assert_eq!(services.len(), config.services.len());
            let policies: std::collections::BTreeSet<_> =
                config.policies.iter().map(Authorization::key).collect();
            prop_assert_eq!(policies.len(), config.policies.len());
            let mut state = State::default();
            config.apply_to(&mut state);
            prop_assert_eq!(state.workloads().count(), config.workloads.len());
            prop_assert_eq!(state.services().count(), config.services.len());
            prop_assert_eq!(state.policies().count(), config.policies.len());
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(message.starts_with("invalid local config: "), "{}", message);
            prop_assert!(message.len() > "invalid local config: ".len());
        }
    }
    Ok(())
}

/// Collections nested `depth` deep: flow sequences, or compact block sequences.
fn nested(depth: usize, flow: bool) -> String {
    if flow {
        format!("workloads: {}{}", "[".repeat(depth), "]".repeat(depth))
    } else {
        format!("workloads:\n{}x\n", "- ".repeat(depth))
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fuzz_localconfig_mutated(edits in edits(KEYS)) {
        let example: serde_yaml::Value = serde_yaml::from_str(EXAMPLE).unwrap();
        let yaml = serde_yaml::to_string(&mutate(example, &edits)).unwrap();
        check(&yaml)?;
    }

    #[test]
    fn fuzz_localconfig_text(edits in text_edits()) {
        check(&edit_text(EXAMPLE, &edits))?;
    }

    /// Nesting no local config needs, up to the size of a large file: past MAX_DEPTH refused
    /// before parsing (the parser's time grows with its square), within the bound.
    #[test]
    fn fuzz_localconfig_deep_nesting(depth in 1usize..20_000, flow in prop::bool::ANY) {
        let yaml = nested(depth, flow);
        check(&yaml)?;
        // The mapping holding `workloads` is one more level; a block sequence at its key's
        // column is none (libyaml's indentless sequence).
        let levels = if flow { depth + 1 } else { depth };
        if levels > MAX_DEPTH {
            let refused = LocalConfig::parse(&yaml).err().map(|e| e.to_string());
            prop_assert!(
                refused.as_ref().is_some_and(|m| m.contains("refused before parsing")),
                "{:?}",
                refused
            );
        }
    }
}

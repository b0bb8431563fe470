//! istiod's feature flags that change what translation produces. Upstream reads them from
//! environment variables; here only the binary does (`Features::from_lookup` with the
//! environment), and everything else (the simulator, tests) sets the struct from code.
//! `Default` is upstream's default: every flag off.

/// The flags, by upstream's environment variable names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY`: send policies annotated
    /// `istio.io/dry-run: "true"` to ztunnels marked dry-run (they log, never enforce).
    /// Off, such a policy is not sent to ztunnels at all, as upstream: an older ztunnel
    /// would enforce it.
    pub dry_run_authorization_policies: bool,
    /// `PILOT_AUTO_ALLOW_WAYPOINT_POLICY`: give every workload bound to a waypoint (itself or
    /// through its Services) a synthetic ALLOW policy admitting the waypoint's identities, so
    /// that, unless other ALLOW policies exist, traffic that bypasses the waypoint is refused
    /// (policy-semantics §2.6).
    pub auto_allow_waypoint_policy: bool,
    /// `ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES`: a waypoint also enforces the
    /// selector policies that select its own pods, once per HBONE connection, as a
    /// connection (no HTTP attributes), before routing (`WaypointConfig.layered_policies`).
    pub layered_waypoint_authorization_policies: bool,
}

/// A flag whose value is not a boolean istiod accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: expected true, 1, false or 0")]
pub struct FeatureError {
    /// The environment variable.
    pub name: &'static str,
    /// What it was set to.
    pub value: String,
}

impl Features {
    pub const DRY_RUN_AUTHORIZATION_POLICY: &'static str =
        "AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY";
    pub const AUTO_ALLOW_WAYPOINT_POLICY: &'static str = "PILOT_AUTO_ALLOW_WAYPOINT_POLICY";
    pub const LAYERED_WAYPOINT_AUTHORIZATION_POLICIES: &'static str =
        "ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES";
    /// Every flag's variable name.
    pub const NAMES: [&'static str; 3] = [
        Self::DRY_RUN_AUTHORIZATION_POLICY,
        Self::AUTO_ALLOW_WAYPOINT_POLICY,
        Self::LAYERED_WAYPOINT_AUTHORIZATION_POLICIES,
    ];

    /// Reads every flag through `lookup` (a variable's value, `None` when unset). `true` and
    /// `1` turn a flag on; `false`, `0`, empty or unset leave it off. Anything else is an
    /// error rather than a guess, so a typo in a security-relevant flag stops istiod instead
    /// of silently running with the default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, FeatureError> {
        let flag = |name: &'static str| match lookup(name).as_deref() {
            None | Some("" | "false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(FeatureError {
                name,
                value: other.to_string(),
            }),
        };
        Ok(Features {
            dry_run_authorization_policies: flag(Self::DRY_RUN_AUTHORIZATION_POLICY)?,
            auto_allow_waypoint_policy: flag(Self::AUTO_ALLOW_WAYPOINT_POLICY)?,
            layered_waypoint_authorization_policies: flag(
                Self::LAYERED_WAYPOINT_AUTHORIZATION_POLICIES,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Features, FeatureError> {
        Features::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn unset_is_upstreams_default() {
        assert_eq!(read(&[]), Ok(Features::default()));
        assert!(!Features::default().dry_run_authorization_policies);
    }

    #[test]
    fn true_and_one_turn_a_flag_on() {
        let on = read(&[
            (Features::DRY_RUN_AUTHORIZATION_POLICY, "true"),
            (Features::AUTO_ALLOW_WAYPOINT_POLICY, "1"),
            (Features::LAYERED_WAYPOINT_AUTHORIZATION_POLICIES, "false"),
        ]);
        assert_eq!(
            on,
            Ok(Features {
                dry_run_authorization_policies: true,
                auto_allow_waypoint_policy: true,
                layered_waypoint_authorization_policies: false,
            })
        );
        assert_eq!(
            read(&[(Features::AUTO_ALLOW_WAYPOINT_POLICY, "0")]),
            Ok(Features::default())
        );
    }

    #[test]
    fn anything_else_is_an_error_naming_the_variable() {
        let e = read(&[(Features::AUTO_ALLOW_WAYPOINT_POLICY, "yes")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PILOT_AUTO_ALLOW_WAYPOINT_POLICY=\"yes\": expected true, 1, false or 0"
        );
    }
}

//! Building the workspace's binaries from inside a running test, bench or runner, so that
//! what they start is the current source, in their own profile.

use std::process::Command;

use crate::components::workspace_root;

/// The variables `cargo run`, `cargo test` and `cargo bench` set for the program they run,
/// which a nested `cargo build` must not see: build scripts that track one of them (ring's
/// tracks `CARGO_MANIFEST_DIR`) would find it changed from the plain build CI ran first, and
/// the whole TLS stack would be rebuilt.
fn set_by_cargo(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// `cargo build --quiet ARGS… [--profile PROFILE]` in the workspace (no `--profile` for
/// `debug`); the error says what failed.
pub fn cargo_build(args: &[&str], profile: &str) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo) {
            command.env_remove(&name);
        }
    }
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet"])
        .args(args);
    if profile != "debug" {
        command.args(["--profile", profile]);
    }
    let shown = format!("cargo build {} ({profile})", args.join(" "));
    let status = command
        .status()
        .map_err(|e| format!("running {shown}: {e}"))?;
    if !status.success() {
        return Err(format!("{shown} failed: {status}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_cargo_sets_for_a_program_is_kept_from_the_nested_build() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "OUT_DIR",
            "CARGO_BIN_NAME",
        ] {
            assert!(set_by_cargo(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "RUSTUP_TOOLCHAIN",
            "PATH",
        ] {
            assert!(!set_by_cargo(name), "{name}");
        }
    }

    #[test]
    fn a_build_that_cannot_succeed_says_what_failed() {
        let err = cargo_build(&["-p", "no-such-package-here"], "debug").unwrap_err();
        assert!(
            err.contains("no-such-package-here") && err.contains("failed"),
            "{err}"
        );
    }
}

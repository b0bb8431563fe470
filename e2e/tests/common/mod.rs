//! What the e2e tests share: whether this machine can run them, the binaries (built first, in
//! the tests' profile, so they match the source), the fixtures, and a runtime with a LocalSet.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use e2e::processes::Binaries;

/// Whether namespaces can be made here; prints `SKIP <test>: why` (or panics with
/// `REAL_COMPONENTS_REQUIRED=1`) when not.
pub fn usable(test: &str) -> bool {
    match harness::netns::check() {
        Ok(()) => true,
        Err(why) => {
            harness::skip(test, &why);
            false
        }
    }
}

/// `e2e/tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// istiod, ztunnel and waypoint (and the node agent, once it exists) built in this profile
/// beside the tests, once per test binary: the binaries the cluster runs.
pub fn binaries() -> Binaries {
    static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let binaries = Binaries::beside_current_exe().map_err(|e| e.to_string())?;
            let profile = binaries
                .dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("debug")
                .to_string();
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.current_dir(workspace).args([
                "build",
                "--quiet",
                "-p",
                "control",
                "--bin",
                "istiod",
                "-p",
                "dataplane",
                "--bins",
            ]);
            if profile != "debug" {
                build.args(["--profile", &profile]);
            }
            // What `cargo test` set for this package only: build scripts that track them
            // would rebuild the TLS stack for the nested build.
            for (name, _) in std::env::vars_os() {
                let cargo_set = name.to_str().is_some_and(|n| {
                    n.starts_with("CARGO_PKG_")
                        || matches!(
                            n,
                            "CARGO_MANIFEST_DIR"
                                | "CARGO_MANIFEST_PATH"
                                | "CARGO_CRATE_NAME"
                                | "CARGO_BIN_NAME"
                                | "CARGO_PRIMARY_PACKAGE"
                                | "CARGO_TARGET_TMPDIR"
                                | "OUT_DIR"
                        )
                });
                if cargo_set {
                    build.env_remove(name);
                }
            }
            let status = build.status().map_err(|e| format!("running cargo: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "building istiod and the data plane failed: {status}"
                ));
            }
            Ok(binaries)
        })
        .clone()
        .unwrap_or_else(|why| panic!("{why}"))
}

/// Runs `future` on a current-thread runtime's LocalSet, as the runner does.
pub fn local<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

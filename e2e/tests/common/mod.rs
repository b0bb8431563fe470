//! What the e2e tests share: whether this machine can run them, the binaries (built first, in
//! the tests' profile, so they match the source), the fixtures, and a runtime with a LocalSet.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
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
            e2e::processes::build(&profile)?;
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

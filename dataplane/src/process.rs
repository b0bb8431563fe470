//! What a proxy process needs around the proxy itself, the same for the ztunnel and the
//! waypoint binaries: where its certificates come from, a seed for its entropy seam, and the
//! signals that stop it. Only the binaries call this; the simulator hands in its own seams.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::identity::LocalCa;
use crate::seams::{Clock, Seams, SystemClock};
use crate::ztunnel::{
    CaClient, CertificateProvider, Config, ControlPlaneClient, ControlPlaneError, LocalCaProvider,
};

/// The local CA's root, in the directory `LOCAL_CA_DIR` names.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The local CA's key, beside the root.
pub const CA_KEY: &str = "ca-key.pem";

/// Why a proxy process could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "no certificate source: set CA_ADDRESS (istiod's CA) or LOCAL_CA_DIR (a local CA; `ztunnel gen-ca DIR` creates one)"
    )]
    NoCertificateSource,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the local CA in {dir}: {reason}")]
    LocalCa { dir: PathBuf, reason: String },
    #[error("control plane: {0}")]
    ControlPlane(#[from] ControlPlaneError),
    #[error("{var}={value:?}: expected a number of threads, 1 to 1024")]
    Threads { var: String, value: String },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Writes a new local root CA (root and key) into `dir`, for standalone runs.
pub fn write_local_ca(dir: &Path, trust_domain: &str) -> Result<(PathBuf, PathBuf), ProcessError> {
    let ca =
        LocalCa::generate(trust_domain, SystemClock.now()).map_err(|e| ProcessError::LocalCa {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| ProcessError::Write {
            path: path.clone(),
            source,
        })?;
        Ok::<_, ProcessError>(path)
    };
    std::fs::create_dir_all(dir).map_err(|source| ProcessError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok((
        write(ROOT_CERT, &ca.root_pem())?,
        write(CA_KEY, ca.key_pem())?,
    ))
}

/// The local CA kept in `dir`.
pub fn load_local_ca(dir: &Path) -> Result<LocalCa, ProcessError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| ProcessError::Read { path, source })
    };
    LocalCa::from_pem(&read(ROOT_CERT)?, &read(CA_KEY)?).map_err(|e| ProcessError::LocalCa {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Where certificates come from: istiod's CA when `CA_ADDRESS` is set, else the local CA in
/// `local_ca_dir` (`LOCAL_CA_DIR`).
pub fn certificate_provider(
    config: &Config,
    seams: &Seams,
    local_ca_dir: Option<&Path>,
) -> Result<Arc<dyn CertificateProvider>, ProcessError> {
    match (&config.ca_address, local_ca_dir) {
        (Some(address), _) => {
            let client = ControlPlaneClient::new(
                address,
                &config.ca_root_ca,
                config.auth_token.clone(),
                &config.cluster_id,
                seams.network.clone(),
                seams.clock.clone(),
            )?;
            Ok(Arc::new(CaClient::new(client, config.certificate_ttl)))
        }
        (None, Some(dir)) => Ok(Arc::new(LocalCaProvider::new(
            load_local_ca(dir)?,
            config.certificate_ttl,
            Arc::new(SystemClock),
        ))),
        (None, None) => Err(ProcessError::NoCertificateSource),
    }
}

/// The configured seed, or one for a real deployment, where replay does not matter.
pub fn seed(configured: u64) -> u64 {
    if configured != 0 {
        return configured;
    }
    SystemClock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
        .unwrap_or(1)
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends to stop a pod), naming which. The
/// handlers are installed when this is called, not when the future is first polled: call it
/// before the process says it is ready, or a SIGTERM in between kills it undrained.
pub fn stop_signal() -> impl Future<Output = &'static str> {
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let interrupt = tokio::signal::ctrl_c();
    async move {
        let terminate = async {
            match terminate {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => "interrupted",
            () = terminate => "SIGTERM",
        }
    }
}

/// Raises this process's soft descriptor limit to its hard limit, as Go programs (upstream's
/// istiod among them) do at start, and shares out what is then allowed. The limit is the
/// operator's to set; raising the soft one only stops a login shell's default (often 1,024)
/// from deciding how many connections a node proxy may hold.
pub fn descriptor_plan() -> crate::listeners::DescriptorPlan {
    let plan = crate::listeners::DescriptorPlan::for_limit(raise_descriptor_limit());
    tracing::info!(
        limit = plan.limit,
        reserve = plan.reserve,
        per_traffic_listener = plan.per_traffic_listener,
        traffic = plan.traffic,
        endpoint = plan.endpoint,
        admin = plan.admin,
        "descriptors shared out between listeners"
    );
    plan
}

fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(err = %std::io::Error::last_os_error(), "cannot read the descriptor limit; planning for 1024");
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            tracing::warn!(err = %std::io::Error::last_os_error(), soft = limit.rlim_cur, "cannot raise the descriptor limit; keeping it");
        }
    }
    limit.rlim_cur
}

/// The proxy's runtime: `var` threads (upstream's `ZTUNNEL_WORKER_THREADS`, default 2). One
/// is a current-thread runtime, with no hand-off between threads at all.
pub fn runtime(var: &str) -> Result<tokio::runtime::Runtime, ProcessError> {
    let threads = match std::env::var(var) {
        Ok(value) => value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or(ProcessError::Threads {
                var: var.to_string(),
                value,
            })?,
        Err(_) => 2,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build().map_err(ProcessError::Runtime)
}

//! The waypoint binary: the L7 proxy, configured from upstream-style environment variables.
//! Its routes and the addresses it resolves backends from come from istiod (`XDS_ADDRESS`),
//! its certificate from istiod's CA (`CA_ADDRESS`) or a local CA (`LOCAL_CA_DIR`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use dataplane::identity::LocalCa;
use dataplane::seams::{Seams, SystemClock};
use dataplane::state::StateHandle;
use dataplane::waypoint::{self, Config};
use dataplane::ztunnel::{CaClient, CertificateProvider, ControlPlaneClient, LocalCaProvider};

const USAGE: &str = "\
usage: waypoint [proxy | version | --help]

Runs the L7 proxy of one waypoint Gateway. Settings come from the environment:
  GATEWAY_NAME, GATEWAY_NAMESPACE   the waypoint Gateway (namespace defaults to POD_NAMESPACE)
  SERVICE_ACCOUNT                   the waypoint's service account (its SPIFFE identity)
  XDS_ADDRESS, XDS_ROOT_CA          istiod's xDS (routes and addresses; required)
  CA_ADDRESS, CA_ROOT_CA            istiod's CA, or LOCAL_CA_DIR for a local CA
  AUTH_TOKEN                        the token presented to istiod
  LISTEN_IP                         the address to listen on (default 0.0.0.0)
  REQUEST_TIMEOUT                   whole-request timeout when a route sets none
  CONNECTION_TERMINATION_DEADLINE   how long a drain waits (default 5s)
";

async fn proxy() -> anyhow::Result<()> {
    let config = Config::from_env(|k| std::env::var(k).ok())?;
    if config.mesh.xds_address.is_none() {
        bail!("no control plane: set XDS_ADDRESS (istiod's xDS address)\n\n{USAGE}");
    }
    let seams = Seams::real(if config.mesh.seed != 0 {
        config.mesh.seed
    } else {
        rand_seed()
    });
    let certificates: Arc<dyn CertificateProvider> =
        match (&config.mesh.ca_address, std::env::var_os("LOCAL_CA_DIR")) {
            (Some(address), _) => {
                let client = ControlPlaneClient::new(
                    address,
                    &config.mesh.ca_root_ca,
                    config.mesh.auth_token.clone(),
                    &config.mesh.cluster_id,
                    seams.network.clone(),
                    seams.clock.clone(),
                )?;
                Arc::new(CaClient::new(client, config.mesh.certificate_ttl))
            }
            (None, Some(dir)) => {
                let dir = PathBuf::from(dir);
                let read = |name: &str| {
                    let path = dir.join(name);
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))
                };
                let ca = LocalCa::from_pem(&read("root-cert.pem")?, &read("ca-key.pem")?)
                    .with_context(|| format!("loading the local CA from {}", dir.display()))?;
                Arc::new(LocalCaProvider::new(
                    ca,
                    config.mesh.certificate_ttl,
                    Arc::new(SystemClock),
                ))
            }
            (None, None) => bail!("no certificate source: set CA_ADDRESS or LOCAL_CA_DIR"),
        };
    let proxy = waypoint::run(config, seams, StateHandle::default(), certificates).await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = terminated() => tracing::info!("SIGTERM"),
        () = proxy.quit_requested() => tracing::info!("/quitquitquit"),
    }
    proxy.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM (what Kubernetes sends to stop a pod).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// A seed for load-balancing choices in a real deployment, where replay does not matter.
fn rand_seed() -> u64 {
    use dataplane::seams::Clock;
    SystemClock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
        .unwrap_or(1)
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("proxy") => {
            dataplane::memory::keep_freed_buffers();
            dataplane::logging::init();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(proxy())
        }
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some("version" | "--version") => {
            println!("waypoint {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn main() {
    if let Err(err) = run() {
        eprintln!("waypoint: {err:#}");
        std::process::exit(1);
    }
}

//! The waypoint binary: the L7 proxy, configured from upstream-style environment variables.
//! Its routes and the addresses it resolves backends from come from istiod (`XDS_ADDRESS`),
//! its certificate from istiod's CA (`CA_ADDRESS`) or a local CA (`LOCAL_CA_DIR`).

use std::path::PathBuf;

use anyhow::bail;
use dataplane::process;
use dataplane::seams::Seams;
use dataplane::state::StateHandle;
use dataplane::waypoint::{self, Config};

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
    // Before anything can say "ready": a SIGTERM from then on drains.
    let stop = process::stop_signal();
    let mut config = Config::from_env(|k| std::env::var(k).ok())?;
    config.mesh.descriptors = process::descriptor_plan();
    if config.mesh.xds_address.is_none() {
        bail!("no control plane: set XDS_ADDRESS (istiod's xDS address)\n\n{USAGE}");
    }
    let seams = Seams::real(process::seed(config.mesh.seed));
    let local_ca = std::env::var_os("LOCAL_CA_DIR").map(PathBuf::from);
    let certificates = process::certificate_provider(&config.mesh, &seams, local_ca.as_deref())?;
    let proxy = waypoint::run(config, seams, StateHandle::default(), certificates).await?;
    tokio::select! {
        why = stop => tracing::info!("{why}; draining"),
        () = proxy.quit_requested() => tracing::info!("/quitquitquit; draining"),
    }
    proxy.shutdown().await;
    Ok(())
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

//! The ztunnel binary: `ztunnel [proxy]` runs the node proxy from upstream-style environment
//! variables — state from istiod (`XDS_ADDRESS`) and/or a local config file (`LOCAL_XDS_PATH`),
//! certificates from istiod's CA (`CA_ADDRESS`) or a local CA (`LOCAL_CA_DIR`); `ztunnel
//! gen-ca DIR` writes a local root CA for standalone runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use dataplane::localconfig::LocalConfig;
use dataplane::process;
use dataplane::seams::Seams;
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{self, Config};

fn gen_ca(dir: &Path, trust_domain: &str) -> anyhow::Result<()> {
    let (root, key) = process::write_local_ca(dir, trust_domain)?;
    println!("wrote {} and {}", root.display(), key.display());
    Ok(())
}

async fn proxy() -> anyhow::Result<()> {
    // Before anything can say "ready": a SIGTERM from then on drains.
    let stop = process::stop_signal();
    let mut config = Config::from_env(|k| std::env::var(k).ok())?;
    config.descriptors = process::descriptor_plan();
    let mut state = State::default();
    if let Some(path) = &config.local_config {
        LocalConfig::load(path)?.apply_to(&mut state);
    }
    let seams = Seams::real(process::seed(config.seed));
    let local_ca = std::env::var_os("LOCAL_CA_DIR").map(PathBuf::from);
    let certificates = process::certificate_provider(&config, &seams, local_ca.as_deref())?;
    let proxy = ztunnel::run(config, seams, StateHandle::new(state), certificates).await?;
    tokio::select! {
        why = stop => tracing::info!("{why}; draining"),
        () = proxy.quit_requested() => tracing::info!("/quitquitquit; draining"),
    }
    proxy.shutdown().await;
    Ok(())
}

const USAGE: &str = "\
usage: ztunnel [proxy | gen-ca DIR [TRUST_DOMAIN] | version | --help]

proxy (the default) runs the node proxy. Settings come from the environment, as upstream's:
  NODE_NAME                        the node whose workloads this ztunnel serves
  XDS_ADDRESS, XDS_ROOT_CA         istiod's xDS; or LOCAL_XDS_PATH for a local-config file
  CA_ADDRESS, CA_ROOT_CA           istiod's CA; or LOCAL_CA_DIR for a local CA
  AUTH_TOKEN                       the token presented to istiod
  LISTEN_IP                        the address to listen on (default 0.0.0.0)
  UNSTABLE_ENABLE_SOCKS5=true      SOCKS5 on 15080
  CONNECTION_TERMINATION_DEADLINE  how long a drain waits (default 5s)
  INPOD_UDS                        in-pod mode: the node agent's ZDS socket
  ZTUNNEL_WORKER_THREADS           runtime threads (default 2; 1 runs on one thread)
gen-ca DIR writes a local root CA (root-cert.pem, ca-key.pem) for LOCAL_CA_DIR.
";

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("proxy") => {
            dataplane::memory::keep_freed_buffers();
            dataplane::logging::init();
            let runtime = process::runtime("ZTUNNEL_WORKER_THREADS")?;
            runtime.block_on(proxy())
        }
        Some("gen-ca") => {
            let dir = args
                .get(1)
                .context("usage: ztunnel gen-ca DIR [TRUST_DOMAIN]")?;
            let td = args.get(2).map(String::as_str).unwrap_or("cluster.local");
            gen_ca(Path::new(dir), td)
        }
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some("version" | "--version") => {
            println!("ztunnel {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// Errors are one clear line (with their causes), never a backtrace.
fn main() {
    if let Err(err) = run() {
        eprintln!("ztunnel: {err:#}");
        std::process::exit(1);
    }
}

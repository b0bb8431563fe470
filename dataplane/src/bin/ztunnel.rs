//! The ztunnel binary: `ztunnel [proxy]` runs the node proxy from upstream-style environment
//! variables — state from istiod (`XDS_ADDRESS`) and/or a local config file (`LOCAL_XDS_PATH`),
//! certificates from istiod's CA (`CA_ADDRESS`) or a local CA (`LOCAL_CA_DIR`); `ztunnel
//! gen-ca DIR` writes a local root CA for standalone runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use dataplane::identity::LocalCa;
use dataplane::localconfig::LocalConfig;
use dataplane::seams::{Clock, Seams, SystemClock};
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{
    self, CaClient, CertificateProvider, Config, ControlPlaneClient, LocalCaProvider,
};

const ROOT_CERT: &str = "root-cert.pem";
const CA_KEY: &str = "ca-key.pem";

fn gen_ca(dir: &Path, trust_domain: &str) -> anyhow::Result<()> {
    let ca = LocalCa::generate(trust_domain, SystemClock.now())?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(ROOT_CERT), ca.root_pem())?;
    std::fs::write(dir.join(CA_KEY), ca.key_pem())?;
    println!(
        "wrote {} and {}",
        dir.join(ROOT_CERT).display(),
        dir.join(CA_KEY).display()
    );
    Ok(())
}

fn load_ca(dir: &Path) -> anyhow::Result<LocalCa> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    LocalCa::from_pem(&read(ROOT_CERT)?, &read(CA_KEY)?)
        .with_context(|| format!("loading the local CA from {}", dir.display()))
}

async fn proxy() -> anyhow::Result<()> {
    let config = Config::from_env(|k| std::env::var(k).ok())?;
    let mut state = State::default();
    if let Some(path) = &config.local_config {
        LocalConfig::load(path)?.apply_to(&mut state);
    }
    let seed = if config.seed != 0 {
        config.seed
    } else {
        rand_seed()
    };
    let seams = Seams::real(seed);
    let certificates: Arc<dyn CertificateProvider> = match (
        &config.ca_address,
        std::env::var_os("LOCAL_CA_DIR"),
    ) {
        (Some(address), _) => {
            let client = ControlPlaneClient::new(
                address,
                &config.ca_root_ca,
                config.auth_token.clone(),
                &config.cluster_id,
                seams.network.clone(),
                seams.clock.clone(),
            )?;
            Arc::new(CaClient::new(client, config.certificate_ttl))
        }
        (None, Some(dir)) => Arc::new(LocalCaProvider::new(
            load_ca(&PathBuf::from(dir))?,
            config.certificate_ttl,
            Arc::new(SystemClock),
        )),
        (None, None) => bail!(
            "no certificate source: set CA_ADDRESS (istiod's CA) or LOCAL_CA_DIR (a local CA; `ztunnel gen-ca DIR` creates one)"
        ),
    };
    let proxy = ztunnel::run(config, seams, StateHandle::new(state), certificates).await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; draining"),
        _ = terminated() => tracing::info!("SIGTERM; draining"),
        () = proxy.quit_requested() => tracing::info!("/quitquitquit; draining"),
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
    let now = SystemClock.now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
        .unwrap_or(1)
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
gen-ca DIR writes a local root CA (root-cert.pem, ca-key.pem) for LOCAL_CA_DIR.
";

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("proxy") => {
            dataplane::memory::keep_freed_buffers();
            dataplane::logging::init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
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

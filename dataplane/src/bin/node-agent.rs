//! The node-agent binary: istio-cni's role for one node. It takes pod events on the pod
//! socket, installs each enrolled pod's redirection rules in its network namespace, and hands
//! the pods to the node's ztunnel over ZDS. Stopped (SIGTERM, Ctrl-C), it releases every pod,
//! so that it leaves no rules behind.

use std::path::PathBuf;

use anyhow::{Context, bail};
use dataplane::node_agent::{self, Config, Nft};
use dataplane::process;

const USAGE: &str = "\
usage: node-agent [--zds-socket PATH] [--pod-socket PATH] | version | --help

Captures the pods it is told about (in-pod redirection with nftables) and hands them to the
node's ztunnel over ZDS. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `nft` on PATH.
  --zds-socket PATH   where ztunnel connects (default /var/run/ztunnel/ztunnel.sock, INPOD_UDS)
  --pod-socket PATH   where pod events come in, one JSON request per line
                      (default /var/run/ztunnel/pods.sock):
                        {\"add\":{\"uid\",\"name\",\"namespace\",\"serviceAccount\",\"netns\"}}
                        {\"del\":{\"uid\"}}   {\"list\":{}}
On SIGTERM or Ctrl-C every pod's rules are removed before it exits.
";

/// Reads `--flag PATH` and `--flag=PATH`.
fn parse(args: &[String]) -> anyhow::Result<Config> {
    let mut config = Config::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let slot = match flag {
            "--zds-socket" => &mut config.zds_socket,
            "--pod-socket" => &mut config.pod_socket,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        };
        let value = match inline {
            Some(value) => value,
            None => rest
                .next()
                .cloned()
                .with_context(|| format!("{flag} needs a path"))?,
        };
        if value.is_empty() {
            bail!("{flag} needs a path");
        }
        *slot = PathBuf::from(value);
    }
    Ok(config)
}

async fn agent(config: Config) -> anyhow::Result<()> {
    // Before the sockets exist: a SIGTERM from then on releases what was captured.
    let stop = process::stop_signal();
    let version = Nft::default()
        .check()
        .context("the agent installs its rules with nft")?;
    tracing::info!(nft = %version, "nft found");
    let agent = node_agent::start(config).await?;
    let why = stop.await;
    tracing::info!("{why}; releasing every pod");
    let failed = agent.shutdown().await;
    for (uid, err) in &failed {
        tracing::error!(%uid, %err, "the pod's rules could not be removed");
    }
    if !failed.is_empty() {
        bail!("{} pods' rules could not be removed", failed.len());
    }
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some("version" | "--version") => {
            println!("node-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => {
            let config = parse(&args)?;
            dataplane::logging::init();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agent(config))
        }
    }
}

/// Errors are one clear line (with their causes), never a backtrace.
fn main() {
    if let Err(err) = run() {
        eprintln!("node-agent: {err:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_take_a_path_either_way_and_default_to_upstreams() {
        let config = parse(&[]).unwrap();
        assert_eq!(
            config.zds_socket,
            PathBuf::from(dataplane::zds::DEFAULT_SOCKET)
        );
        assert_eq!(
            config.pod_socket,
            PathBuf::from(node_agent::DEFAULT_POD_SOCKET)
        );
        let config = parse(&args(&[
            "--zds-socket",
            "/a/z.sock",
            "--pod-socket=/b/p.sock",
        ]))
        .unwrap();
        assert_eq!(config.zds_socket, PathBuf::from("/a/z.sock"));
        assert_eq!(config.pod_socket, PathBuf::from("/b/p.sock"));
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let err = parse(&args(&["--zds-socket"])).unwrap_err();
        assert!(
            err.to_string().contains("--zds-socket needs a path"),
            "{err}"
        );
        let err = parse(&args(&["--pod-socket="])).unwrap_err();
        assert!(
            err.to_string().contains("--pod-socket needs a path"),
            "{err}"
        );
        let err = parse(&args(&["--verbose"])).unwrap_err();
        assert!(
            err.to_string().contains("unknown argument \"--verbose\""),
            "{err}"
        );
    }
}

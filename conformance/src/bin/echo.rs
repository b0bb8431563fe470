//! `echo [--port P]… [--namespace NS] [--pod NAME]`: the conformance echo backend on real
//! sockets (HTTP/1.1 and HTTP/2 prior knowledge on every port), for the namespace-cluster and
//! kind targets. The same code answers in the simulator (`sim::apps::echo`). Namespace and
//! pod default to `NAMESPACE` and `POD_NAME` from the environment (the downward API).

use std::rc::Rc;

use anyhow::{Context, bail};
use sim::apps::echo::{self, Counters, EchoContext};

fn main() -> anyhow::Result<()> {
    let mut ports = Vec::new();
    let mut namespace = std::env::var("NAMESPACE").unwrap_or_default();
    let mut pod = std::env::var("POD_NAME").unwrap_or_default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--port" => ports.push(value()?.parse::<u16>().context("--port takes a number")?),
            "--namespace" => namespace = value()?,
            "--pod" => pod = value()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if ports.is_empty() {
        ports = vec![80, 8080];
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let hooks = Rc::new(Counters::default());
        let mut listeners = Vec::new();
        for port in ports {
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .with_context(|| format!("binding port {port}"))?;
            listeners.push(listener);
        }
        for listener in listeners {
            let hooks = hooks.clone();
            let (namespace, pod) = (namespace.clone(), pod.clone());
            tokio::task::spawn_local(async move {
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            eprintln!("echo: accept: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let context = EchoContext {
                        namespace: namespace.clone(),
                        pod: pod.clone(),
                        peer: Some(peer),
                        peer_identity: None,
                        local: stream.local_addr().ok(),
                    };
                    tokio::task::spawn_local(echo::serve(stream, Rc::new(context), hooks.clone()));
                }
            });
        }
        // Serves until the process is stopped.
        std::future::pending::<()>().await;
        Ok(())
    })
}

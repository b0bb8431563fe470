//! The processes' own lifecycle: `--help` on every binary must print its usage and exit 0
//! (an operator's first command must not start a proxy or fail), and SIGTERM must drain and
//! exit within a bound, closing what it held, as a pod's termination expects. The SIGTERM
//! targets are extra processes started for the purpose (a second ztunnel for node-a, a
//! second istiod sharing the first one's state), so the mesh under test keeps running.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Ctx, Findings};
use crate::mesh::{self, Process, ports};
use crate::probe;
use crate::wire::socks5::{self, Destination};

/// How long `--help` may take.
const HELP_WITHIN: Duration = Duration::from_secs(5);
/// The ztunnels' `CONNECTION_TERMINATION_DEADLINE` in the mesh (see [`mesh::ztunnel_command`]).
const ZTUNNEL_DRAIN: Duration = Duration::from_secs(1);
/// What a process may take beyond its drain deadline to exit: runtime shutdown, flushing
/// logs, a busy machine.
const EXIT_SLACK: Duration = Duration::from_secs(3);

pub async fn help(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let bin_dir = ctx.mesh.options.bin_dir.clone();
    let results = tokio::task::spawn_blocking(move || {
        ["ztunnel", "waypoint", "istiod"]
            .into_iter()
            .map(|bin| (bin, run_help(&bin_dir.join(bin))))
            .collect::<Vec<_>>()
    })
    .await?;
    for (bin, result) in results {
        match result {
            Ok((status, stdout, took)) => {
                findings.note(format!(
                    "{bin} --help: {status} in {:.2}s, {} bytes of usage",
                    took.as_secs_f64(),
                    stdout.len()
                ));
                findings.expect(status.success(), || {
                    format!("{bin} --help exited with {status}")
                });
                findings.expect(stdout.to_lowercase().contains("usage"), || {
                    format!("{bin} --help printed no usage on stdout")
                });
                findings.expect(took <= HELP_WITHIN, || {
                    format!("{bin} --help took {:.1}s", took.as_secs_f64())
                });
            }
            Err(e) => findings.violation(format!("{bin} --help: {e:#}")),
        }
    }
    Ok(findings)
}

/// Runs `bin --help` with nothing on stdin and no environment a proxy would start from.
fn run_help(bin: &Path) -> anyhow::Result<(std::process::ExitStatus, String, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("--help")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stdout = String::new();
            if let Some(mut out) = child.stdout.take() {
                std::io::Read::read_to_string(&mut out, &mut stdout)?;
            }
            return Ok((status, stdout, started.elapsed()));
        }
        if started.elapsed() > HELP_WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("still running after {HELP_WITHIN:?} (it started instead of helping?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn sigterm(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    ztunnel_drains(ctx, &mut findings).await?;
    istiod_drains(ctx, &mut findings).await?;
    Ok(findings)
}

/// Sends SIGTERM to `process`; how it ended within `bound`, as violations and a note.
async fn terminate(process: &Process, bound: Duration, findings: &mut Findings) -> Duration {
    let started = Instant::now();
    if let Err(e) = process.signal(libc::SIGTERM) {
        findings.violation(format!("SIGTERM to {}: {e}", process.name));
    }
    let status = process.exited_within(bound).await;
    let took = started.elapsed();
    match status {
        Some(status) => {
            findings.note(format!(
                "{} exited {status} {:.2}s after SIGTERM",
                process.name,
                took.as_secs_f64()
            ));
            findings.expect(status.success(), || {
                format!(
                    "{} exited with {status} after SIGTERM:\n{}",
                    process.name,
                    process.log_tail(6)
                )
            });
        }
        None => findings.violation(format!(
            "{} still running {bound:?} after SIGTERM:\n{}",
            process.name,
            process.log_tail(6)
        )),
    }
    took
}

/// A second ztunnel for node-a on its own address carries a SOCKS5 connection from web to
/// echo; on SIGTERM it must close that connection by its termination deadline and exit.
async fn ztunnel_drains(ctx: &Ctx<'_>, findings: &mut Findings) -> anyhow::Result<()> {
    let mesh = ctx.mesh;
    let listen = mesh.ip(5);
    let command = mesh::ztunnel_command(
        &mesh.options,
        "node-a",
        listen,
        &mesh.root_path(),
        &mesh.token_a,
    );
    let process = mesh::spawn(&mesh.options, "ztunnel-drained", command)?;
    mesh::wait_ready(&process, SocketAddr::new(listen, ports::READINESS)).await?;
    let socks = SocketAddr::new(listen, ports::SOCKS5);
    // Its xDS may lag its readiness by a moment: retry the first connection briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        let attempt = async {
            let (code, stream) =
                socks5::connect(socks, mesh.node_a_ip(), &Destination::Ip(mesh.vip())).await?;
            let mut s = stream.with_context(|| format!("SOCKS5 reply {code}"))?;
            s.write_all(b"before").await?;
            let mut back = [0u8; 6];
            s.read_exact(&mut back).await?;
            anyhow::Ok(s)
        };
        match attempt.await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("web to echo through the second ztunnel"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let bound = ZTUNNEL_DRAIN + EXIT_SLACK;
    let closed = async {
        let mut buf = [0u8; 64];
        // Open until the drain ends it: EOF or a reset.
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let (took, closed) = tokio::join!(terminate(&process, bound, findings), async {
        tokio::time::timeout(bound, closed).await.is_ok()
    });
    findings.expect(closed, || {
        format!(
            "web's connection through the ztunnel was still open {bound:?} after SIGTERM (it exited after {:.2}s)",
            took.as_secs_f64()
        )
    });
    Ok(())
}

/// A second istiod with a copy of the first one's state (so node-a's token is valid) serves
/// an xDS stream; on SIGTERM it must end the stream and exit at once (it holds nothing that
/// needs finishing).
async fn istiod_drains(ctx: &Ctx<'_>, findings: &mut Findings) -> anyhow::Result<()> {
    let mesh = ctx.mesh;
    let listen: IpAddr = mesh.ip(6);
    let state = ctx.dir.join("drained-istiod-state");
    let _ = std::fs::remove_dir_all(&state);
    copy_dir(&mesh.state_dir, &state)?;
    let mut command = Command::new(mesh.options.bin_dir.join("istiod"));
    command
        .arg("--config-dir")
        .arg(mesh.config_path())
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", &listen.to_string()]);
    let process = mesh::spawn(&mesh.options, "istiod-drained", command)?;
    let address = format!("http://{listen}:{}", ports::XDS_PLAINTEXT);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut stream = loop {
        let attempt = async {
            let mut s = probe::ads_at(mesh, &address).await?;
            crate::wire::grpc::both_answered(&mut s).await?;
            anyhow::Ok(s)
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(s)) => break s,
            _ if Instant::now() > deadline => {
                anyhow::bail!(
                    "the second istiod never served xDS:\n{}",
                    process.log_tail(10)
                );
            }
            _ => {
                process.alive().map_err(anyhow::Error::msg)?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let took = terminate(&process, EXIT_SLACK, findings).await;
    let ended = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match stream.responses.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    findings.expect(ended.is_ok(), || {
        format!("istiod exited after {took:?} but its xDS stream did not end")
    });
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// Copies the regular files of `from` (recursively) into `to`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

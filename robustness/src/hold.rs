//! `robustness hold ADDR COUNT [PREFIX]`: a helper process of the measurement that opens
//! `COUNT` connections to `ADDR`, sends each the bytes `PREFIX` (hex; none: it stays silent),
//! says on one line of JSON how many it opened and how many the
//! server still holds, keeps them until its standard input closes, then exits (each socket
//! closed with a reset). Descriptor limits are per process: helpers let the measurement hold
//! more connections than any one process may, so the runner is never the limit it finds.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::attacks::floods::open_many;
use crate::wire::tcp;

/// The connections one helper takes on: well under any default hard limit seen in practice,
/// and few enough that several helpers open a step's connections in parallel.
pub const PER_HELPER: usize = 5_000;

/// How long one connect may take: on a busy machine the first SYN can be dropped and
/// retried after a second, which is slowness, not refusal.
const CONNECT_WITHIN: Duration = Duration::from_secs(3);

/// The helper's side: runs until stdin closes.
pub fn serve(addr: &str, count: &str, prefix: &str) -> anyhow::Result<()> {
    let addr: SocketAddr = addr.parse().context("hold ADDR")?;
    let count: usize = count.parse().context("hold COUNT")?;
    let prefix = from_hex(prefix).context("hold PREFIX")?;
    let _ = crate::limits::raise_own();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let open = runtime.block_on(async {
        let in_flight = Arc::new(Semaphore::new(256));
        let (open, failed, error) = open_many(addr, count, &in_flight, CONNECT_WITHIN).await;
        for s in &open {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            if !prefix.is_empty() {
                let _ = s.try_write(&prefix);
            }
        }
        let held = open.iter().filter(|s| !tcp::already_closed(s)).count();
        let line = json!({"opened": open.len(), "failed": failed, "held": held, "error": error});
        println!("{line}");
        let _ = std::io::stdout().flush();
        open
    });
    // Until the runner closes our stdin (or goes away).
    let mut sink = String::new();
    let _ = std::io::stdin().lock().read_line(&mut sink);
    drop(open);
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// A running helper, killed (and its connections reset) when dropped.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the helpers opened, together.
#[derive(Debug, Default)]
pub struct Held {
    pub opened: usize,
    pub failed: usize,
    pub held: usize,
    pub error: Option<String>,
}

/// Starts helpers holding `count` connections to `to` in all; returns once each has
/// opened its share.
pub async fn hold(
    to: SocketAddr,
    count: usize,
    prefix: &[u8],
) -> anyhow::Result<(Vec<Helper>, Held)> {
    let prefix = to_hex(prefix);
    let exe = std::env::current_exe()?;
    let mut helpers = Vec::new();
    let mut readers = Vec::new();
    let mut left = count;
    while left > 0 {
        let share = left.min(PER_HELPER);
        left -= share;
        let mut child = Command::new(&exe)
            .args(["hold", &to.to_string(), &share.to_string(), &prefix])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a helper")?;
        let stdout = child.stdout.take().context("helper stdout")?;
        let stdin = child.stdin.take();
        helpers.push(Helper { child, stdin });
        readers.push(tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default()
        }));
    }
    let mut held = Held::default();
    for reader in readers {
        let report = reader.await?;
        let n = |k: &str| report[k].as_u64().unwrap_or(0) as usize;
        held.opened += n("opened");
        held.failed += n("failed");
        held.held += n("held");
        if held.error.is_none() {
            held.error = report["error"].as_str().map(str::to_string);
        }
    }
    Ok((helpers, held))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_travel_as_hex() {
        assert_eq!(to_hex(b"PRI"), "505249");
        assert_eq!(from_hex("505249"), Some(b"PRI".to_vec()));
        assert_eq!(from_hex(""), Some(Vec::new()));
        assert_eq!(from_hex("5"), None);
        assert_eq!(from_hex("zz"), None);
    }
}

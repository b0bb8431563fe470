//! Pod events in: the CNI-plugin-facing side of the agent.
//!
//! Upstream's CNI plugin tells istio-cni's node agent about each pod the kubelet sets up or
//! tears down, and the agent decides whether it is enrolled. Here the caller decides: our test
//! harness plays kubelet and CNI plugin, and sends only the pods it enrolls in the mesh. The
//! transport is a Unix stream socket carrying newline-delimited JSON, one request per line,
//! each answered by one line, in order:
//!
//! ```text
//! {"add":{"uid":"…","name":"…","namespace":"…","serviceAccount":"…","netns":"/run/netns/…"}}
//!     → {"ok":true} once the rules are installed and, when a ztunnel is connected, it acked
//! {"del":{"uid":"…"}}   → {"ok":true}, also for a uid that is not captured (a delete is
//!                          idempotent, as CNI's DEL must be)
//! {"list":{}}           → {"pods":[{"uid":…,"name":…,"namespace":…,"serviceAccount":…,"netns":…}]}
//! anything that fails   → {"error":"…"}, and the connection serves the next line
//! ```
//!
//! A line longer than [`MAX_LINE`] is answered with an error and the connection closed (there
//! is no telling where the next request would start). Blank lines are skipped. The socket is
//! made readable and writable by its owner only: whoever can write to it can make the agent
//! enter any network namespace.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use super::pods::{PodSpec, Pods};
use crate::AcceptBackoff;
use crate::zds::PodInfo;

/// The longest request line, its newline excluded (a pod's fields are far shorter).
pub const MAX_LINE: usize = 64 * 1024;

/// The longest answer a [`PodClient`] reads (a `list` of many pods).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PodRequest {
    Add(AddPod),
    Del(DelPod),
    List(ListPods),
}

/// Capture this pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddPod {
    /// The Kubernetes pod UID, the key ztunnel knows the pod by.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The identity ztunnel will serve the pod with.
    pub service_account: String,
    /// `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
}

/// Release this pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelPod {
    pub uid: String,
}

/// List the captured pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListPods {}

/// A captured pod in a `list` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub netns: PathBuf,
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PodResponse {
    Ok { ok: bool },
    Error { error: String },
    Pods { pods: Vec<ListedPod> },
}

impl PodResponse {
    fn ok() -> PodResponse {
        PodResponse::Ok { ok: true }
    }

    fn error(why: impl ToString) -> PodResponse {
        PodResponse::Error {
            error: why.to_string(),
        }
    }
}

impl From<AddPod> for PodSpec {
    fn from(add: AddPod) -> PodSpec {
        PodSpec {
            uid: add.uid,
            pod: PodInfo {
                name: add.name,
                namespace: add.namespace,
                service_account: add.service_account,
            },
            netns: add.netns,
        }
    }
}

/// Carries out one request line (without its newline).
pub async fn handle(pods: &Pods, line: &[u8]) -> PodResponse {
    let request: PodRequest = match serde_json::from_slice(line) {
        Ok(request) => request,
        Err(err) => return PodResponse::error(format!("malformed request: {err}")),
    };
    match request {
        PodRequest::Add(add) => match pods.add(add.into()).await {
            Ok(()) => PodResponse::ok(),
            Err(err) => PodResponse::error(err),
        },
        PodRequest::Del(del) => match pods.remove(&del.uid).await {
            Ok(_) => PodResponse::ok(),
            Err(err) => PodResponse::error(err),
        },
        PodRequest::List(ListPods {}) => PodResponse::Pods {
            pods: pods
                .list()
                .await
                .into_iter()
                .map(|p| ListedPod {
                    uid: p.uid,
                    name: p.pod.name,
                    namespace: p.pod.namespace,
                    service_account: p.pod.service_account,
                    netns: p.netns,
                })
                .collect(),
        },
    }
}

/// What one read of a line gave.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line, its newline removed (the last one may have had none).
    Full,
    /// Longer than the limit: the stream is out of step.
    TooLong,
    End,
}

/// Reads one line of at most `limit` bytes (newline excluded) into `buf`.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Line> {
    buf.clear();
    let n = (&mut *reader)
        .take(limit as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Full);
    }
    if buf.len() > limit {
        return Ok(Line::TooLong);
    }
    Ok(Line::Full)
}

async fn write_line(writer: &mut OwnedWriteHalf, response: &PodResponse) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes).await
}

async fn connection(stream: UnixStream, pods: Pods, id: u64) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let response = match read_line(&mut reader, &mut line, MAX_LINE).await {
            Ok(Line::End) => return,
            Ok(Line::TooLong) => {
                tracing::warn!(
                    conn = id,
                    "pod request line too long; closing the connection"
                );
                let too_long = PodResponse::error(format!(
                    "request line longer than {MAX_LINE} bytes; closing the connection"
                ));
                let _ = write_line(&mut write, &too_long).await;
                return;
            }
            Ok(Line::Full) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Full) => handle(&pods, &line).await,
            Err(err) => {
                tracing::debug!(conn = id, %err, "pod connection read failed");
                return;
            }
        };
        if let PodResponse::Error { error } = &response {
            tracing::warn!(conn = id, %error, "pod request failed");
        }
        if let Err(err) = write_line(&mut write, &response).await {
            tracing::debug!(conn = id, %err, "pod connection write failed");
            return;
        }
    }
}

/// Listens at `path`, owner-only: replaces a socket a previous run left there, but refuses to
/// remove anything else found at that path.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves pod requests on `listener` for as long as the returned future is polled, each
/// connection on its own task. Dropping the future closes every connection; an add or delete
/// already started still finishes (see [`Pods::add`]).
pub async fn serve(listener: UnixListener, pods: Pods) {
    let mut backoff = AcceptBackoff::default();
    let mut next_id: u64 = 0;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    next_id += 1;
                    connections.spawn(connection(stream, pods.clone(), next_id));
                }
                Err(err) => {
                    let wait = backoff.failed();
                    tracing::warn!(%err, ?wait, "accepting a pod connection failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// The caller's end of the pod socket (the test harness, a debugging tool).
#[derive(Debug)]
pub struct PodClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl PodClient {
    /// Connects to the agent's pod socket at `path`.
    pub async fn connect(path: &Path) -> io::Result<PodClient> {
        let (read, writer) = UnixStream::connect(path).await?.into_split();
        Ok(PodClient {
            reader: BufReader::new(read),
            writer,
        })
    }

    /// Sends one request and reads its answer.
    pub async fn request(&mut self, request: &PodRequest) -> io::Result<PodResponse> {
        let mut bytes = serde_json::to_vec(request).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await?;
        let mut line = Vec::new();
        match read_line(&mut self.reader, &mut line, MAX_ANSWER).await? {
            Line::Full => serde_json::from_slice(&line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Line::TooLong => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an answer longer than {MAX_ANSWER} bytes"),
            )),
            Line::End => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

//! ZDS, the protocol by which the node agent (istio-cni's role) hands a ztunnel the pods it
//! captures, each with its network namespace (wire facts §2.4). We speak upstream's protocol
//! rather than one of our own so that our node agent can drive upstream's ztunnel and ours
//! can be driven by istio-cni.
//!
//! The ztunnel connects and says hello; the agent replays every pod it has as an `Add` (or a
//! `Keep`), then `SnapshotSent`, then sends changes as they happen. Each request is answered
//! by one `Ack`, empty on success.

mod socket;

use std::os::fd::OwnedFd;
use std::path::Path;

use prost::Message;

pub use socket::{MAX_PACKET, Packet, ZdsListener, ZdsSocket};

/// Generated from `proto/zds.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("istio.workload.zds");
}

use proto::workload_request::Payload as RequestPayload;
use proto::workload_response::Payload as ResponsePayload;

/// Where upstream's ztunnel looks for the node agent (`INPOD_UDS`).
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

/// What went wrong on a ZDS connection; the connection is not usable afterwards.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("ZDS socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the ZDS connection")]
    Closed,
    #[error("unreadable ZDS message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ZDS protocol: {0}")]
    Protocol(String),
}

/// The pod a request is about, as the node agent names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

/// A request from the node agent, decoded.
#[derive(Debug)]
pub enum Request {
    /// Capture this pod; its network namespace came with the message.
    Add {
        uid: String,
        pod: PodInfo,
        netns: OwnedFd,
    },
    Keep {
        uid: String,
    },
    Del {
        uid: String,
    },
    SnapshotSent,
}

impl Request {
    fn decode(packet: Packet) -> Result<Request, ZdsError> {
        let message = proto::WorkloadRequest::decode(packet.bytes.as_slice())?;
        let payload = message
            .payload
            .ok_or_else(|| ZdsError::Protocol("a request with no payload".into()))?;
        Ok(match payload {
            RequestPayload::Add(add) => {
                let netns = packet.descriptor.ok_or_else(|| {
                    ZdsError::Protocol(format!(
                        "add for pod {} came without its network namespace",
                        add.uid
                    ))
                })?;
                let info = add.workload_info.unwrap_or_default();
                Request::Add {
                    uid: add.uid,
                    pod: PodInfo {
                        name: info.name,
                        namespace: info.namespace,
                        service_account: info.service_account,
                    },
                    netns,
                }
            }
            RequestPayload::Keep(keep) => Request::Keep { uid: keep.uid },
            RequestPayload::Del(del) => Request::Del { uid: del.uid },
            RequestPayload::SnapshotSent(_) => Request::SnapshotSent,
        })
    }

    fn encode(&self) -> (Vec<u8>, Option<&OwnedFd>) {
        let (payload, netns) = match self {
            Request::Add { uid, pod, netns } => (
                RequestPayload::Add(proto::AddWorkload {
                    uid: uid.clone(),
                    workload_info: Some(proto::WorkloadInfo {
                        name: pod.name.clone(),
                        namespace: pod.namespace.clone(),
                        service_account: pod.service_account.clone(),
                    }),
                }),
                Some(netns),
            ),
            Request::Keep { uid } => (
                RequestPayload::Keep(proto::KeepWorkload { uid: uid.clone() }),
                None,
            ),
            Request::Del { uid } => (
                RequestPayload::Del(proto::DelWorkload { uid: uid.clone() }),
                None,
            ),
            Request::SnapshotSent => (RequestPayload::SnapshotSent(proto::SnapshotSent {}), None),
        };
        let message = proto::WorkloadRequest {
            payload: Some(payload),
        };
        (message.encode_to_vec(), netns)
    }
}

/// The ztunnel's end: connects, says hello, then reads requests and acknowledges each.
#[derive(Debug)]
pub struct ZdsClient {
    socket: ZdsSocket,
}

impl ZdsClient {
    pub async fn connect(path: &Path) -> Result<ZdsClient, ZdsError> {
        let socket = ZdsSocket::connect(path).await?;
        let hello = proto::ZdsHello {
            version: proto::Version::V1 as i32,
        };
        socket.send(&hello.encode_to_vec(), None).await?;
        Ok(ZdsClient { socket })
    }

    /// The next request; [`ZdsError::Closed`] when the agent went away.
    pub async fn next(&self) -> Result<Request, ZdsError> {
        let packet = self.socket.recv().await?.ok_or(ZdsError::Closed)?;
        Request::decode(packet)
    }

    /// Answers the last request: `Err(why)` says it was not carried out.
    pub async fn ack(&self, outcome: Result<(), String>) -> Result<(), ZdsError> {
        let response = proto::WorkloadResponse {
            payload: Some(ResponsePayload::Ack(proto::Ack {
                error: outcome.err().unwrap_or_default(),
            })),
        };
        self.socket.send(&response.encode_to_vec(), None).await?;
        Ok(())
    }
}

/// The node agent's end of one ztunnel's connection.
#[derive(Debug)]
pub struct ZdsServerConn {
    socket: ZdsSocket,
}

impl ZdsServerConn {
    /// Takes the next ztunnel off `listener` and reads its hello.
    pub async fn accept(listener: &ZdsListener) -> Result<ZdsServerConn, ZdsError> {
        let socket = listener.accept().await?;
        ZdsServerConn::handshake(socket).await
    }

    /// Reads the hello on an already connected socket.
    pub async fn handshake(socket: ZdsSocket) -> Result<ZdsServerConn, ZdsError> {
        let packet = socket.recv().await?.ok_or(ZdsError::Closed)?;
        let hello = proto::ZdsHello::decode(packet.bytes.as_slice())?;
        if hello.version != proto::Version::V1 as i32 {
            return Err(ZdsError::Protocol(format!(
                "hello with version {}, not V1",
                hello.version
            )));
        }
        Ok(ZdsServerConn { socket })
    }

    /// Sends `request` and waits for its ack: `Ok(Err(why))` when ztunnel refused it.
    pub async fn request(&self, request: &Request) -> Result<Result<(), String>, ZdsError> {
        let (bytes, netns) = request.encode();
        self.socket.send(&bytes, netns).await?;
        let packet = self.socket.recv().await?.ok_or(ZdsError::Closed)?;
        let response = proto::WorkloadResponse::decode(packet.bytes.as_slice())?;
        match response.payload {
            Some(ResponsePayload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
            Some(ResponsePayload::Ack(ack)) => Ok(Err(ack.error)),
            None => Err(ZdsError::Protocol("a response with no ack".into())),
        }
    }
}

#[cfg(test)]
mod tests;

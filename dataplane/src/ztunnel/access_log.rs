//! The access log: one line per finished connection, target `access`, upstream's keys.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::Identity;
use crate::state::{Service, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Everything one access-log line says.
pub struct ConnectionLog<'a> {
    pub direction: Direction,
    pub src_addr: SocketAddr,
    pub dst_addr: SocketAddr,
    pub hbone_authority: Option<&'a str>,
    pub source: Option<&'a Workload>,
    pub source_identity: Option<&'a Identity>,
    pub destination: Option<&'a Workload>,
    pub destination_identity: Option<&'a Identity>,
    pub service: Option<&'a Service>,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub duration: Duration,
    pub error: Option<&'a str>,
}

impl ConnectionLog<'_> {
    /// The `key=value` part of the line: strings quoted, addresses and numbers bare.
    pub fn fields(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "src.addr={}", self.src_addr);
        if let Some(w) = self.source {
            let _ = write!(
                out,
                " src.workload={:?} src.namespace={:?}",
                w.telemetry_name(),
                w.namespace
            );
        }
        if let Some(id) = self.source_identity {
            let _ = write!(out, " src.identity={:?}", id.to_string());
        }
        let _ = write!(out, " dst.addr={}", self.dst_addr);
        if let Some(a) = self.hbone_authority {
            let _ = write!(out, " dst.hbone_addr={a}");
        }
        if let Some(s) = self.service {
            let _ = write!(out, " dst.service={:?}", s.hostname);
        }
        if let Some(w) = self.destination {
            let _ = write!(
                out,
                " dst.workload={:?} dst.namespace={:?}",
                w.telemetry_name(),
                w.namespace
            );
        }
        if let Some(id) = self.destination_identity {
            let _ = write!(out, " dst.identity={:?}", id.to_string());
        }
        let direction = match self.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        };
        let _ = write!(
            out,
            " direction={direction:?} bytes_sent={} bytes_recv={} duration=\"{}ms\"",
            self.bytes_sent,
            self.bytes_recv,
            self.duration.as_millis()
        );
        if let Some(e) = self.error {
            let _ = write!(out, " error={e:?}");
        }
        out
    }

    /// Writes the line: INFO on success, ERROR on failure.
    pub fn emit(&self) {
        if !tracing::enabled!(target: "access", tracing::Level::ERROR) {
            return;
        }
        let fields = self.fields();
        if self.error.is_some() {
            tracing::error!(target: "access", "connection complete\t{fields}");
        } else {
            tracing::info!(target: "access", "connection complete\t{fields}");
        }
    }
}

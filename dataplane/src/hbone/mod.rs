//! HBONE: TCP streams carried as HTTP/2 CONNECT streams over mutual TLS, port 15008.
//!
//! The HTTP/2 settings are upstream's, so our proxies interoperate with upstream ztunnels.

mod client;
mod headers;
mod io;
mod keepalive;
mod pool;
mod server;
mod stream;

use std::time::Duration;

#[cfg(test)]
pub(crate) use client::connect_request;
pub use client::{ConnectHeaders, HboneError, open_connection};
pub use headers::{TraceParent, forwarded_host};
pub use io::H2Io;
pub use pool::{Lease, Pool, PoolKey};
pub use server::{Authority, ConnectRequest, IncomingConnect, ServerOptions, serve_connection};
pub use stream::{ByteCounts, Counted, H2Stream, copy_bidirectional};

/// The port ztunnels and waypoints accept HBONE on.
pub const HBONE_PORT: u16 = 15008;
/// `SETTINGS_INITIAL_WINDOW_SIZE`, both sides.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Connection-level flow-control window, both sides.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// `SETTINGS_MAX_FRAME_SIZE`, both sides.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// `SETTINGS_MAX_HEADER_LIST_SIZE` the client advertises.
pub const CLIENT_MAX_HEADER_LIST: u32 = 16 * 1024;
/// `SETTINGS_MAX_HEADER_LIST_SIZE` the server advertises and enforces.
pub const SERVER_MAX_HEADER_LIST: u32 = 64 * 1024;
/// `SETTINGS_MAX_CONCURRENT_STREAMS` the server advertises.
pub const SERVER_MAX_STREAMS: u32 = 200;
/// Streams a client puts on one connection before opening another.
pub const CLIENT_MAX_STREAMS: usize = 100;
/// Per-stream send buffer on the client. Upstream's equals the stream window (4 MiB); ours
/// is the server's 400 KiB, which carried one stream ~4% faster through the benchmark here.
/// It is local buffering, never on the wire.
pub const CLIENT_SEND_BUFFER: usize = 400 * 1024;
/// Per-stream send buffer on the server.
pub const SERVER_SEND_BUFFER: usize = 400 * 1024;
/// First keepalive PING after this long, then at this interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// A connection whose PING is not answered within this is dropped.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Plaintext rustls may hold before a write blocks: several full frames, so h2's writes are
/// never cut into runt TLS records.
pub const TLS_BUFFER_LIMIT: usize = 256 * 1024;
/// Pooled connections unused this long are released.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

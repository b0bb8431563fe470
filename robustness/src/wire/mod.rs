//! The attacker's side of each protocol, written for misbehaving: plain TCP with exact control
//! of what is sent and how a socket is closed, SOCKS5, TLS with a CA-issued, a foreign or no
//! certificate, HTTP/2 frames by hand, and gRPC to istiod.

pub mod grpc;
pub mod h2raw;
pub mod socks5;
pub mod tcp;
pub mod tls;

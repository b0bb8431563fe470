//! HTTP/2 by hand, for what a well-behaved library will not send: header blocks that never
//! end (a CONTINUATION flood) and streams reset as soon as they are opened (a rapid-reset
//! flood). Just enough framing and HPACK (literal fields, never indexed) for that.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;

pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

/// The error code RST_STREAM carries for a client that changed its mind.
pub const CANCEL: u32 = 8;

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A literal header field never indexed, with the name given by its static-table index
/// (`Some`) or spelt out.
pub fn literal(out: &mut Vec<u8>, static_name: Option<usize>, name: &[u8], value: &[u8]) {
    match static_name {
        Some(index) => integer(out, 0x10, 4, index),
        None => {
            out.push(0x10);
            string(out, name);
        }
    }
    string(out, value);
}

/// The header block of `CONNECT authority`.
pub fn connect_block(authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, Some(2), b":method", b"CONNECT");
    literal(&mut block, Some(1), b":authority", authority.as_bytes());
    block
}

/// What the server sent back while the attack went on.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// The GOAWAY error code, if one came.
    pub goaway: Option<u32>,
    pub resets: u64,
    pub headers: u64,
    /// Per stream, the response status where it is one of HPACK's static ones (200, 204,
    /// 206, 304, 400, 404, 500), else 0 for "some other status".
    pub statuses: std::collections::BTreeMap<u32, u16>,
    /// Streams the server reset.
    pub reset_streams: std::collections::BTreeSet<u32>,
    /// The connection ended (EOF or an error).
    pub closed: bool,
}

/// A raw HTTP/2 client connection: the preface and SETTINGS exchanged, the server's frames
/// counted by a reader task.
pub struct Raw<S> {
    pub write: WriteHalf<S>,
    pub observed: Arc<Mutex<Observed>>,
    /// Holds the read half: aborted on drop, so that dropping a `Raw` closes its socket.
    reader: tokio::task::JoinHandle<()>,
}

impl<S> Drop for Raw<S> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Raw<S> {
    pub async fn start(mut io: S) -> std::io::Result<Self> {
        io.write_all(PREFACE).await?;
        io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        // Over TLS a write may only fill the session's buffer: flush, always.
        io.flush().await?;
        // Read until the server's own SETTINGS, and acknowledge it.
        loop {
            let (kind, flags, _, _) = read_frame(&mut io).await?;
            if kind == SETTINGS && flags & ACK == 0 {
                io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
                io.flush().await?;
                break;
            }
        }
        let (read, write) = tokio::io::split(io);
        let observed = Arc::new(Mutex::new(Observed::default()));
        let reader = tokio::spawn(read_all(read, observed.clone()));
        Ok(Raw {
            write,
            observed,
            reader,
        })
    }

    /// Writes `bytes` and flushes them out of the TLS session's buffer.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await?;
        self.write.flush().await
    }

    pub fn observed(&self) -> Observed {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

async fn read_all<S: AsyncRead>(mut read: ReadHalf<S>, observed: Arc<Mutex<Observed>>) {
    loop {
        let Ok((kind, flags, stream, payload)) = read_frame(&mut read).await else {
            observed.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            return;
        };
        let mut o = observed.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            GOAWAY if payload.len() >= 8 => {
                o.goaway = Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]))
            }
            RST_STREAM => {
                o.resets += 1;
                o.reset_streams.insert(stream);
            }
            HEADERS => {
                o.headers += 1;
                let status = static_status(flags, &payload);
                o.statuses.entry(stream).or_insert(status);
            }
            _ => {}
        }
    }
}

/// The `:status` of a response header block when it is an indexed static entry (h2 encodes
/// 200, 204, 206, 304, 400, 404 and 500 so), else 0.
fn static_status(flags: u8, payload: &[u8]) -> u16 {
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    let mut block = payload;
    if flags & PADDED != 0 && !block.is_empty() {
        block = &block[1..];
    }
    if flags & PRIORITY != 0 && block.len() >= 5 {
        block = &block[5..];
    }
    match block.first() {
        Some(0x88) => 200,
        Some(0x89) => 204,
        Some(0x8a) => 206,
        Some(0x8b) => 304,
        Some(0x8c) => 400,
        Some(0x8d) => 404,
        Some(0x8e) => 500,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_continue_past_the_prefix() {
        let mut out = Vec::new();
        integer(&mut out, 0, 7, 10);
        assert_eq!(out, [10]);
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix
        let mut out = Vec::new();
        integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn frames_carry_length_type_flags_and_stream() {
        let f = frame(RST_STREAM, 0, 3, &CANCEL.to_be_bytes());
        assert_eq!(f, [0, 0, 4, 3, 0, 0, 0, 0, 3, 0, 0, 0, 8]);
    }

    #[test]
    fn static_statuses() {
        assert_eq!(static_status(END_HEADERS, &[0x88, 0x40]), 200);
        assert_eq!(static_status(END_HEADERS, &[0x8c]), 400);
        assert_eq!(static_status(END_HEADERS, &[0x48, 0x03]), 0);
        assert_eq!(static_status(0x8 | END_HEADERS, &[0, 0x88]), 200);
    }

    #[test]
    fn a_connect_block_names_method_and_authority() {
        let block = connect_block("a:1");
        assert_eq!(block[0], 0x12);
        assert_eq!(&block[1..9], b"\x07CONNECT");
        assert_eq!(&block[9..], b"\x11\x03a:1");
    }
}

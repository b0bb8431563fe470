//! A packet capture on one interface of a namespace (an `AF_PACKET` socket, what `tcpdump`
//! uses), so a test can say what actually crossed a link: which TCP flows, and whether their
//! bytes were TLS records or something a reader could see.
//!
//! The socket is made inside the namespace and read on a thread of its own until
//! [`Capture::stop`]. Only IPv4 TCP segments with a payload are kept.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::Netns;

/// `ETH_P_ALL` in network byte order, as `socket` and `sockaddr_ll` want it.
const ETH_P_ALL: u16 = 0x0003;
const ETHERTYPE_IPV4: u16 = 0x0800;
const TCP: u8 = 6;
/// The largest TLS record: 2^14 plus the most expansion TLS 1.2/1.3 allow.
const MAX_TLS_RECORD: usize = (1 << 14) + 2048;

/// One TCP segment with data, as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    /// The TCP sequence number, so a flow's bytes can be put back in order.
    pub sequence: u32,
    pub payload: Vec<u8>,
}

/// A capture running on a thread of its own.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    reader: JoinHandle<io::Result<Vec<Segment>>>,
}

impl Capture {
    /// Starts capturing on `interface` inside `netns`.
    pub fn start(netns: &Netns, interface: &str) -> io::Result<Capture> {
        let name = std::ffi::CString::new(interface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name"))?;
        let socket = netns.enter(move || -> io::Result<OwnedFd> {
            // SAFETY: a plain syscall; the result is checked before it is owned.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ALL.to_be()),
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by `socket` and is owned by nobody else.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: `name` is NUL-terminated.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: an all-zero `sockaddr_ll` is valid; the fields set are the ones `bind`
            // reads for AF_PACKET.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = index as i32;
            // SAFETY: `addr` is a valid `sockaddr_ll` of the size passed.
            let bound = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if bound != 0 {
                return Err(io::Error::last_os_error());
            }
            // Wake every 50 ms to see whether to stop.
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: `timeout` is a valid `timeval` of the size passed.
            let set = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            if set != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(socket)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || read_until(&socket, &stopped));
        Ok(Capture { stop, reader })
    }

    /// Stops and returns every segment seen, in the order seen.
    pub fn stop(self) -> io::Result<Vec<Segment>> {
        self.stop.store(true, Ordering::Release);
        self.reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the capture thread panicked")))
    }
}

/// Reads frames until told to stop, then takes what is already queued without waiting: a frame
/// that crossed the link before the stop is in the socket's queue even when this thread had not
/// been scheduled since (on a busy machine it can wake for the first frame of an exchange only
/// after the stop).
fn read_until(socket: &OwnedFd, stop: &AtomicBool) -> io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut frame = vec![0u8; 65_536];
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let flags = if stopping { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: `frame` is writable for its whole length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                frame.as_mut_ptr().cast(),
                frame.len(),
                flags,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                // Stopping, and nothing left in the queue.
                io::ErrorKind::WouldBlock if stopping => break,
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        }
        if let Some(segment) = parse_frame(&frame[..n as usize]) {
            segments.push(segment);
        }
    }
    Ok(segments)
}

/// An Ethernet frame carrying IPv4 TCP with data, as a [`Segment`].
pub fn parse_frame(frame: &[u8]) -> Option<Segment> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(14..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    if *ip.get(9)? != TCP || header_len < 20 || total_len > ip.len() {
        return None;
    }
    let source_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let destination_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = ip.get(header_len..total_len)?;
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    let payload = tcp.get(data_offset..)?;
    if payload.is_empty() {
        return None;
    }
    Some(Segment {
        source: SocketAddrV4::new(source_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
        destination: SocketAddrV4::new(destination_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
        sequence: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        payload: payload.to_vec(),
    })
}

/// Each direction of each TCP connection: its bytes in sequence order, retransmissions
/// dropped.
pub fn flows(segments: &[Segment]) -> BTreeMap<(SocketAddrV4, SocketAddrV4), Vec<u8>> {
    let mut by_flow: BTreeMap<(SocketAddrV4, SocketAddrV4), BTreeMap<u32, &[u8]>> = BTreeMap::new();
    for s in segments {
        by_flow
            .entry((s.source, s.destination))
            .or_default()
            .entry(s.sequence)
            .or_insert(&s.payload);
    }
    by_flow
        .into_iter()
        .map(|(flow, pieces)| (flow, pieces.into_values().flatten().copied().collect()))
        .collect()
}

/// Whether `bytes` (one direction of a connection, from its start) is nothing but TLS
/// records; the answer says where it stops being so. A capture may end mid-record.
pub fn tls_records_only(bytes: &[u8]) -> Result<usize, String> {
    let mut at = 0;
    let mut records = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 5) else {
            break; // a header cut by the end of the capture
        };
        let kind = header[0];
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if !(0x14..=0x17).contains(&kind) || header[1] != 0x03 || length > MAX_TLS_RECORD {
            return Err(format!(
                "byte {at} is not a TLS record header: {:02x?}",
                &bytes[at..bytes.len().min(at + 16)]
            ));
        }
        at += 5 + length;
        records += 1;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, seq: u32, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + 20 + data.len();
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, TCP, 0, 0];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[12] = 5 << 4;
        f.extend_from_slice(&tcp);
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn frames_become_flows_in_sequence_order() {
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        let second = parse_frame(&frame(a, 40000, b, 15008, 105, b"world")).unwrap();
        let first = parse_frame(&frame(a, 40000, b, 15008, 100, b"hello")).unwrap();
        let again = first.clone();
        assert_eq!(first.destination.port(), 15008);
        let flows = flows(&[second, first, again]);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows.values().next().unwrap(), b"helloworld");
        // Not IPv4, or no payload: nothing.
        let mut arp = frame(a, 1, b, 2, 0, b"x");
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(parse_frame(&arp).is_none());
        assert!(parse_frame(&frame(a, 1, b, 2, 0, b"")).is_none());
        assert!(parse_frame(&[0u8; 10]).is_none());
    }

    #[test]
    fn a_capture_on_a_link_sees_what_crossed_it() {
        if let Err(why) = crate::netns::check() {
            crate::skip("a_capture_on_a_link_sees_what_crossed_it", &why);
            return;
        }
        use std::io::{Read, Write};
        let lan = crate::Lan::create().unwrap();
        let a = Netns::create("cap-a").unwrap();
        let b = Netns::create("cap-b").unwrap();
        lan.attach(&a, "198.18.11.1/24").unwrap();
        lan.attach(&b, "198.18.11.2/24").unwrap();
        let listener = b
            .enter(|| std::net::TcpListener::bind("198.18.11.2:7001"))
            .unwrap()
            .unwrap();
        let capture = Capture::start(&a, "eth0").unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = [0u8; 12];
            s.read_exact(&mut got).unwrap();
            s.write_all(b"pong").unwrap();
        });
        let mut client = a
            .enter(|| std::net::TcpStream::connect("198.18.11.2:7001"))
            .unwrap()
            .unwrap();
        client.write_all(b"secret-token").unwrap();
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).unwrap();
        server.join().unwrap();
        let segments = capture.stop().unwrap();
        let flows = flows(&segments);
        let to_b = SocketAddrV4::new(Ipv4Addr::new(198, 18, 11, 2), 7001);
        let sent = flows
            .iter()
            .find(|((_, dst), _)| *dst == to_b)
            .map(|(_, bytes)| bytes.clone());
        assert_eq!(sent.as_deref(), Some(&b"secret-token"[..]));
        assert!(tls_records_only(b"secret-token").is_err());
    }

    #[test]
    fn tls_records_are_told_from_plaintext() {
        let mut tls = vec![0x16, 0x03, 0x01, 0x00, 0x02, 1, 2];
        tls.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x03, 9, 9, 9]);
        assert_eq!(tls_records_only(&tls), Ok(2));
        // Cut mid-record by the capture's end: still TLS.
        assert_eq!(tls_records_only(&tls[..13]), Ok(2));
        assert_eq!(tls_records_only(&tls[..9]), Ok(1), "a header cut short");
        let err = tls_records_only(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert!(err.contains("byte 0"), "{err}");
        tls.extend_from_slice(b"hello");
        assert!(tls_records_only(&tls).unwrap_err().contains("byte 15"));
    }
}

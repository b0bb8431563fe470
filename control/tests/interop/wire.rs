//! Blocking clients and the app server, run inside the pods' namespaces through
//! [`Netns::enter`]: plain sockets, so what they see is what an application would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use harness::{Netns, Process};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The app: on every connection it says `<pod>:<port>`, echoes what it reads, and after the
/// client's half-close writes `bye <bytes read>` and closes. The greeting tells which pod
/// answered; the `bye` proves the half-close crossed the tunnel and the data after it came
/// back.
pub fn serve_app(netns: &Netns, pod: &str, port: u16) -> Result<(), String> {
    let listener = netns
        .enter(|| TcpListener::bind(("0.0.0.0", port)))
        .and_then(|bound| bound)
        .map_err(|e| format!("app {pod}:{port}: {e}"))?;
    let pod = pod.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let greeting = format!("{pod}:{port}\n");
            std::thread::spawn(move || {
                let _ = echo(stream, &greeting);
            });
        }
    });
    Ok(())
}

fn echo(mut stream: TcpStream, greeting: &str) -> std::io::Result<()> {
    stream.write_all(greeting.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
        stream.write_all(&buf[..n])?;
    }
    stream.write_all(format!("bye {total}\n").as_bytes())
}

/// What a client got.
#[derive(Debug)]
pub enum Outcome {
    /// The app answered: its greeting, whether every byte came back, and its `bye` line.
    Served {
        greeting: String,
        echoed: bool,
        bye: String,
    },
    /// Refused before the app said anything: a SOCKS5 error reply, or the stream closed.
    Refused(String),
}

impl Outcome {
    pub fn greeting(&self) -> Option<&str> {
        match self {
            Outcome::Served { greeting, .. } => Some(greeting),
            Outcome::Refused(_) => None,
        }
    }
}

/// SOCKS5 CONNECT (no auth, IPv4) through `proxy` to `target`.
pub fn socks5(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect_timeout(&proxy, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let IpAddr::V4(ip) = target.ip() else {
        return Err("IPv4 only".into());
    };
    // Greeting and request one at a time, as a cautious client does.
    s.write_all(&[5, 1, 0]).map_err(|e| e.to_string())?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method)
        .map_err(|e| format!("SOCKS5 method reply: {e}"))?;
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).map_err(|e| e.to_string())?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)
        .map_err(|e| format!("SOCKS5 reply: {e}"))?;
    match reply[1] {
        0 => Ok(s),
        code => Err(format!("SOCKS5 reply {code}")),
    }
}

/// A plain TCP connection to `target`.
pub fn plain(target: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&target, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Reads the app's greeting, sends `payload`, half-closes, and reads everything back.
pub fn exchange(connected: Result<TcpStream, String>, payload: &[u8]) -> Outcome {
    let stream = match connected {
        Ok(s) => s,
        Err(why) => return Outcome::Refused(why),
    };
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(e) => return Outcome::Refused(e.to_string()),
    });
    let mut greeting = String::new();
    match reader.read_line(&mut greeting) {
        Ok(n) if n > 0 && greeting.ends_with('\n') => {}
        Ok(_) => return Outcome::Refused("closed before the app answered".into()),
        Err(e) => return Outcome::Refused(format!("{e} before the app answered")),
    }
    let mut writer = stream;
    let to_send = payload.to_vec();
    // Written on its own thread: the echo comes back while the rest is still going out.
    let sender = std::thread::spawn(move || {
        writer.write_all(&to_send)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::with_capacity(payload.len() + 16);
    let read = reader.read_to_end(&mut back);
    let sent = sender
        .join()
        .map_err(|_| ())
        .and_then(|r| r.map_err(|_| ()));
    let echoed = read.is_ok() && sent.is_ok() && back.starts_with(payload);
    let bye = String::from_utf8_lossy(back.get(payload.len()..).unwrap_or_default())
        .trim()
        .to_string();
    Outcome::Served {
        greeting: greeting.trim().to_string(),
        echoed,
        bye,
    }
}

/// `GET path` over HTTP/1.0 (so the body is never chunked): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The first line of `process`'s log holding every one of `needles`, waiting up to 5 s
/// (access-log lines are written when a connection closes).
pub fn log_line(process: &Process, needles: &[&str]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(process.log_path()).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
        {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no line of {}'s log has all of {needles:?}; it ends:\n{}",
                process.name(),
                process.log_tail(3000)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Standard base64 (upstream's `/config_dump` carries PEM so).
pub fn base64(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let v = value(c).ok_or_else(|| format!("not base64: {:?}", c as char))?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64("aGk=").unwrap(), b"hi");
    assert!(base64("a*").is_err());
}

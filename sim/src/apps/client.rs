//! The client side of one request on a connection: TCP (a line echoed back) or HTTP/1.1 (a
//! request written by hand so the simulator controls every byte, and the whole answer read
//! back: status, headers and body, framed by `Content-Length`, chunked encoding or the close).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Job;
use super::echo::EchoBody;
use crate::scenario::{Outcome, Protocol};
use crate::wire::marker;

/// An HTTP answer as the client read it, for checks beyond the outcome (conformance).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// In the order received, names as sent (compare them case-insensitively).
    pub headers: Vec<(String, String)>,
    /// The body (lossy UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// Every value of header `name`.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The echo's report, when the body is one.
    pub fn echo(&self) -> Option<EchoBody> {
        serde_json::from_str(&self.body).ok()
    }
}

/// What one exchange gave.
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub outcome: Outcome,
    /// Whether the connection can carry another request.
    pub reusable: bool,
    /// The pod that answered an HTTP request, as its echo says.
    pub backend: Option<String>,
    /// The whole HTTP answer.
    pub response: Option<HttpResponse>,
}

impl Exchanged {
    fn refused() -> Self {
        Exchanged {
            outcome: Outcome::Refused,
            reusable: false,
            backend: None,
            response: None,
        }
    }
}

/// One request on `conn`: any stream, so that a real-kernel run (`e2e`) makes its requests
/// byte for byte as the simulator does.
pub async fn exchange<C: AsyncRead + AsyncWrite + Unpin>(conn: &mut C, job: &Job) -> Exchanged {
    match job.protocol {
        Protocol::Tcp => tcp(conn, job).await,
        Protocol::Http => http(conn, job).await.unwrap_or_else(Exchanged::refused),
    }
}

async fn tcp<C: AsyncRead + AsyncWrite + Unpin>(conn: &mut C, job: &Job) -> Exchanged {
    let marker = marker(job.traffic, job.request);
    let mut payload = format!("{marker} from {} to {}", job.source, job.destination);
    payload.push('\n');
    if conn.write_all(payload.as_bytes()).await.is_err() {
        return Exchanged::refused();
    }
    let mut back = vec![0u8; payload.len()];
    let mut got = 0;
    while got < back.len() {
        match conn.read(&mut back[got..]).await {
            Ok(0) | Err(_) => return Exchanged::refused(),
            Ok(n) => got += n,
        }
    }
    if back == payload.as_bytes() {
        Exchanged {
            outcome: Outcome::Succeed,
            reusable: true,
            backend: None,
            response: None,
        }
    } else {
        Exchanged::refused()
    }
}

/// Reads from `conn` into `pending` until it holds `n` bytes; `None` if the peer closes first.
async fn fill<C: AsyncRead + Unpin>(conn: &mut C, pending: &mut Vec<u8>, n: usize) -> Option<()> {
    let mut buf = vec![0u8; 8 * 1024];
    while pending.len() < n {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(got) => pending.extend_from_slice(&buf[..got]),
        }
    }
    Some(())
}

/// Reads until `pending` holds `needle` at or after `from`; its position.
async fn fill_until<C: AsyncRead + Unpin>(
    conn: &mut C,
    pending: &mut Vec<u8>,
    from: usize,
    needle: &[u8],
) -> Option<usize> {
    loop {
        if let Some(at) = pending
            .get(from..)
            .and_then(|tail| tail.windows(needle.len()).position(|w| w == needle))
        {
            return Some(from + at);
        }
        let want = pending.len() + 1;
        fill(conn, pending, want).await?;
    }
}

async fn http<C: AsyncRead + AsyncWrite + Unpin>(conn: &mut C, job: &Job) -> Option<Exchanged> {
    let marker = marker(job.traffic, job.request);
    let body = job.http.body.as_deref().unwrap_or_default();
    let mut request = format!("{} {} HTTP/1.1\r\n", job.http.method, job.http.path);
    if !job
        .http
        .headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("host: {}\r\n", job.authority));
    }
    request.push_str(&format!(
        "x-sim-request: {marker}\r\ncontent-length: {}\r\n",
        body.len()
    ));
    for (name, value) in &job.http.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    conn.write_all(request.as_bytes()).await.ok()?;

    let mut pending = Vec::new();
    let head_end = fill_until(conn, &mut pending, 0, b"\r\n\r\n").await? + 4;
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut reusable = value("connection").as_deref() != Some("close");
    let no_body = job.http.method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let mut body = Vec::new();
    if no_body {
        // Nothing follows the head.
    } else if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut at = head_end;
        loop {
            let line_end = fill_until(conn, &mut pending, at, b"\r\n").await?;
            let size_text = String::from_utf8_lossy(&pending[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailers, then the empty line.
                let end = fill_until(conn, &mut pending, at, b"\r\n").await?;
                if end > at {
                    fill_until(conn, &mut pending, at, b"\r\n\r\n").await?;
                }
                break;
            }
            fill(conn, &mut pending, at + size + 2).await?;
            body.extend_from_slice(&pending[at..at + size]);
            at += size + 2;
        }
    } else if let Some(length) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        fill(conn, &mut pending, head_end + length).await?;
        body.extend_from_slice(&pending[head_end..head_end + length]);
    } else {
        // Delimited by the close.
        let mut buf = vec![0u8; 8 * 1024];
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
        }
        body.extend_from_slice(pending.get(head_end..).unwrap_or_default());
        reusable = false;
    }
    let response = HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let backend = response.echo().map(|e| e.pod).filter(|p| !p.is_empty());
    let outcome = if (200..300).contains(&status) {
        Outcome::Succeed
    } else {
        Outcome::Status(status)
    };
    Some(Exchanged {
        outcome,
        reusable,
        backend,
        response: job.record.then_some(response),
    })
}

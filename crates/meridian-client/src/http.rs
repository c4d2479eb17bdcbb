//! A small blocking HTTP/1.1 client for a node's HTTP routes (`/readyz`,
//! `/v1/cluster/status`, membership and fault-injection calls): one request
//! per connection, the whole exchange under one deadline, the answer capped
//! in size, chunked answers decoded. The CLI, the chaos runner and the
//! multi-process tests all use this one; none carries an HTTP client
//! dependency.
//!
//! Blocking on purpose: its callers are a CLI, test code and a few
//! control-plane calls (the chaos runner wraps it in `spawn_blocking`).

use std::fmt::Display;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Answers longer than this are refused ([`HttpError::TooLarge`]); the
/// status JSON of a large cluster is a few hundred KiB.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address did not resolve to any socket address.
    #[error("{addr}: does not resolve to an address")]
    Resolve { addr: String },
    /// Connecting, sending or reading failed.
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The exchange did not finish within the deadline.
    #[error("{addr}: no complete answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The answer was longer than [`MAX_ANSWER_BYTES`].
    #[error("{addr}: answer longer than {limit} bytes")]
    TooLarge { addr: String, limit: usize },
    /// The answer was not HTTP/1.x.
    #[error("{addr}: malformed HTTP answer")]
    Malformed { addr: String },
}

/// A request body and its content type.
#[derive(Clone, Copy, Debug)]
pub struct Body<'a> {
    /// The `Content-Type` header.
    pub content_type: &'a str,
    /// The bytes sent.
    pub bytes: &'a [u8],
}

/// `(status, body)` of `method path` on `addr` (`host:port` or a socket
/// address), all within `timeout`.
pub fn request<A: ToSocketAddrs + Display>(
    addr: A,
    method: &str,
    path: &str,
    body: Option<Body<'_>>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let deadline = Instant::now() + timeout;
    let name = addr.to_string();
    let io = |source: std::io::Error| {
        if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            HttpError::Timeout { addr: name.clone(), timeout }
        } else {
            HttpError::Io { addr: name.clone(), source }
        }
    };
    let sock = addr.to_socket_addrs().map_err(io)?.next().ok_or_else(|| HttpError::Resolve { addr: name.clone() })?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).map_err(io)?;
    let (content_type, bytes) = body.map_or(("text/plain", &[][..]), |b| (b.content_type, b.bytes));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    );
    s.set_write_timeout(Some(remaining(deadline, &name, timeout)?)).map_err(io)?;
    // One write: a server that answers after the head and closes would
    // otherwise reset the connection under the body still in flight.
    let mut request = head.into_bytes();
    request.extend_from_slice(bytes);
    s.write_all(&request).map_err(io)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(remaining(deadline, &name, timeout)?)).map_err(io)?;
        let n = s.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        if raw.len() + n > MAX_ANSWER_BYTES {
            return Err(HttpError::TooLarge { addr: name, limit: MAX_ANSWER_BYTES });
        }
        raw.extend_from_slice(&buf[..n]);
    }
    parse_answer(&raw).ok_or(HttpError::Malformed { addr: name })
}

/// `GET path` on `addr`.
pub fn get<A: ToSocketAddrs + Display>(addr: A, path: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    request(addr, "GET", path, None, timeout)
}

/// `POST path` on `addr` with a JSON body.
pub fn post_json<A: ToSocketAddrs + Display>(addr: A, path: &str, json: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    request(addr, "POST", path, Some(Body { content_type: "application/json", bytes: json.as_bytes() }), timeout)
}

fn remaining(deadline: Instant, addr: &str, timeout: Duration) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::Timeout { addr: addr.to_string(), timeout });
    }
    Ok(left)
}

/// Status and body of a complete HTTP/1.x answer (the connection closed
/// after it); `None` when it is not one.
fn parse_answer(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        } else if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().ok()?);
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The payload of a chunked body; `None` when it is cut short or malformed.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_answer() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_answer(raw), Some((200, "hello".to_string())));
    }

    #[test]
    fn decodes_a_chunked_answer() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=1\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_answer(raw), Some((503, "{\"a\":1}".to_string())));
    }

    #[test]
    fn refuses_cut_or_foreign_answers() {
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello"), None);
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nhello"), None);
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn talks_to_a_real_socket_and_honours_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            // First connection: answer after reading the request.
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n{}") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request cut short: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"POST /x HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok").unwrap();
            drop(s);
            // Second connection: never answer.
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(s);
        });
        assert_eq!(post_json(addr, "/x", "{}", Duration::from_secs(5)).unwrap(), (201, "ok".to_string()));
        let err = get(addr, "/slow", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, HttpError::Timeout { .. }), "{err:?}");
        server.join().unwrap();
    }
}

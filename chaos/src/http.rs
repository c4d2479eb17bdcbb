//! A minimal HTTP/1.1 client for the nodes' health, status and fault
//! injection routes: one request per connection, every step under a
//! deadline, the answer capped in size.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read; the status JSON of a 5-node cluster is a few KiB.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: malformed HTTP answer")]
    Malformed { addr: SocketAddr },
}

/// `(status, body)` of one request.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    match tokio::time::timeout(timeout, request_inner(addr, method, path, json_body)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout { addr, timeout }),
    }
}

async fn request_inner(addr: SocketAddr, method: &str, path: &str, json_body: Option<&str>) -> Result<(u16, String), HttpError> {
    let io = |source| HttpError::Io { addr, source };
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    let body = json_body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw).await.map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let code = text.get(9..12).and_then(|c| c.parse().ok()).ok_or(HttpError::Malformed { addr })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    request(addr, "GET", path, None, timeout).await
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value, timeout: Duration) -> Result<(u16, String), HttpError> {
    request(addr, "POST", path, Some(&body.to_string()), timeout).await
}

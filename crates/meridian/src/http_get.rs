//! A minimal HTTP/1.1 GET and JSON POST for the CLI's loopback calls
//! (readiness, range status, membership), so the binary carries no HTTP
//! client dependency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Answers read past this are cut off.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// GETs `path`; returns the status code and the body.
pub fn get(addr: SocketAddr, path: &str, connect_timeout: Duration, read_timeout: Duration) -> std::io::Result<(u16, String)> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, &head, connect_timeout, read_timeout)
}

/// POSTs a JSON body to `path`; returns the status code and the body.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    json: &str,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    exchange(addr, &head, connect_timeout, read_timeout)
}

fn exchange(addr: SocketAddr, request: &str, connect_timeout: Duration, read_timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, connect_timeout)?;
    s.set_read_timeout(Some(read_timeout))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.take(MAX_ANSWER_BYTES).read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

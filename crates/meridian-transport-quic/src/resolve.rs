//! Turning a peer's `host:port` into socket addresses, at every dial.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// What [`Resolve::resolve`] returns: the addresses, or why there are none.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, String>> + Send + 'a>>;

/// Resolves a peer's advertised `host:port`.
///
/// To ensure correctness: answer what the name points to *now* — the
/// transport calls this at every dial and redial and caches nothing, so a
/// peer that came back at another IP under the same name is found again.
/// The transport bounds each call by its connect timeout.
pub trait Resolve: std::fmt::Debug + Send + Sync + 'static {
    /// The addresses `host_port` stands for, in order of preference.
    fn resolve<'a>(&'a self, host_port: &'a str) -> ResolveFuture<'a>;
}

/// The system resolver (`getaddrinfo`, through tokio's blocking pool). A
/// socket address (`10.0.0.5:2380`) resolves to itself without a lookup.
#[derive(Debug, Default, Clone, Copy)]
pub struct DnsResolver;

impl Resolve for DnsResolver {
    fn resolve<'a>(&'a self, host_port: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            if let Ok(addr) = host_port.parse::<SocketAddr>() {
                return Ok(vec![addr]);
            }
            let addrs = tokio::net::lookup_host(host_port).await.map_err(|e| e.to_string())?;
            Ok(addrs.collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_addresses_and_localhost_resolve() {
        let r = DnsResolver;
        assert_eq!(r.resolve("127.0.0.7:2380").await.unwrap(), vec!["127.0.0.7:2380".parse::<SocketAddr>().unwrap()]);
        let local = r.resolve("localhost:2380").await.unwrap();
        assert!(local.iter().any(|a| a.ip().is_loopback() && a.port() == 2380), "{local:?}");
        assert!(r.resolve("no-port").await.is_err());
        assert!(r.resolve("name.invalid:1").await.is_err(), "RFC 6761: .invalid never resolves");
    }
}

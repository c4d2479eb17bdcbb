//! The nodes' HTTP routes from async code: Meridian's one small HTTP client
//! (`meridian_client::http`, blocking) on tokio's blocking pool, so a slow
//! node never stalls the runner's event loop.

use std::net::SocketAddr;
use std::time::Duration;

pub use meridian_client::http::HttpError;

/// `GET path` on `addr`: `(status, body)`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    let path = path.to_string();
    blocking(move || meridian_client::http::get(addr, &path, timeout)).await
}

/// `POST path` on `addr` with a JSON body: `(status, body)`.
pub async fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value, timeout: Duration) -> Result<(u16, String), HttpError> {
    let (path, body) = (path.to_string(), body.to_string());
    blocking(move || meridian_client::http::post_json(addr, &path, &body, timeout)).await
}

async fn blocking(f: impl FnOnce() -> Result<(u16, String), HttpError> + Send + 'static) -> Result<(u16, String), HttpError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        // The closure panicked: surface the panic, as a direct call would.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

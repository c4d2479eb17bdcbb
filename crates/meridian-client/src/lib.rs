//! Rust client for Meridian.
//!
//! - [`Client`] connects to any members, fails over between them, and
//!   retries only what is safe to retry (reads, keepalives, lock acquires —
//!   which are idempotent per session — and writes the server refused
//!   before proposing them).
//! - [`Session`] keeps itself alive and implements **jeopardy**: it knows,
//!   on its own monotonic clock, until when the server cannot possibly have
//!   expired it. Past that instant with no newer acknowledgement, every
//!   lock and leadership of the session is reported lost — before the
//!   server could grant it to anyone else (see `docs/locks.md`).
//! - [`LockGuard`] and [`Leadership`] expose the fencing token; [`Fence`]
//!   lets a downstream resource reject stale tokens.
//! - [`Client::watch`] resumes from the last revision it delivered after a
//!   reconnect.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meridian_client::ClientError> {
//! use meridian_client::{Client, LockOptions};
//! let client = Client::connect(["127.0.0.1:2379", "127.0.0.2:2379"]).await?;
//! let session = client.session("/billing/", 10).await?;
//! let lock = session.lock("/billing/cron", LockOptions::default()).await?.expect("no wait limit");
//! // ... write to a fenced resource with lock.token() ...
//! if !lock.is_held() { /* stop: the session is in jeopardy */ }
//! lock.release().await?;
//! # Ok(()) }
//! ```

// The client owns its clock and tasks (the keepalive loop, jeopardy).
#![allow(clippy::disallowed_methods)]

mod client;
mod error;
mod fence;
pub mod http;
mod session;
mod watch;

pub use client::{Client, ClientConfig};
pub use error::ClientError;
pub use fence::{Fence, FenceError, FenceStore};
pub use session::{LeaderEvent, Leadership, LockGuard, LockOptions, Session};
pub use watch::{WatchEvent, WatchStream};

pub use meridian_proto::etcdserverpb as etcd;
pub use meridian_proto::meridian::v1 as api;
pub use meridian_proto::mvccpb;

//! Watches that survive reconnects: after a broken stream the watch is
//! re-created (on another member if need be) from the revision after the
//! last one delivered, so no event is lost or repeated.

use std::time::Duration;

use meridian_proto::etcdserverpb as etcd;
use meridian_proto::etcdserverpb::watch_client::WatchClient;
use meridian_proto::mvccpb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tracing::debug;

use crate::client::Client;
use crate::error::ClientError;

/// Events buffered between the stream and the application.
const WATCH_BUFFER: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    pub delete: bool,
    pub kv: mvccpb::KeyValue,
}

/// Events in revision order; ends with an error only when the watch cannot
/// continue (its revision was compacted, or the request is invalid).
pub type WatchStream = mpsc::Receiver<Result<WatchEvent, ClientError>>;

impl Client {
    /// Watches `[key, range_end)` (`range_end` empty: just `key`) from
    /// `start_revision` (0: from now).
    pub fn watch(&self, key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>, start_revision: i64) -> WatchStream {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let client = self.clone();
        let (key, range_end) = (key.into(), range_end.into());
        tokio::spawn(async move {
            let mut next = start_revision;
            let mut backoff = client.config().backoff;
            loop {
                let (i, ch) = client.channel();
                let create = etcd::WatchRequest {
                    request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(etcd::WatchCreateRequest {
                        key: key.clone(),
                        range_end: range_end.clone(),
                        start_revision: next,
                        ..Default::default()
                    })),
                };
                // Keep the request stream open for the life of the watch.
                let (req_tx, req_rx) = mpsc::channel(1);
                let _ = req_tx.send(create).await;
                match WatchClient::new(ch).watch(tokio_stream::wrappers::ReceiverStream::new(req_rx)).await {
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        while let Some(item) = stream.next().await {
                            let Ok(r) = item else { break };
                            if r.compact_revision > 0 {
                                let msg = format!("revision {next} was compacted (oldest kept: {})", r.compact_revision);
                                let _ = tx.send(Err(ClientError::Rejected { code: tonic::Code::OutOfRange, message: msg })).await;
                                return;
                            }
                            if r.canceled {
                                let msg = format!("watch cancelled by the server: {}", r.cancel_reason);
                                debug!("{msg}");
                                break;
                            }
                            backoff = client.config().backoff;
                            for e in r.events {
                                let Some(kv) = e.kv else { continue };
                                next = kv.mod_revision + 1;
                                if tx.send(Ok(WatchEvent { delete: e.r#type == 1, kv })).await.is_err() {
                                    return;
                                }
                            }
                            if next == 0 {
                                // Pin "now" so a reconnect does not skip events.
                                next = r.header.map_or(0, |h| h.revision + 1);
                            }
                        }
                        drop(req_tx);
                    }
                    Err(s) if s.code() == tonic::Code::InvalidArgument || s.code() == tonic::Code::FailedPrecondition => {
                        let _ = tx.send(Err(ClientError::from_status(&s))).await;
                        return;
                    }
                    Err(s) => debug!("watch: {s}"),
                }
                if tx.is_closed() {
                    return;
                }
                client.rotate(i);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        rx
    }
}

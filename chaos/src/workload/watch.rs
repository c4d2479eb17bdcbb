//! Watchers: each follows an interval of keys from revision 1 through the
//! whole run (the client library resumes it after broken streams), and is
//! stopped once it has caught up with the final state.

use std::time::Duration;

use meridian_client::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::debug;

/// Most events one watcher keeps; a run writes far fewer.
const MAX_EVENTS: usize = 2_000_000;

/// One delivered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub key: String,
    pub mod_revision: i64,
    pub value: String,
    pub delete: bool,
}

/// What a watcher saw, and why it stopped early if it did.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WatchLog {
    pub watcher: u64,
    pub events: Vec<Seen>,
    pub ended_with: Option<String>,
}

/// Follows `[key, range_end)` from revision 1 until `stop` says the
/// revision to reach (then until it has seen it, or `catch_up` passes).
pub async fn watch_until(
    watcher: u64,
    client: Client,
    key: Vec<u8>,
    range_end: Vec<u8>,
    mut stop: watch::Receiver<Option<i64>>,
    catch_up: Duration,
) -> WatchLog {
    let mut log = WatchLog { watcher, ..Default::default() };
    let mut rx = client.watch(key, range_end, 1);
    let mut last_rev = 0i64;
    let mut catch_up_deadline: Option<tokio::time::Instant> = None;
    for _ in 0..MAX_EVENTS {
        if let Some(target) = *stop.borrow() {
            if last_rev >= target {
                return log;
            }
            let deadline = *catch_up_deadline.get_or_insert_with(|| tokio::time::Instant::now() + catch_up);
            if tokio::time::Instant::now() >= deadline {
                log.ended_with = Some(format!("caught up only to revision {last_rev} of {target} within {catch_up:?}"));
                return log;
            }
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Ok(e)) => {
                    last_rev = last_rev.max(e.kv.mod_revision);
                    log.events.push(Seen {
                        key: String::from_utf8_lossy(&e.kv.key).into_owned(),
                        mod_revision: e.kv.mod_revision,
                        value: String::from_utf8_lossy(&e.kv.value).into_owned(),
                        delete: e.delete,
                    });
                }
                Some(Err(e)) => {
                    log.ended_with = Some(format!("watch ended: {e}"));
                    return log;
                }
                None => {
                    log.ended_with = Some("watch stream closed".into());
                    return log;
                }
            },
            r = stop.changed() => if r.is_err() {
                log.ended_with = Some("stopped without a target revision".into());
                return log;
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    log.ended_with = Some(format!("more than {MAX_EVENTS} events"));
    log
}

/// Every event of one key from revision 1 up to `until` (its final
/// mod_revision), read after the run through a fresh watch.
pub async fn key_history(client: &Client, key: &str, until: i64, limit: Duration) -> Result<Vec<Seen>, String> {
    let (_tx, stop) = watch::channel(Some(until));
    let log = watch_until(u64::MAX, client.clone(), key.as_bytes().to_vec(), Vec::new(), stop, limit).await;
    if let Some(why) = log.ended_with {
        debug!("history of {key}: {why}");
        return Err(format!("reading the history of {key}: {why}"));
    }
    Ok(log.events)
}

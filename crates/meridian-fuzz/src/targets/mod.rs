//! Every fuzz target, by the kind of untrusted bytes it takes.

pub mod etcd;
pub mod gossip;
pub mod http2;
pub mod kv;
pub mod peer;
pub mod storage;

use crate::target::Target;

/// Names of every target, in the order `all` builds them.
pub const NAMES: [&str; 10] = [
    "peer-frame",
    "raft-message",
    "storage-records",
    "store-open",
    "snapshot-payload",
    "kv-command",
    "kv-query",
    "etcd-requests",
    "http2-authority",
    "gossip-packet",
];

/// Builds one target (some build a fixture: a small store or KV range).
pub fn by_name(name: &str) -> Option<Box<dyn Target>> {
    let t: Box<dyn Target> = match name {
        "peer-frame" => Box::new(peer::PeerFrame),
        "raft-message" => Box::new(peer::RaftMessage),
        "storage-records" => Box::new(storage::StorageRecords::new()),
        "store-open" => Box::new(storage::StoreOpen::new()),
        "snapshot-payload" => Box::new(storage::SnapshotPayload),
        "kv-command" => Box::new(kv::KvCommand::new()),
        "kv-query" => Box::new(kv::KvQuery::new()),
        "etcd-requests" => Box::new(etcd::EtcdRequests),
        "http2-authority" => Box::new(http2::Http2Authority),
        "gossip-packet" => Box::new(gossip::GossipPacket),
        _ => return None,
    };
    Some(t)
}

pub fn all() -> Vec<Box<dyn Target>> {
    NAMES.iter().map(|n| by_name(n).expect("every listed name builds")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_targets() {
        for (name, t) in NAMES.iter().zip(all()) {
            assert_eq!(*name, t.name());
            assert!(!t.seeds().is_empty(), "{name} has seeds");
        }
    }
}

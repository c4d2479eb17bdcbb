//! etcd v3 gRPC wire types and service stubs for Meridian.
//!
//! Meridian speaks the etcd v3 API so that `etcdctl` 3.4+ and the etcd client
//! libraries work against it unchanged. This crate is the wire contract: the
//! prost messages and tonic clients/servers generated from our own `.proto`
//! files in `proto/etcd/` at the workspace root.
//!
//! Those files are written by us from etcd v3.5's *published wire format*:
//! package, service, method and message names, and every field's name, number
//! and type match etcd, because that is what clients put on the wire (gRPC
//! paths such as `/etcdserverpb.KV/Range` and protobuf field tags). They carry
//! none of etcd's gogoproto options, HTTP gateway annotations or comments.
//!
//! ```text
//!   etcdctl / clientv3 ──gRPC──▶ tonic server (kv_server::KvServer, …)
//!                                      │  prost messages from this crate
//!                                      ▼
//!                              meridian-server handlers
//! ```
//!
//! | module          | proto file                          | services                                   |
//! |-----------------|-------------------------------------|--------------------------------------------|
//! | [`mvccpb`]      | `mvccpb/kv.proto`                   | — (`KeyValue`, `Event`)                    |
//! | [`etcdserverpb`]| `etcdserverpb/rpc.proto`            | KV, Watch, Lease, Cluster, Maintenance     |
//! | [`v3lockpb`]    | `v3lockpb/v3lock.proto`             | Lock                                       |
//! | [`v3electionpb`]| `v3electionpb/v3election.proto`     | Election                                   |
//!
//! Left out on purpose: the Auth service and its messages (and so `authpb`),
//! and the server-internal `LeaseCheckpoint*` messages. Adding them later is
//! wire-compatible.
//!
//! Rust field names are prost's snake_case of etcd's names, which is only
//! cosmetic (the wire uses numbers): `TTL` → `ttl`, `ID` → `id`,
//! `memberID` → `member_id`, and, oddly but harmlessly, `peerURLs` →
//! `peer_ur_ls`, `clientURLs` → `client_ur_ls`.

/// `mvccpb`: stored key-values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// `etcdserverpb`: the KV, Watch, Lease, Cluster and Maintenance services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// `v3lockpb`: the Lock service (`etcdctl lock`).
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// `v3electionpb`: the Election service (`etcdctl elect`).
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

#[cfg(test)]
mod wire_tests;

/// `meridian.v1`: Meridian's native sessions, fenced locks and elections.
pub mod meridian {
    pub mod v1 {
        tonic::include_proto!("meridian.v1");
    }
}

pub use meridian_codes::{ErrorCode, ReplicaState, ERROR_CODE_KEY};

/// The [`ErrorCode`] a status from a Meridian member names in its
/// `meridian-error-code` metadata (`None`: it names none, e.g. the
/// transport failed before a member answered, or one this build does not
/// know).
pub fn error_code(s: &tonic::Status) -> Option<ErrorCode> {
    s.metadata().get(ERROR_CODE_KEY)?.to_str().ok().and_then(ErrorCode::from_str_name)
}

/// `s` carrying `code` in its metadata (what every Meridian error status
/// does; see [`error_code`]).
pub fn with_error_code(mut s: tonic::Status, code: ErrorCode) -> tonic::Status {
    s.metadata_mut().insert(ERROR_CODE_KEY, tonic::metadata::MetadataValue::from_static(code.as_str_name()));
    s
}

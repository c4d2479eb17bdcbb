//! etcd v3 client requests as the gRPC server decodes them (prost, types
//! of `meridian-proto`). Decoding only: each input is offered to every
//! request type, and whatever decodes must survive encode → decode.

use meridian_proto::etcdserverpb::{
    compare, request_op, watch_request, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest,
};
use meridian_proto::v3electionpb::CampaignRequest;
use meridian_proto::v3lockpb::LockRequest;
use prost::Message;

use crate::target::{Target, Verdict};

/// Decodes `input` as `M`; `Ok(true)` if it decoded and round-trips.
fn check<M: Message + Default + PartialEq>(input: &[u8], name: &str) -> Result<bool, String> {
    let Ok(m) = M::decode(input) else { return Ok(false) };
    let again = M::decode(m.encode_to_vec().as_slice()).map_err(|e| format!("reencode: {name}: {e}"))?;
    if again != m {
        return Err(format!("reencode: {name}: decode(encode(m)) != m"));
    }
    Ok(true)
}

fn range(key: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest { key: key.to_vec(), range_end: end.to_vec(), limit: 10, revision: 3, sort_order: 1, sort_target: 3, ..Default::default() }
}

fn put(key: &[u8]) -> PutRequest {
    PutRequest { key: key.to_vec(), value: b"value".to_vec(), lease: 0x0300_0000_0001, prev_kv: true, ..Default::default() }
}

fn txn(depth: usize) -> TxnRequest {
    let op = |r: request_op::Request| RequestOp { request: Some(r) };
    let mut success = vec![
        op(request_op::Request::RequestPut(put(b"k"))),
        op(request_op::Request::RequestRange(range(b"a", b"\x00"))),
        op(request_op::Request::RequestDeleteRange(DeleteRangeRequest { key: b"d".to_vec(), range_end: b"e".to_vec(), prev_kv: true })),
    ];
    if depth > 0 {
        success.push(op(request_op::Request::RequestTxn(txn(depth - 1))));
    }
    TxnRequest {
        compare: vec![
            Compare {
                result: 0,
                target: 3,
                key: b"k".to_vec(),
                target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
                ..Default::default()
            },
            Compare {
                result: 2,
                target: 2,
                key: b"k".to_vec(),
                range_end: vec![0],
                target_union: Some(compare::TargetUnion::ModRevision(9)),
            },
            Compare { result: 3, target: 4, key: b"k".to_vec(), target_union: Some(compare::TargetUnion::Lease(7)), ..Default::default() },
        ],
        success,
        failure: vec![op(request_op::Request::RequestRange(range(b"k", b"")))],
    }
}

/// `prost::Message::decode` of etcd's request types: `RangeRequest`,
/// `PutRequest`, `DeleteRangeRequest`, `TxnRequest`, `CompactionRequest`,
/// `WatchRequest`, lease, lock and election requests.
pub struct EtcdRequests;

impl Target for EtcdRequests {
    fn name(&self) -> &'static str {
        "etcd-requests"
    }

    fn describe(&self) -> &'static str {
        "prost decode of meridian_proto etcdserverpb::{Txn,Put,Range,DeleteRange,Compaction,Watch,Lease*}Request, v3lockpb, v3electionpb"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let watch = |u: watch_request::RequestUnion| WatchRequest { request_union: Some(u) }.encode_to_vec();
        vec![
            range(b"/a/", b"/b/").encode_to_vec(),
            put(b"/a/x").encode_to_vec(),
            DeleteRangeRequest { key: b"/a/".to_vec(), range_end: vec![0], prev_kv: true }.encode_to_vec(),
            txn(0).encode_to_vec(),
            txn(3).encode_to_vec(),
            CompactionRequest { revision: 42, physical: true }.encode_to_vec(),
            watch(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"/a/".to_vec(),
                range_end: b"/b/".to_vec(),
                start_revision: 5,
                progress_notify: true,
                filters: vec![0, 1],
                prev_kv: true,
                watch_id: 3,
                fragment: true,
            })),
            watch(watch_request::RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 3 })),
            watch(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
            LeaseGrantRequest { ttl: 10, id: 0 }.encode_to_vec(),
            LeaseRevokeRequest { id: 7 }.encode_to_vec(),
            LeaseKeepAliveRequest { id: 7 }.encode_to_vec(),
            LockRequest { name: b"L1".to_vec(), lease: 7 }.encode_to_vec(),
            CampaignRequest { name: b"E".to_vec(), lease: 7, value: b"me".to_vec() }.encode_to_vec(),
        ]
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let decoded = [
            check::<RangeRequest>(input, "RangeRequest")?,
            check::<PutRequest>(input, "PutRequest")?,
            check::<DeleteRangeRequest>(input, "DeleteRangeRequest")?,
            check::<TxnRequest>(input, "TxnRequest")?,
            check::<CompactionRequest>(input, "CompactionRequest")?,
            check::<WatchRequest>(input, "WatchRequest")?,
            check::<LeaseGrantRequest>(input, "LeaseGrantRequest")?,
            check::<LeaseRevokeRequest>(input, "LeaseRevokeRequest")?,
            check::<LeaseKeepAliveRequest>(input, "LeaseKeepAliveRequest")?,
            check::<LockRequest>(input, "LockRequest")?,
            check::<CampaignRequest>(input, "CampaignRequest")?,
        ];
        Ok(if decoded.contains(&true) { Verdict::Accepted } else { Verdict::Rejected })
    }
}

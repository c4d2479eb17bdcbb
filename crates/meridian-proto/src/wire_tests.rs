//! Byte-exact encodings, computed by hand from the protobuf encoding rules,
//! proving our field numbers are etcd's. A tag byte is `(field << 3) | wire
//! type`, wire type 0 = varint, 2 = length-delimited.

use prost::Message;

use crate::etcdserverpb::{
    compare, watch_create_request::FilterType, watch_request, Compare, PutRequest, ResponseHeader, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use crate::mvccpb::{event::EventType, Event, KeyValue};

#[test]
fn put_request_field_numbers_match_etcd() {
    let req =
        PutRequest { key: b"foo".to_vec(), value: b"bar".to_vec(), lease: 0x1234, prev_kv: true, ignore_value: false, ignore_lease: false };
    let expected: &[u8] = &[
        0x0a, 3, b'f', b'o', b'o', // 1: key
        0x12, 3, b'b', b'a', b'r', // 2: value
        0x18, 0xb4, 0x24, // 3: lease = 0x1234 as a two-byte varint
        0x20, 1, // 4: prev_kv
    ];
    assert_eq!(req.encode_to_vec(), expected);
    assert_eq!(PutRequest::decode(expected).unwrap(), req);
}

#[test]
fn compare_target_union_and_range_end_field_numbers_match_etcd() {
    let cmp = Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Mod as i32,
        key: b"k".to_vec(),
        range_end: b"z".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(5)),
    };
    let expected: &[u8] = &[
        0x08, 1, // 1: result = GREATER
        0x10, 2, // 2: target = MOD
        0x1a, 1, b'k', // 3: key
        0x30, 5, // 6: mod_revision
        0x82, 0x04, 1, b'z', // 64: range_end, tag 514 as a two-byte varint
    ];
    assert_eq!(cmp.encode_to_vec(), expected);
    assert_eq!(Compare::decode(expected).unwrap(), cmp);
}

#[test]
fn compare_oneof_zero_is_still_sent() {
    // `version == 0` is how clients ask "key absent"; a oneof member is sent
    // even when zero, so the server can tell it from "no target given".
    let cmp = Compare { key: b"k".to_vec(), target_union: Some(compare::TargetUnion::Version(0)), ..Compare::default() };
    assert_eq!(cmp.encode_to_vec(), [0x1a, 1, b'k', 0x20, 0]);

    let others = [(compare::TargetUnion::CreateRevision(1), 0x28), (compare::TargetUnion::Lease(1), 0x40)];
    for (union, tag) in others {
        let cmp = Compare { target_union: Some(union.clone()), ..Compare::default() };
        assert_eq!(cmp.encode_to_vec(), [tag, 1], "{union:?}");
    }
    let value = Compare { target_union: Some(compare::TargetUnion::Value(b"v".to_vec())), ..Compare::default() };
    assert_eq!(value.encode_to_vec(), [0x3a, 1, b'v']);
}

#[test]
fn watch_create_request_field_numbers_match_etcd() {
    let create = WatchCreateRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        start_revision: 100,
        progress_notify: true,
        filters: vec![FilterType::Nodelete as i32],
        prev_kv: true,
        watch_id: 9,
        fragment: true,
    };
    let create_bytes: &[u8] = &[
        0x0a, 1, b'a', // 1: key
        0x12, 1, b'b', // 2: range_end
        0x18, 100, // 3: start_revision
        0x20, 1, // 4: progress_notify
        0x2a, 1, 1, // 5: filters, packed = [NODELETE]
        0x30, 1, // 6: prev_kv
        0x38, 9, // 7: watch_id
        0x40, 1, // 8: fragment
    ];
    assert_eq!(create.encode_to_vec(), create_bytes);

    // etcd clients may also send `filters` unpacked; both decode the same.
    let mut unpacked = create_bytes.to_vec();
    unpacked.splice(10..13, [0x28, 1]);
    assert_eq!(WatchCreateRequest::decode(&unpacked[..]).unwrap(), create);

    // WatchRequest.request_union: create_request = 1.
    let req = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
    let mut expected = vec![0x0a, create_bytes.len() as u8];
    expected.extend_from_slice(create_bytes);
    assert_eq!(req.encode_to_vec(), expected);

    // cancel_request = 2, progress_request = 3 (empty message).
    let cancel = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(crate::etcdserverpb::WatchCancelRequest { watch_id: 9 })),
    };
    assert_eq!(cancel.encode_to_vec(), [0x12, 2, 0x08, 9]);
    let progress =
        WatchRequest { request_union: Some(watch_request::RequestUnion::ProgressRequest(crate::etcdserverpb::WatchProgressRequest {})) };
    assert_eq!(progress.encode_to_vec(), [0x1a, 0]);
}

#[test]
fn watch_response_field_numbers_match_etcd() {
    let resp = WatchResponse {
        header: Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 3, raft_term: 4 }),
        watch_id: 7,
        created: true,
        canceled: true,
        compact_revision: 5,
        cancel_reason: "x".to_string(),
        fragment: true,
        events: vec![Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: b"k".to_vec().into(), mod_revision: 6, ..KeyValue::default() }),
            prev_kv: None,
        }],
    };
    let expected: &[u8] = &[
        0x0a, 8, 0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4, // 1: header
        0x10, 7, // 2: watch_id
        0x18, 1, // 3: created
        0x20, 1, // 4: canceled
        0x28, 5, // 5: compact_revision
        0x32, 1, b'x', // 6: cancel_reason
        0x38, 1, // 7: fragment
        0x5a, 9, // 11: events[0]
        0x08, 1, // Event 1: type = DELETE
        0x12, 5, 0x0a, 1, b'k', 0x18, 6, // Event 2: kv {1: key, 3: mod_revision}
    ];
    assert_eq!(resp.encode_to_vec(), expected);
}

#[test]
fn grpc_service_names_match_etcd() {
    use crate::{etcdserverpb, v3electionpb, v3lockpb};
    assert_eq!(etcdserverpb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(etcdserverpb::watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(etcdserverpb::lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(etcdserverpb::cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(etcdserverpb::maintenance_server::SERVICE_NAME, "etcdserverpb.Maintenance");
    assert_eq!(v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(v3electionpb::election_server::SERVICE_NAME, "v3electionpb.Election");
}

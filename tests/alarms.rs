//! etcd's alarms and the space quota, on real `meridian server` processes:
//! `Maintenance.Alarm` through a tonic etcd client, `etcdctl alarm
//! list|disarm` and `etcdctl endpoint status`.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use meridian_proto::etcdserverpb as pb;
use meridian_tests::*;
use pb::alarm_request::AlarmAction;
use tonic::transport::Channel;

type Maintenance = pb::maintenance_client::MaintenanceClient<Channel>;
type Kv = pb::kv_client::KvClient<Channel>;

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

async fn maintenance(c: &ProcCluster, i: usize) -> Maintenance {
    Maintenance::connect(format!("http://{}", c.members[i].client_addr)).await.unwrap()
}

fn put(key: &str, value: Vec<u8>) -> pb::PutRequest {
    pb::PutRequest { key: key.as_bytes().to_vec(), value, ..Default::default() }
}

async fn alarm(
    m: &mut Maintenance,
    action: AlarmAction,
    member_id: u64,
    kind: pb::AlarmType,
) -> Result<Vec<pb::AlarmMember>, tonic::Status> {
    let req = pb::AlarmRequest { action: action as i32, member_id, alarm: kind as i32 };
    m.alarm(req).await.map(|r| r.into_inner().alarms)
}

/// Puts through `kv` until one is refused with `message` (each member
/// re-reads the alarms every second), at most for `limit`.
async fn until_refused(kv: &mut Kv, key: &str, message: &str, limit: Duration) -> tonic::Status {
    let start = Instant::now();
    loop {
        match kv.put(put(key, b"probe".to_vec())).await {
            Err(e) if e.message() == message => return e,
            Err(e) => panic!("unexpected error waiting for {message:?}: {e:?}"),
            Ok(_) if start.elapsed() < limit => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => panic!("writes still accepted {limit:?} after the alarm was raised"),
        }
    }
}

/// Puts through `kv` until one succeeds, at most for `limit`.
async fn until_accepted(kv: &mut Kv, key: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        match kv.put(put(key, b"after".to_vec())).await {
            Ok(_) => return,
            Err(e) if start.elapsed() < limit => {
                assert!(e.message() == NO_SPACE || e.message() == "etcdserver: corrupt cluster", "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("writes still refused {limit:?} after the alarm was disarmed: {e:?}"),
        }
    }
}

fn put_op(key: &str) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put(key, b"t".to_vec()))) }
}

fn get_op(key: &str) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest { key: key.into(), ..Default::default() })) }
}

#[test]
fn alarms_cap_writes_on_every_member_until_disarmed_and_bad_requests_change_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &["/payments/"]);
    let ep = c.url_endpoints();
    let rt = rt();
    rt.block_on(async {
        let mut m1 = maintenance(&c, 0).await;
        let mut kvs = [kv_client(&c, 0).await, kv_client(&c, 1).await, kv_client(&c, 2).await];
        for (i, kv) in kvs.iter_mut().enumerate() {
            kv.put(put(&format!("/cfg/{i}"), b"1".to_vec())).await.unwrap();
        }
        assert!(alarm(&mut m1, AlarmAction::Get, 0, pb::AlarmType::None).await.unwrap().is_empty());

        // NOSPACE raised for member 2, through member 1.
        let raised = alarm(&mut m1, AlarmAction::Activate, 2, pb::AlarmType::Nospace).await.unwrap();
        assert_eq!(raised, vec![pb::AlarmMember { member_id: 2, alarm: pb::AlarmType::Nospace as i32 }]);
        // The member that raised it refuses at once; the others within
        // their next re-read.
        let e = kvs[0].put(put("/cfg/x", b"2".to_vec())).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::ResourceExhausted, NO_SPACE));
        for kv in kvs.iter_mut().skip(1) {
            until_refused(kv, "/cfg/x", NO_SPACE, Duration::from_secs(5)).await;
        }
        let kv = &mut kvs[2];
        // Every namespace is capped, Txns with a put and lease grants too.
        assert_eq!(kv.put(put("/payments/p", b"1".to_vec())).await.unwrap_err().message(), NO_SPACE);
        let txn = pb::TxnRequest { success: vec![get_op("/cfg/0"), put_op("/cfg/t")], ..Default::default() };
        assert_eq!(kv.txn(txn).await.unwrap_err().message(), NO_SPACE);
        let mut lease = pb::lease_client::LeaseClient::connect(format!("http://{}", c.members[2].client_addr)).await.unwrap();
        let e = lease.lease_grant(pb::LeaseGrantRequest { ttl: 10, id: 0 }).await.unwrap_err();
        assert_eq!(e.message(), NO_SPACE);
        // Reads, read-only Txns, deletes and compaction free space: allowed.
        let got = kv.range(pb::RangeRequest { key: b"/cfg/0".to_vec(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(got.kvs[0].value, &b"1"[..]);
        let txn = pb::TxnRequest { success: vec![get_op("/cfg/0")], ..Default::default() };
        assert!(kv.txn(txn).await.unwrap().into_inner().succeeded);
        let del = kv.delete_range(pb::DeleteRangeRequest { key: b"/cfg/2".to_vec(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(del.deleted, 1);
        let rev = del.header.unwrap().revision;
        kv.compact(pb::CompactionRequest { revision: rev, physical: false }).await.unwrap();

        // What operators see.
        let listed = ok(&ep, &["alarm", "list"]);
        assert!(listed.contains("memberID:2 alarm:NOSPACE"), "{listed}");
        let status = ok(&ep, &["endpoint", "status", "-w", "json"]);
        assert!(status.contains("alarm:NOSPACE"), "Status.errors names the alarm: {status}");
        assert!(metric(&c, 1, "meridian_alarms_raised{alarm=\"NOSPACE\"}") == 1, "the alarm gauge");

        // Bad requests: etcd's error, nothing changes.
        let e = m1.alarm(pb::AlarmRequest { action: 7, member_id: 2, alarm: 1 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = m1.alarm(pb::AlarmRequest { action: AlarmAction::Activate as i32, member_id: 2, alarm: 9 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = m1.alarm(pb::AlarmRequest { action: AlarmAction::Deactivate as i32, member_id: 2, alarm: 9 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = alarm(&mut m1, AlarmAction::Activate, 99, pb::AlarmType::Corrupt).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "etcdserver: member not found"));
        assert!(alarm(&mut m1, AlarmAction::Activate, 2, pb::AlarmType::None).await.unwrap().is_empty(), "NONE raises nothing");
        assert!(
            alarm(&mut m1, AlarmAction::Deactivate, 3, pb::AlarmType::Nospace).await.unwrap().is_empty(),
            "not raised: nothing to disarm"
        );
        let all = alarm(&mut m1, AlarmAction::Get, 0, pb::AlarmType::None).await.unwrap();
        assert_eq!(all, vec![pb::AlarmMember { member_id: 2, alarm: pb::AlarmType::Nospace as i32 }], "bad requests changed the alarms");
        assert!(alarm(&mut m1, AlarmAction::Get, 0, pb::AlarmType::Corrupt).await.unwrap().is_empty(), "GET filters by type");
    });

    // The alarm is replicated state: a member restarted reads it back.
    c.kill9(2);
    c.restart(2);
    c.wait_ready(Duration::from_secs(30));
    rt.block_on(async {
        let mut kv = kv_client(&c, 2).await;
        until_refused(&mut kv, "/cfg/y", NO_SPACE, Duration::from_secs(10)).await;
    });

    let disarmed = ok(&ep, &["alarm", "disarm"]);
    assert!(disarmed.contains("memberID:2 alarm:NOSPACE"), "{disarmed}");
    assert!(ok(&ep, &["alarm", "list"]).trim().is_empty());
    rt.block_on(async {
        for i in 0..3 {
            let mut kv = kv_client(&c, i).await;
            until_accepted(&mut kv, "/payments/after", Duration::from_secs(5)).await;
        }
        // CORRUPT refuses every write, deletes included; reads are served.
        let mut m3 = maintenance(&c, 2).await;
        alarm(&mut m3, AlarmAction::Activate, 1, pb::AlarmType::Corrupt).await.unwrap();
        let mut kv = kv_client(&c, 2).await;
        let e = kv.delete_range(pb::DeleteRangeRequest { key: b"/cfg/0".to_vec(), ..Default::default() }).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::DataLoss, "etcdserver: corrupt cluster"));
        let mut kv1 = kv_client(&c, 0).await;
        until_refused(&mut kv1, "/cfg/z", "etcdserver: corrupt cluster", Duration::from_secs(5)).await;
        assert_eq!(kv.range(pb::RangeRequest { key: b"/cfg/0".to_vec(), ..Default::default() }).await.unwrap().into_inner().count, 1);
        let off = alarm(&mut m3, AlarmAction::Deactivate, 1, pb::AlarmType::Corrupt).await.unwrap();
        assert_eq!(off.len(), 1);
        until_accepted(&mut kv, "/cfg/z", Duration::from_secs(5)).await;
        until_accepted(&mut kv1, "/cfg/z", Duration::from_secs(5)).await;
    });
}

#[test]
fn a_member_past_its_quota_raises_nospace_and_refuses_growth_but_frees_space() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const QUOTA: u64 = 24 << 20;
    let c = ProcCluster::start_with_args(3, &[], &[&format!("--quota-backend-bytes={QUOTA}")]);
    let ep = c.url_endpoints();
    assert_eq!(metric(&c, 0, "meridian_quota_backend_bytes"), QUOTA);
    rt().block_on(async {
        let mut kv = kv_client(&c, 0).await;
        // 256 KiB values until the quota refuses one (bounded: 1,000 puts
        // are 10x the quota).
        let mut written = 0;
        let refused = loop {
            assert!(written < 1000, "no write refused after {written} puts of 256 KiB (quota {QUOTA})");
            match kv.put(put(&format!("/fill/{written:04}"), vec![7; 256 << 10])).await {
                Ok(_) => written += 1,
                Err(e) => break e,
            }
        };
        assert_eq!((refused.code(), refused.message()), (tonic::Code::ResourceExhausted, NO_SPACE), "after {written} puts");
        eprintln!("quota {QUOTA} B: the put after {written} puts of 256 KiB was refused");
        assert!(written >= 10, "refused after {written} puts: the quota counted more than the engine files");
        let listed = ok(&ep, &["alarm", "list"]);
        assert!(listed.contains("alarm:NOSPACE"), "{listed}");
        // Growth stays refused; reads, deletes and compaction work.
        assert_eq!(kv.put(put("/small", b"x".to_vec())).await.unwrap_err().message(), NO_SPACE);
        let got = kv.range(pb::RangeRequest { key: b"/fill/0000".to_vec(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(got.kvs[0].value.len(), 256 << 10);
        let del = kv
            .delete_range(pb::DeleteRangeRequest { key: b"/fill/".to_vec(), range_end: b"/fill0".to_vec(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(del.deleted, written as i64);
        kv.compact(pb::CompactionRequest { revision: del.header.unwrap().revision, physical: true }).await.unwrap();
        assert_eq!(kv.put(put("/small", b"x".to_vec())).await.unwrap_err().message(), NO_SPACE, "until disarmed");
    });
}

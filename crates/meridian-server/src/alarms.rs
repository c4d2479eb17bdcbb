//! etcd's alarms (`etcdctl alarm list|disarm`, `Maintenance.Alarm`) and
//! the space quota that raises NOSPACE.
//!
//! An alarm is a (member, type) pair recorded in the meta range, so it is
//! replicated and survives restarts like etcd's alarm bucket:
//!
//! ```text
//!  range 1
//!    \0meridian/alarm/<member id u64 BE><type u8>  → "" (1 NOSPACE, 2 CORRUPT)
//! ```
//!
//! Every member keeps a copy of the raised alarms ([`AlarmState`]): the
//! member that raises or disarms one updates it at once, and every member
//! re-reads the list each [`MONITOR_EVERY`] ([`monitor`]). Before a write
//! is proposed to a data range, [`AlarmState::admit`] decides, as etcd's
//! capped and corrupt appliers do:
//! - NOSPACE raised: writes that grow the data (Put, a Txn with a Put, a
//!   lease grant, a lock acquisition, an election proclamation) are refused
//!   with `etcdserver: mvcc: database space exceeded`; reads, deletes,
//!   compaction, lease revocation and lock releases still work, so space
//!   can be freed;
//! - CORRUPT raised: every client write is refused with `etcdserver:
//!   corrupt cluster` (reads are served, as etcd 3.5 serves them).
//!
//! The quota (`quota_backend_bytes`, etcd's default 2 GiB) bounds this
//! member's engine files. A write that would pass it raises NOSPACE for
//! this member and is refused; [`monitor`] raises it as well when the
//! files grow past the quota by themselves. Like etcd's, the alarm stays
//! until an operator disarms it (after compacting and defragmenting); a
//! member still over its quota raises it again.
//!
//! The check runs on the member a request arrives at, before proposing,
//! with its copy of the list and its engine size as last measured: writes
//! admitted in the second before a member measures its files past the
//! quota, or before another member re-reads a raised alarm, still commit
//! (a write racing etcd's quota check may too). The quota is a bound an
//! operator alerts near (`meridian_engine_bytes`), not an exact one; no
//! acknowledged write is ever lost to it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meridian_kv::command as c;
use meridian_proto::etcdserverpb as pb;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::routing::META_RANGE_ID;

/// Prefix of the alarm records in the meta range.
pub const ALARM_PREFIX: &[u8] = b"\0meridian/alarm/";
/// etcd's default `--quota-backend-bytes`.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;
/// Alarms one list holds at most: two types per member.
pub const MAX_ALARMS: usize = 2 * meridian_membership::MAX_NODES;
/// How often each member measures its engine files and re-reads the
/// alarms.
pub const MONITOR_EVERY: Duration = Duration::from_secs(1);

/// The alarm types etcd defines (besides NONE, which means "any").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    /// A member's engine files passed its space quota.
    NoSpace,
    /// A replica's data was found to differ from its peers'.
    Corrupt,
}

impl AlarmKind {
    /// The etcd `AlarmType` number.
    pub fn number(self) -> i32 {
        match self {
            AlarmKind::NoSpace => pb::AlarmType::Nospace as i32,
            AlarmKind::Corrupt => pb::AlarmType::Corrupt as i32,
        }
    }

    /// etcd's name of the type (`NOSPACE`, `CORRUPT`).
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
            AlarmKind::Corrupt => "CORRUPT",
        }
    }

    /// From an etcd `AlarmType` number: `Ok(None)` for NONE ("any type");
    /// a number etcd does not define is refused (etcd itself would crash
    /// applying it).
    pub fn from_number(n: i32) -> Result<Option<AlarmKind>, ApiError> {
        match pb::AlarmType::try_from(n) {
            Ok(pb::AlarmType::None) => Ok(None),
            Ok(pb::AlarmType::Nospace) => Ok(Some(AlarmKind::NoSpace)),
            Ok(pb::AlarmType::Corrupt) => Ok(Some(AlarmKind::Corrupt)),
            Err(_) => Err(ApiError::Invalid(format!("unknown alarm type {n} (NONE 0, NOSPACE 1, CORRUPT 2)"))),
        }
    }
}

/// One raised alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Alarm {
    pub member: u64,
    pub kind: AlarmKind,
}

impl Alarm {
    pub fn to_pb(self) -> pb::AlarmMember {
        pb::AlarmMember { member_id: self.member, alarm: self.kind.number() }
    }

    /// How etcd's `Status.errors` words an alarm (the Go text form of its
    /// `AlarmMember`).
    pub fn status_error(self) -> String {
        format!("memberID:{} alarm:{} ", self.member, self.kind.name())
    }
}

/// The record key of `alarm`.
pub fn alarm_key(alarm: Alarm) -> Vec<u8> {
    let mut k = ALARM_PREFIX.to_vec();
    k.extend_from_slice(&alarm.member.to_be_bytes());
    k.push(alarm.kind.number() as u8);
    k
}

/// The alarm a record key names; `None` for a key that is not one.
pub fn decode_key(key: &[u8]) -> Option<Alarm> {
    let rest = key.strip_prefix(ALARM_PREFIX)?;
    if rest.len() != 9 {
        return None;
    }
    let member = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let kind = AlarmKind::from_number(i32::from(rest[8])).ok()??;
    Some(Alarm { member, kind })
}

/// Whether `op` grows the data (what a NOSPACE alarm refuses).
pub fn grows(op: &c::Op) -> bool {
    fn txn_puts(t: &c::TxnOp) -> bool {
        t.success.iter().chain(&t.failure).any(|r| match &r.kind {
            Some(c::RequestKind::Put(_)) => true,
            Some(c::RequestKind::Txn(inner)) => txn_puts(inner),
            _ => false,
        })
    }
    match op {
        c::Op::Put(_) | c::Op::LeaseGrant(_) | c::Op::LockAcquire(_) | c::Op::Proclaim(_) => true,
        c::Op::Txn(t) => txn_puts(t),
        _ => false,
    }
}

/// Whether `op` is a client's write (what a CORRUPT alarm refuses); the
/// lease keeper's own bookkeeping (checkpoints, expiry, lock-delay ends)
/// goes on.
pub fn client_write(op: &c::Op) -> bool {
    !matches!(op, c::Op::LeaseCheckpoint(_) | c::Op::LeaseExpire(_) | c::Op::LockDelayEnd(_))
}

/// Why [`AlarmState::admit`] refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Corrupt,
    /// `raise`: this member is over its quota and has no NOSPACE alarm
    /// raised yet.
    NoSpace {
        raise: bool,
    },
}

/// `alarms` as the list keeps them: sorted, once each, at most
/// [`MAX_ALARMS`].
fn normalized(mut alarms: Vec<Alarm>) -> Vec<Alarm> {
    alarms.sort_unstable();
    alarms.dedup();
    alarms.truncate(MAX_ALARMS);
    alarms
}

/// A member's view of the alarms, its engine size and its quota.
pub struct AlarmState {
    me: u64,
    /// Sorted, at most [`MAX_ALARMS`].
    raised: RwLock<Vec<Alarm>>,
    /// Bumped by every change this member made itself, so a re-read that
    /// started before it (and may predate it) does not undo it.
    changes: AtomicU64,
    engine_bytes: AtomicU64,
    /// `None`: no quota.
    quota: Option<u64>,
    /// A NOSPACE raise for this member is being proposed.
    raising: AtomicBool,
}

impl AlarmState {
    pub fn new(me: u64, quota: Option<u64>) -> AlarmState {
        AlarmState {
            me,
            raised: RwLock::new(Vec::new()),
            changes: AtomicU64::new(0),
            engine_bytes: AtomicU64::new(0),
            quota,
            raising: AtomicBool::new(false),
        }
    }

    /// The raised alarms, sorted.
    pub fn raised(&self) -> Vec<Alarm> {
        self.raised.read().expect("alarms").clone()
    }

    /// Replaces the list with `alarms` (as read from the meta range).
    pub fn replace(&self, alarms: Vec<Alarm>) {
        *self.raised.write().expect("alarms") = normalized(alarms);
    }

    /// A mark to pass to [`AlarmState::replace_unless_changed`] taken
    /// before reading the list.
    pub fn mark(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Replaces the list with `alarms`, read after `mark` was taken,
    /// unless this member raised or disarmed an alarm since (the read may
    /// predate that change; the next one will not).
    pub fn replace_unless_changed(&self, mark: u64, alarms: Vec<Alarm>) -> bool {
        let alarms = normalized(alarms);
        let mut g = self.raised.write().expect("alarms");
        if self.changes.load(Ordering::Acquire) != mark {
            return false;
        }
        *g = alarms;
        true
    }

    fn insert(&self, alarm: Alarm) {
        let mut g = self.raised.write().expect("alarms");
        self.changes.fetch_add(1, Ordering::AcqRel);
        if let Err(at) = g.binary_search(&alarm) {
            if g.len() < MAX_ALARMS {
                g.insert(at, alarm);
            }
        }
    }

    fn remove(&self, alarm: Alarm) {
        let mut g = self.raised.write().expect("alarms");
        self.changes.fetch_add(1, Ordering::AcqRel);
        g.retain(|a| *a != alarm);
    }

    /// This member's engine files, in bytes, as last measured.
    pub fn engine_bytes(&self) -> u64 {
        self.engine_bytes.load(Ordering::Relaxed)
    }

    pub fn set_engine_bytes(&self, bytes: u64) {
        self.engine_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The space quota; `None`: none.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    fn over_quota(&self, extra: u64) -> bool {
        self.quota.is_some_and(|q| self.engine_bytes().saturating_add(extra) > q)
    }

    /// Whether `op` (`cost` bytes encoded) may be proposed to a data range
    /// now.
    pub fn admit(&self, op: &c::Op, cost: usize) -> Result<(), Refusal> {
        let raised = self.raised.read().expect("alarms");
        if raised.iter().any(|a| a.kind == AlarmKind::Corrupt) && client_write(op) {
            return Err(Refusal::Corrupt);
        }
        if !grows(op) {
            return Ok(());
        }
        let mine = raised.contains(&Alarm { member: self.me, kind: AlarmKind::NoSpace });
        if raised.iter().any(|a| a.kind == AlarmKind::NoSpace) {
            return Err(Refusal::NoSpace { raise: false });
        }
        if self.over_quota(cost as u64) {
            return Err(Refusal::NoSpace { raise: !mine });
        }
        Ok(())
    }
}

/// Bytes of the files under `path` (four directory levels deep) that
/// `keep` (given the file's name and metadata) counts.
pub(crate) fn dir_bytes(path: &std::path::Path, keep: &dyn Fn(&str, &std::fs::Metadata) -> bool) -> u64 {
    fn walk(path: &std::path::Path, depth: u32, keep: &dyn Fn(&str, &std::fs::Metadata) -> bool) -> u64 {
        let Ok(rd) = std::fs::read_dir(path) else { return 0 };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() && depth < 4 => walk(&e.path(), depth + 1, keep),
                Ok(m) if keep(&e.file_name().to_string_lossy(), &m) => m.len(),
                _ => 0,
            })
            .sum()
    }
    walk(path, 0, keep)
}

/// The size of a member's engine files under `data_dir`: the RocksDB
/// tables, write-ahead logs and manifests, not its informational logs.
pub fn engine_bytes(data_dir: &std::path::Path) -> u64 {
    dir_bytes(&data_dir.join("raft"), &|name, m| {
        m.is_file() && (name.ends_with(".sst") || name.ends_with(".log") || name.starts_with("MANIFEST-"))
    })
}

/// The alarms recorded in the meta range (`linearizable`: through its
/// leader; otherwise this member's replica).
pub async fn list(backend: &Backend, linearizable: bool) -> Result<Vec<Alarm>, ApiError> {
    let op = c::RangeOp {
        key: ALARM_PREFIX.to_vec(),
        range_end: crate::routing::prefix_end(ALARM_PREFIX),
        limit: MAX_ALARMS as i64,
        keys_only: true,
        ..Default::default()
    };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), linearizable).await?;
    let mut alarms = Vec::new();
    for kv in a.range.map(|r| r.kvs).unwrap_or_default() {
        match decode_key(&kv.key) {
            Some(alarm) => alarms.push(alarm),
            None => warn!("undecodable alarm record {:?}", kv.key),
        }
    }
    alarms.sort_unstable();
    Ok(alarms)
}

/// Raises `alarm` (a no-op when it is raised already).
pub async fn activate(backend: &Backend, alarm: Alarm) -> Result<(), ApiError> {
    backend.execute(META_RANGE_ID, c::Op::Put(c::PutOp { key: alarm_key(alarm), ..Default::default() })).await?;
    let first = !backend.alarms.raised().iter().any(|a| a.kind == alarm.kind);
    backend.alarms.insert(alarm);
    if first {
        warn!(member = alarm.member, alarm = alarm.kind.name(), "alarm raised");
    }
    Ok(())
}

/// Disarms `alarm`; answers whether it was raised.
pub async fn deactivate(backend: &Backend, alarm: Alarm) -> Result<bool, ApiError> {
    let op = c::Op::DeleteRange(c::DeleteOp { key: alarm_key(alarm), ..Default::default() });
    let out = backend.execute(META_RANGE_ID, op).await?;
    backend.alarms.remove(alarm);
    let was = matches!(out.kind, Some(c::OutcomeKind::Delete(d)) if d.deleted > 0);
    if was {
        info!(member = alarm.member, alarm = alarm.kind.name(), "alarm disarmed");
    }
    Ok(was)
}

impl Backend {
    /// Refuses `op` for a data range as the raised alarms and the quota
    /// say; raises NOSPACE for this member when it is the first write over
    /// the quota.
    pub(crate) async fn admit(&self, range_id: u64, op: &c::Op, cost: usize) -> Result<(), ApiError> {
        if range_id == META_RANGE_ID {
            return Ok(()); // the catalog, node records and alarms themselves
        }
        match self.alarms.admit(op, cost) {
            Ok(()) => Ok(()),
            Err(Refusal::Corrupt) => Err(ApiError::Corrupt),
            Err(Refusal::NoSpace { raise }) => {
                if raise {
                    // Boxed: raising is itself a write (to the meta range,
                    // which admit lets through).
                    Box::pin(self.raise_no_space()).await;
                }
                Err(ApiError::NoSpace)
            }
        }
    }

    /// Raises NOSPACE for this member, once at a time (best effort: the
    /// monitor raises it again while the member stays over its quota).
    async fn raise_no_space(&self) {
        if self.alarms.raising.swap(true, Ordering::AcqRel) {
            return;
        }
        let alarm = Alarm { member: self.cfg.node_id, kind: AlarmKind::NoSpace };
        let (used, quota) = (self.alarms.engine_bytes(), self.alarms.quota.unwrap_or(0));
        warn!(used, quota, "this member's engine files passed quota_backend_bytes: raising NOSPACE");
        if let Err(e) = activate(self, alarm).await {
            warn!("raising NOSPACE: {e}; retrying at the next check");
        }
        self.alarms.raising.store(false, Ordering::Release);
    }
}

/// Each [`MONITOR_EVERY`]: measures this member's engine files, raises
/// NOSPACE when they passed the quota, and re-reads the alarms — from this
/// member's replica of the meta range, or, when that cannot answer (no
/// replica here, or a removed one), from a member holding one.
pub async fn monitor(backend: Arc<Backend>) {
    let mut failures = 0u32;
    loop {
        let dir = backend.cfg.data_dir.clone();
        let bytes = tokio::task::spawn_blocking(move || engine_bytes(&dir)).await.unwrap_or(0);
        backend.alarms.set_engine_bytes(bytes);
        let me = Alarm { member: backend.cfg.node_id, kind: AlarmKind::NoSpace };
        if backend.alarms.over_quota(0) && !backend.alarms.raised().contains(&me) {
            backend.raise_no_space().await;
        }
        let mark = backend.alarms.mark();
        match refresh(&backend).await {
            Ok(alarms) => {
                backend.alarms.replace_unless_changed(mark, alarms);
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                // Warned every 30 failures: this member may be missing a
                // raised alarm while it cannot read them.
                if failures % 30 == 1 {
                    warn!(failures, "re-reading the alarms: {e}");
                }
            }
        }
        tokio::time::sleep(MONITOR_EVERY).await;
    }
}

/// The alarms, from this member's replica of the meta range or, failing
/// that, from the members the catalog says hold one.
async fn refresh(backend: &Backend) -> Result<Vec<Alarm>, ApiError> {
    let local = match list(backend, false).await {
        Ok(alarms) => return Ok(alarms),
        Err(e) => e,
    };
    let mut holders: Vec<u64> = match &local {
        ApiError::NotLeader { leader, .. } => vec![*leader],
        _ => Vec::new(),
    };
    let me = backend.cfg.node_id;
    for (range_id, nodes) in backend.catalog_replicas() {
        if range_id == META_RANGE_ID {
            // The leader first, then the other replicas, live ones first.
            for n in backend.live_first(&nodes) {
                if n != me && !holders.contains(&n) {
                    holders.push(n);
                }
            }
        }
    }
    let mut last = local;
    for node in holders {
        match ask(backend, node).await {
            Ok(alarms) => return Ok(alarms),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Member `node`'s answer to `Alarm` GET.
async fn ask(backend: &Backend, node: u64) -> Result<Vec<Alarm>, ApiError> {
    let mut client = pb::maintenance_client::MaintenanceClient::new(backend.channel_to(node)?);
    let req = crate::backend::forwarded(pb::AlarmRequest { action: pb::alarm_request::AlarmAction::Get as i32, ..Default::default() });
    let resp = client.alarm(req).await.map_err(|s| ApiError::from_status(&s))?.into_inner();
    Ok(resp
        .alarms
        .into_iter()
        .filter_map(|m| AlarmKind::from_number(m.alarm).ok().flatten().map(|kind| Alarm { member: m.member_id, kind }))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put() -> c::Op {
        c::Op::Put(c::PutOp { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() })
    }

    fn txn(req: c::RequestKind) -> c::Op {
        c::Op::Txn(c::TxnOp { compare: vec![], success: vec![c::RequestOp { kind: Some(req) }], failure: vec![] })
    }

    #[test]
    fn keys_round_trip_and_foreign_keys_are_not_alarms() {
        for alarm in [Alarm { member: 7, kind: AlarmKind::NoSpace }, Alarm { member: u64::MAX, kind: AlarmKind::Corrupt }] {
            assert_eq!(decode_key(&alarm_key(alarm)), Some(alarm));
        }
        assert_eq!(decode_key(b"\0meridian/alarm/short"), None);
        let mut unknown = alarm_key(Alarm { member: 1, kind: AlarmKind::NoSpace });
        *unknown.last_mut().unwrap() = 9;
        assert_eq!(decode_key(&unknown), None);
        assert_eq!(decode_key(b"\0meridian/node/12345678"), None);
    }

    #[test]
    fn alarm_types_are_etcds() {
        assert_eq!(AlarmKind::from_number(0), Ok(None));
        assert_eq!(AlarmKind::from_number(1), Ok(Some(AlarmKind::NoSpace)));
        assert_eq!(AlarmKind::from_number(2), Ok(Some(AlarmKind::Corrupt)));
        assert!(matches!(AlarmKind::from_number(3), Err(ApiError::Invalid(_))));
        assert!(matches!(AlarmKind::from_number(-1), Err(ApiError::Invalid(_))));
        assert_eq!(Alarm { member: 3, kind: AlarmKind::NoSpace }.status_error(), "memberID:3 alarm:NOSPACE ");
    }

    #[test]
    fn what_grows_the_data() {
        assert!(grows(&put()));
        assert!(grows(&c::Op::LeaseGrant(c::LeaseGrantOp::default())));
        assert!(grows(&txn(c::RequestKind::Put(c::PutOp::default()))));
        let nested = c::TxnOp {
            success: vec![],
            failure: vec![c::RequestOp { kind: Some(c::RequestKind::Put(c::PutOp::default())) }],
            compare: vec![],
        };
        assert!(grows(&txn(c::RequestKind::Txn(nested))), "a put in a nested txn's failure branch");
        assert!(!grows(&txn(c::RequestKind::Range(c::RangeOp::default()))));
        assert!(!grows(&txn(c::RequestKind::DeleteRange(c::DeleteOp::default()))));
        assert!(!grows(&c::Op::DeleteRange(c::DeleteOp::default())));
        assert!(!grows(&c::Op::Compact(3)));
        assert!(!grows(&c::Op::LeaseRevoke(1)));
        assert!(!grows(&c::Op::LockRelease(c::LockReleaseOp::default())));
    }

    #[test]
    fn nospace_refuses_growth_and_lets_space_be_freed() {
        let s = AlarmState::new(1, None);
        assert_eq!(s.admit(&put(), 10), Ok(()));
        s.replace(vec![Alarm { member: 2, kind: AlarmKind::NoSpace }]);
        assert_eq!(s.admit(&put(), 10), Err(Refusal::NoSpace { raise: false }), "another member's alarm caps every member");
        assert_eq!(s.admit(&c::Op::DeleteRange(c::DeleteOp::default()), 10), Ok(()));
        assert_eq!(s.admit(&c::Op::Compact(5), 10), Ok(()));
        s.replace(vec![]);
        assert_eq!(s.admit(&put(), 10), Ok(()), "disarmed");
    }

    #[test]
    fn the_quota_refuses_the_write_that_would_pass_it_and_asks_for_the_alarm() {
        let s = AlarmState::new(1, Some(1000));
        s.set_engine_bytes(900);
        assert_eq!(s.admit(&put(), 100), Ok(()));
        assert_eq!(s.admit(&put(), 101), Err(Refusal::NoSpace { raise: true }));
        assert_eq!(s.admit(&c::Op::DeleteRange(c::DeleteOp::default()), 5000), Ok(()), "a delete is never refused for space");
        s.replace(vec![Alarm { member: 1, kind: AlarmKind::NoSpace }]);
        assert_eq!(s.admit(&put(), 101), Err(Refusal::NoSpace { raise: false }), "raised already");
        let none = AlarmState::new(1, None);
        none.set_engine_bytes(u64::MAX);
        assert_eq!(none.admit(&put(), 100), Ok(()), "no quota");
    }

    #[test]
    fn corrupt_refuses_client_writes_but_not_the_keepers_bookkeeping() {
        let s = AlarmState::new(1, None);
        s.replace(vec![Alarm { member: 3, kind: AlarmKind::Corrupt }]);
        assert_eq!(s.admit(&put(), 1), Err(Refusal::Corrupt));
        assert_eq!(s.admit(&c::Op::DeleteRange(c::DeleteOp::default()), 1), Err(Refusal::Corrupt));
        assert_eq!(s.admit(&c::Op::LeaseExpire(4), 1), Ok(()));
        assert_eq!(s.admit(&c::Op::LeaseCheckpoint(c::LeaseCheckpointOp::default()), 1), Ok(()));
    }

    #[test]
    fn a_re_read_older_than_a_change_made_here_does_not_undo_it() {
        let s = AlarmState::new(1, None);
        let raised = Alarm { member: 2, kind: AlarmKind::NoSpace };
        let mark = s.mark();
        s.insert(raised); // raised here while a re-read was in flight
        assert!(!s.replace_unless_changed(mark, vec![]), "the stale (empty) list is dropped");
        assert_eq!(s.raised(), vec![raised]);
        let mark = s.mark();
        assert!(s.replace_unless_changed(mark, vec![raised]));
        let mark = s.mark();
        s.remove(raised); // disarmed here
        assert!(!s.replace_unless_changed(mark, vec![raised]), "a re-read from before the disarm");
        assert!(s.raised().is_empty());
    }

    #[test]
    fn the_list_stays_bounded_and_sorted() {
        let s = AlarmState::new(1, None);
        let many: Vec<Alarm> = (0..(MAX_ALARMS as u64 + 10)).rev().map(|m| Alarm { member: m, kind: AlarmKind::NoSpace }).collect();
        s.replace(many);
        let got = s.raised();
        assert_eq!(got.len(), MAX_ALARMS);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        s.insert(Alarm { member: u64::MAX, kind: AlarmKind::Corrupt });
        assert_eq!(s.raised().len(), MAX_ALARMS);
    }
}

//! etcd `Maintenance` and `Cluster` services: status and membership views.
//! Membership changes wait for the placement driver and say so.

use std::sync::Arc;

use meridian_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use crate::alarms::{self, Alarm, AlarmKind};
use crate::backend::{forward_target, forwarded, Backend};
use crate::error::ApiError;
use crate::routing::ROOT_RANGE_ID;

/// The etcd API version Meridian speaks.
pub const ETCD_API_VERSION: &str = "3.5.0";
/// How long `MoveLeader` waits for the target to lead every range handed to it.
const MOVE_LEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct MaintenanceService {
    pub backend: Arc<Backend>,
}

pub struct ClusterService {
    pub backend: Arc<Backend>,
}

impl MaintenanceService {
    async fn alarm_inner(&self, r: &pb::AlarmRequest) -> Result<Vec<pb::AlarmMember>, ApiError> {
        use pb::alarm_request::AlarmAction;
        let action = AlarmAction::try_from(r.action)
            .map_err(|_| ApiError::Invalid(format!("unknown alarm action {} (GET 0, ACTIVATE 1, DEACTIVATE 2)", r.action)))?;
        let kind = AlarmKind::from_number(r.alarm)?;
        match (action, kind) {
            (AlarmAction::Get, _) => {
                let all = alarms::list(&self.backend, true).await?;
                self.backend.alarms.replace(all.clone());
                Ok(all.into_iter().filter(|a| kind.is_none_or(|k| a.kind == k)).map(Alarm::to_pb).collect())
            }
            // etcd: activating or deactivating NONE changes nothing.
            (_, None) => Ok(Vec::new()),
            (AlarmAction::Activate, Some(kind)) => {
                if self.backend.node(r.member_id).is_none() {
                    return Err(ApiError::MemberNotFound);
                }
                let alarm = Alarm { member: r.member_id, kind };
                alarms::activate(&self.backend, alarm).await?;
                Ok(vec![alarm.to_pb()])
            }
            (AlarmAction::Deactivate, Some(kind)) => {
                let alarm = Alarm { member: r.member_id, kind };
                let was = alarms::deactivate(&self.backend, alarm).await?;
                Ok(if was { vec![alarm.to_pb()] } else { Vec::new() })
            }
        }
    }

    /// The hash etcd's `HashKV` answers: over every range this member holds
    /// a replica of (in range order, each range's id and its history hash),
    /// each at its current revision — or, with `revision` > 0, the root
    /// range alone at that revision (revisions are per range). Answers the
    /// hash, and the root range's compaction and hashed revisions.
    async fn replica_hash(&self, revision: i64) -> Result<(u32, i64, i64), ApiError> {
        let mut ranges: Vec<u64> = self.backend.raft.status().await.iter().map(|s| s.range_id).collect();
        ranges.sort_unstable();
        if revision > 0 {
            ranges.retain(|r| *r == ROOT_RANGE_ID);
        }
        let mut hasher = crc32fast::Hasher::new();
        let (mut compact, mut hashed) = (0, 0);
        for range_id in ranges {
            let rev = if range_id == ROOT_RANGE_ID { revision.max(0) } else { 0 };
            let q = meridian_kv::command::QueryKind::HashKv(meridian_kv::command::HashKvOp { revision: rev });
            let h = self.backend.query(range_id, q, false).await?.hash.unwrap_or_default();
            if range_id == ROOT_RANGE_ID {
                (compact, hashed) = (h.compact_revision, h.hash_revision);
            }
            hasher.update(&range_id.to_be_bytes());
            hasher.update(&h.hash.to_be_bytes());
        }
        Ok((hasher.finalize(), compact, hashed))
    }
}

fn unimplemented(what: &str) -> Status {
    ApiError::Unimplemented(what.into()).into()
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    /// etcd's `Alarm` (`etcdctl alarm list|disarm`): GET lists the raised
    /// alarms (of one type, or all for NONE), ACTIVATE raises one for a
    /// member, DEACTIVATE disarms one; each answers the alarms it found or
    /// changed. See [`crate::alarms`]. An action or type etcd does not
    /// define, or ACTIVATE for a member the cluster does not have, is
    /// refused and changes nothing.
    async fn alarm(&self, r: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        match self.alarm_inner(r.get_ref()).await {
            Ok(alarms) => Ok(Response::new(pb::AlarmResponse { header: Some(self.backend.header(ROOT_RANGE_ID, 0).await), alarms })),
            Err(e) => match forward_target(&r, &e) {
                Some(node) => {
                    let mut client = pb::maintenance_client::MaintenanceClient::new(self.backend.channel_to(node)?);
                    client.alarm(forwarded(r.into_inner())).await
                }
                None => Err(e.into()),
            },
        }
    }

    async fn status(&self, _r: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.backend.raft.status().await.into_iter().find(|s| s.range_id == ROOT_RANGE_ID);
        let size = alarms::dir_bytes(&self.backend.cfg.data_dir, &|_, _| true) as i64;
        let errors = self.backend.alarms.raised().into_iter().map(Alarm::status_error).collect();
        // A learner of the root range is what etcd calls a learner member.
        let is_learner = st.as_ref().is_some_and(|s| s.learners.contains(&self.backend.cfg.node_id));
        let (leader, index, term, applied) = st.map_or((0, 0, 0, 0), |s| (s.leader_id, s.commit, s.term, s.applied));
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.backend.header(ROOT_RANGE_ID, 0).await),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader,
            raft_index: index,
            raft_term: term,
            raft_applied_index: applied,
            errors,
            db_size_in_use: size,
            is_learner,
        }))
    }

    /// etcd's `Defragment` (`etcdctl defrag`): compacts this member's
    /// engine files over their whole key space, so the space deletes and
    /// compactions freed returns to the file system; the member serves
    /// meanwhile (RocksDB compacts beside reads and writes, where etcd's
    /// defragment blocks its member).
    async fn defragment(&self, _r: Request<pb::DefragmentRequest>) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.backend.raft.defragment().await?;
        Ok(Response::new(pb::DefragmentResponse { header: Some(self.backend.header(ROOT_RANGE_ID, 0).await) }))
    }

    /// etcd's `Hash` (meant for testing): the same hash as `HashKV` at the
    /// current revisions.
    async fn hash(&self, _r: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let (hash, _, rev) = self.replica_hash(0).await?;
        Ok(Response::new(pb::HashResponse { header: Some(self.backend.header(ROOT_RANGE_ID, rev).await), hash }))
    }

    /// etcd's `HashKV` (`etcdctl endpoint hashkv`): see `replica_hash`.
    async fn hash_kv(&self, r: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let (hash, compact_revision, hash_revision) = self.replica_hash(r.into_inner().revision).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.backend.header(ROOT_RANGE_ID, hash_revision).await),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    /// etcd's `Snapshot` (`etcdctl snapshot save FILE`): a backup of every
    /// namespace in Meridian's format ([`crate::backup`]); restore it with
    /// `meridian snapshot restore`.
    async fn snapshot(&self, _r: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let rx = crate::backup::snapshot(self.backend.clone()).await?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    /// etcd's `MoveLeader`, per range: every range this member leads and
    /// the target holds a voter of is handed to the target, and the answer
    /// comes once the target leads them all. Sent to a member that leads
    /// nothing: `etcdserver: not leader` (etcdctl asks the root range's
    /// leader, from `Status`). A target that is not a member, or holds no
    /// voter of any range led here, or a witness: `etcdserver: bad leader
    /// transferee`, and nothing moves.
    async fn move_leader(&self, r: Request<pb::MoveLeaderRequest>) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = r.into_inner().target_id;
        let me = self.backend.cfg.node_id;
        let bad = || -> Status { ApiError::Invalid("bad leader transferee".into()).into() };
        // A witness votes but never leads (it would hand the leadership
        // straight back): as etcd refuses a transferee that cannot lead.
        if !self.backend.nodes().iter().any(|n| n.id == target) || self.backend.is_witness(target) {
            return Err(bad());
        }
        let status = self.backend.raft.status().await;
        let led: Vec<&meridian_raftstore::RangeStatus> = status.iter().filter(|s| s.leader_id == me).collect();
        if led.is_empty() {
            let leader = status.iter().find(|s| s.range_id == ROOT_RANGE_ID).map_or(0, |s| s.leader_id);
            return Err(ApiError::NotLeader { range_id: ROOT_RANGE_ID, leader }.into());
        }
        let header = Some(self.backend.header(ROOT_RANGE_ID, 0).await);
        if target == me {
            return Ok(Response::new(pb::MoveLeaderResponse { header }));
        }
        let moving: Vec<u64> = led.iter().filter(|s| s.voters.contains(&target)).map(|s| s.range_id).collect();
        if moving.is_empty() {
            return Err(bad());
        }
        for &range_id in &moving {
            tracing::info!(range = range_id, from = me, to = target, "move-leader: transferring");
            self.backend.raft.transfer_leader(range_id, target).await.map_err(Status::from)?;
        }
        let started = std::time::Instant::now();
        loop {
            let now = self.backend.raft.status().await;
            let pending: Vec<u64> =
                moving.iter().copied().filter(|id| !now.iter().any(|s| s.range_id == *id && s.leader_id == target)).collect();
            if pending.is_empty() {
                return Ok(Response::new(pb::MoveLeaderResponse { header }));
            }
            if started.elapsed() >= MOVE_LEADER_TIMEOUT {
                tracing::warn!(?pending, to = target, "move-leader: transfer took too long");
                return Err(ApiError::Timeout.into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn downgrade(&self, _r: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("downgrade"))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    /// Reserves the next node id for the peer URL (exactly one); the node
    /// then starts with that id and `--join`. A learner (`--learner`)
    /// receives no replica until promoted (docs/api.md).
    async fn member_add(&self, r: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        let peer = crate::node_admin::peer_addr_of(&r.get_ref().peer_ur_ls)?;
        let learner = r.get_ref().is_learner;
        let id = crate::node_admin::add(&self.backend, &peer, learner).await?;
        // The added member as recorded (the list below is read from this
        // member's copy, which may not show it yet: etcdctl reads the id
        // from `member`).
        let member = pb::Member {
            id,
            name: String::new(),
            peer_ur_ls: vec![format!("https://{peer}")],
            client_ur_ls: Vec::new(),
            is_learner: learner,
        };
        let mut members = self.members().await;
        if !members.iter().any(|m| m.id == id) {
            members.push(member.clone());
        }
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.backend.header(ROOT_RANGE_ID, 0).await),
            member: Some(member),
            members,
        }))
    }

    /// Drains the member and has the placement driver decommission it once
    /// it holds nothing (docs/api.md); answered at once with the members.
    async fn member_remove(&self, r: Request<pb::MemberRemoveRequest>) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        crate::node_admin::remove(&self.backend, r.get_ref().id).await?;
        let members = self.members().await;
        Ok(Response::new(pb::MemberRemoveResponse { header: Some(self.backend.header(ROOT_RANGE_ID, 0).await), members }))
    }

    async fn member_update(&self, _r: Request<pb::MemberUpdateRequest>) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(unimplemented("member update: a node's addresses come from its own config; restart it with the new ones"))
    }

    async fn member_list(&self, _r: Request<pb::MemberListRequest>) -> Result<Response<pb::MemberListResponse>, Status> {
        let members = self.members().await;
        Ok(Response::new(pb::MemberListResponse { header: Some(self.backend.header(ROOT_RANGE_ID, 0).await), members }))
    }

    /// A learner member that joined and is alive takes replicas from now
    /// on; refused, as etcd refuses, for a member that is not a learner or
    /// a learner not joined (or not alive).
    async fn member_promote(&self, r: Request<pb::MemberPromoteRequest>) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        crate::node_admin::promote(&self.backend, r.get_ref().id).await?;
        let members = self.members().await;
        Ok(Response::new(pb::MemberPromoteResponse { header: Some(self.backend.header(ROOT_RANGE_ID, 0).await), members }))
    }
}

impl ClusterService {
    /// Every node of the directory, as etcd lists members, learners marked;
    /// then the members added and not joined yet, as etcd lists unstarted
    /// ones (no name, no client URL). Without the meta range (no leader,
    /// no local replica) the directory alone answers: clients sync their
    /// endpoints from this list and must get one.
    async fn members(&self) -> Vec<pb::Member> {
        let admin = crate::node_admin::states(&self.backend, false).await.unwrap_or_else(|e| {
            tracing::debug!("member list without the administrative states: {e}");
            Default::default()
        });
        let nodes = self.backend.nodes();
        let learner = |id: u64| admin.get(&id).is_some_and(|a| a.learner);
        let mut members: Vec<pb::Member> = nodes
            .iter()
            .map(|m| pb::Member {
                id: m.id,
                name: format!("node-{}", m.id),
                peer_ur_ls: vec![format!("https://{}", m.peer_addr)],
                client_ur_ls: vec![format!("http://{}", m.client_addr)],
                is_learner: learner(m.id),
            })
            .collect();
        let unstarted = admin.iter().filter(|(id, a)| !a.decommissioned && !nodes.iter().any(|n| n.id == **id));
        members.extend(unstarted.filter_map(|(id, a)| {
            Some(pb::Member {
                id: *id,
                name: String::new(),
                peer_ur_ls: vec![format!("https://{}", a.reserved_peer.as_ref()?)],
                client_ur_ls: Vec::new(),
                is_learner: a.learner,
            })
        }));
        members
    }
}

//! etcd `Maintenance` and `Cluster` services: status and membership views.
//! Membership changes wait for the placement driver and say so.

use std::sync::Arc;

use meridian_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::routing::ROOT_RANGE_ID;

/// The etcd API version Meridian speaks.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    pub backend: Arc<Backend>,
}

pub struct ClusterService {
    pub backend: Arc<Backend>,
}

fn dir_size(path: &std::path::Path, depth: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth < 4 => dir_size(&e.path(), depth + 1),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn unimplemented(what: &str) -> Status {
    ApiError::Unimplemented(what.into()).into()
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(&self, _r: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        // Meridian raises no etcd-style alarms (space quota is enforced per request).
        Ok(Response::new(pb::AlarmResponse { header: Some(self.backend.header(ROOT_RANGE_ID, 0).await), alarms: vec![] }))
    }

    async fn status(&self, _r: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.backend.raft.status().await.into_iter().find(|s| s.range_id == ROOT_RANGE_ID);
        let size = dir_size(&self.backend.cfg.data_dir, 0) as i64;
        let (leader, index, term, applied) = st.map_or((0, 0, 0, 0), |s| (s.leader_id, s.commit, s.term, s.applied));
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.backend.header(ROOT_RANGE_ID, 0).await),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader,
            raft_index: index,
            raft_term: term,
            raft_applied_index: applied,
            errors: vec![],
            db_size_in_use: size,
            is_learner: false,
        }))
    }

    async fn defragment(&self, _r: Request<pb::DefragmentRequest>) -> Result<Response<pb::DefragmentResponse>, Status> {
        Err(unimplemented("defragment: RocksDB compacts in the background"))
    }

    async fn hash(&self, _r: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        Err(unimplemented("hash"))
    }

    async fn hash_kv(&self, _r: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(unimplemented("hashkv"))
    }

    type SnapshotStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    async fn snapshot(&self, _r: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("snapshot: use the data directory backup procedure"))
    }

    async fn move_leader(&self, _r: Request<pb::MoveLeaderRequest>) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(unimplemented("move-leader: leadership is per range; use meridian drill"))
    }

    async fn downgrade(&self, _r: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("downgrade"))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(&self, _r: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(unimplemented("member add: membership changes come with the placement driver"))
    }

    async fn member_remove(&self, _r: Request<pb::MemberRemoveRequest>) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(unimplemented("member remove: membership changes come with the placement driver"))
    }

    async fn member_update(&self, _r: Request<pb::MemberUpdateRequest>) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(unimplemented("member update: membership changes come with the placement driver"))
    }

    async fn member_list(&self, _r: Request<pb::MemberListRequest>) -> Result<Response<pb::MemberListResponse>, Status> {
        let members = self
            .backend
            .nodes()
            .iter()
            .map(|m| pb::Member {
                id: m.id,
                name: format!("node-{}", m.id),
                peer_ur_ls: vec![format!("https://{}", m.peer_addr)],
                client_ur_ls: vec![format!("http://{}", m.client_addr)],
                is_learner: false,
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse { header: Some(self.backend.header(ROOT_RANGE_ID, 0).await), members }))
    }

    async fn member_promote(&self, _r: Request<pb::MemberPromoteRequest>) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(unimplemented("member promote: membership changes come with the placement driver"))
    }
}

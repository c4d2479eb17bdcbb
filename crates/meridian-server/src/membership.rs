//! Changing which nodes hold a range's replicas, one step at a time, on the
//! range's leader:
//!
//! ```text
//!   add-learner N ──► N catches up (log or snapshot) ──► promote N (voter)
//!   remove N        (a voter or a learner; never the leader itself)
//! ```
//!
//! Every step is one Raft configuration change (entered and left as a joint
//! configuration by the leader). A step that does not fit the current
//! configuration is refused with a reason and changes nothing: adding a
//! member twice, promoting a learner that has not caught up (it would stall
//! commits), or removing a voter when the voters left that are caught up
//! could not form a quorum.

use std::time::Duration;

use meridian_raftstore::raft_types::{ConfChangeSingle, ConfChangeType, ConfChangeV2, StateRole};
use meridian_raftstore::{RangeStatus, ReplicaState};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::ApiError;

/// A learner (or a voter that is to stay) counts as caught up when its
/// matched index is at most this many entries behind the leader's commit.
pub const MAX_LAG: u64 = 1000;
/// How long a change waits for the leader to leave the joint configuration.
const LEAVE_JOINT_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberOp {
    AddLearner,
    Promote,
    Remove,
}

/// A range's configuration as one replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub range_id: u64,
    pub conf_ver: u64,
    pub leader: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// A change entered and not yet left.
    pub joint: bool,
}

impl From<&RangeStatus> for Membership {
    fn from(st: &RangeStatus) -> Self {
        Membership {
            range_id: st.range_id,
            conf_ver: st.epoch.conf_ver,
            leader: st.leader_id,
            voters: st.voters.clone(),
            learners: st.learners.clone(),
            joint: !st.voters_outgoing.is_empty(),
        }
    }
}

/// Checks `op` on `node` against the leader's status of the range and
/// answers the configuration change to propose. Pure, so every refusal is
/// unit-tested.
pub fn plan(st: &RangeStatus, leader: u64, cluster: &[u64], op: MemberOp, node: u64) -> Result<ConfChangeV2, ApiError> {
    let range = st.range_id;
    if !cluster.contains(&node) {
        return Err(ApiError::Invalid(format!("node {node} is not a member of the cluster (members: {cluster:?})")));
    }
    if !st.voters_outgoing.is_empty() {
        return Err(ApiError::Membership(format!("range {range} is still finishing a previous change; retry")));
    }
    let is_voter = st.voters.contains(&node);
    let is_learner = st.learners.contains(&node);
    // Caught up = heard from lately (a quiet range's progress would not
    // show a dead follower) and within MAX_LAG of the commit.
    let caught_up = |id: u64| {
        id == leader
            || st.live_peers.contains(&id)
                && st.progress.iter().any(|(p, matched, state)| *p == id && within_reach(*state, *matched, st.commit))
    };
    let kind = match op {
        MemberOp::AddLearner => {
            if is_voter || is_learner {
                let role = if is_voter { "voter" } else { "learner" };
                return Err(ApiError::Membership(format!("node {node} is already a {role} of range {range}")));
            }
            ConfChangeType::AddLearnerNode
        }
        MemberOp::Promote => {
            if !is_learner {
                let why = if is_voter { "is already a voter" } else { "is not a learner; add it as a learner first" };
                return Err(ApiError::Membership(format!("node {node} {why} (range {range})")));
            }
            if !caught_up(node) {
                let (matched, state) = st.progress.iter().find(|(p, ..)| *p == node).map_or((0, None), |(_, m, s)| (*m, Some(*s)));
                let state = match state {
                    _ if !st.live_peers.contains(&node) => "not heard from lately".to_string(),
                    Some(s) => format!("{s:?}"),
                    None => "unknown".to_string(),
                };
                return Err(ApiError::Membership(format!(
                    "node {node} has not caught up with range {range} (matched {matched} of commit {}, {state}); retry when it has",
                    st.commit
                )));
            }
            ConfChangeType::AddNode
        }
        MemberOp::Remove => {
            if node == leader {
                return Err(ApiError::Membership(format!("node {node} leads range {range}; transfer leadership first")));
            }
            if !is_voter && !is_learner {
                return Err(ApiError::Membership(format!("node {node} holds no replica of range {range}")));
            }
            if is_voter {
                let rest: Vec<u64> = st.voters.iter().copied().filter(|v| *v != node).collect();
                let healthy = rest.iter().filter(|v| caught_up(**v)).count();
                let quorum = rest.len() / 2 + 1;
                if healthy < quorum {
                    return Err(ApiError::Membership(format!(
                        "removing node {node} would leave range {range} with {healthy} of {} voters caught up, below its quorum of {quorum}; bring the others back first",
                        rest.len()
                    )));
                }
            }
            ConfChangeType::RemoveNode
        }
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    Ok(cc)
}

async fn range_status(backend: &Backend, range_id: u64) -> Result<RangeStatus, ApiError> {
    // A dormant replica (told it was removed) holds no live replica either.
    backend.raft.status().await.into_iter().find(|s| s.range_id == range_id && !s.dormant).ok_or(ApiError::UnknownRange { range_id })
}

/// This replica's view of a range's configuration.
pub async fn describe(backend: &Backend, range_id: u64) -> Result<Membership, ApiError> {
    Ok(Membership::from(&range_status(backend, range_id).await?))
}

/// Whether a replica whose progress the leader holds at `state` and
/// `matched` has the log up to within [`MAX_LAG`] of `commit`. `matched`
/// only ever rises with the replica's acknowledgements, so it counts in
/// `Probe` too: a learner filled by a snapshot stays in `Probe` on a quiet
/// range (raft-rs moves it to `Replicate` only when a new entry is
/// acknowledged), and requiring `Replicate` kept such a learner from ever
/// being promoted. Not while the leader is sending it a snapshot.
pub fn within_reach(state: ReplicaState, matched: u64, commit: u64) -> bool {
    state != ReplicaState::Snapshot && matched.saturating_add(MAX_LAG) >= commit
}

/// Applies one step on this node, which must lead the range. Answers the
/// configuration once the change is applied and (within a few seconds) the
/// joint configuration left.
pub async fn change(backend: &Backend, range_id: u64, op: MemberOp, node: u64) -> Result<Membership, ApiError> {
    let me = backend.cfg.node_id;
    let st = range_status(backend, range_id).await?;
    if st.role != StateRole::Leader {
        return Err(match st.leader_id {
            0 => ApiError::NoLeader { range_id },
            leader => ApiError::NotLeader { range_id, leader },
        });
    }
    let cluster: Vec<u64> = backend.nodes().iter().map(|m| m.id).collect();
    let cc = plan(&st, me, &cluster, op, node)?;
    tracing::info!(node = me, range = range_id, ?op, target = node, "membership change");
    // Planned against `st`: a change that landed in between (another
    // conf_ver) refuses this one rather than stack on top of it.
    backend.raft.change_membership(meridian_raftstore::RangeRequest::new(range_id, st.epoch), cc).await?;
    let deadline = tokio::time::Instant::now() + LEAVE_JOINT_WAIT;
    loop {
        let st = range_status(backend, range_id).await?;
        if st.voters_outgoing.is_empty() || tokio::time::Instant::now() >= deadline {
            // The meta range records the new descriptor (best effort: a
            // failure is logged, and the next change publishes again).
            if let Err(e) = crate::meta::publish(backend, &crate::server::descriptor_of(&st)).await {
                tracing::warn!(range = range_id, "recording the new descriptor in the meta range: {e}");
            }
            return Ok(Membership::from(&st));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state as raft-rs's progress names it in the cases below.
    fn replica_state(name: &str) -> ReplicaState {
        match name {
            "Probe" => ReplicaState::Probe,
            "Replicate" => ReplicaState::Replicate,
            "Snapshot" => ReplicaState::Snapshot,
            other => panic!("no replica state {other:?}"),
        }
    }

    fn status(voters: &[u64], learners: &[u64], progress: &[(u64, u64, &str)]) -> RangeStatus {
        RangeStatus {
            installing: false,
            range_id: 2,
            role: StateRole::Leader,
            term: 3,
            leader_id: 1,
            commit: 5000,
            applied: 5000,
            last_index: 5000,
            first_index: 1,
            namespace_id: 2,
            start: vec![],
            end: vec![],
            epoch: Default::default(),
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            voters_outgoing: vec![],
            quiesced: false,
            dormant: false,
            dormant_at: None,
            silent: vec![],
            live_peers: vec![2, 3, 4],
            progress: progress.iter().map(|(id, m, s)| (*id, *m, replica_state(s))).collect(),
        }
    }

    fn refused(r: Result<ConfChangeV2, ApiError>) -> String {
        r.expect_err("should be refused").to_string()
    }

    const CLUSTER: [u64; 4] = [1, 2, 3, 4];

    #[test]
    fn steps_that_fit_are_planned() {
        let st =
            status(&[1, 2, 3], &[4], &[(1, 5000, "Replicate"), (2, 5000, "Replicate"), (3, 4999, "Replicate"), (4, 4500, "Replicate")]);
        let cc = plan(&st, 1, &CLUSTER, MemberOp::Promote, 4).unwrap();
        assert_eq!(cc.changes[0].get_change_type(), ConfChangeType::AddNode);
        let cc = plan(&st, 1, &CLUSTER, MemberOp::Remove, 3).unwrap();
        assert_eq!(cc.changes[0].get_change_type(), ConfChangeType::RemoveNode);
        let cc = plan(&st, 1, &CLUSTER, MemberOp::Remove, 4).unwrap();
        assert_eq!((cc.changes[0].get_change_type(), cc.changes[0].node_id), (ConfChangeType::RemoveNode, 4));
        let st = status(&[1, 2, 3], &[], &[]);
        let cc = plan(&st, 1, &CLUSTER, MemberOp::AddLearner, 4).unwrap();
        assert_eq!(cc.changes[0].get_change_type(), ConfChangeType::AddLearnerNode);
    }

    /// A learner filled by a snapshot on a quiet range stays in Probe with
    /// its acknowledged index: it is caught up. One still being sent a
    /// snapshot is not, whatever its index.
    #[test]
    fn a_probed_learner_at_the_commit_index_is_caught_up() {
        assert!(within_reach(replica_state("Probe"), 19, 19));
        assert!(within_reach(replica_state("Replicate"), 4000, 5000));
        assert!(!within_reach(replica_state("Probe"), 10, 5000));
        assert!(!within_reach(replica_state("Snapshot"), 19, 19));
        // The status fixture's commit index is 5000.
        let st = status(&[1, 2, 3], &[4], &[(2, 5000, "Replicate"), (3, 5000, "Replicate"), (4, 5000, "Probe")]);
        assert!(plan(&st, 1, &CLUSTER, MemberOp::Promote, 4).is_ok());
    }

    #[test]
    fn steps_that_do_not_fit_are_refused_with_a_reason() {
        let st = status(&[1, 2, 3], &[4], &[(2, 5000, "Replicate"), (3, 10, "Probe"), (4, 3000, "Replicate")]);
        assert!(refused(plan(&st, 1, &CLUSTER, MemberOp::AddLearner, 9)).contains("not a member of the cluster"));
        assert!(refused(plan(&st, 1, &CLUSTER, MemberOp::AddLearner, 2)).contains("already a voter"));
        assert!(refused(plan(&st, 1, &CLUSTER, MemberOp::AddLearner, 4)).contains("already a learner"));
        assert!(refused(plan(&st, 1, &CLUSTER, MemberOp::Promote, 2)).contains("already a voter"));
        assert!(refused(plan(&st, 1, &CLUSTER, MemberOp::Promote, 4)).contains("matched 3000 of commit 5000"));
        assert!(refused(plan(&st, 1, &CLUSTER, MemberOp::Remove, 1)).contains("transfer leadership first"));
        // 3 is down: removing 2 would leave {1, 3} with only the leader caught up.
        assert!(refused(plan(&st, 1, &CLUSTER, MemberOp::Remove, 2)).contains("below its quorum of 2"));
        // A quiet range still shows a dead follower as replicating; not
        // having heard from its node lately is what gives it away.
        let mut quiet = status(&[1, 2, 3], &[], &[(2, 5000, "Replicate"), (3, 5000, "Replicate")]);
        quiet.live_peers = vec![2];
        assert!(refused(plan(&quiet, 1, &CLUSTER, MemberOp::Remove, 2)).contains("below its quorum of 2"));
        assert!(plan(&quiet, 1, &CLUSTER, MemberOp::Remove, 3).is_ok());
        // Removing the lagging one itself is fine: {1, 2} are both caught up.
        assert!(plan(&st, 1, &CLUSTER, MemberOp::Remove, 3).is_ok());
        let mut joint = st.clone();
        joint.voters_outgoing = vec![1, 2, 3];
        assert!(refused(plan(&joint, 1, &CLUSTER, MemberOp::Remove, 3)).contains("previous change"));
        let no_replica = status(&[1, 2, 3], &[], &[]);
        assert!(refused(plan(&no_replica, 1, &CLUSTER, MemberOp::Remove, 4)).contains("holds no replica"));
    }
}

//! Delivery feedback gathered by transport tasks, drained by the raftstore.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use meridian_transport::Feedback;
use meridian_transport::RaftEnvelope;

/// Entries kept between drains. Feedback is idempotent advice to raft, so
/// losing the excess (after deduplication) is harmless; growing without
/// bound while nobody drains is not.
pub(crate) const MAX_FEEDBACK: usize = 10_000;

#[derive(Default)]
struct Pending {
    order: Vec<Feedback>,
    seen: HashSet<Feedback>,
}

/// Bounded, deduplicated feedback. Called from `send` and from tasks; the
/// lock is held for a few pushes only and never across an await.
#[derive(Default)]
pub(crate) struct FeedbackSink {
    pending: Mutex<Pending>,
}

impl FeedbackSink {
    pub(crate) fn push(&self, f: Feedback) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.order.len() < MAX_FEEDBACK && p.seen.insert(f) {
            p.order.push(f);
        }
    }

    /// Reports that `env` was not delivered.
    #[cfg(test)]
    pub(crate) fn dropped(&self, env: &RaftEnvelope) {
        self.push(undelivered(env));
    }

    pub(crate) fn dropped_all<'a>(&self, envs: impl IntoIterator<Item = &'a RaftEnvelope>) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for env in envs {
            let f = undelivered(env);
            if p.order.len() < MAX_FEEDBACK && p.seen.insert(f) {
                p.order.push(f);
            }
        }
    }

    /// Reports that an item of a peer's queue was not sent.
    pub(crate) fn undelivered(&self, to_node: u64, out: &crate::peer::Outgoing) {
        match out {
            crate::peer::Outgoing::Batch(envs) => self.dropped_all(envs),
            crate::peer::Outgoing::Snapshot(s) => self.push(Feedback::Snapshot { range_id: s.range_id(), to_node, ok: false }),
        }
    }

    pub(crate) fn drain(&self, out: &mut Vec<Feedback>) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        out.append(&mut p.order);
        p.seen.clear();
    }
}

fn undelivered(env: &RaftEnvelope) -> Feedback {
    if env.is_snapshot() {
        Feedback::Snapshot { range_id: env.range_id, to_node: env.to_node, ok: false }
    } else {
        Feedback::Unreachable { range_id: env.range_id, to_node: env.to_node }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduplicates_and_bounds() {
        let sink = FeedbackSink::default();
        let env = |range_id| RaftEnvelope { range_id, to_node: 2, message: vec![0x08, 0x03], ..Default::default() };
        sink.dropped(&env(1));
        sink.dropped(&env(1));
        sink.dropped_all((0..2 * MAX_FEEDBACK as u64).map(env).collect::<Vec<_>>().iter());
        let mut out = Vec::new();
        sink.drain(&mut out);
        assert_eq!(out.len(), MAX_FEEDBACK);
        assert_eq!(out[0], Feedback::Unreachable { range_id: 1, to_node: 2 });
        out.clear();
        sink.drain(&mut out);
        assert!(out.is_empty());
        sink.dropped(&env(1));
        sink.drain(&mut out);
        assert_eq!(out.len(), 1, "deduplication resets after a drain");
    }
}

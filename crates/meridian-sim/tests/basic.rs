//! Focused simulation scenarios, each asserting one property.

use meridian_raftstore::raft_types::{ConfChangeSingle, ConfChangeType, ConfChangeV2, StateRole};
use meridian_raftstore::RaftstoreError;
use meridian_sim::{Cluster, SimConfig};
use meridian_storage::KeyInterval;

/// A local read on `store`'s replica at its own epoch.
fn read_local(store: &meridian_raftstore::Store, range_id: u64, key: &[u8]) -> Result<Vec<u8>, RaftstoreError> {
    store.read_local(store.request(range_id), key)
}

/// A conf change on `store`'s replica at its own epoch.
fn conf_change_on(
    store: &mut meridian_raftstore::Store,
    range_id: u64,
    cc: ConfChangeV2,
) -> Result<meridian_raftstore::RequestId, RaftstoreError> {
    store.propose_conf_change(store.request(range_id), cc)
}

fn cluster(seed: u64, ranges: u64) -> Cluster {
    let mut cfg = SimConfig::new(seed);
    cfg.ranges = ranges;
    Cluster::new(cfg)
}

fn assert_clean(c: &Cluster) {
    assert!(c.checker.violations().is_empty(), "violations: {:#?}\n{}", c.checker.violations(), c.describe());
}

#[test]
fn every_range_elects_a_leader_and_commits() {
    let mut c = cluster(1, 8);
    assert!(c.run_until(300, |c| c.range_ids().iter().all(|r| c.leader_of(*r).is_some())), "{}", c.describe());
    for r in c.range_ids() {
        assert!(c.put_and_wait(r, 300).is_some(), "range {r} did not commit: {}", c.describe());
    }
    assert!(c.converge(1000));
    assert_clean(&c);
}

#[test]
fn acknowledged_writes_survive_crash_of_every_node_in_turn() {
    let mut c = cluster(2, 2);
    for round in 0..3u64 {
        for _ in 0..20 {
            for r in c.range_ids() {
                assert!(c.put_and_wait(r, 500).is_some(), "round {round}: {}", c.describe());
            }
        }
        let victim = 1 + round % 3;
        c.crash(victim);
        c.run(30);
        c.restart(victim);
    }
    // All nodes crash at once: the acknowledged writes are on disk.
    for n in c.node_ids() {
        c.crash(n);
    }
    for n in c.node_ids() {
        c.restart(n);
    }
    assert!(c.converge(2000), "{:#?}", c.checker.violations());
    assert!(c.checker.acked_count() >= 120);
    assert_clean(&c);
}

#[test]
fn minority_side_of_a_partition_commits_nothing() {
    let mut c = cluster(3, 1);
    assert!(c.put_and_wait(1, 300).is_some());
    let old = c.leader_of(1).expect("leader");
    let others: Vec<u64> = c.node_ids().into_iter().filter(|n| *n != old).collect();
    c.net.partition(&[old], &others);
    let commit_before = c.status(old, 1).unwrap().commit;
    let (stranded_key, cmd) = c.fresh_put(1);
    let id = c.propose_on(old, 1, cmd).expect("old leader still accepts the proposal");
    c.run(200);
    let st = c.status(old, 1).unwrap();
    assert_eq!(st.commit, commit_before, "the isolated node committed something");
    assert!(!matches!(c.result(old, id), Some(Ok(_))), "a write on the minority side was acknowledged");
    assert_ne!(st.role, StateRole::Leader, "check_quorum makes the isolated leader step down");
    // The majority side elects a new leader and keeps going.
    assert!(c.put_and_wait(1, 300).is_some());
    let new = c.leader_of(1).unwrap();
    assert_ne!(new, old);
    // The stranded proposal is answered, never with success.
    let answer = c.wait(old, id, 500);
    assert!(matches!(answer, Some(Err(RaftstoreError::ProposalDropped { .. } | RaftstoreError::OutcomeUnknown { .. }))), "got {answer:?}");
    c.net.heal();
    assert!(c.converge(1000));
    for n in c.node_ids() {
        assert!(read_local(c.store(n).unwrap(), 1, &stranded_key).unwrap().is_empty(), "node {n} applied the minority's write");
    }
    assert_clean(&c);
}

#[test]
fn linearizable_read_sees_acknowledged_write_on_every_node() {
    let mut c = cluster(4, 1);
    let key = c.put_and_wait(1, 300).unwrap();
    c.run(5);
    let value = {
        let leader = c.leader_of(1).unwrap();
        read_local(c.store(leader).unwrap(), 1, &key).unwrap()
    };
    for n in c.node_ids() {
        let id = c.read_on(n, 1, &key, Some(value.clone())).unwrap();
        let got = c.wait(n, id, 200).expect("read answered");
        assert_eq!(got.unwrap().1, value, "node {n}");
    }
    assert_clean(&c);
}

#[test]
fn read_without_quorum_times_out_instead_of_answering() {
    let mut c = cluster(5, 1);
    let key = c.put_and_wait(1, 300).unwrap();
    let leader = c.leader_of(1).unwrap();
    let others: Vec<u64> = c.node_ids().into_iter().filter(|n| *n != leader).collect();
    c.net.partition(&[leader], &others);
    let id = c.read_on(leader, 1, &key, None).unwrap();
    let got = c.wait(leader, id, 400).expect("read answered");
    assert!(matches!(got, Err(RaftstoreError::ReadTimeout { .. })), "got {got:?}");
}

#[test]
fn snapshot_catch_up_after_compaction() {
    let mut c = cluster(6, 1);
    assert!(c.put_and_wait(1, 300).is_some());
    let leader = c.leader_of(1).unwrap();
    let lagger = c.node_ids().into_iter().find(|n| *n != leader).unwrap();
    c.crash(lagger);
    for _ in 0..300 {
        assert!(c.put_and_wait(1, 300).is_some());
    }
    let st = c.status(leader, 1).unwrap();
    assert!(st.first_index > 200, "log was compacted on the leader: {st:?}");
    c.restart(lagger);
    assert!(c.converge(2000), "{:#?}", c.checker.violations());
    let m = c.store(lagger).unwrap().metrics();
    assert!(m.snapshots_installed >= 1, "the restarted node caught up by snapshot: {m:?}");
    assert_clean(&c);
}

/// Records as (key, value) pairs.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Every record of namespace `ns` on `node`, and how many staged
/// snapshot records it holds.
fn namespace_data(c: &Cluster, node: u64, ns: u64) -> (Records, usize) {
    use meridian_storage::{keys, Cf};
    let engine = c.store(node).unwrap().engine();
    let (s, e) = keys::range_span(ns);
    let mut data = Vec::new();
    engine
        .scan(Cf::Data, &s, &e, &mut |k, v| {
            data.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    let mut staged = 0;
    engine
        .scan(Cf::SnapStage, &[], &[0xff; 9], &mut |_, _| {
            staged += 1;
            true
        })
        .unwrap();
    (data, staged)
}

/// A follower that must catch up by snapshot over a lossy link: streams
/// are cut half-way again and again, and until one arrives whole its data
/// stays exactly as it was (staged chunks are invisible); once the network
/// heals a snapshot streams in many chunks, installs over several rounds,
/// and nothing staged is left behind.
#[test]
fn a_snapshot_cut_half_way_leaves_nothing_and_a_whole_one_installs() {
    let mut c = cluster(61, 1);
    assert!(c.put_and_wait(1, 300).is_some());
    assert!(c.converge(500));
    let leader = c.leader_of(1).unwrap();
    let lagger = c.node_ids().into_iter().find(|n| *n != leader).unwrap();
    let ns = c.status(lagger, 1).unwrap().namespace_id;
    c.crash(lagger);
    for _ in 0..300 {
        assert!(c.put_and_wait(1, 300).is_some());
    }
    assert!(c.status(leader, 1).unwrap().first_index > 200, "log was compacted on the leader");
    // Cut off at first, the restarted node applies what its own log holds.
    let others: Vec<u64> = c.node_ids().into_iter().filter(|n| *n != lagger).collect();
    c.net.partition(&[lagger], &others);
    c.restart(lagger);
    c.run(20);
    let (before, _) = namespace_data(&c, lagger, ns);
    // Then every envelope is lost with probability 0.3: a stream of tens
    // of chunks is all but never delivered whole.
    c.net.heal();
    c.net.set_drop_prob(0.3);
    for _ in 0..600 {
        c.step();
        let st = c.status(lagger, 1).unwrap();
        if st.installing || c.store(lagger).unwrap().metrics().snapshots_installed > 0 {
            break;
        }
        assert_eq!(namespace_data(&c, lagger, ns).0, before, "staged chunks never show in the range's data");
    }
    let m = c.store(lagger).unwrap().metrics();
    assert!(m.snapshot_chunks_received > 0, "chunks arrived: {m:?}");
    assert!(m.snapshots_abandoned > 0, "cut transfers were given up: {m:?}");
    c.net.heal();
    assert!(c.converge(3000), "{:#?}\n{}", c.checker.violations(), c.describe());
    let m = c.store(lagger).unwrap().metrics();
    assert!(m.snapshots_installed >= 1, "the follower caught up by snapshot: {m:?}");
    assert!(m.snapshot_chunks_received > 10, "snapshots streamed in many chunks: {m:?}");
    let (after, staged) = namespace_data(&c, lagger, ns);
    assert_eq!(after, namespace_data(&c, leader, ns).0, "the follower holds the leader's data");
    assert_eq!(staged, 0, "nothing staged is left behind");
    assert_clean(&c);
}

#[test]
fn leader_transfer_moves_leadership() {
    let mut c = cluster(7, 1);
    assert!(c.put_and_wait(1, 300).is_some());
    let leader = c.leader_of(1).unwrap();
    let target = c.node_ids().into_iter().find(|n| *n != leader).unwrap();
    c.store_mut(leader).unwrap().transfer_leader(1, target).unwrap();
    assert!(c.run_until(100, |c| c.leader_of(1) == Some(target)), "{}", c.describe());
    assert!(c.put_and_wait(1, 300).is_some());
    assert_clean(&c);
}

/// A leader handing over refuses proposals until the transfer ends; its
/// `NotLeader` names the node it hands over to, not itself.
#[test]
fn proposal_refused_during_a_transfer_names_the_transferee() {
    let mut c = cluster(9, 1);
    assert!(c.put_and_wait(1, 300).is_some());
    let leader = c.leader_of(1).unwrap();
    let target = c.node_ids().into_iter().find(|n| *n != leader).unwrap();
    // Caught up, then down: the transfer starts and stays pending until
    // raft-rs gives it up after an election timeout.
    assert!(c.put_and_wait(1, 300).is_some());
    c.run(20);
    c.crash(target);
    c.store_mut(leader).unwrap().transfer_leader(1, target).unwrap();
    c.step();
    let (_, cmd) = c.fresh_put(1);
    let id = c.propose_on(leader, 1, cmd).unwrap();
    match c.wait(leader, id, 5) {
        Some(Err(RaftstoreError::NotLeader { leader_hint, .. })) => assert_eq!(leader_hint, Some(target)),
        other => panic!("expected NotLeader naming node {target}, got {other:?}\n{}", c.describe()),
    }
    // The transfer times out; the old leader takes proposals again.
    c.restart(target);
    assert!(c.put_and_wait(1, 600).is_some(), "{}", c.describe());
}

#[test]
fn quiesced_range_wakes_and_elects_after_leader_dies() {
    let mut c = quiet_cluster(8);
    // While quiet, ticks do not advance raft: no heartbeats flow.
    let before = c.store(1).unwrap().metrics().messages_sent;
    c.run(50);
    let pings_only = c.store(1).unwrap().metrics().messages_sent - before;
    assert!(pings_only <= 2 * 50, "quiet ranges still send raft traffic: {pings_only} messages in 50 ticks");
    let dead = c.leader_of(1).unwrap();
    c.crash(dead);
    assert!(
        c.run_until(400, |c| c.range_ids().iter().all(|r| c.leader_of(*r).is_some_and(|l| l != dead))),
        "quiet ranges did not elect after their leader died: {}",
        c.describe()
    );
    for r in c.range_ids() {
        assert!(c.put_and_wait(r, 300).is_some());
    }
    assert_clean(&c);
}

/// Feeds every live store the nodes `down`, like the node's gossip does
/// every 5 ticks.
fn feed(c: &mut Cluster, down: &[u64]) {
    let down: std::collections::BTreeSet<u64> = down.iter().copied().collect();
    for n in c.node_ids() {
        if let Some(s) = c.store_mut(n) {
            s.set_liveness_feed(down.clone());
        }
    }
}

/// A cluster whose ranges all quiesced.
fn quiet_cluster(seed: u64) -> Cluster {
    let mut c = cluster(seed, 4);
    for r in c.range_ids() {
        assert!(c.put_and_wait(r, 300).is_some());
    }
    assert!(
        c.run_until(300, |c| c.node_ids().iter().all(|n| c.store(*n).unwrap().statuses().iter().all(|s| s.quiesced))),
        "ranges did not quiesce: {}",
        c.describe()
    );
    c
}

/// Steps (feeding `down` every 5 steps while `fed`) until every range has
/// a leader other than `dead`; the steps taken.
fn steps_until_reelected(c: &mut Cluster, dead: u64, down: &[u64], fed: bool, limit: u64) -> Option<u64> {
    for step in 0..limit {
        if fed && step % 5 == 0 {
            feed(c, down);
        }
        c.step();
        if c.range_ids().iter().all(|r| c.leader_of(*r).is_some_and(|l| l != dead)) {
            return Some(step);
        }
    }
    None
}

#[test]
fn with_a_liveness_feed_quiet_ranges_ping_rarely_and_wake_when_the_leaders_node_is_down() {
    let mut c = quiet_cluster(8);
    // Unfed: pings every 2 ticks.
    let before = c.store(1).unwrap().metrics().messages_sent;
    c.run(100);
    let unfed = c.store(1).unwrap().metrics().messages_sent - before;
    // Fed "nobody down": pings every 2 election timeouts, ranges stay quiet.
    let before = c.store(1).unwrap().metrics().messages_sent;
    for step in 0..100 {
        if step % 5 == 0 {
            feed(&mut c, &[]);
        }
        c.step();
    }
    let fed = c.store(1).unwrap().metrics().messages_sent - before;
    assert!(fed * 5 <= unfed, "a fed store pings as much: {fed} messages fed, {unfed} unfed in 100 ticks");
    assert!(c.node_ids().iter().all(|n| c.store(*n).unwrap().statuses().iter().all(|s| s.quiesced)));
    // The leader's node dies and the feed says so: the quiet ranges elect.
    let dead = c.leader_of(1).unwrap();
    c.crash(dead);
    assert!(steps_until_reelected(&mut c, dead, &[dead], true, 400).is_some(), "no election: {}", c.describe());
    for r in c.range_ids() {
        assert!(c.put_and_wait(r, 300).is_some());
    }
    assert_clean(&c);
}

#[test]
fn a_fed_store_still_wakes_when_the_feed_misses_a_dead_leader() {
    // The feed keeps saying nobody is down (a node whose gossip runs while
    // its store hangs, or one gossip does not know): the quiet ranges
    // still elect once the leader's node has been silent for the backstop,
    // later than with the feed's help.
    let mut told = quiet_cluster(10);
    let mut untold = quiet_cluster(10);
    let dead = told.leader_of(1).unwrap();
    assert_eq!(untold.leader_of(1), Some(dead), "same seed, same leader");
    told.crash(dead);
    untold.crash(dead);
    let fast = steps_until_reelected(&mut told, dead, &[dead], true, 600).expect("elected with the feed's help");
    let slow = steps_until_reelected(&mut untold, dead, &[], true, 600);
    assert!(slow.is_some(), "the backstop never woke the quiet ranges: {}", untold.describe());
    assert!(fast < slow.unwrap(), "the feed did not speed up the wake-up: {fast} vs {slow:?} steps");
}

#[test]
fn a_stale_liveness_feed_is_ignored_and_pings_resume() {
    let mut c = quiet_cluster(9);
    // The feed says nobody is down, once, and is never renewed (gossip
    // stalled): the leader then dies.
    feed(&mut c, &[]);
    let dead = c.leader_of(1).unwrap();
    c.crash(dead);
    assert!(steps_until_reelected(&mut c, dead, &[], false, 600).is_some(), "a stale feed kept quiet ranges asleep: {}", c.describe());
}

fn change(kind: ConfChangeType, node: u64) -> ConfChangeV2 {
    let mut s = ConfChangeSingle::default();
    s.set_change_type(kind);
    s.node_id = node;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![s].into());
    cc
}

fn conf_change(c: &mut Cluster, cc: ConfChangeV2) {
    for _ in 0..20 {
        let Some(leader) = c.leader_of(1) else {
            c.run(10);
            continue;
        };
        let id = match conf_change_on(c.store_mut(leader).unwrap(), 1, cc.clone()) {
            Ok(id) => id,
            Err(e) => {
                eprintln!("conf change refused: {e}");
                c.run(10);
                continue;
            }
        };
        if let Some(Ok(_)) = c.wait_untracked(leader, id, 300) {
            // Let the explicit leave of the joint config commit as well.
            c.run(30);
            return;
        }
    }
    panic!("conf change {cc:?} did not commit: {}", c.describe());
}

#[test]
fn membership_change_under_load() {
    let mut cfg = SimConfig::new(9);
    cfg.nodes = 4;
    cfg.initial_voters = 3;
    let mut c = Cluster::new(cfg);
    assert!(c.put_and_wait(1, 300).is_some());
    assert!(c.store(4).unwrap().range_ids().is_empty(), "node 4 starts without replicas");
    for _ in 0..100 {
        assert!(c.put_and_wait(1, 300).is_some());
    }
    conf_change(&mut c, change(ConfChangeType::AddLearnerNode, 4));
    assert!(c.run_until(500, |c| c.status(4, 1).is_some_and(|s| s.applied >= 100)), "learner did not catch up: {}", c.describe());
    for _ in 0..20 {
        assert!(c.put_and_wait(1, 300).is_some());
    }
    conf_change(&mut c, change(ConfChangeType::AddNode, 4));
    // Remove a voter that is not the leader, while writes continue.
    let leader = c.leader_of(1).unwrap();
    let victim = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    for _ in 0..20 {
        c.fresh_put(1);
        let (_, cmd) = c.fresh_put(1);
        c.propose(1, cmd);
    }
    conf_change(&mut c, change(ConfChangeType::RemoveNode, victim));
    assert!(c.run_until(300, |c| c.status(victim, 1).is_some_and(|s| s.dormant)), "removed replica did not stop: {}", c.describe());
    assert!(read_local(c.store(victim).unwrap(), 1, b"k").is_err(), "a removed replica serves no reads");
    // A crash may lose the (unsynced) apply of its own removal; then no
    // leader tells it again, and it is the members' *removed* hint, answering
    // its campaign, that puts it back to sleep.
    c.crash(victim);
    c.restart(victim);
    assert!(
        c.run_until(500, |c| c.status(victim, 1).is_some_and(|s| s.dormant)),
        "a removed replica woke up for good after a restart: {}",
        c.describe()
    );
    c.run(100);
    assert!(c.status(victim, 1).is_some_and(|s| s.dormant && s.role != StateRole::Leader), "{}", c.describe());
    let st = c.status(c.leader_of(1).unwrap(), 1).unwrap();
    assert!(st.voters.contains(&4) && !st.voters.contains(&victim), "{st:?}");
    assert!(st.epoch.conf_ver >= 4, "every change bumps conf_ver: {st:?}");
    // The leader cannot remove itself.
    let leader = c.leader_of(1).unwrap();
    let err = conf_change_on(c.store_mut(leader).unwrap(), 1, change(ConfChangeType::RemoveNode, leader)).unwrap_err();
    assert!(matches!(err, RaftstoreError::InvalidRequest { .. }));
    for _ in 0..20 {
        assert!(c.put_and_wait(1, 300).is_some());
    }
    // Add the removed node back: the leader's messages from the later epoch
    // wake the dormant replica, which catches up from the log it kept.
    conf_change(&mut c, change(ConfChangeType::AddLearnerNode, victim));
    assert!(
        c.run_until(800, |c| c.status(victim, 1).is_some_and(|s| !s.dormant && s.applied >= 140)),
        "re-added learner did not catch up: {}",
        c.describe()
    );
    conf_change(&mut c, change(ConfChangeType::AddNode, victim));
    let st = c.status(c.leader_of(1).unwrap(), 1).unwrap();
    assert!(st.voters.contains(&victim) && st.voters.len() == 4, "{st:?}");
    for _ in 0..20 {
        assert!(c.put_and_wait(1, 300).is_some());
    }
    assert!(c.converge(2000), "{:#?}", c.checker.violations());
    assert_clean(&c);
}

/// A request names the epoch its route has: once a membership change has
/// moved the range on, the old epoch is refused (with the current one, so
/// the caller can refresh and retry) and nothing is proposed; a key outside
/// the range's span is refused too.
#[test]
fn stale_epoch_and_foreign_keys_are_refused() {
    let mut cfg = SimConfig::new(21);
    cfg.nodes = 4;
    cfg.initial_voters = 3;
    let mut c = Cluster::new(cfg);
    assert!(c.put_and_wait(1, 300).is_some());
    let leader = c.leader_of(1).unwrap();
    let before = c.store(leader).unwrap().descriptor(1).unwrap().epoch;
    conf_change(&mut c, change(ConfChangeType::AddLearnerNode, 4));
    let leader = c.leader_of(1).unwrap();
    let current = c.store(leader).unwrap().descriptor(1).unwrap().epoch;
    assert!(current.conf_ver > before.conf_ver, "a membership change bumps conf_ver: {before:?} -> {current:?}");

    let (_, cmd) = c.fresh_put(1);
    let applied = c.status(leader, 1).unwrap().last_index;
    let store = c.store_mut(leader).unwrap();
    let stale = meridian_raftstore::RangeRequest::new(1, before);
    for refused in [
        store.propose(stale.clone(), cmd.clone()).map(|_| ()),
        store.read_index(stale.clone(), b"k".to_vec()).map(|_| ()),
        store.read_local(stale.clone(), b"k").map(|_| ()),
        store.propose_conf_change(stale.clone(), change(ConfChangeType::AddNode, 4)).map(|_| ()),
    ] {
        assert_eq!(refused, Err(RaftstoreError::EpochMismatch { range_id: 1, current }));
    }
    let outside = meridian_raftstore::RangeRequest::new(1, current).with_keys(vec![KeyInterval::key(b"/r0002/x")]);
    assert_eq!(
        store.propose(outside, cmd.clone()).map(|_| ()),
        Err(RaftstoreError::KeyNotInRange { range_id: 1, key: b"/r0002/x".to_vec() })
    );
    c.run(10);
    assert_eq!(c.status(leader, 1).unwrap().last_index, applied, "a refused request changed nothing");
    let inside = meridian_raftstore::RangeRequest::new(1, current).with_keys(vec![KeyInterval::range(b"/r0001/", b"/r00010")]);
    let id = c.store_mut(leader).unwrap().propose(inside, cmd).expect("the current epoch and the range's own keys are accepted");
    assert!(matches!(c.wait_untracked(leader, id, 300), Some(Ok(_))));
    assert_clean(&c);
}

/// A leader deposed with proposals in flight, whose entries the next
/// leader overwrote, and then handed leadership back, answers its new
/// proposals by their own entries: the new ones succeed, the stranded ones
/// are dropped (never acknowledged), whatever indexes the two share.
#[test]
fn a_leader_back_in_office_answers_its_new_proposals_by_their_own_entries() {
    let mut c = cluster(12, 1);
    assert!(c.put_and_wait(1, 300).is_some());
    let old = c.leader_of(1).expect("leader");
    let others: Vec<u64> = c.node_ids().into_iter().filter(|n| *n != old).collect();
    c.net.partition(&[old], &others);
    let stranded: Vec<_> = (0..10)
        .map(|_| {
            let (_, cmd) = c.fresh_put(1);
            c.propose_on(old, 1, cmd).expect("the old leader still accepts")
        })
        .collect();
    c.run(5);
    let stranded_last = c.status(old, 1).unwrap().last_index;
    assert!(c.run_until(500, |c| c.leader_of(1).is_some_and(|l| l != old)), "{}", c.describe());
    let new = c.leader_of(1).unwrap();
    c.net.heal();
    // The old leader takes the new leader's log (its stranded entries go)…
    assert!(
        c.run_until(500, |c| {
            let (o, n) = (c.status(old, 1).unwrap(), c.status(new, 1).unwrap());
            o.applied == n.commit && o.last_index == n.last_index
        }),
        "{}",
        c.describe()
    );
    assert!(c.status(old, 1).unwrap().last_index < stranded_last, "the stranded entries were overwritten");
    // …and gets leadership back at once, with its stranded proposals still
    // waiting, at indexes its new proposals are about to take.
    c.store_mut(new).unwrap().transfer_leader(1, old).unwrap();
    assert!(c.run_until(200, |c| c.leader_of(1) == Some(old)), "{}", c.describe());
    let fresh: Vec<_> = (0..12)
        .map(|_| {
            let (_, cmd) = c.fresh_put(1);
            c.propose_on(old, 1, cmd).expect("the leader accepts")
        })
        .collect();
    for id in fresh {
        let answer = c.wait(old, id, 500);
        assert!(matches!(answer, Some(Ok(_))), "a new proposal that applied was answered {answer:?}");
    }
    for id in stranded {
        let answer = c.wait(old, id, 500);
        assert!(
            matches!(answer, Some(Err(RaftstoreError::ProposalDropped { .. } | RaftstoreError::OutcomeUnknown { .. }))),
            "a stranded proposal was answered {answer:?}"
        );
    }
    assert_clean(&c);
}

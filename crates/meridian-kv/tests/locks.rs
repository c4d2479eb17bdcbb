//! Native lock queues: FIFO, one wakeup per release, tokens, sessions,
//! lock-delay, guarded compares, bad input — and a seeded model check.

use std::collections::{BTreeMap, VecDeque};

use meridian_kv::command::*;
use meridian_kv::locks::LockRecord;
use meridian_kv::LockEvent;
use rand::{Rng, SeedableRng};

mod common;
use common::Fixture;

impl Fixture {
    fn describe(&self, name: &str) -> LockRecord {
        self.query(QueryKind::LockDescribe(name.into())).lock.unwrap()
    }

    fn session(&mut self, ttl: i64) -> i64 {
        match self.apply(Op::LeaseGrant(LeaseGrantOp { id: 0, ttl_s: ttl })).kind {
            Some(OutcomeKind::Lease(l)) => l.id,
            other => panic!("{other:?}"),
        }
    }

    fn acquire(&mut self, name: &str, session: i64, waiter: u64) -> LockOutcome {
        self.acquire_with(name, session, waiter, false, 0)
    }

    fn acquire_with(&mut self, name: &str, session: i64, waiter: u64, try_only: bool, delay: i64) -> LockOutcome {
        let op = LockAcquireOp { name: name.into(), session, waiter_id: waiter, try_only, lock_delay_ms: delay, value: b"v".to_vec() };
        match self.apply(Op::LockAcquire(op)).kind {
            Some(OutcomeKind::Lock(l)) => l,
            other => panic!("{other:?}"),
        }
    }

    fn release(&mut self, name: &str, session: i64, token: i64) -> Outcome {
        self.apply(Op::LockRelease(LockReleaseOp { name: name.into(), session, token }))
    }

    fn revision(&self) -> i64 {
        self.query(QueryKind::Leases(true)).revision
    }

    fn events(&self) -> Vec<LockEvent> {
        std::mem::take(&mut *self.sink.locks.lock().unwrap())
    }
}

fn error_code(o: &Outcome) -> Option<i32> {
    match &o.kind {
        Some(OutcomeKind::Error(e)) => Some(e.code),
        _ => None,
    }
}

#[test]
fn fifo_queue_one_wakeup_per_release_increasing_tokens() {
    let mut f = Fixture::new();
    let sessions: Vec<i64> = (0..200).map(|_| f.session(60)).collect();
    let first = f.acquire("job", sessions[0], 1);
    assert!(first.granted);
    for (i, &s) in sessions.iter().enumerate().skip(1) {
        let o = f.acquire("job", s, i as u64 + 1);
        assert!(!o.granted);
        assert_eq!(o.ahead, i as u64 - 1, "position in queue");
    }
    assert_eq!(f.describe("job").waiters.len(), 199);
    f.events();
    let mut token = first.token;
    for (i, &s) in sessions.iter().enumerate() {
        let o = f.release("job", s, token);
        assert_eq!(error_code(&o), None, "release {i}");
        let ev = f.events();
        assert_eq!(ev.len(), 1, "exactly one event per release");
        let next = ev[0].holder.clone();
        if i + 1 < sessions.len() {
            let h = next.expect("next waiter granted");
            assert_eq!(ev[0].granted_waiter, i as u64 + 2, "FIFO order");
            assert_eq!(h.session, sessions[i + 1]);
            assert!(h.token > token, "tokens strictly increase");
            assert_eq!(h.token, o.revision, "token = grant revision");
            token = h.token;
        } else {
            assert!(next.is_none());
            assert_eq!(ev[0].granted_waiter, 0);
        }
    }
    assert_eq!(f.describe("job"), LockRecord::default(), "idle lock leaves no record");
}

#[test]
fn acquire_is_idempotent_and_try_once_never_queues() {
    let mut f = Fixture::new();
    let (a, b) = (f.session(60), f.session(60));
    let g = f.acquire("l", a, 1);
    let again = f.acquire("l", a, 2);
    assert!(again.granted);
    assert_eq!(again.token, g.token, "retry returns the same grant");
    let rev = f.revision();
    let t = f.acquire_with("l", b, 3, true, 0);
    assert!(!t.granted);
    assert_eq!(f.revision(), rev, "try-once on a held lock changes nothing");
    assert!(f.describe("l").waiters.is_empty());
    let w = f.acquire("l", b, 4);
    assert!(!w.granted);
    let w2 = f.acquire("l", b, 5);
    assert_eq!(w2.ahead, 0);
    assert_eq!(f.describe("l").waiters.len(), 1, "a retried wait keeps one place");
    assert_eq!(f.describe("l").waiters[0].waiter_id, 5);
}

#[test]
fn session_end_releases_everything_and_expiry_applies_lock_delay() {
    let mut f = Fixture::new();
    let (a, b, c) = (f.session(60), f.session(60), f.session(60));
    // a holds x (delay 5 s) and y (no delay) and waits on z.
    assert!(f.acquire_with("x", a, 1, false, 5000).granted);
    assert!(f.acquire("y", a, 2).granted);
    assert!(f.acquire("z", c, 3).granted);
    assert!(!f.acquire("z", a, 4).granted);
    assert!(!f.acquire_with("x", b, 5, false, 0).granted);
    assert!(!f.acquire("y", b, 6).granted);
    f.events();
    assert_eq!(error_code(&f.apply(Op::LeaseExpire(a))), None);
    let ev = f.events();
    let by_name: BTreeMap<Vec<u8>, &LockEvent> = ev.iter().map(|e| (e.name.clone(), e)).collect();
    assert!(by_name[&b"x".to_vec()].holder.is_none(), "x is under lock-delay, not granted");
    assert_eq!(by_name[&b"y".to_vec()].granted_waiter, 6, "y has no delay: b gets it at once");
    assert_eq!(by_name[&b"z".to_vec()].dropped_waiters, vec![4]);
    let x = f.describe("x");
    assert_eq!(x.delay_ms, 5000);
    assert_eq!(x.waiters.len(), 1);
    let delayed = f.query(QueryKind::DelayedLocks(true)).locks;
    assert_eq!(delayed.len(), 1);
    assert_eq!(delayed[0].name, b"x");
    // Delay over: b gets x.
    f.apply(Op::LockDelayEnd(b"x".to_vec()));
    let ev = f.events();
    assert_eq!(ev[0].granted_waiter, 5);
    assert!(f.query(QueryKind::DelayedLocks(true)).locks.is_empty());
    // A clean revoke grants at once, with no delay.
    let d = f.session(60);
    assert!(!f.acquire("x", d, 7).granted);
    f.apply(Op::LeaseRevoke(b));
    assert_eq!(f.describe("x").holder.unwrap().session, d);
    assert_eq!(f.describe("x").delay_ms, 0);
}

#[test]
fn guarded_compare_on_token() {
    let mut f = Fixture::new();
    let (a, b) = (f.session(60), f.session(60));
    let g = f.acquire("lk", a, 1);
    let guarded = |token: i64, value: &str| {
        Op::Txn(TxnOp {
            compare: vec![Compare { result: 0, target: 5, key: b"lk".to_vec(), number: token, ..Default::default() }],
            success: vec![RequestOp {
                kind: Some(RequestKind::Put(PutOp { key: b"ledger".to_vec(), value: value.into(), ..Default::default() })),
            }],
            failure: vec![],
        })
    };
    match f.apply(guarded(g.token, "by-a")).kind {
        Some(OutcomeKind::Txn(t)) => assert!(t.succeeded),
        other => panic!("{other:?}"),
    }
    assert!(!f.acquire("lk", b, 2).granted);
    f.apply(Op::LeaseExpire(a));
    let hb = f.describe("lk").holder.unwrap();
    assert_eq!(hb.session, b);
    match f.apply(guarded(g.token, "stale-a")).kind {
        Some(OutcomeKind::Txn(t)) => assert!(!t.succeeded, "the old holder's token is rejected"),
        other => panic!("{other:?}"),
    }
    match f.apply(guarded(hb.token, "by-b")).kind {
        Some(OutcomeKind::Txn(t)) => assert!(t.succeeded),
        other => panic!("{other:?}"),
    }
}

#[test]
fn proclaim_is_guarded_by_the_token() {
    let mut f = Fixture::new();
    let (a, b) = (f.session(60), f.session(60));
    let g = f.acquire("leader", a, 1);
    let p = |session, token, v: &str| Op::Proclaim(ProclaimOp { name: b"leader".to_vec(), session, token, value: v.into() });
    assert_eq!(error_code(&f.apply(p(a, g.token, "a2"))), None);
    assert_eq!(f.describe("leader").holder.unwrap().value, b"a2");
    assert_eq!(error_code(&f.apply(p(b, g.token, "b"))), Some(11));
    assert_eq!(error_code(&f.apply(p(a, g.token + 100, "x"))), Some(11));
    assert_eq!(f.describe("leader").holder.unwrap().value, b"a2");
}

#[test]
fn bad_input_is_an_error_that_changes_nothing() {
    let mut f = Fixture::new();
    let (a, b) = (f.session(60), f.session(60));
    let g = f.acquire("l", a, 1);
    let rev = f.revision();
    let before = f.describe("l");
    let cases: Vec<(Op, i32)> = vec![
        (Op::LockAcquire(LockAcquireOp { name: b"l".to_vec(), session: 12345, ..Default::default() }), 10),
        (Op::LockAcquire(LockAcquireOp { name: vec![], session: a, ..Default::default() }), 7),
        (Op::LockAcquire(LockAcquireOp { name: vec![b'n'; 5000], session: a, ..Default::default() }), 7),
        (Op::LockAcquire(LockAcquireOp { name: b"m".to_vec(), session: a, lock_delay_ms: -1, ..Default::default() }), 7),
        (Op::LockAcquire(LockAcquireOp { name: b"m".to_vec(), session: a, lock_delay_ms: 3_600_000, ..Default::default() }), 7),
        (Op::LockRelease(LockReleaseOp { name: b"l".to_vec(), session: b, token: 0 }), 11),
        (Op::LockRelease(LockReleaseOp { name: b"l".to_vec(), session: a, token: g.token + 1 }), 11),
        (Op::LockRelease(LockReleaseOp { name: b"free".to_vec(), session: a, token: 0 }), 11),
        (Op::LockRelease(LockReleaseOp { name: vec![], session: a, token: 0 }), 7),
        (Op::LeaseExpire(999), 3),
    ];
    for (op, code) in cases {
        let o = f.apply(op.clone());
        assert_eq!(error_code(&o), Some(code), "{op:?}");
        assert_eq!(f.revision(), rev, "{op:?} changed the revision");
        assert_eq!(f.describe("l"), before);
    }
    // Double release: the second is an error and changes nothing.
    assert_eq!(error_code(&f.release("l", a, g.token)), None);
    let rev = f.revision();
    assert_eq!(error_code(&f.release("l", a, g.token)), Some(11));
    assert_eq!(f.revision(), rev);
}

#[test]
fn cancel_removes_only_the_named_waiter() {
    let mut f = Fixture::new();
    let (a, b, c) = (f.session(60), f.session(60), f.session(60));
    let g = f.acquire("l", a, 1);
    f.acquire("l", b, 2);
    f.acquire("l", c, 3);
    let cancel = |s, w| Op::LockCancel(LockCancelOp { name: b"l".to_vec(), session: s, waiter_id: w });
    assert!(matches!(f.apply(cancel(b, 99)).kind, Some(OutcomeKind::Done(false))));
    assert!(matches!(f.apply(cancel(b, 2)).kind, Some(OutcomeKind::Done(true))));
    f.release("l", a, g.token);
    assert_eq!(f.describe("l").holder.unwrap().session, c);
    // b's session no longer lists the lock: ending it touches nothing.
    f.events();
    f.apply(Op::LeaseRevoke(b));
    assert!(f.events().is_empty());
}

/// Random acquires, releases, cancels, expiries and delay ends against a
/// plain model of FIFO queues; tokens must strictly increase per name and
/// every holder's session must be alive.
#[test]
fn random_operations_match_a_fifo_model() {
    for seed in 0..20u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut f = Fixture::new();
        let names = ["a", "b", "c"];
        let mut alive: Vec<i64> = (0..6).map(|_| f.session(60)).collect();
        // name → (holder session, queue of sessions, delayed)
        let mut model: BTreeMap<&str, (Option<i64>, VecDeque<i64>, bool)> = BTreeMap::new();
        let mut last_token: BTreeMap<&str, i64> = BTreeMap::new();
        let mut waiter = 0u64;
        for step in 0..600 {
            let name = names[rng.gen_range(0..names.len())];
            let m = model.entry(name).or_default();
            match rng.gen_range(0..10) {
                0..=4 if !alive.is_empty() => {
                    let s = alive[rng.gen_range(0..alive.len())];
                    waiter += 1;
                    let o = f.acquire_with(name, s, waiter, false, if rng.gen_bool(0.3) { 100 } else { 0 });
                    let model_grants = m.0 == Some(s) || (m.0.is_none() && !m.2 && m.1.is_empty());
                    assert_eq!(o.granted, model_grants, "seed {seed} step {step}");
                    if m.0 != Some(s) && !m.1.contains(&s) {
                        if model_grants {
                            m.0 = Some(s);
                        } else {
                            m.1.push_back(s);
                        }
                    }
                }
                5..=6 => {
                    if let Some(h) = m.0 {
                        assert_eq!(error_code(&f.release(name, h, 0)), None, "seed {seed} step {step}");
                        m.0 = if m.2 { None } else { m.1.pop_front() };
                    }
                }
                7 if !alive.is_empty() => {
                    let s = alive.remove(rng.gen_range(0..alive.len()));
                    let expire = rng.gen_bool(0.5);
                    let delays: BTreeMap<&str, i64> = names
                        .iter()
                        .map(|n| (*n, f.describe(n).holder.filter(|h| h.session == s).map_or(0, |h| h.lock_delay_ms)))
                        .collect();
                    f.apply(if expire { Op::LeaseExpire(s) } else { Op::LeaseRevoke(s) });
                    for (n, mm) in model.iter_mut() {
                        mm.1.retain(|&x| x != s);
                        if mm.0 == Some(s) {
                            mm.0 = None;
                            if expire && delays[n] > 0 {
                                mm.2 = true;
                            }
                            if !mm.2 {
                                mm.0 = mm.1.pop_front();
                            }
                        }
                    }
                    alive.push(f.session(60));
                }
                8 => {
                    f.apply(Op::LockDelayEnd(name.into()));
                    if m.2 {
                        m.2 = false;
                        if m.0.is_none() {
                            m.0 = m.1.pop_front();
                        }
                    }
                }
                _ => {
                    // Cancel the head waiter's wait.
                    if let Some(&w) = f.describe(name).waiters.first().map(|w| &w.waiter_id) {
                        let s = f.describe(name).waiters[0].session;
                        f.apply(Op::LockCancel(LockCancelOp { name: name.into(), session: s, waiter_id: w }));
                        m.1.retain(|&x| x != s);
                    }
                }
            }
            for n in names {
                let rec = f.describe(n);
                let mm = model.get(n).cloned().unwrap_or_default();
                assert_eq!(rec.holder.as_ref().map(|h| h.session), mm.0, "seed {seed} step {step} holder of {n}");
                assert_eq!(rec.waiters.iter().map(|w| w.session).collect::<VecDeque<_>>(), mm.1, "seed {seed} step {step} queue of {n}");
                assert_eq!(rec.delay_ms > 0, mm.2, "seed {seed} step {step} delay of {n}");
                if let Some(h) = rec.holder {
                    assert!(alive.contains(&h.session), "holder's session is alive");
                    let last = last_token.entry(n).or_insert(0);
                    assert!(h.token >= *last, "token went backwards");
                    *last = h.token;
                }
            }
        }
        // Every grant event carried a strictly larger token per name.
        let mut seen: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for e in f.events() {
            if let (Some(h), true) = (&e.holder, e.granted_waiter != 0) {
                let last = seen.entry(e.name.clone()).or_insert(0);
                assert!(h.token > *last, "seed {seed}: token not strictly increasing");
                *last = h.token;
            }
        }
    }
}

/// A forced promotion raises the revision: every token granted after it
/// exceeds the floor, and a lock queue carries on (the next waiter's
/// grant comes after it too). Raising to a floor below the revision
/// changes nothing.
#[test]
fn tokens_after_a_raised_revision_exceed_the_floor() {
    let mut f = Fixture::new();
    let (a, b) = (f.session(60), f.session(60));
    let first = f.acquire("job", a, 1);
    assert!(first.granted);
    assert!(!f.acquire("job", b, 2).granted);
    let floor = (1_i64 << 40) + f.revision();
    let raised = f.apply(Op::RaiseRevision(floor));
    assert_eq!(error_code(&raised), None);
    assert_eq!(f.revision(), floor, "the revision is the floor");
    let lower = f.apply(Op::RaiseRevision(5));
    assert_eq!(error_code(&lower), None);
    assert_eq!(f.revision(), floor, "a lower floor changes nothing");
    assert_eq!(error_code(&f.release("job", a, first.token)), None);
    let next = f.describe("job").holder.expect("the waiter was granted");
    assert!(next.token > floor, "token {} after the floor {floor}", next.token);
    let c = f.session(60);
    assert!(f.acquire("other", c, 3).token > floor);
}

//! Locks, elections and sessions on real `meridian server` processes:
//! the native API through `meridian-client`, `etcdctl elect`, the
//! `meridian lock` CLI, and the billing-cron example under kill -9 and
//! SIGSTOP.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_client::{api, Client, ClientError, Fence, LockOptions};

use meridian_tests::*;

fn client(c: &ProcCluster) -> Client {
    let eps: Vec<String> = c.members.iter().map(|m| m.client_addr.to_string()).collect();
    Client::with_config(meridian_client::ClientConfig::new(eps)).unwrap()
}

fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns every line seen so far.
fn wait_line(rx: &std::sync::mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(l.clone());
            if l.contains(needle) {
                return l;
            }
        }
    }
    panic!("no line with {needle:?} within {limit:?}; saw:\n{}", seen.join("\n"));
}

fn metric_sum(c: &ProcCluster, name: &str) -> u64 {
    (0..c.members.len()).filter(|i| c.children[*i].is_some()).map(|i| metric(c, i, name)).sum()
}

#[test]
fn two_hundred_waiters_one_wakeup_per_release_and_tokens_increase_across_leader_kill() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &["/jobs/"]);
    rt().block_on(async {
        let cl = client(&c);
        let holder = cl.session("/jobs/", 30).await.unwrap();
        let first = holder.lock("/jobs/one", LockOptions::default()).await.unwrap().unwrap();
        // 200 sessions queue behind the holder.
        let mut sessions = Vec::new();
        for _ in 0..200 {
            sessions.push(cl.session("/jobs/", 30).await.unwrap());
        }
        let log: Arc<Mutex<Vec<(i64, &'static str)>>> = Arc::default();
        let mut tasks = Vec::new();
        for s in &sessions {
            let (s, log) = (s.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                let g = s.lock("/jobs/one", LockOptions::default()).await.unwrap().unwrap();
                log.lock().unwrap().push((g.token(), "in"));
                tokio::time::sleep(Duration::from_millis(2)).await;
                log.lock().unwrap().push((g.token(), "out"));
                g.release().await.unwrap();
            }));
        }
        let start = Instant::now();
        loop {
            let d = cl.describe_lock("/jobs/one").await.unwrap().lock.unwrap();
            if d.waiters.len() == 200 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "only {} waiters queued", d.waiters.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let woken_before = metric_sum(&c, "meridian_lock_wakeups_total");
        let first_token = first.token();
        first.release().await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let woken = metric_sum(&c, "meridian_lock_wakeups_total") - woken_before;
        assert_eq!(woken, 200, "each release must wake exactly one waiter (a herd would wake ~20,000)");
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 400);
        let mut last = first_token;
        for pair in log.chunks(2) {
            assert_eq!((pair[0].1, pair[1].1, pair[0].0), ("in", "out", pair[1].0), "holders overlapped");
            assert!(pair[0].0 > last, "tokens must strictly increase: {} after {last}", pair[0].0);
            last = pair[0].0;
        }
        for s in &sessions {
            s.close().await.unwrap();
        }
        holder.close().await.unwrap();
    });
    // Across a leader kill: 20 contenders, the range leader killed midway.
    let range = 3; // the first declared namespace's range
    let leader = c.leader_of(range).expect("a leader");
    let log: Arc<Mutex<Vec<(i64, &'static str)>>> = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cl = runtime.block_on(async { client(&c) });
    // A watch connected to the leader's node first: after the kill it must
    // resume elsewhere from the next revision (no gap, no duplicate).
    let mut eps = vec![c.members[leader].client_addr.to_string()];
    eps.extend(c.members.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, m)| m.client_addr.to_string()));
    let (mut events, writer) = runtime.block_on(async {
        let wc = Client::with_config(meridian_client::ClientConfig::new(eps)).unwrap();
        let events = wc.watch("/jobs/w/", "/jobs/w0", 0);
        let cl = cl.clone();
        let writer = tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60 {
                if let Ok(rev) = cl.put(format!("/jobs/w/{i:03}"), "x").await {
                    acked.push((format!("/jobs/w/{i:03}"), rev));
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            acked
        });
        (events, writer)
    });
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (cl, log) = (cl.clone(), log.clone());
            runtime.spawn(async move {
                let s = cl.session("/jobs/", 10).await.unwrap();
                let g = s.lock("/jobs/two", LockOptions::default()).await.unwrap().unwrap();
                log.lock().unwrap().push((g.token(), "in"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                log.lock().unwrap().push((g.token(), "out"));
                // A release that fails over mid-kill may report an error;
                // the session's close releases it anyway.
                let _ = g.release().await;
                let _ = s.close().await;
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    c.kill9(leader);
    let acked = runtime.block_on(async {
        for h in handles {
            h.await.unwrap();
        }
        writer.await.unwrap()
    });
    assert!(acked.len() >= 40, "too few writes acknowledged across the kill: {}", acked.len());
    let seen = runtime.block_on(async {
        let mut seen: Vec<(String, i64)> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Until every acknowledged write is seen, not until as many events
        // as acknowledgements: a put that failed with an unknown outcome
        // across the kill may have been applied too, and its event comes
        // in between.
        while !acked.iter().all(|a| seen.contains(a)) && tokio::time::Instant::now() < deadline {
            if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
                let ev = ev.expect("watch error");
                seen.push((String::from_utf8_lossy(&ev.kv.key).into_owned(), ev.kv.mod_revision));
            }
        }
        seen
    });
    let unacked = seen.iter().filter(|e| !acked.contains(e)).count();
    eprintln!("{} writes acknowledged; the watch saw them and {unacked} of writes answered with an error", acked.len());
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "watch events out of order or duplicated: {seen:?}");
    for a in &acked {
        assert!(seen.contains(a), "acknowledged write {a:?} missing from the resumed watch");
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 40);
    let mut last = 0;
    for pair in log.chunks(2) {
        assert_eq!((pair[0].1, pair[1].1, pair[0].0), ("in", "out", pair[1].0), "holders overlapped across the kill");
        assert!(pair[0].0 > last, "tokens must strictly increase across the leader kill");
        last = pair[0].0;
    }
}

#[test]
fn lock_delay_after_expiry_not_after_clean_release_and_guarded_txn() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    rt().block_on(async {
        let cl = client(&c);
        // A holds with a 3 s lock-delay, then stops keeping its session
        // alive (dropped without close): the server expires it after 2 s.
        let a = cl.session("/d", 2).await.unwrap();
        let ga = a.lock("/d/lock", LockOptions { lock_delay: Duration::from_secs(3), ..Default::default() }).await.unwrap().unwrap();
        let token_a = ga.token();
        let b = cl.session("/d", 10).await.unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.lock("/d/lock", LockOptions::default()).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dropped_at = Instant::now();
        drop(ga);
        drop(a);
        // Under lock-delay once the session has expired.
        let mut saw_delay = false;
        while !waiter.is_finished() {
            let d = cl.describe_lock("/d/lock").await.unwrap().lock.unwrap();
            saw_delay |= d.holder.is_none() && d.lock_delay_ms == 3000;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let gb = waiter.await.unwrap().unwrap().unwrap();
        let waited = dropped_at.elapsed();
        assert!(saw_delay, "the lock was never seen under lock-delay");
        assert!(
            waited >= Duration::from_millis(4500),
            "granted {waited:?} after the holder stopped: expiry (2 s) + delay (3 s) not respected"
        );
        assert!(gb.token() > token_a);
        // The old token no longer passes a guarded txn; the new one does.
        let put = |v: &str| meridian_client::etcd::TxnRequest {
            success: vec![meridian_client::etcd::RequestOp {
                request: Some(meridian_client::etcd::request_op::Request::RequestPut(meridian_client::etcd::PutRequest {
                    key: b"/d/resource".to_vec(),
                    value: v.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert!(cl.guarded_txn("/d/lock", token_a, put("stale")).await.unwrap().is_none(), "stale token ran");
        assert!(cl.guarded_txn("/d/lock", gb.token(), put("fresh")).await.unwrap().is_some());
        assert_eq!(cl.get("/d/resource").await.unwrap().unwrap().value, &b"fresh"[..]);
        // A clean release (with a lock-delay asked for) grants at once.
        let c2 = cl.session("/d", 10).await.unwrap();
        gb.release().await.unwrap();
        let gc = c2.lock("/d/lock", LockOptions { lock_delay: Duration::from_secs(3), ..Default::default() }).await.unwrap().unwrap();
        let d2 = cl.session("/d", 10).await.unwrap();
        let w2 = {
            let d2 = d2.clone();
            tokio::spawn(async move { d2.lock("/d/lock", LockOptions::default()).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        gc.release().await.unwrap();
        let gd = w2.await.unwrap().unwrap().unwrap();
        let d = cl.describe_lock("/d/lock").await.unwrap().lock.unwrap();
        assert_eq!(d.lock_delay_ms, 0, "no lock-delay after a clean release");
        assert_eq!(d.holder.unwrap().session_id, d2.id());
        gd.release().await.unwrap();
    });
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &["/other/"]);
    rt().block_on(async {
        let cl = client(&c);
        let s = cl.session("/b", 10).await.unwrap();
        let g = s.lock("/b/l", LockOptions::default()).await.unwrap().unwrap();
        let before = cl.describe_lock("/b/l").await.unwrap();
        let mut lc = api::lock_client::LockClient::connect(format!("http://{}", c.members[0].client_addr)).await.unwrap();
        let mut sc = api::session_client::SessionClient::connect(format!("http://{}", c.members[1].client_addr)).await.unwrap();
        let acq =
            |name: &str, session: i64| api::AcquireRequest { name: name.into(), session_id: session, try_once: true, ..Default::default() };
        let code = |r: Result<tonic::Response<api::AcquireResponse>, tonic::Status>| r.map(|_| ()).unwrap_err().code();
        // Unknown session (in the right namespace's range), empty name,
        // absurd lock-delay, session of another namespace.
        let unknown = (2i64 << 40) | 12345;
        assert_eq!(code(lc.acquire(acq("/b/l", unknown)).await), tonic::Code::NotFound);
        assert_eq!(code(lc.acquire(acq("", s.id())).await), tonic::Code::InvalidArgument);
        let mut bad_delay = acq("/b/m", s.id());
        bad_delay.lock_delay_ms = 3_600_000;
        assert_eq!(code(lc.acquire(bad_delay).await), tonic::Code::InvalidArgument);
        assert_eq!(code(lc.acquire(acq("/other/l", s.id())).await), tonic::Code::FailedPrecondition);
        // Release by a non-holder, with a wrong token, of a free lock.
        let other = cl.session("/b", 10).await.unwrap();
        let rel = |name: &str, session: i64, token: i64| api::ReleaseRequest { name: name.into(), session_id: session, token };
        assert_eq!(lc.release(rel("/b/l", other.id(), 0)).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
        assert_eq!(lc.release(rel("/b/l", s.id(), g.token() + 1)).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
        assert_eq!(lc.release(rel("/b/free", s.id(), 0)).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
        // Absurd TTLs.
        for ttl in [0, -5, 1, 10_000_000_000] {
            let r = sc.create(api::SessionCreateRequest { namespace: b"/b".to_vec(), ttl_seconds: ttl }).await;
            assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument, "ttl {ttl}");
        }
        assert_eq!(cl.describe_lock("/b/l").await.unwrap().lock, before.lock, "bad input changed the lock");
        // A deadlock: s holds /b/l and waits for /b/k; other holds /b/k
        // and waits for /b/l. The namespace describe reports the cycle.
        let gk = other.lock("/b/k", LockOptions::default()).await.unwrap().unwrap();
        let (s2, o2) = (s.clone(), other.clone());
        let w1 =
            tokio::spawn(async move { s2.lock("/b/k", LockOptions { wait: Some(Duration::from_secs(3)), ..Default::default() }).await });
        let w2 =
            tokio::spawn(async move { o2.lock("/b/l", LockOptions { wait: Some(Duration::from_secs(3)), ..Default::default() }).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ns = cl.describe_namespace("/b/l").await.unwrap();
        let mut cycle = vec![s.id(), other.id()];
        cycle.sort();
        assert_eq!(ns.deadlocks.len(), 1, "{ns:?}");
        assert_eq!(ns.deadlocks[0].session_ids, cycle);
        assert_eq!(ns.wait_for.len(), 2);
        // Both waits run out (not acquired) and leave the queues.
        assert!(w1.await.unwrap().unwrap().is_none());
        assert!(w2.await.unwrap().unwrap().is_none());
        assert!(cl.describe_namespace("/b/l").await.unwrap().deadlocks.is_empty());
        gk.release().await.unwrap();
        // Double release: the second is refused.
        let token = g.token();
        g.release().await.unwrap();
        assert_eq!(lc.release(rel("/b/l", s.id(), token)).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
        // Closing twice: the second close finds no session.
        s.close().await.unwrap();
        let again = sc.close(api::SessionCloseRequest { session_id: s.id() }).await;
        assert_eq!(again.unwrap_err().code(), tonic::Code::NotFound);
        // A closed session cannot lock.
        assert!(matches!(s.lock("/b/l", LockOptions::default()).await, Err(ClientError::SessionLost { .. })));
    });
}

#[test]
fn etcdctl_elect_hands_over_and_meridian_lock_cli_excludes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    let ep = c.endpoints();
    let elect = |i: usize, proposal: &str| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://{}", c.members[i].client_addr))
            .args(["elect", "/svc/leader", proposal])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = elect(0, "alpha");
    let first_lines = lines_of(&mut first);
    let mut seen = Vec::new();
    wait_line(&first_lines, &mut seen, "alpha", Duration::from_secs(20));
    let mut second = elect(1, "beta");
    let second_lines = lines_of(&mut second);
    std::thread::sleep(Duration::from_millis(500));
    assert!(second_lines.try_recv().is_err(), "beta elected while alpha leads");
    // The observer sees alpha, then beta after alpha's process dies
    // (SIGTERM: etcdctl closes its session on the way out).
    let mut listen = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.url_endpoints()))
        .args(["elect", "-l", "/svc/leader"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listen_lines = lines_of(&mut listen);
    let mut lseen = Vec::new();
    wait_line(&listen_lines, &mut lseen, "alpha", Duration::from_secs(10));
    let _ = Command::new("kill").args(["-TERM", &first.id().to_string()]).status();
    let _ = first.wait();
    let mut sseen = Vec::new();
    wait_line(&second_lines, &mut sseen, "beta", Duration::from_secs(20));
    wait_line(&listen_lines, &mut lseen, "beta", Duration::from_secs(10));
    let _ = second.kill();
    let _ = listen.kill();
    let _ = second.wait();
    let _ = listen.wait();

    // `meridian lock` runs commands one at a time with their token.
    let log = c.configs[0].parent().unwrap().join("cs.log");
    let script = format!("echo in $MERIDIAN_FENCING_TOKEN >> {0}; sleep 0.3; echo out $MERIDIAN_FENCING_TOKEN >> {0}", log.display());
    let runs: Vec<Child> = (0..3)
        .map(|i| {
            Command::new(meridian_bin())
                .args(["lock", "--endpoints", &c.members[i].client_addr.to_string(), "/jobs/cli", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in runs {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "meridian lock failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let mut last = 0i64;
    for pair in lines.chunks(2) {
        let (a, b): (Vec<&str>, Vec<&str>) = (pair[0].split_whitespace().collect(), pair[1].split_whitespace().collect());
        assert_eq!((a[0], b[0], a[1]), ("in", "out", b[1]), "critical sections overlapped:\n{text}");
        let t: i64 = a[1].parse().unwrap();
        assert!(t > last, "tokens must increase:\n{text}");
        last = t;
    }
    // A `meridian lock` paused past its session TTL: once resumed it sees
    // the loss, stops its command and exits 3.
    let marker = c.configs[0].parent().unwrap().join("child-alive");
    let mut paused = Command::new(meridian_bin())
        .args(["lock", "--endpoints", &ep, "--ttl", "2", "/jobs/paused", "--", "sh", "-c"])
        .arg(format!("while true; do touch {}; sleep 0.2; done", marker.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !marker.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "the locked command never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-STOP", &paused.id().to_string()]).status();
    std::thread::sleep(Duration::from_secs(5));
    let _ = Command::new("kill").args(["-CONT", &paused.id().to_string()]).status();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = paused.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "meridian lock did not notice the lost lock");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut paused.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(3), "exit code 3 for a lost lock: {err}");
    assert!(err.contains("LOST"), "{err}");
    // The lock went back: another session can take it.
    let out =
        Command::new(meridian_bin()).args(["lock", "--endpoints", &ep, "--wait", "10", "/jobs/paused", "--", "true"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // `meridian elect` campaigns; `meridian elect --observe` streams the leader.
    let mut cand = Command::new(meridian_bin())
        .args(["elect", "--endpoints", &ep, "/svc/native", "gamma"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cand_lines = lines_of(&mut cand);
    let mut cseen = Vec::new();
    wait_line(&cand_lines, &mut cseen, "ELECTED", Duration::from_secs(20));
    let mut obs = Command::new(meridian_bin())
        .args(["elect", "--endpoints", &ep, "--observe", "/svc/native"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let obs_lines = lines_of(&mut obs);
    let mut oseen = Vec::new();
    wait_line(&obs_lines, &mut oseen, "value \"gamma\"", Duration::from_secs(10));
    // Ctrl-C (SIGTERM) resigns: the observer sees nobody leading.
    let _ = Command::new("kill").args(["-TERM", &cand.id().to_string()]).status();
    assert!(cand.wait().unwrap().success(), "resigning exits 0");
    wait_line(&obs_lines, &mut oseen, "no leader", Duration::from_secs(10));
    let _ = obs.kill();
    let _ = obs.wait();

    // --describe prints the (now free) lock.
    let out = Command::new(meridian_bin()).args(["lock", "--endpoints", &ep, "--describe", "/jobs/cli"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("/jobs/cli: free"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn billing_cron_kill9_and_sigstop_holder_fenced_out() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &["/billing/"]);
    let ledger = c.configs[0].parent().unwrap().join("ledger");
    let cron = |name: &str, ignore: bool| {
        let mut cmd = Command::new(binary("billing-cron"));
        cmd.args(["--endpoints", &c.endpoints(), "--instance", name, "--ledger-dir"]).arg(&ledger).args([
            "--customers",
            "30",
            "--step-ms",
            "150",
            "--ttl",
            "2",
        ]);
        if ignore {
            cmd.arg("--ignore-jeopardy");
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap()
    };
    // A starts and charges; B waits.
    let mut a = cron("A", true);
    let a_lines = lines_of(&mut a);
    let mut a_seen = Vec::new();
    wait_line(&a_lines, &mut a_seen, "CHARGED A", Duration::from_secs(20));
    let mut b = cron("B", false);
    let b_lines = lines_of(&mut b);
    let mut b_seen = Vec::new();
    std::thread::sleep(Duration::from_millis(300));
    // Pause A past its TTL: B takes over and charges.
    let _ = Command::new("kill").args(["-STOP", &a.id().to_string()]).status();
    wait_line(&b_lines, &mut b_seen, "ACQUIRED B", Duration::from_secs(20));
    wait_line(&b_lines, &mut b_seen, "CHARGED B", Duration::from_secs(20));
    let _ = Command::new("kill").args(["-CONT", &a.id().to_string()]).status();
    // A's library says the lock is lost, and A (ignoring it, as buggy
    // code would) is refused by the file fence and by the guarded txn.
    wait_line(&a_lines, &mut a_seen, "JEOPARDY A", Duration::from_secs(10));
    wait_line(&a_lines, &mut a_seen, "REJECTED-FENCE A", Duration::from_secs(10));
    wait_line(&a_lines, &mut a_seen, "REJECTED-TXN A", Duration::from_secs(10));
    let _ = a.kill();
    let _ = a.wait();
    // Kill B (the holder) mid-run with -9: C takes over after B's TTL.
    let mut cc = cron("C", false);
    let c_lines = lines_of(&mut cc);
    let mut c_seen = Vec::new();
    std::thread::sleep(Duration::from_millis(500));
    let _ = b.kill();
    let _ = b.wait();
    wait_line(&c_lines, &mut c_seen, "ACQUIRED C", Duration::from_secs(20));
    wait_line(&c_lines, &mut c_seen, "DONE C", Duration::from_secs(60));
    let _ = cc.wait();
    // Every customer charged exactly once, in the ledger file and keys,
    // with tokens that never go back.
    let text = std::fs::read_to_string(ledger.join("ledger.log")).unwrap();
    let mut customers = BTreeSet::new();
    let mut last = 0i64;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(customers.insert(f[0].to_string()), "customer {} charged twice:\n{text}", f[0]);
        let t: i64 = f[2].parse().unwrap();
        assert!(t >= last, "ledger accepted an older token:\n{text}");
        last = t;
    }
    // The keys are the record (a kill -9 between a charge and its log line
    // could leave the log one short, never long).
    let keys = ok(&c.endpoints(), &["get", "/billing/ledger/", "--prefix", "--keys-only"]);
    assert_eq!(keys.lines().filter(|l| !l.trim().is_empty()).count(), 30, "{keys}");
    assert!(customers.len() >= 29, "{text}");
    let fence = Fence::in_memory();
    fence.admit(last).unwrap();
    assert!(fence.admit(last - 1).is_err());
}

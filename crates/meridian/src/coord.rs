//! `meridian lock` and `meridian elect`: the native lock and election API
//! from the shell, through `meridian-client` (sessions with jeopardy).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_client::{api, Client, LockOptions, Session};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Exit codes besides the command's own.
pub const EXIT_NOT_ACQUIRED: i32 = 2;
pub const EXIT_LOST: i32 = 3;

pub struct LockArgs {
    pub endpoints: String,
    pub name: String,
    pub ttl: i64,
    pub wait: Option<f64>,
    pub lock_delay_ms: u64,
    pub command: Vec<String>,
}

fn endpoints(s: &str) -> Vec<String> {
    s.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect()
}

async fn session(endpoints_arg: &str, name: &str, ttl: i64) -> Result<(Client, Session)> {
    let client = Client::connect(endpoints(endpoints_arg)).await?;
    let session = client.session(name.as_bytes().to_vec(), ttl).await.context("creating a session")?;
    Ok((client, session))
}

/// Sends SIGTERM, then SIGKILL after `grace`; returns the exit status.
async fn stop_child(child: &mut tokio::process::Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

/// Runs `command` while holding lock `name`; returns the exit code.
pub async fn lock(a: LockArgs) -> Result<i32> {
    if a.command.is_empty() {
        bail!("nothing to run: meridian lock NAME -- COMMAND [ARGS…]");
    }
    if a.ttl < 2 {
        bail!("--ttl must be at least 2 seconds");
    }
    let (_client, session) = session(&a.endpoints, &a.name, a.ttl).await?;
    let opts = LockOptions {
        wait: a.wait.map(Duration::from_secs_f64),
        lock_delay: Duration::from_millis(a.lock_delay_ms),
        value: format!("pid {}", std::process::id()).into_bytes(),
        ..Default::default()
    };
    eprintln!("meridian lock: waiting for {:?} (session {:x})", a.name, session.id());
    let Some(guard) = session.lock(a.name.clone(), opts).await? else {
        eprintln!("meridian lock: not acquired within the wait");
        let _ = session.close().await;
        return Ok(EXIT_NOT_ACQUIRED);
    };
    eprintln!("meridian lock: acquired {:?} with fencing token {}", a.name, guard.token());
    let mut child = tokio::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .env("MERIDIAN_FENCING_TOKEN", guard.token().to_string())
        .env("MERIDIAN_LOCK_NAME", &a.name)
        .env("MERIDIAN_SESSION_ID", format!("{:x}", session.id()))
        .spawn()
        .with_context(|| format!("starting {:?}", a.command[0]))?;
    let code = tokio::select! {
        status = child.wait() => {
            let status = status.context("waiting for the command")?;
            if let Err(e) = guard.release().await {
                eprintln!("meridian lock: releasing: {e} (the session's close releases it)");
            }
            status.code().unwrap_or(1)
        }
        _ = guard.lost() => {
            eprintln!("meridian lock: LOST the lock (session {:x} expired or in jeopardy); stopping the command", session.id());
            stop_child(&mut child, Duration::from_secs(5)).await;
            EXIT_LOST
        }
        _ = crate::shutdown_signal() => {
            eprintln!("meridian lock: interrupted; stopping the command and releasing");
            stop_child(&mut child, Duration::from_secs(5)).await;
            130
        }
    };
    let _ = session.close().await;
    Ok(code)
}

fn print_lock(l: &api::LockInfo) {
    let name = String::from_utf8_lossy(&l.name);
    match &l.holder {
        Some(h) => println!(
            "{name}: held by session {:x}, token {}, since {} (unix ms), value {:?}",
            h.session_id,
            h.token,
            h.held_since_unix_ms,
            String::from_utf8_lossy(&h.value)
        ),
        None => println!("{name}: free"),
    }
    if l.lock_delay_ms > 0 {
        println!("  under lock-delay ({} ms) after its holder's session expired", l.lock_delay_ms);
    }
    for (i, w) in l.waiters.iter().enumerate() {
        println!("  waiter {}: session {:x} since {} (unix ms)", i + 1, w.session_id, w.waiting_since_unix_ms);
    }
}

/// `meridian lock --describe NAME [--namespace]`.
pub async fn describe(endpoints_arg: &str, name: &str, namespace: bool) -> Result<()> {
    let client = Client::connect(endpoints(endpoints_arg)).await?;
    if !namespace {
        let r = client.describe_lock(name.as_bytes().to_vec()).await?;
        if let Some(l) = &r.lock {
            print_lock(l);
        }
        return Ok(());
    }
    let r = client.describe_namespace(name.as_bytes().to_vec()).await?;
    println!("{} lock(s) in the namespace of {name:?}", r.locks.len());
    for l in &r.locks {
        print_lock(l);
    }
    for e in &r.wait_for {
        println!(
            "wait-for: session {:x} waits for session {:x} ({})",
            e.waiter_session_id,
            e.holder_session_id,
            String::from_utf8_lossy(&e.name)
        );
    }
    if r.deadlocks.is_empty() {
        println!("deadlocks: none");
    }
    for d in &r.deadlocks {
        let cycle: Vec<String> = d.session_ids.iter().map(|s| format!("{s:x}")).collect();
        println!("DEADLOCK: sessions {} → {} wait for each other", cycle.join(" → "), cycle.first().cloned().unwrap_or_default());
    }
    Ok(())
}

fn print_leader(name: &str, ev: &meridian_client::LeaderEvent) {
    match ev.leader {
        Some((session, token)) => {
            println!("{name}: leader session {session:x}, token {token}, value {:?}", String::from_utf8_lossy(&ev.value))
        }
        None => println!("{name}: no leader"),
    }
}

/// `meridian elect NAME VALUE`: campaign, then print changes until the
/// leadership is lost (exit 3) or Ctrl-C (resign, exit 0).
pub async fn elect(endpoints_arg: &str, name: &str, value: &str, ttl: i64) -> Result<i32> {
    let (client, session) = session(endpoints_arg, name, ttl).await?;
    let mut changes = client.observe(name.as_bytes().to_vec());
    eprintln!("meridian elect: campaigning for {name:?} (session {:x})", session.id());
    let campaign = session.campaign(name.as_bytes().to_vec(), value.as_bytes().to_vec(), None);
    tokio::pin!(campaign);
    let leadership = loop {
        tokio::select! {
            r = &mut campaign => break r?,
            Some(ev) = changes.recv() => print_leader(name, &ev),
            _ = crate::shutdown_signal() => {
                let _ = session.close().await;
                return Ok(130);
            }
        }
    };
    let Some(leadership) = leadership else { bail!("campaign ended without leadership") };
    println!("{name}: ELECTED with token {} (session {:x})", leadership.token(), session.id());
    let code = loop {
        tokio::select! {
            Some(ev) = changes.recv() => print_leader(name, &ev),
            _ = leadership.lost() => {
                eprintln!("meridian elect: LOST leadership of {name:?}");
                break EXIT_LOST;
            }
            _ = crate::shutdown_signal() => {
                let _ = leadership.resign().await;
                eprintln!("meridian elect: resigned");
                break 0;
            }
        }
    };
    let _ = session.close().await;
    Ok(code)
}

/// `meridian elect --observe NAME`.
pub async fn observe(endpoints_arg: &str, name: &str) -> Result<()> {
    let client = Client::connect(endpoints(endpoints_arg)).await?;
    let mut changes = client.observe(name.as_bytes().to_vec());
    loop {
        tokio::select! {
            ev = changes.recv() => match ev {
                Some(ev) => print_leader(name, &ev),
                None => return Ok(()),
            },
            _ = crate::shutdown_signal() => return Ok(()),
        }
    }
}

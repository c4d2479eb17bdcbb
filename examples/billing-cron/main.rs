//! The billing cron from Meridian's requirements: several instances run,
//! exactly one charges customers at a time, every customer is charged once.
//!
//! Each instance takes the native lock `/billing/cron` and charges the
//! customers not yet in the ledger, one per step. Two fences stop a holder
//! that lost its lock (paused by GC or SIGSTOP past its session TTL) from
//! charging after someone else took over:
//!
//! - the **ledger file** (a downstream resource outside Meridian) keeps the
//!   highest fencing token it has accepted, through [`Fence`] over a
//!   compare-and-set on a file, and refuses smaller tokens;
//! - the **ledger keys** in Meridian are written with a guarded Txn that
//!   runs only while the token is still the current holder's.
//!
//! Output (one line per event, for people and for tests):
//! `ACQUIRED <instance> token <t>`, `CHARGED <instance> customer <c> token
//! <t>`, `JEOPARDY <instance> ...`, `REJECTED-FENCE ...`, `REJECTED-TXN
//! ...`, `DONE <instance>`.
//!
//! Run three against `meridian dev --namespaces /billing/` (see
//! docs/locks.md), kill one, pause one with `kill -STOP`.

// A demo program: it owns its clock and files.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use meridian_client::etcd::{self, compare, request_op, Compare, RequestOp, TxnRequest};
use meridian_client::{Client, Fence, FenceError, FenceStore, LockOptions};

#[derive(Parser)]
#[command(about = "Billing cron: one instance charges customers, fenced by Meridian's lock token")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792")]
    endpoints: String,
    #[arg(long)]
    instance: String,
    /// Directory of the fenced ledger file (shared by all instances).
    #[arg(long)]
    ledger_dir: PathBuf,
    #[arg(long, default_value_t = 20)]
    customers: u32,
    /// Pause between charges, ms.
    #[arg(long, default_value_t = 200)]
    step_ms: u64,
    /// Session TTL, seconds.
    #[arg(long, default_value_t = 3)]
    ttl: i64,
    /// Demo of a buggy holder: keep writing after the client library says
    /// the lock is lost, to show the fences refusing it.
    #[arg(long)]
    ignore_jeopardy: bool,
}

/// A compare-and-set on one number in a file, serialized by an exclusive
/// lock file: the ledger's memory of the highest token it accepted.
struct FileFenceStore {
    dir: PathBuf,
}

impl FileFenceStore {
    fn locked<T>(&self, f: impl FnOnce(&Path) -> Result<T, String>) -> Result<T, String> {
        let lock = self.dir.join("fence.lock");
        for _ in 0..2000 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => {
                    let r = f(&self.dir.join("fence"));
                    let _ = std::fs::remove_file(&lock);
                    return r;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("fence lock file stuck".into())
    }
}

fn read_token(path: &Path) -> Result<i64, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|e| format!("corrupt fence file: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

impl FenceStore for FileFenceStore {
    fn load(&self) -> Result<i64, String> {
        self.locked(read_token)
    }

    fn compare_and_set(&self, expected: i64, new: i64) -> Result<bool, String> {
        self.locked(|path| {
            if read_token(path)? != expected {
                return Ok(false);
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, new.to_string()).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
            Ok(true)
        })
    }
}

fn customer_key(c: u32) -> Vec<u8> {
    format!("/billing/ledger/{c:04}").into_bytes()
}

/// Charges customer `c` in the ledger keys, only while `token` holds the
/// lock and only once per customer.
async fn charge_in_meridian(client: &Client, instance: &str, c: u32, token: i64) -> Result<Option<bool>> {
    let key = customer_key(c);
    let txn = TxnRequest {
        compare: vec![Compare {
            key: key.clone(),
            target: compare::CompareTarget::Create as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(etcd::PutRequest {
                key,
                value: format!("{instance} token {token}").into_bytes(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    // None: token stale. Some(false): already charged by someone.
    Ok(client.guarded_txn("/billing/cron", token, txn).await?.map(|r| r.succeeded))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.ledger_dir).context("ledger dir")?;
    let fence = Fence::with_store(Box::new(FileFenceStore { dir: a.ledger_dir.clone() }));
    let client = Client::connect(a.endpoints.split(',').map(str::to_string)).await?;
    let i = &a.instance;
    loop {
        let session = client.session("/billing/", a.ttl).await?;
        let opts = LockOptions { value: i.clone().into_bytes(), ..Default::default() };
        let Some(guard) = session.lock("/billing/cron", opts).await? else { continue };
        let token = guard.token();
        println!("ACQUIRED {i} token {token}");
        let mut done = true;
        for c in 0..a.customers {
            if client.get(customer_key(c)).await?.is_some() {
                continue;
            }
            if !guard.is_held() {
                println!("JEOPARDY {i}: the client library reports lock lost (token {token})");
                if !a.ignore_jeopardy {
                    done = false;
                    break;
                }
            }
            // The downstream fence first: a stale token is refused here
            // even if the holder skipped every check above.
            match fence.admit(token) {
                Ok(()) => {}
                Err(FenceError::Stale { highest, .. }) => {
                    println!("REJECTED-FENCE {i} customer {c} token {token} (ledger has seen {highest})");
                    // Show the server-side fence too, then stop.
                    if charge_in_meridian(&client, i, c, token).await?.is_none() {
                        println!("REJECTED-TXN {i} customer {c} token {token}");
                    }
                    done = false;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            match charge_in_meridian(&client, i, c, token).await? {
                Some(true) => {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(a.ledger_dir.join("ledger.log"))
                        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{c} {i} {token}\n").as_bytes()))
                        .context("ledger log")?;
                    println!("CHARGED {i} customer {c} token {token}");
                }
                Some(false) => {}
                None => {
                    println!("REJECTED-TXN {i} customer {c} token {token}");
                    done = false;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(a.step_ms)).await;
        }
        if done {
            let _ = guard.release().await;
            let _ = session.close().await;
            println!("DONE {i}");
            return Ok(());
        }
        // Lost the lock: start over with a new session, like a cron
        // instance that stays up.
        drop(guard);
        let _ = session.close().await;
    }
}

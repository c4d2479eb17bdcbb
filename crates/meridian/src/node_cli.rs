//! `meridian node drain|undrain|decommission|status ID`: the HTTP API of
//! the first member that answers (docs/operations.md, "Draining and
//! decommissioning nodes").

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_server::node_admin::DrainStatus;

use crate::namespace_cli::call;

const TIMEOUT: Duration = Duration::from_secs(30);
/// How often `drain --wait` looks again.
const WAIT_EVERY: Duration = Duration::from_secs(2);

fn describe(st: &DrainStatus) -> String {
    let state = if st.decommissioned {
        "decommissioned"
    } else if st.draining {
        "draining"
    } else {
        "active"
    };
    let mut out = format!("node {}: {state}; {} replica(s), {} leadership(s) on it", st.node_id, st.replicas.len(), st.leaders.len());
    if !st.unreported.is_empty() {
        out.push_str(&format!(" (members {:?} did not report: incomplete)", st.unreported));
    }
    out
}

fn post(http: &str, what: &str, id: u64) -> Result<DrainStatus> {
    let v = call(http, "POST", &format!("/v1/nodes/{what}?id={id}"), Some(""), TIMEOUT)?;
    serde_json::from_value(v).context("parsing the answer")
}

pub fn status(http: &str, id: u64, json: bool) -> Result<()> {
    let v = call(http, "GET", &format!("/v1/nodes/status?id={id}"), None, TIMEOUT)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let st: DrainStatus = serde_json::from_value(v).context("parsing the answer")?;
    println!("{}", describe(&st));
    Ok(())
}

/// Starts the drain; with `wait`, reports progress until the node holds
/// nothing (or `limit` passes).
pub fn drain(http: &str, id: u64, wait: bool, limit: Duration) -> Result<()> {
    let mut st = post(http, "drain", id)?;
    println!("{}", describe(&st));
    if !wait {
        return Ok(());
    }
    let started = Instant::now();
    while !(st.replicas.is_empty() && st.leaders.is_empty() && st.unreported.is_empty()) {
        if started.elapsed() > limit {
            bail!("node {id} still holds {} replica(s) after {limit:?}; the drain goes on (meridian node status {id})", st.replicas.len());
        }
        std::thread::sleep(WAIT_EVERY);
        let v = call(http, "GET", &format!("/v1/nodes/status?id={id}"), None, TIMEOUT)?;
        st = serde_json::from_value(v).context("parsing the answer")?;
        println!("{:>5} s  {}", started.elapsed().as_secs(), describe(&st));
    }
    println!("node {id} holds nothing: decommission it with `meridian node decommission {id}`");
    Ok(())
}

pub fn undrain(http: &str, id: u64) -> Result<()> {
    println!("{}", describe(&post(http, "undrain", id)?));
    Ok(())
}

pub fn decommission(http: &str, id: u64) -> Result<()> {
    println!("{}", describe(&post(http, "decommission", id)?));
    Ok(())
}

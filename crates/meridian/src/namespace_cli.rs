//! `meridian namespace create|list|describe|drop|merge|split|promote`: the HTTP API of the
//! first member that answers (see `docs/api.md`, "Namespaces").

use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_client::http::{request, Body, HttpError};
use meridian_server::namespace::{CreateSpec, NsInfo};
use meridian_server::promote::{PromoteReport, PromoteSpec};

/// A create waits for the carve, the catalog and the new range's leader:
/// each step retries up to 15 s on the server.
const CREATE_TIMEOUT: Duration = Duration::from_secs(90);
const TIMEOUT: Duration = Duration::from_secs(30);

/// `method path` on the first member of `http` that can be reached; an
/// HTTP error status from it is the answer (not a reason to ask another).
pub(crate) fn call(http: &str, method: &str, path: &str, body: Option<&str>, timeout: Duration) -> Result<serde_json::Value> {
    let mut last_err = None;
    for h in http.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let body = body.map(|b| Body { content_type: "application/json", bytes: b.as_bytes() });
        match request(h, method, path, body, timeout) {
            Ok((status, text)) => {
                let v: serde_json::Value =
                    serde_json::from_str(&text).with_context(|| format!("{method} http://{h}{path}: HTTP {status}, not JSON"))?;
                if !(200..300).contains(&status) {
                    bail!("{}", v["error"].as_str().unwrap_or(&text).trim());
                }
                return Ok(v);
            }
            Err(e @ (HttpError::Io { .. } | HttpError::Resolve { .. })) => last_err = Some(anyhow::Error::new(e)),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{method} http://{h}{path}"))),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no HTTP address given (--http)")))
}

/// Percent-encodes a query parameter value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn table(list: &[NsInfo]) -> String {
    let mut out = format!("{:<32} {:>6} {:<9} {:>8} {:<12} {}\n", "NAMESPACE", "RANGE", "STATE", "REPLICAS", "NODES", "CONSTRAINTS");
    for n in list {
        let state = serde_json::to_value(n.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let nodes = n.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let constraints = n.constraints.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let declared = if n.declared { " (config)" } else { "" };
        out.push_str(&format!(
            "{:<32} {:>6} {:<9} {:>8} {:<12} {}{}\n",
            n.name, n.range_id, state, n.replicas_wanted, nodes, constraints, declared
        ));
    }
    out
}

fn describe_text(n: &NsInfo) -> String {
    let mut out = table(std::slice::from_ref(n));
    out.push_str(&format!("namespace id {}, epoch {}\n", n.namespace_id, n.epoch));
    if !n.home_region.is_empty() {
        out.push_str(&format!("home region {}, {} survival", n.home_region, n.survival));
        if !n.read_regions.is_empty() {
            out.push_str(&format!(", read replicas in {}", n.read_regions.join(", ")));
        }
        out.push('\n');
    }
    for p in &n.placement {
        out.push_str(&format!("  node {:<4} {:<12} {:<14} {:<8} {}\n", p.node, p.region, p.zone, p.role, p.why));
    }
    if let (Some(keys), Some(rev)) = (n.keys, n.revision) {
        out.push_str(&format!("{keys} key(s), revision {rev}\n"));
    }
    if n.state == meridian_server::namespace::NsState::Shared {
        out.push_str(&format!("shared: served by the root group (range {})", n.range_id));
        if n.merged_keys > 0 {
            out.push_str(&format!("; its last merge carried {} key(s) there", n.merged_keys));
        }
        out.push('\n');
    } else if n.start_revision > 0 {
        out.push_str(&format!(
            "created from the root namespace: {} key(s) moved, revisions continue from {}\n",
            n.moved_keys, n.start_revision
        ));
    }
    out
}

pub fn create(http: &str, spec: &CreateSpec, json: bool) -> Result<()> {
    let v = call(http, "POST", "/v1/namespaces", Some(&serde_json::to_string(spec)?), CREATE_TIMEOUT)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let info: NsInfo = serde_json::from_value(v).context("parsing the create answer")?;
    println!("created namespace {} (range {})", info.name, info.range_id);
    print!("{}", describe_text(&info));
    Ok(())
}

pub fn list(http: &str, json: bool) -> Result<()> {
    let v = call(http, "GET", "/v1/namespaces", None, TIMEOUT)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list: Vec<NsInfo> = serde_json::from_value(v).context("parsing /v1/namespaces")?;
    if list.is_empty() {
        println!("no namespace besides the root namespace \"\"");
    } else {
        print!("{}", table(&list));
    }
    Ok(())
}

pub fn describe(http: &str, name: &str, json: bool) -> Result<()> {
    let v = call(http, "GET", &format!("/v1/namespaces/describe?name={}", encode(name)), None, TIMEOUT)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let info: NsInfo = serde_json::from_value(v).context("parsing the describe answer")?;
    print!("{}", describe_text(&info));
    Ok(())
}

/// `merge` or `split` (`what`) of namespace `name`.
pub fn regroup(http: &str, name: &str, what: &str, json: bool) -> Result<()> {
    let v = call(http, "POST", &format!("/v1/namespaces/{what}?name={}", encode(name)), None, CREATE_TIMEOUT)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let info: NsInfo = serde_json::from_value(v).with_context(|| format!("parsing the {what} answer"))?;
    match what {
        "merge" => println!("merged namespace {} into the root group", info.name),
        _ => println!("namespace {} has a group of its own (range {})", info.name, info.range_id),
    }
    print!("{}", describe_text(&info));
    Ok(())
}

/// `meridian namespace promote`: the server checks everything (a refusal
/// changes nothing); the report says how far behind the replica was.
pub fn promote(http: &str, name: &str, to_region: &str, accept_data_loss: bool, json: bool) -> Result<()> {
    let spec = PromoteSpec { name: name.to_string(), to_region: to_region.to_string(), accept_data_loss };
    let v = call(http, "POST", "/v1/namespaces/promote", Some(&serde_json::to_string(&spec)?), CREATE_TIMEOUT)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let r: PromoteReport = serde_json::from_value(v).context("parsing the promote answer")?;
    print!("{}", promote_text(&r));
    Ok(())
}

fn promote_text(r: &PromoteReport) -> String {
    format!(
        "namespace {} promoted by force: node {}'s read replica in {} is its only voter (home region {} -> {})
           kept:      every entry up to index {} (it knew index {} committed, had applied {})
           lost:      whatever the lost voters committed past index {} (writes acknowledged after this replica last heard from them)
           revisions: {} when promoted; every later revision and fencing token exceeds {}
           epoch:     {} (replicas of the lost region are destroyed when they return; the placement driver adds voters in {})
",
        r.name,
        r.node,
        r.region,
        r.previous_home_region,
        r.region,
        r.last_index,
        r.commit_index,
        r.applied_index,
        r.last_index,
        r.revision_before,
        r.revision_floor,
        r.epoch,
        r.region
    )
}

pub fn drop(http: &str, name: &str, force: bool) -> Result<()> {
    call(http, "DELETE", &format!("/v1/namespaces?name={}&force={force}", encode(name)), None, CREATE_TIMEOUT)?;
    println!("dropped namespace {name}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(super::encode("/a b/&x=1"), "%2Fa%20b%2F%26x%3D1");
        assert_eq!(super::encode("/ok-1._~/"), "%2Fok-1._~%2F");
    }
}

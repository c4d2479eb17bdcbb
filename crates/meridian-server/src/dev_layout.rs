//! The layout of a local development cluster: addresses, certificates from
//! a throwaway CA, and one config file per node. Used by `meridian dev` and
//! by the multi-process tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use meridian_transport_quic::DevCa;

use crate::config::{DebugConfig, GossipSettings, Member, ServerConfig, TlsPaths};
use crate::wan::{WanConfig, WanLink};

/// Where a node of a local cluster is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub region: String,
    pub zone: String,
    /// A witness node (`role = "witness"`).
    pub witness: bool,
}

/// The single-region layout: region `local`, zones `local-a`, `-b`, `-c`
/// in turn.
pub fn local_places(nodes: usize) -> Vec<Place> {
    (0..nodes)
        .map(|i| Place { region: "local".into(), zone: format!("local-{}", (b'a' + (i % 3) as u8) as char), witness: false })
        .collect()
}

/// Most regions and zones per region `meridian dev --regions` starts.
pub const MAX_DEV_REGIONS: usize = 5;
pub const MAX_DEV_ZONES: usize = 3;

/// One data node per zone in each region (`REGION-a`, `-b`, …), regions
/// in the order given. Refuses an empty, repeated or malformed region
/// name, or more than [`MAX_DEV_REGIONS`] regions / [`MAX_DEV_ZONES`] zones.
pub fn regional_places(regions: &[String], zones: usize) -> Result<Vec<Place>, String> {
    if regions.is_empty() || regions.len() > MAX_DEV_REGIONS {
        return Err(format!("--regions takes 1 to {MAX_DEV_REGIONS} regions, not {}", regions.len()));
    }
    if !(1..=MAX_DEV_ZONES).contains(&zones) {
        return Err(format!("--zones must be 1 to {MAX_DEV_ZONES}, not {zones}"));
    }
    for (i, r) in regions.iter().enumerate() {
        if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("region name {r:?}: use letters, digits and '-'"));
        }
        if regions[..i].contains(r) {
            return Err(format!("region {r} is listed twice"));
        }
    }
    Ok(regions
        .iter()
        .flat_map(|r| {
            (0..zones).map(move |z| Place { region: r.clone(), zone: format!("{r}-{}", (b'a' + z as u8) as char), witness: false })
        })
        .collect())
}

/// Adds a witness node to each of `regions` (zone `REGION-w`, after the
/// data nodes): the third region's vote of every region-survival
/// namespace, whichever its home. Needs three regions or more (a witness
/// is only ever placed in a region-survival layout).
pub fn add_witnesses(places: &mut Vec<Place>, regions: &[String]) -> Result<(), String> {
    if regions.len() < 3 {
        return Err(format!(
            "--witnesses needs three regions or more (a witness casts a region-survival namespace's third-region vote), not {}",
            regions.len()
        ));
    }
    places.extend(regions.iter().map(|r| Place { region: r.clone(), zone: format!("{r}-w"), witness: true }));
    Ok(())
}

/// Round trips between the regions of a dev cluster, ms: 66 between the
/// first and second, 64 between the second and third, 146 between the
/// first and third (roughly us-east, eu-west and ap-south), `other_ms` for
/// any other pair. `rtt_override` replaces every one of them.
pub fn dev_wan(regions: &[String], rtt_override: Option<u64>) -> WanConfig {
    let mut links = Vec::new();
    for i in 0..regions.len() {
        for j in i + 1..regions.len() {
            let rtt = rtt_override.unwrap_or(match (i, j) {
                (0, 1) => 66,
                (1, 2) => 64,
                (0, 2) => 146,
                _ => 100,
            });
            links.push(WanLink { regions: [regions[i].clone(), regions[j].clone()], rtt_ms: rtt });
        }
    }
    WanConfig { links, ..WanConfig::default() }
}

fn addr(port: u32) -> Result<String, String> {
    let port = u16::try_from(port).map_err(|_| format!("port {port} out of range: choose a lower base port"))?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)).to_string())
}

/// Node `i` (from 1): client port `base + i - 1`, peer `+100`, HTTP `+200`,
/// gossip `+300`.
pub fn members(nodes: u64, base_port: u16) -> Result<Vec<Member>, String> {
    (1..=nodes)
        .map(|id| {
            let i = (id - 1) as u32;
            let b = u32::from(base_port);
            Ok(Member {
                id,
                client_addr: addr(b + i)?,
                peer_addr: addr(b + 100 + i)?,
                http_addr: addr(b + 200 + i)?,
                gossip_addr: Some(addr(b + 300 + i)?),
            })
        })
        .collect()
}

/// Writes certificates and `meridian.toml` for every node under
/// `data_dir/node-<id>/`, reusing an existing cluster with the same layout.
/// Returns the config paths in member order.
pub fn write_configs(data_dir: &Path, members: &[Member], namespaces: &[String], tick_ms: u64) -> Result<Vec<PathBuf>, String> {
    write_configs_with(data_dir, members, namespaces, tick_ms, &DebugConfig::default())
}

/// [`write_configs`] with test-only switches (the chaos runner's).
pub fn write_configs_with(
    data_dir: &Path,
    members: &[Member],
    namespaces: &[String],
    tick_ms: u64,
    debug: &DebugConfig,
) -> Result<Vec<PathBuf>, String> {
    let ca = DevCa::generate().map_err(|e| format!("generating the dev cluster CA: {e}"))?;
    write_configs_signed(data_dir, members, namespaces, tick_ms, debug, &ca)
}

/// [`write_configs_with`], the certificates signed by `ca` (so that a node
/// added later, [`write_join_config`], can be signed by it too).
pub fn write_configs_signed(
    data_dir: &Path,
    members: &[Member],
    namespaces: &[String],
    tick_ms: u64,
    debug: &DebugConfig,
    ca: &DevCa,
) -> Result<Vec<PathBuf>, String> {
    let placement = crate::placement::PlacementSettings::default();
    write_configs_placed(data_dir, members, &local_places(members.len()), namespaces, tick_ms, debug, &placement, ca)
}

/// [`write_configs_signed`] with each member's region and zone (`places`,
/// in member order) and `[placement]` settings.
#[allow(clippy::too_many_arguments)]
pub fn write_configs_placed(
    data_dir: &Path,
    members: &[Member],
    places: &[Place],
    namespaces: &[String],
    tick_ms: u64,
    debug: &DebugConfig,
    placement: &crate::placement::PlacementSettings,
    ca: &DevCa,
) -> Result<Vec<PathBuf>, String> {
    if places.len() != members.len() {
        return Err(format!("{} places for {} members", places.len(), members.len()));
    }
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(data_dir).map_err(|e| io("creating", data_dir, e))?;
    let mut paths = Vec::new();
    for (m, place) in members.iter().zip(places) {
        let dir = data_dir.join(format!("node-{}", m.id));
        let cfg_path = dir.join("meridian.toml");
        if let Ok(existing) = ServerConfig::load(&cfg_path) {
            // The same namespaces in another order are the same layout.
            let sorted = |v: &[String]| {
                let mut v = v.to_vec();
                v.sort();
                v
            };
            if existing.initial_cluster == members
                && sorted(&existing.namespaces) == sorted(namespaces)
                && (existing.region.as_str(), existing.zone.as_str()) == (place.region.as_str(), place.zone.as_str())
                && existing.debug.wan == debug.wan
            {
                paths.push(cfg_path);
                continue;
            }
            return Err(format!(
                "{} holds a cluster with a different layout; remove {} or pick another data dir",
                cfg_path.display(),
                data_dir.display()
            ));
        }
        let mut cfg = node_config(&dir, m, place, members.to_vec(), Vec::new(), namespaces, tick_ms, debug, ca)?;
        cfg.placement = placement.clone();
        write_config(&cfg_path, &cfg)?;
        paths.push(cfg_path);
    }
    Ok(paths)
}

/// Writes `dir/meridian.toml` (and certificates; the data goes there too)
/// for `me`, a node that joins a running cluster through `join` (client
/// addresses) instead of bootstrapping: its `initial_cluster` lists itself
/// only.
pub fn write_join_config(dir: &Path, me: &Member, join: &[String], tick_ms: u64, ca: &DevCa) -> Result<PathBuf, String> {
    write_join_config_with(dir, me, join, tick_ms, &DebugConfig::default(), ca)
}

/// [`write_join_config`] with debug settings (the chaos suite's fault
/// injection).
pub fn write_join_config_with(
    dir: &Path,
    me: &Member,
    join: &[String],
    tick_ms: u64,
    debug: &DebugConfig,
    ca: &DevCa,
) -> Result<PathBuf, String> {
    let place = local_places(me.id as usize).pop().unwrap_or(Place { region: "local".into(), zone: "local-a".into(), witness: false });
    let cfg = node_config(dir, me, &place, vec![me.clone()], join.to_vec(), &[], tick_ms, debug, ca)?;
    let cfg_path = dir.join("meridian.toml");
    write_config(&cfg_path, &cfg)?;
    Ok(cfg_path)
}

fn write_config(path: &Path, cfg: &ServerConfig) -> Result<(), String> {
    cfg.validate().map_err(|e| e.to_string())?;
    std::fs::write(path, cfg.to_toml()).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Node `m`'s certificates under `dir`, and its config.
#[allow(clippy::too_many_arguments)]
fn node_config(
    dir: &Path,
    m: &Member,
    place: &Place,
    initial_cluster: Vec<Member>,
    join: Vec<String>,
    namespaces: &[String],
    tick_ms: u64,
    debug: &DebugConfig,
    ca: &DevCa,
) -> Result<ServerConfig, String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let tls = ca.issue(m.id).map_err(|e| format!("issuing a node certificate: {e}"))?;
    let write = |name: &str, body: &str| -> Result<PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, body).map_err(|e| io("writing", &p, e))?;
        Ok(p)
    };
    let tls_paths = TlsPaths {
        cert: write("node.pem", &tls.cert_chain_pem)?,
        key: write("node-key.pem", &tls.key_pem)?,
        ca: write("ca.pem", &tls.ca_pem)?,
    };
    // The cluster key, derived from the CA's private key: every node of
    // the dev cluster (and one added later, signed by the same CA) gets
    // the same one.
    let mut material = b"meridian gossip key v1".to_vec();
    material.extend_from_slice(&ca.key_der());
    let key = ring::digest::digest(&ring::digest::SHA256, &material);
    let hex: String = key.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let gossip = GossipSettings { key_file: Some(write("gossip.key", &hex)?), ..GossipSettings::default() };
    let cfg = ServerConfig {
        node_id: m.id,
        data_dir: dir.to_path_buf(),
        initial_cluster,
        region: place.region.clone(),
        zone: place.zone.clone(),
        namespaces: namespaces.to_vec(),
        tls: tls_paths,
        tick_ms,
        // Several nodes share the machine's cores: each runs on one
        // thread (ServerConfig::single_threaded).
        worker_threads: Some(1),
        debug: debug.clone(),
        quota_backend_bytes: 0,
        host: None,
        role: if place.witness { meridian_membership::NodeRole::Witness } else { meridian_membership::NodeRole::Data },
        relabel: false,
        join,
        listen_peer_addr: None,
        listen_client_addr: None,
        listen_http_addr: None,
        listen_gossip_addr: None,
        gossip,
        placement: Default::default(),
    };
    Ok(cfg)
}

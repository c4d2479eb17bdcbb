//! Namespace geography: a home region and a survival goal, turned into
//! how many voters go to which region, and which regions keep a read
//! replica (docs/geography.md).
//!
//! ```text
//!  --survival zone   (default)  voters: home × replicas (3), over its zones
//!                               --read-replicas: a learner in every other region
//!  --survival region            voters: home × 2, second × 2, third × 1
//!                               (second: the other region with the most data
//!                               nodes; third: the next one)
//! ```
//!
//! The placement driver keeps the voters per region and moves leadership
//! home; this module only decides the layout at create time (stored in
//! the namespace's record, so it does not shift as nodes come and go) and
//! refuses one the cluster's nodes cannot hold, changing nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use meridian_membership::{NodeRecord, NodeRole};

use crate::error::ApiError;

/// What a namespace must survive without losing availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Survival {
    /// The loss of a zone: voters in the home region's zones; writes and
    /// locks never leave the region.
    Zone,
    /// The loss of a whole region: voters over three regions; a write
    /// waits for a round trip to the nearest other region.
    Region,
}

impl Survival {
    /// `zone` or `region`; anything else is refused.
    pub fn parse(s: &str) -> Result<Survival, ApiError> {
        match s {
            "zone" => Ok(Survival::Zone),
            "region" => Ok(Survival::Region),
            other => Err(ApiError::Invalid(format!("unknown survival goal {other:?}: zone or region"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Survival::Zone => "zone",
            Survival::Region => "region",
        }
    }
}

/// Voters a region-survival namespace places in its home, second and
/// third regions.
pub const REGION_SURVIVAL_LAYOUT: [usize; 3] = [2, 2, 1];

/// A namespace's geography, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoPolicy {
    pub home_region: String,
    pub survival: Survival,
    /// Voters per region.
    pub region_voters: BTreeMap<String, usize>,
    /// Regions that keep one read replica (a learner) each.
    pub read_regions: BTreeSet<String>,
}

impl GeoPolicy {
    /// Voters in all.
    pub fn voters(&self) -> usize {
        self.region_voters.values().sum()
    }

    /// Why a replica on a node of `region` is there (`voter`: it votes).
    pub fn why(&self, region: &str, voter: bool) -> String {
        let goal = self.survival.as_str();
        match (voter, self.region_voters.get(region)) {
            (true, Some(_)) if region == self.home_region => format!("voter in the home region {region} ({goal} survival)"),
            (true, Some(n)) => format!("voter, one of {n} in region {region} ({goal} survival: a region's loss leaves a quorum)"),
            (false, _) if self.read_regions.contains(region) => format!("read replica for region {region} (serializable reads there)"),
            (true, None) => format!("voter outside the policy's regions ({region}): the placement driver moves it"),
            (false, _) => "learner being added or removed by the placement driver".into(),
        }
    }
}

/// What a create asks of the geography (the CLI's `--home-region`,
/// `--survival`, `--read-replicas`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeoSpec {
    pub home_region: Option<String>,
    pub survival: Option<String>,
    pub read_replicas: bool,
    /// `--replicas`, if given.
    pub replicas: Option<usize>,
    /// Whether any `--constraint` is given (they do not combine with a
    /// home region: the layout places every voter).
    pub constrained: bool,
}

impl GeoSpec {
    /// Whether the create asks for any geography at all.
    pub fn asked(&self) -> bool {
        self.home_region.is_some() || self.survival.is_some() || self.read_replicas
    }
}

/// Decides the layout of `spec` over `nodes` (data nodes that take
/// replicas; `default_replicas` when `--replicas` is not given), or says
/// why the cluster cannot hold it. `None`: no geography asked.
pub fn plan(spec: &GeoSpec, nodes: &[NodeRecord], default_replicas: usize) -> Result<Option<GeoPolicy>, ApiError> {
    if !spec.asked() {
        return Ok(None);
    }
    let bad = |s: String| Err(ApiError::Invalid(s));
    let Some(home) = spec.home_region.clone() else {
        return bad("--survival and --read-replicas need --home-region: the region whose clients the namespace serves".into());
    };
    if spec.constrained {
        return bad("--home-region places the voters by region and zone: drop the --constraint (region=, zone= or host=)".into());
    }
    let survival = Survival::parse(spec.survival.as_deref().unwrap_or("zone"))?;
    // Hosts of data nodes per region (two nodes on one host hold one
    // copy); a node whose record has not reached this member yet (no
    // region known) counts nowhere.
    let mut hosts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.role == NodeRole::Data && !n.labels.region.is_empty()) {
        let host = if n.labels.host.is_empty() { format!("node-{}", n.id) } else { n.labels.host.clone() };
        hosts.entry(n.labels.region.clone()).or_default().insert(host);
    }
    let known = || hosts.keys().cloned().collect::<Vec<_>>().join(", ");
    let Some(home_hosts) = hosts.get(&home).map(BTreeSet::len) else {
        return bad(format!("unknown region {home:?}: no data node is in it (regions with data nodes: {})", known()));
    };
    match survival {
        Survival::Zone => {
            let replicas = spec.replicas.unwrap_or(default_replicas);
            if home_hosts < replicas {
                return bad(format!(
                    "zone survival puts {replicas} voters in region {home}, on distinct hosts; it has {home_hosts} data node host(s)"
                ));
            }
            let read_regions = if spec.read_replicas { hosts.keys().filter(|r| **r != home).cloned().collect() } else { BTreeSet::new() };
            if spec.read_replicas && read_regions.is_empty() {
                return bad(format!("--read-replicas: no region other than {home} has a data node"));
            }
            Ok(Some(GeoPolicy { region_voters: BTreeMap::from([(home.clone(), replicas)]), home_region: home, survival, read_regions }))
        }
        Survival::Region => {
            let [at_home, at_second, at_third] = REGION_SURVIVAL_LAYOUT;
            if spec.replicas.is_some_and(|r| r != at_home + at_second + at_third) {
                return bad(format!(
                    "region survival places {} voters ({at_home} + {at_second} + {at_third} over three regions); leave --replicas out",
                    at_home + at_second + at_third
                ));
            }
            if spec.read_replicas {
                return bad("--read-replicas is for zone survival: a region-survival namespace has voters in three regions already".into());
            }
            if hosts.len() < 3 {
                return bad(format!(
                    "region survival needs three regions with data nodes (to outvote a lost one); the cluster has {}: {}",
                    hosts.len(),
                    known()
                ));
            }
            if home_hosts < at_home {
                return bad(format!(
                    "region survival puts {at_home} voters in the home region {home}; it has {home_hosts} data node host(s)"
                ));
            }
            // The second region: the other one with the most hosts (then
            // by name); the third: the next.
            let mut others: Vec<(&String, usize)> = hosts.iter().filter(|(r, _)| **r != home).map(|(r, h)| (r, h.len())).collect();
            others.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let (second, second_hosts) = others[0];
            if second_hosts < at_second {
                return bad(format!(
                    "region survival puts {at_second} voters in a second region; no region but {home} has {at_second} data node hosts"
                ));
            }
            let third = others[1].0;
            let region_voters = BTreeMap::from([(home.clone(), at_home), (second.clone(), at_second), (third.clone(), at_third)]);
            Ok(Some(GeoPolicy { home_region: home, survival, region_voters, read_regions: BTreeSet::new() }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_membership::Labels;

    /// `per_region` data nodes in each region, one host each.
    fn nodes(per_region: &[(&str, usize)]) -> Vec<NodeRecord> {
        let mut out = Vec::new();
        for (region, n) in per_region {
            for _ in 0..*n {
                let id = out.len() as u64 + 1;
                out.push(NodeRecord {
                    id,
                    peer_addr: String::new(),
                    client_addr: String::new(),
                    http_addr: String::new(),
                    gossip_addr: String::new(),
                    labels: Labels { region: region.to_string(), zone: format!("{region}-{id}"), host: format!("h{id}") },
                    role: NodeRole::Data,
                    liveness: meridian_membership::Liveness::Alive,
                });
            }
        }
        out
    }

    fn spec(home: &str, survival: &str) -> GeoSpec {
        GeoSpec { home_region: Some(home.into()), survival: Some(survival.into()), ..GeoSpec::default() }
    }

    fn refusal(r: Result<Option<GeoPolicy>, ApiError>) -> String {
        match r {
            Err(ApiError::Invalid(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn zone_survival_puts_every_voter_home_and_read_replicas_everywhere_else() {
        let ns = nodes(&[("us", 3), ("eu", 3), ("ap", 1)]);
        let mut s = spec("us", "zone");
        s.read_replicas = true;
        let p = plan(&s, &ns, 3).unwrap().unwrap();
        assert_eq!(p.region_voters, BTreeMap::from([("us".into(), 3)]));
        assert_eq!(p.read_regions, BTreeSet::from(["ap".into(), "eu".into()]));
        assert!(p.why("us", true).contains("home region"));
        assert!(p.why("eu", false).contains("read replica"));
        assert_eq!(plan(&GeoSpec::default(), &ns, 3).unwrap(), None, "no geography asked");
    }

    #[test]
    fn region_survival_is_two_two_one_with_the_biggest_other_region_second() {
        let ns = nodes(&[("us", 3), ("eu", 2), ("ap", 3)]);
        let p = plan(&spec("us", "region"), &ns, 3).unwrap().unwrap();
        assert_eq!(p.region_voters, BTreeMap::from([("us".into(), 2), ("ap".into(), 2), ("eu".into(), 1)]));
        assert_eq!(p.voters(), 5);
    }

    #[test]
    fn layouts_no_topology_can_hold_are_refused_with_the_reason() {
        let two = nodes(&[("us", 3), ("eu", 3)]);
        assert!(refusal(plan(&spec("us", "region"), &two, 3)).contains("three regions"));
        let ns = nodes(&[("us", 3), ("eu", 1), ("ap", 1)]);
        assert!(refusal(plan(&spec("us", "region"), &ns, 3)).contains("second region"));
        assert!(refusal(plan(&spec("mars", "zone"), &ns, 3)).contains("unknown region \"mars\""));
        assert!(refusal(plan(&spec("eu", "zone"), &ns, 3)).contains("1 data node host"));
        assert!(refusal(plan(&spec("us", "everything"), &ns, 3)).contains("unknown survival goal"));
        let mut no_home = spec("us", "zone");
        no_home.home_region = None;
        assert!(refusal(plan(&no_home, &ns, 3)).contains("need --home-region"));
        let mut both = spec("us", "zone");
        both.constrained = true;
        assert!(refusal(plan(&both, &ns, 3)).contains("drop the --constraint"));
        let mut reads = spec("us", "region");
        reads.read_replicas = true;
        assert!(refusal(plan(&reads, &nodes(&[("us", 2), ("eu", 2), ("ap", 1)]), 3)).contains("zone survival"));
        let mut five = spec("us", "region");
        five.replicas = Some(3);
        assert!(refusal(plan(&five, &nodes(&[("us", 2), ("eu", 2), ("ap", 1)]), 3)).contains("leave --replicas out"));
        let mut lonely = spec("us", "zone");
        lonely.read_replicas = true;
        assert!(refusal(plan(&lonely, &nodes(&[("us", 3)]), 3)).contains("no region other than us"));
    }
}

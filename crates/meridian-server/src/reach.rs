//! Telling a client where to go when a range's quorum is out of this
//! node's reach: its region is cut off from the others, or most voters are
//! down. Pure, from the node records the gossip keeps.

use std::collections::BTreeMap;

use meridian_membership::{Liveness, NodeRecord, NodeRole};

/// For a request on range `range_id` that failed here for want of a
/// leader: when the gossip holds a majority (but not all) of the range's
/// `voters` suspect or dead — this node `me` counting as reachable — a
/// message naming them and the client endpoints of the data voters out of
/// reach, grouped by region: if those can reach each other, the range is
/// served there. `None` while a majority is in reach (an election, not a
/// cut), or when every voter is down (a message of its own says so).
pub fn out_of_reach_hint(range_id: u64, me: &NodeRecord, voters: &[NodeRecord]) -> Option<String> {
    let gone = |n: &NodeRecord| n.id != me.id && matches!(n.liveness, Liveness::Suspect | Liveness::Dead);
    let away: Vec<&NodeRecord> = voters.iter().filter(|n| gone(n)).collect();
    if voters.is_empty() || 2 * away.len() <= voters.len() || away.len() == voters.len() {
        return None;
    }
    let mut by_region: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in away.iter().filter(|n| n.role == NodeRole::Data && !n.client_addr.is_empty()) {
        by_region.entry(n.labels.region.as_str()).or_default().push(n.client_addr.as_str());
    }
    let ids: Vec<String> = away.iter().map(|n| n.id.to_string()).collect();
    let go: Vec<String> = by_region.iter().map(|(r, addrs)| format!("{r}: {}", addrs.join(","))).collect();
    let region = if me.labels.region.is_empty() { String::new() } else { format!(" in region {}", me.labels.region) };
    Some(format!(
        "range {range_id} has no leader in reach of node {}{region}: a majority of its voters (nodes {}) is down or cut off from here; if they reach each other the range is served there — send requests to {}",
        me.id,
        ids.join(", "),
        if go.is_empty() { "their regions' nodes".to_string() } else { go.join("; ") }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_membership::Labels;

    fn rec(id: u64, region: &str, liveness: Liveness, role: NodeRole) -> NodeRecord {
        NodeRecord {
            id,
            peer_addr: String::new(),
            client_addr: format!("10.0.0.{id}:2379"),
            http_addr: String::new(),
            gossip_addr: String::new(),
            labels: Labels { region: region.into(), zone: format!("{region}-a"), host: format!("h{id}") },
            role,
            liveness,
        }
    }

    #[test]
    fn a_cut_off_region_is_told_where_the_majority_is_and_nothing_else_is() {
        use Liveness::*;
        use NodeRole::*;
        let me = rec(1, "us", Alive, Data);
        // 2 + 2 + witness, seen from the home region cut off: the data
        // voters of ap, not the witness, are where to go.
        let voters =
            [me.clone(), rec(2, "us", Alive, Data), rec(7, "ap", Dead, Data), rec(8, "ap", Suspect, Data), rec(11, "eu", Dead, Witness)];
        let hint = out_of_reach_hint(6, &me, &voters).expect("a majority out of reach");
        assert!(hint.contains("range 6") && hint.contains("region us") && hint.contains("nodes 7, 8, 11"), "{hint}");
        assert!(hint.contains("ap: 10.0.0.7:2379,10.0.0.8:2379") && !hint.contains("10.0.0.11"), "{hint}");
        // A majority in reach (an election under way): no hint.
        let voters =
            [me.clone(), rec(2, "us", Alive, Data), rec(7, "ap", Alive, Data), rec(8, "ap", Dead, Data), rec(11, "eu", Dead, Witness)];
        assert_eq!(out_of_reach_hint(6, &me, &voters), None);
        // Every other voter down while this one holds no voter: the
        // all-down message's case.
        let voters = [rec(2, "us", Dead, Data), rec(3, "us", Dead, Data), rec(4, "us", Dead, Data)];
        assert_eq!(out_of_reach_hint(6, &me, &voters), None);
        // This node's own record never counts as away.
        let me_suspect = rec(1, "us", Suspect, Data);
        let voters = [me_suspect.clone(), rec(2, "us", Alive, Data), rec(3, "eu", Dead, Data)];
        assert_eq!(out_of_reach_hint(6, &me_suspect, &voters), None);
    }
}

//! Namespaces and the static range layout: which range owns a key, and
//! whether a request stays inside one namespace.
//!
//! Range 1 is the meta range (reserved for the placement driver; it holds
//! no client keys). Range 2 serves the root namespace `""`: every key that
//! no declared namespace claims. At the cluster's bootstrap the declared
//! namespaces get ranges 3, 4, … in the order of their prefixes — never of
//! their position in a config file, so two nodes whose files list them in
//! other orders agree, and reordering a list renumbers nothing. After the
//! bootstrap the ranges on disk are the record: a config that does not
//! match them is refused at start-up ([`Routing::check_against`]).

use meridian_storage::{RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole};
use thiserror::Error;

pub const META_RANGE_ID: u64 = 1;
pub const ROOT_RANGE_ID: u64 = 2;
/// Namespaces per cluster, declared or created at runtime (each costs one
/// Raft group on each of its replicas' nodes).
pub const MAX_NAMESPACES: usize = 16_384;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("invalid namespace {namespace:?}: {reason}")]
    InvalidNamespace { namespace: String, reason: String },
    #[error("request spans namespaces {first:?} and {second:?}; operations must stay inside one namespace")]
    CrossNamespace { first: String, second: String },
    #[error("the configured namespaces do not match the ranges on disk: {reason}")]
    LayoutMismatch { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub prefix: Vec<u8>,
    pub range_id: u64,
    /// The id its data, revisions, leases and locks are kept under
    /// (`RangeDescriptor::namespace_id`); at bootstrap, its range's id.
    pub namespace_id: u64,
}

/// The routing table: namespaces sorted by prefix.
#[derive(Debug, Clone)]
pub struct Routing {
    namespaces: Vec<Namespace>,
    /// The root namespace's id (its range's, at bootstrap).
    root_namespace_id: u64,
}

pub use meridian_kv::keys::prefix_end;

fn ns_name(prefix: &[u8]) -> String {
    String::from_utf8_lossy(prefix).into_owned()
}

fn names(ranges: &[&(u64, Vec<u8>, Vec<u8>)]) -> String {
    let names: Vec<String> = ranges.iter().map(|(_, start, _)| format!("{:?}", ns_name(start))).collect();
    if names.is_empty() {
        "no namespace".into()
    } else {
        names.join(", ")
    }
}

impl Routing {
    /// Validates declared namespaces: non-empty, unique, not nested in one
    /// another (a key must belong to exactly one namespace).
    pub fn new(declared: &[String]) -> Result<Routing, RoutingError> {
        if declared.len() > MAX_NAMESPACES {
            return Err(RoutingError::InvalidNamespace {
                namespace: String::new(),
                reason: format!("more than {MAX_NAMESPACES} namespaces"),
            });
        }
        let mut namespaces: Vec<Namespace> = Vec::new();
        for ns in declared {
            let bad = |reason: &str| RoutingError::InvalidNamespace { namespace: ns.clone(), reason: reason.into() };
            if ns.is_empty() {
                return Err(bad("the root namespace \"\" exists implicitly; declare only prefixes"));
            }
            if namespaces.iter().any(|n| n.prefix == ns.as_bytes()) {
                return Err(bad("declared twice"));
            }
            if let Some(other) = namespaces.iter().find(|n| n.prefix.starts_with(ns.as_bytes()) || ns.as_bytes().starts_with(&n.prefix)) {
                return Err(bad(&format!("overlaps namespace {:?}", ns_name(&other.prefix))));
            }
            namespaces.push(Namespace { prefix: ns.as_bytes().to_vec(), range_id: 0, namespace_id: 0 });
        }
        namespaces.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        for (i, ns) in namespaces.iter_mut().enumerate() {
            ns.range_id = ROOT_RANGE_ID + 1 + i as u64;
            ns.namespace_id = ns.range_id;
        }
        Ok(Routing { namespaces, root_namespace_id: ROOT_RANGE_ID })
    }

    /// The route table the meta range's descriptors describe: every range
    /// above the root serves the namespace its span starts with. Refuses a
    /// catalog without the meta or root range, or whose namespace spans are
    /// not whole prefixes or overlap.
    pub fn from_descriptors(ranges: &[RangeDescriptor]) -> Result<Routing, RoutingError> {
        let bad = |reason: String| RoutingError::LayoutMismatch { reason };
        for id in [META_RANGE_ID, ROOT_RANGE_ID] {
            if !ranges.iter().any(|d| d.range_id == id) {
                return Err(bad(format!("the catalog has no range {id}")));
            }
        }
        let mut namespaces: Vec<Namespace> = Vec::new();
        for d in ranges.iter().filter(|d| d.range_id > ROOT_RANGE_ID) {
            if d.start.is_empty() || d.end != prefix_end(&d.start) {
                return Err(bad(format!("range {} spans {:?}..{:?}, not one namespace", d.range_id, ns_name(&d.start), ns_name(&d.end))));
            }
            namespaces.push(Namespace { prefix: d.start.clone(), range_id: d.range_id, namespace_id: d.namespace_id });
        }
        if namespaces.len() > MAX_NAMESPACES {
            return Err(bad(format!("more than {MAX_NAMESPACES} namespaces")));
        }
        namespaces.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        // Sorted, a prefix comes right before the first key it is a prefix
        // of (anything between them starts with it too): comparing
        // neighbours finds every overlap, in O(n log n) where checking
        // each pair took O(n²) (a route refresh at 10,000 namespaces).
        if let Some(w) = namespaces.windows(2).find(|w| w[1].prefix.starts_with(&w[0].prefix)) {
            return Err(bad(format!("ranges {} and {} overlap", w[0].range_id, w[1].range_id)));
        }
        let root = ranges.iter().find(|d| d.range_id == ROOT_RANGE_ID).expect("checked above");
        Ok(Routing { namespaces, root_namespace_id: root.namespace_id })
    }

    /// This table with range `d` added (or its entry replaced): what
    /// [`Routing::from_descriptors`] gives for the catalog with `d`, in
    /// O(n) rather than a whole catalog's read. Refused as that refuses an
    /// overlap or a span that is not one namespace.
    pub fn with_range(&self, d: &RangeDescriptor) -> Result<Routing, RoutingError> {
        if d.range_id <= ROOT_RANGE_ID {
            return Ok(self.clone());
        }
        let bad = |reason: String| RoutingError::LayoutMismatch { reason };
        if d.start.is_empty() || d.end != prefix_end(&d.start) {
            return Err(bad(format!("range {} spans {:?}..{:?}, not one namespace", d.range_id, ns_name(&d.start), ns_name(&d.end))));
        }
        let mut namespaces: Vec<Namespace> = self.namespaces.iter().filter(|n| n.range_id != d.range_id).cloned().collect();
        let at = namespaces.partition_point(|n| n.prefix < d.start);
        let before = at.checked_sub(1).map(|i| &namespaces[i]).filter(|n| d.start.starts_with(&n.prefix));
        if let Some(other) = before.or_else(|| namespaces.get(at).filter(|n| n.prefix.starts_with(&d.start))) {
            return Err(bad(format!("ranges {} and {} overlap", other.range_id, d.range_id)));
        }
        if namespaces.len() >= MAX_NAMESPACES {
            return Err(bad(format!("more than {MAX_NAMESPACES} namespaces")));
        }
        namespaces.insert(at, Namespace { prefix: d.start.clone(), range_id: d.range_id, namespace_id: d.namespace_id });
        Ok(Routing { namespaces, root_namespace_id: self.root_namespace_id })
    }

    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// The namespace `key` belongs to. Namespaces are sorted by prefix and
    /// never nested, so only the last prefix at or below the key can be
    /// one of its prefixes (a binary search, not a scan: thousands of
    /// namespaces cost every request a few comparisons).
    fn declared_for(&self, key: &[u8]) -> Option<&Namespace> {
        let at = self.namespaces.partition_point(|n| n.prefix.as_slice() <= key);
        at.checked_sub(1).map(|i| &self.namespaces[i]).filter(|n| key.starts_with(&n.prefix))
    }

    /// The namespace whose prefix is `prefix`, one of its prefixes, or one
    /// it is a prefix of, if any (two binary searches).
    pub fn overlapping(&self, prefix: &[u8]) -> Option<&Namespace> {
        self.declared_for(prefix).or_else(|| {
            let at = self.namespaces.partition_point(|n| n.prefix.as_slice() < prefix);
            self.namespaces.get(at).filter(|n| n.prefix.starts_with(prefix))
        })
    }

    /// The root namespace's id (the group shared namespaces live in).
    pub fn root_namespace_id(&self) -> u64 {
        self.root_namespace_id
    }

    /// The range that owns `key`.
    pub fn range_of_key(&self, key: &[u8]) -> u64 {
        self.declared_for(key).map_or(ROOT_RANGE_ID, |n| n.range_id)
    }

    /// The namespace id of `key`'s namespace.
    pub fn namespace_of_key(&self, key: &[u8]) -> u64 {
        self.declared_for(key).map_or(self.root_namespace_id, |n| n.namespace_id)
    }

    /// The range serving namespace `namespace_id` (0, or an id no range
    /// serves: the root's, where client-chosen lease ids live).
    pub fn range_of_namespace(&self, namespace_id: u64) -> u64 {
        self.namespaces.iter().find(|n| n.namespace_id == namespace_id).map_or(ROOT_RANGE_ID, |n| n.range_id)
    }

    /// Whether a route names namespace `namespace_id` (the root's, or one
    /// the table holds).
    pub fn knows_namespace(&self, namespace_id: u64) -> bool {
        namespace_id == self.root_namespace_id || self.namespaces.iter().any(|n| n.namespace_id == namespace_id)
    }

    /// The range that owns lease `id` (its namespace is in its top bits).
    pub fn range_of_lease(&self, id: i64) -> u64 {
        self.range_of_namespace(meridian_kv::mvcc::lease_namespace(id))
    }

    fn name_of_range(&self, range_id: u64) -> String {
        self.namespaces.iter().find(|n| n.range_id == range_id).map_or_else(String::new, |n| ns_name(&n.prefix))
    }

    /// The range serving `[key, range_end)` with etcd's conventions (empty
    /// `range_end`: the single key; `"\0"`: every key ≥ `key`). Errors if the
    /// interval reaches into another namespace.
    pub fn range_of_interval(&self, key: &[u8], range_end: &[u8]) -> Result<u64, RoutingError> {
        let owner = self.range_of_key(key);
        if range_end.is_empty() {
            return Ok(owner);
        }
        let unbounded = range_end == [0];
        if !unbounded && range_end <= key {
            return Ok(owner); // empty interval
        }
        let cross = |other: u64| RoutingError::CrossNamespace { first: self.name_of_range(owner), second: self.name_of_range(other) };
        match self.declared_for(key) {
            Some(ns) => {
                let end = prefix_end(&ns.prefix);
                if unbounded || (!end.is_empty() && range_end > end.as_slice()) {
                    return Err(cross(ROOT_RANGE_ID));
                }
                Ok(owner)
            }
            None => {
                // Root: the interval must not touch any declared namespace.
                for ns in &self.namespaces {
                    let (s, e) = (ns.prefix.as_slice(), prefix_end(&ns.prefix));
                    let starts_before_end = unbounded || s < range_end;
                    let ends_after_start = e.is_empty() || e.as_slice() > key;
                    if starts_before_end && ends_after_start {
                        return Err(cross(ns.range_id));
                    }
                }
                Ok(owner)
            }
        }
    }

    /// Checks this layout against the ranges a node holds on disk (`local`:
    /// range id, start, end), which are the record once the cluster is
    /// bootstrapped: every range on disk with an id the config's namespaces
    /// take must be the namespace of the same id here (ranges above were
    /// created at runtime), and on a node that was bootstrapped with the cluster (it
    /// holds the meta and root ranges) every namespace here must be on disk.
    /// A node added later may hold a subset. Errors name what differs; a
    /// reordered list differs in nothing.
    pub fn check_against(&self, local: &[(u64, Vec<u8>, Vec<u8>)]) -> Result<(), RoutingError> {
        let mismatch = |reason: String| RoutingError::LayoutMismatch { reason };
        let on_disk: Vec<&(u64, Vec<u8>, Vec<u8>)> = local.iter().filter(|(id, ..)| *id > ROOT_RANGE_ID).collect();
        // Ranges above the ids the config's namespaces take were created at
        // runtime (`meridian namespace create`): the catalog is their
        // record, not the config.
        let config_ids = ROOT_RANGE_ID + 1 + self.namespaces.len() as u64;
        let undeclared =
            |(id, start, _): &&&(u64, Vec<u8>, Vec<u8>)| *id < config_ids && !self.namespaces.iter().any(|n| n.prefix == *start);
        if let Some((id, start, _)) = on_disk.iter().find(undeclared) {
            return Err(mismatch(format!(
                "range {id} on disk serves namespace {:?}, which this config does not declare; namespaces cannot be removed yet",
                ns_name(start)
            )));
        }
        let founding = [META_RANGE_ID, ROOT_RANGE_ID].iter().all(|r| local.iter().any(|(id, ..)| id == r));
        if founding {
            if let Some(ns) = self.namespaces.iter().find(|n| !on_disk.iter().any(|(_, start, _)| *start == n.prefix)) {
                return Err(mismatch(format!(
                    "namespace {:?} is not in this cluster (it was bootstrapped with {}); the config's namespaces are read at the bootstrap only: create it with `meridian namespace create`",
                    ns_name(&ns.prefix),
                    names(&on_disk)
                )));
            }
        }
        for (id, start, _) in &on_disk {
            if let Some(ns) = self.namespaces.iter().find(|n| n.prefix == *start && n.range_id != *id) {
                return Err(mismatch(format!(
                    "namespace {:?} is range {id} on disk but range {} in this config (a namespace was added or dropped)",
                    ns_name(start),
                    ns.range_id
                )));
            }
        }
        Ok(())
    }

    /// Every range to bootstrap, replicated on `nodes`.
    pub fn initial_ranges(&self, nodes: &[u64]) -> Vec<RangeDescriptor> {
        let replicas: Vec<ReplicaDesc> = nodes.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect();
        let epoch = RangeEpoch { conf_ver: 1, version: 1 };
        let mut out = vec![
            RangeDescriptor {
                range_id: META_RANGE_ID,
                namespace_id: META_RANGE_ID,
                start: vec![],
                end: vec![],
                epoch,
                replicas: replicas.clone(),
            },
            RangeDescriptor {
                range_id: ROOT_RANGE_ID,
                namespace_id: ROOT_RANGE_ID,
                start: vec![],
                end: vec![],
                epoch,
                replicas: replicas.clone(),
            },
        ];
        for ns in &self.namespaces {
            out.push(RangeDescriptor {
                range_id: ns.range_id,
                namespace_id: ns.namespace_id,
                start: ns.prefix.clone(),
                end: prefix_end(&ns.prefix),
                epoch,
                replicas: replicas.clone(),
            });
        }
        out.sort_by_key(|d| d.range_id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> Routing {
        Routing::new(&["/payments/".into(), "/billing/".into()]).unwrap()
    }

    #[test]
    fn keys_route_to_their_namespace() {
        let r = routing();
        assert_eq!(r.range_of_key(b"/payments/x"), 4);
        assert_eq!(r.range_of_key(b"/billing/y"), 3);
        assert_eq!(r.range_of_key(b"/other"), ROOT_RANGE_ID);
        assert_eq!(r.range_of_key(b"/payments"), ROOT_RANGE_ID, "the prefix itself without its slash is root");
    }

    #[test]
    fn the_binary_search_finds_what_a_scan_finds() {
        let names = ["/a/", "/a0/", "/ab/", "/b/", "/b/c", "/z/", "\u{7f}/", "/a.b/"];
        let r = Routing::new(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_else(|_| {
            // "/b/" and "/b/c" nest: drop the nested one.
            Routing::new(&names.iter().filter(|s| **s != "/b/c").map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        });
        let keys: [&[u8]; 14] =
            [b"", b"/", b"/a", b"/a/", b"/a/x", b"/a0", b"/a0/", b"/a0/y", b"/ab/", b"/b/c/d", b"/c", b"/z/\xff", b"\x7f/1", b"\xff"];
        for k in keys {
            let scan = r.namespaces.iter().find(|n| k.starts_with(&n.prefix)).map(|n| n.range_id);
            assert_eq!(r.declared_for(k).map(|n| n.range_id), scan, "{:?}", String::from_utf8_lossy(k));
        }
    }

    #[test]
    fn overlapping_finds_what_a_scan_finds() {
        let names = ["/a/", "/a0/", "/ab/cd/", "/b/", "/z/"];
        let r = Routing::new(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let candidates = ["/a/", "/a/x/", "/", "/ab/", "/ab/cd/ef/", "/ab/c/", "/b0/", "/c/", "/z/z/", "/zz/", "/a0/"];
        for c in candidates {
            let scan = names.iter().find(|n| n.starts_with(c) || c.starts_with(*n)).map(|n| n.as_bytes().to_vec());
            assert_eq!(r.overlapping(c.as_bytes()).map(|n| n.prefix.clone()), scan, "{c}");
        }
    }

    #[test]
    fn intervals_must_stay_inside_one_namespace() {
        let r = routing();
        assert_eq!(r.range_of_interval(b"/payments/", &prefix_end(b"/payments/")), Ok(4), "prefix get");
        assert_eq!(r.range_of_interval(b"/payments/a", b"/payments/b"), Ok(4));
        assert!(matches!(r.range_of_interval(b"/payments/a", b"/q"), Err(RoutingError::CrossNamespace { .. })));
        assert!(matches!(r.range_of_interval(b"/a", b"/z"), Err(RoutingError::CrossNamespace { .. })), "root interval covering namespaces");
        assert!(matches!(r.range_of_interval(b"", &[0]), Err(RoutingError::CrossNamespace { .. })), "get everything spans namespaces");
        assert_eq!(r.range_of_interval(b"/c", b"/d"), Ok(ROOT_RANGE_ID), "root interval between namespaces");
        assert_eq!(r.range_of_interval(b"/q", &[0]), Ok(ROOT_RANGE_ID), "root tail after every namespace");
        let only_root = Routing::new(&[]).unwrap();
        assert_eq!(only_root.range_of_interval(b"", &[0]), Ok(ROOT_RANGE_ID));
    }

    #[test]
    fn bad_namespace_declarations_are_rejected() {
        assert!(Routing::new(&["".into()]).is_err());
        assert!(Routing::new(&["/a/".into(), "/a/".into()]).is_err());
        assert!(Routing::new(&["/a/".into(), "/a/b/".into()]).is_err(), "nested namespaces");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"");
    }

    #[test]
    fn initial_layout_has_meta_root_and_one_range_per_namespace() {
        let ranges = routing().initial_ranges(&[1, 2, 3]);
        let ids: Vec<u64> = ranges.iter().map(|d| d.range_id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        assert_eq!(ranges[3].start, b"/payments/");
        assert_eq!(ranges[3].end, b"/payments0");
        assert!(ranges.iter().all(|d| d.replicas.len() == 3));
    }

    fn on_disk(r: &Routing) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
        r.initial_ranges(&[1]).into_iter().map(|d| (d.range_id, d.start, d.end)).collect()
    }

    /// Range ids follow the prefixes, not the position in the config: a
    /// reordered list is the same layout, on disk and in routing.
    #[test]
    fn reordered_namespaces_keep_their_range_ids() {
        let a = routing();
        let b = Routing::new(&["/billing/".into(), "/payments/".into()]).unwrap();
        assert_eq!(a.namespaces(), b.namespaces());
        assert_eq!(b.check_against(&on_disk(&a)), Ok(()));
        assert_eq!(a.check_against(&[]), Ok(()), "an empty data directory has nothing to contradict");
    }

    /// Routes come from the recorded descriptors, whatever their ids.
    #[test]
    fn routes_come_from_descriptors() {
        let mut ranges = routing().initial_ranges(&[1]);
        for d in ranges.iter_mut().filter(|d| d.range_id > ROOT_RANGE_ID) {
            d.range_id += 4; // ids another bootstrap might have recorded
        }
        let r = Routing::from_descriptors(&ranges).unwrap();
        assert_eq!(r.range_of_key(b"/billing/x"), 7);
        assert_eq!(r.range_of_key(b"/payments/x"), 8);
        assert_eq!(r.range_of_key(b"/else"), ROOT_RANGE_ID);
        assert!(Routing::from_descriptors(&ranges[1..]).is_err(), "no meta range");
        let mut torn = ranges.clone();
        torn[2].end = b"/z".to_vec();
        assert!(Routing::from_descriptors(&torn).is_err(), "a span that is not one namespace");
    }

    fn ns_desc(range_id: u64, prefix: &str) -> RangeDescriptor {
        RangeDescriptor {
            range_id,
            namespace_id: range_id,
            start: prefix.as_bytes().to_vec(),
            end: prefix_end(prefix.as_bytes()),
            ..RangeDescriptor::default()
        }
    }

    /// Overlaps are found by neighbours once sorted, however the catalog
    /// lists the ranges: nested with others between, equal, far apart.
    #[test]
    fn a_catalog_with_overlapping_namespaces_is_refused() {
        let base = Routing::new(&[]).unwrap().initial_ranges(&[1]);
        let with = |names: &[&str]| {
            let mut ranges = base.clone();
            ranges.extend(names.iter().enumerate().map(|(i, n)| ns_desc(10 + i as u64, n)));
            Routing::from_descriptors(&ranges)
        };
        assert!(with(&["/a/", "/b/", "/ab/", "/a-/"]).is_ok());
        for bad in [&["/a/c/", "/b/", "/a/", "/a/b/"][..], &["/x/", "/x/"], &["/z/", "/a/", "/z/q/w/"]] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("overlap"), "{bad:?}: {err}");
        }
    }

    /// Adding one range gives what reading the whole catalog with it
    /// gives, and refuses what that refuses.
    #[test]
    fn adding_one_range_matches_the_whole_catalog() {
        let mut ranges = Routing::new(&[]).unwrap().initial_ranges(&[1]);
        ranges.extend([ns_desc(10, "/m/"), ns_desc(11, "/c/"), ns_desc(12, "/x/")]);
        let r = Routing::from_descriptors(&ranges).unwrap();
        for (id, name) in [(13, "/a/"), (14, "/n/"), (15, "/z/"), (16, "/m-/")] {
            let added = r.with_range(&ns_desc(id, name)).unwrap();
            let mut all = ranges.clone();
            all.push(ns_desc(id, name));
            assert_eq!(added.namespaces(), Routing::from_descriptors(&all).unwrap().namespaces(), "{name}");
        }
        for name in ["/m/", "/m/q/", "/"] {
            assert!(r.with_range(&ns_desc(20, name)).is_err(), "{name} overlaps");
        }
        // The same range again (its entry replaced), and meta or root: no change.
        assert_eq!(r.with_range(&ns_desc(10, "/m/")).unwrap().namespaces(), r.namespaces());
        assert_eq!(r.with_range(&ranges[0]).unwrap().namespaces(), r.namespaces());
    }

    /// A namespace added to or dropped from the config of a bootstrapped
    /// cluster would renumber ranges over existing data: refused, named.
    #[test]
    fn an_extended_or_shrunk_config_is_refused_by_name() {
        let disk = on_disk(&routing());
        let extended = Routing::new(&["/payments/".into(), "/billing/".into(), "/audit/".into()]).unwrap();
        let err = extended.check_against(&disk).unwrap_err().to_string();
        assert!(err.contains("\"/audit/\" is not in this cluster"), "{err}");
        let subset: Vec<_> = disk.iter().filter(|(id, ..)| *id == 3).cloned().collect();
        let err = extended.check_against(&subset).unwrap_err().to_string();
        assert!(err.contains("range 3 on disk but range 4"), "a node holding a subset sees the renumbering: {err}");
        let appended = Routing::new(&["/payments/".into(), "/billing/".into(), "/zoo/".into()]).unwrap();
        let err = appended.check_against(&disk).unwrap_err().to_string();
        assert!(err.contains("\"/zoo/\" is not in this cluster"), "{err}");
        let shrunk = Routing::new(&["/payments/".into()]).unwrap();
        let err = shrunk.check_against(&disk).unwrap_err().to_string();
        assert!(err.contains("\"/billing/\"") && err.contains("does not declare"), "{err}");
        // A node added after the bootstrap may hold a subset.
        let subset: Vec<_> = disk.iter().filter(|(id, ..)| *id == 3).cloned().collect();
        assert_eq!(routing().check_against(&subset), Ok(()));
        // A namespace created at runtime takes an id above the config's.
        let mut grown = disk.clone();
        grown.push((5, b"/runtime/".to_vec(), b"/runtime0".to_vec()));
        assert_eq!(routing().check_against(&grown), Ok(()));
    }
}

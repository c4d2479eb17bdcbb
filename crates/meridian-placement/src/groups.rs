//! Which namespaces share the root group and which have a group of their
//! own: the merge and split decisions, by size and write load.
//!
//! Many small, quiet namespaces in one group keep the group count (and the
//! cost of every idle group: its ticks, its log, its replicas' memory) low;
//! a namespace that grows or takes many writes gets a group of its own, so
//! it neither slows the others nor is slowed by them. The driver feeds a
//! [`GroupTracker`] each round with what it measured of every namespace
//! created at runtime (its key count when it read it, the writes the
//! members counted under its prefix since they started counting) and asks
//! it for at most one change. The thresholds leave a wide gap between a
//! merge and a split (hysteresis), and a namespace must stay quiet for
//! minutes before its group is merged away, so a namespace never flaps
//! between the two.
//!
//! Pure: time comes in as milliseconds, so this is unit-tested and replays
//! in the simulation.

use std::collections::BTreeMap;

/// The thresholds of merges and splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Decide merges and splits at all (`meridian namespace merge|split`
    /// work either way).
    pub enabled: bool,
    /// A namespace with its own group is merged into the root group once
    /// it has held at most this many keys …
    pub merge_max_keys: u64,
    /// … and taken at most this many writes a minute …
    pub merge_max_writes_per_min: u64,
    /// … and reads a minute (a namespace read a lot keeps its own group's
    /// leader) …
    pub merge_max_reads_per_min: u64,
    /// … and held at most this many bytes of keys and values (a merge
    /// copies them through one command; the state machine refuses one
    /// above 4 MiB) …
    pub merge_max_bytes: u64,
    /// … for this long without a break. 10 minutes: a namespace created a
    /// moment ago, or used in bursts, keeps its group.
    pub merge_quiet_ms: u64,
    /// A shared namespace is split out once it holds this many keys (5×
    /// the merge bound) …
    pub split_min_keys: u64,
    /// … or this many bytes of keys and values …
    pub split_min_bytes: u64,
    /// … or has taken this many writes a minute (40× the merge bound) for
    /// [`GroupSettings::split_sustain_ms`].
    pub split_min_writes_per_min: u64,
    /// How long a write rate must last to split for it (a burst does not).
    pub split_sustain_ms: u64,
    /// After a refused or failed change (sessions in the namespace, locks
    /// held, an unreachable range), the namespace is left alone this long.
    pub retry_after_ms: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            enabled: true,
            merge_max_keys: 1_000,
            merge_max_writes_per_min: 30,
            merge_max_reads_per_min: 600,
            merge_max_bytes: 1 << 20,
            merge_quiet_ms: 600_000,
            split_min_keys: 5_000,
            split_min_bytes: 8 << 20,
            split_min_writes_per_min: 1_200,
            split_sustain_ms: 60_000,
            retry_after_ms: 600_000,
        }
    }
}

impl GroupSettings {
    /// Refuses thresholds that would make namespaces flap or that no
    /// merge could meet.
    pub fn validate(&self) -> Result<(), String> {
        if self.split_min_keys <= self.merge_max_keys {
            return Err(format!(
                "split_min_keys ({}) must be above merge_max_keys ({}), or namespaces would be merged and split in turn",
                self.split_min_keys, self.merge_max_keys
            ));
        }
        if self.split_min_bytes <= self.merge_max_bytes {
            return Err(format!(
                "split_min_bytes ({}) must be above merge_max_bytes ({}), or namespaces would be merged and split in turn",
                self.split_min_bytes, self.merge_max_bytes
            ));
        }
        if self.split_min_writes_per_min <= self.merge_max_writes_per_min {
            return Err(format!(
                "split_min_writes_per_min ({}) must be above merge_max_writes_per_min ({})",
                self.split_min_writes_per_min, self.merge_max_writes_per_min
            ));
        }
        Ok(())
    }
}

/// What the driver measured of one namespace this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The namespace (its prefix).
    pub name: String,
    /// Served by the root group now.
    pub shared: bool,
    /// The driver may change its group: created at runtime, settled (not
    /// being created, merged or dropped), and with the root group's
    /// placement policy.
    pub movable: bool,
    /// Its key count, if read this round (the driver reads a few a round).
    pub keys: Option<u64>,
    /// The bytes of its keys and values, read with the count.
    pub bytes: Option<u64>,
    /// Writes the members counted under its prefix, summed; a counter that
    /// went down (a member restarted) starts a new interval.
    pub writes: u64,
    /// Range reads the members answered under its prefix, summed, alike.
    pub reads: u64,
}

/// A decided change of a namespace's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// Merge its group into the root group.
    Merge {
        /// The namespace.
        name: String,
        /// Why, for the operator list.
        reason: String,
    },
    /// Give the shared namespace a group of its own.
    Split {
        /// The namespace.
        name: String,
        /// Why, for the operator list.
        reason: String,
    },
}

impl GroupChange {
    /// The namespace it changes.
    pub fn name(&self) -> &str {
        match self {
            GroupChange::Merge { name, .. } | GroupChange::Split { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Track {
    shared: bool,
    movable: bool,
    keys: Option<u64>,
    bytes: Option<u64>,
    writes: u64,
    reads: u64,
    seen_ms: u64,
    /// Writes a minute over the last interval (none before two rounds).
    rate: Option<u64>,
    /// Reads a minute, alike.
    read_rate: Option<u64>,
    quiet_since: Option<u64>,
    busy_since: Option<u64>,
    left_alone_until: u64,
}

/// The namespaces' measurements over time, and the decisions they lead to.
#[derive(Debug, Default)]
pub struct GroupTracker {
    tracks: BTreeMap<String, Track>,
}

impl GroupTracker {
    /// Takes in one round's measurements at `now_ms`; namespaces missing
    /// from it are forgotten (dropped).
    pub fn observe(&mut self, now_ms: u64, round: &[Observation], s: &GroupSettings) {
        let mut next = BTreeMap::new();
        for o in round {
            let mut t = self.tracks.remove(&o.name).unwrap_or_default();
            let fresh = t.seen_ms == 0 || t.shared != o.shared;
            if !fresh && now_ms > t.seen_ms {
                // A counter that went down: a member restarted; what it
                // counted since is this interval's lower bound.
                let per_min = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now).saturating_mul(60_000) / (now_ms - t.seen_ms);
                t.rate = Some(per_min(o.writes, t.writes));
                t.read_rate = Some(per_min(o.reads, t.reads));
            }
            if fresh {
                // A namespace just seen, or just merged or split: its
                // quiet or busy time starts now.
                t.rate = None;
                t.read_rate = None;
                t.quiet_since = None;
                t.busy_since = None;
                t.keys = None;
                t.bytes = None;
            }
            t.shared = o.shared;
            t.movable = o.movable;
            t.keys = o.keys.or(t.keys);
            t.bytes = o.bytes.or(t.bytes);
            t.writes = o.writes;
            t.reads = o.reads;
            t.seen_ms = now_ms;
            let quiet = t.rate.is_some_and(|r| r <= s.merge_max_writes_per_min)
                && t.read_rate.is_some_and(|r| r <= s.merge_max_reads_per_min)
                && t.keys.is_some_and(|k| k <= s.merge_max_keys)
                && t.bytes.is_some_and(|b| b <= s.merge_max_bytes);
            t.quiet_since = if quiet { t.quiet_since.or(Some(now_ms)) } else { None };
            let busy = t.rate.is_some_and(|r| r >= s.split_min_writes_per_min);
            t.busy_since = if busy { t.busy_since.or(Some(now_ms)) } else { None };
            next.insert(o.name.clone(), t);
        }
        self.tracks = next;
    }

    /// The change to make now, if any (one a round: each moves keys and
    /// retires or opens a group).
    pub fn plan(&self, now_ms: u64, s: &GroupSettings) -> Option<GroupChange> {
        if !s.enabled {
            return None;
        }
        let candidates = self.tracks.iter().filter(|(_, t)| t.movable && now_ms >= t.left_alone_until);
        for (name, t) in candidates {
            if t.shared {
                if let Some(k) = t.keys.filter(|k| *k >= s.split_min_keys) {
                    return Some(GroupChange::Split {
                        name: name.clone(),
                        reason: format!("{k} keys, at least {} (placement.split_min_keys)", s.split_min_keys),
                    });
                }
                if let Some(b) = t.bytes.filter(|b| *b >= s.split_min_bytes) {
                    return Some(GroupChange::Split {
                        name: name.clone(),
                        reason: format!("{b} bytes, at least {} (placement.split_min_bytes)", s.split_min_bytes),
                    });
                }
                if let (Some(since), Some(rate)) = (t.busy_since, t.rate) {
                    if now_ms.saturating_sub(since) >= s.split_sustain_ms {
                        return Some(GroupChange::Split {
                            name: name.clone(),
                            reason: format!(
                                "{rate} writes/min for {} s, at least {} (placement.split_min_writes_per_min)",
                                now_ms.saturating_sub(since) / 1000,
                                s.split_min_writes_per_min
                            ),
                        });
                    }
                }
            } else if let Some(since) = t.quiet_since {
                if now_ms.saturating_sub(since) >= s.merge_quiet_ms {
                    return Some(GroupChange::Merge {
                        name: name.clone(),
                        reason: format!(
                            "quiet for {} s: {} keys of {} bytes, {} writes/min and {} reads/min, at most {}, {}, {} and {} (placement.merge_max_keys, merge_max_bytes, merge_max_writes_per_min, merge_max_reads_per_min)",
                            now_ms.saturating_sub(since) / 1000,
                            t.keys.unwrap_or(0),
                            t.bytes.unwrap_or(0),
                            t.rate.unwrap_or(0),
                            t.read_rate.unwrap_or(0),
                            s.merge_max_keys,
                            s.merge_max_bytes,
                            s.merge_max_writes_per_min,
                            s.merge_max_reads_per_min
                        ),
                    });
                }
            }
        }
        None
    }

    /// A change of `name` was refused or failed at `now_ms`: it is left
    /// alone for [`GroupSettings::retry_after_ms`].
    pub fn failed(&mut self, name: &str, now_ms: u64, s: &GroupSettings) {
        if let Some(t) = self.tracks.get_mut(name) {
            t.left_alone_until = now_ms + s.retry_after_ms;
        }
    }

    /// Namespaces tracked.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(name: &str, shared: bool, keys: Option<u64>, writes: u64) -> Observation {
        Observation { name: name.into(), shared, movable: true, keys, bytes: keys.map(|k| k * 100), writes, reads: 0 }
    }

    const ROUND: u64 = 10_000;

    /// Runs rounds every 10 s from `start` while `f(round)` gives the
    /// observations; the first change planned and when.
    fn run(
        t: &mut GroupTracker,
        s: &GroupSettings,
        start: u64,
        rounds: u64,
        f: impl Fn(u64) -> Vec<Observation>,
    ) -> Option<(u64, GroupChange)> {
        for i in 0..rounds {
            let now = start + i * ROUND;
            t.observe(now, &f(i), s);
            if let Some(c) = t.plan(now, s) {
                return Some((now, c));
            }
        }
        None
    }

    #[test]
    fn a_quiet_small_namespace_is_merged_after_the_quiet_period_and_not_before() {
        let s = GroupSettings::default();
        let mut t = GroupTracker::default();
        // 2 writes a round = 12 a minute: quiet.
        let got = run(&mut t, &s, 1_000, 200, |i| vec![obs("/q/", false, Some(10), 2 * i)]);
        let (at, change) = got.expect("merged");
        assert!(matches!(change, GroupChange::Merge { ref name, .. } if name == "/q/"), "{change:?}");
        // Quiet from the second round (the first gives no rate).
        assert_eq!(at - (1_000 + ROUND), s.merge_quiet_ms);
    }

    #[test]
    fn writes_or_keys_above_the_merge_bounds_keep_a_group() {
        let s = GroupSettings::default();
        let mut t = GroupTracker::default();
        // 10 writes a round = 60 a minute.
        assert_eq!(run(&mut t, &s, 1_000, 200, |i| vec![obs("/w/", false, Some(10), 10 * i)]), None);
        let mut t = GroupTracker::default();
        assert_eq!(run(&mut t, &s, 1_000, 200, |_| vec![obs("/k/", false, Some(1_001), 0)]), None);
        // 200 reads a round = 1,200 a minute: read a lot, it keeps its group.
        let mut t = GroupTracker::default();
        let read = |i: u64| Observation { reads: 200 * i, ..obs("/r/", false, Some(10), 0) };
        assert_eq!(run(&mut t, &s, 1_000, 200, |i| vec![read(i)]), None);
        // A burst in the middle restarts the quiet period.
        let mut t = GroupTracker::default();
        let got = run(&mut t, &s, 1_000, 200, |i| vec![obs("/b/", false, Some(10), if i < 30 { 0 } else { 1_000 })]);
        let (at, _) = got.expect("merged after the burst");
        assert_eq!(at - (1_000 + 31 * ROUND), s.merge_quiet_ms, "quiet counted from the round after the burst");
    }

    #[test]
    fn a_shared_namespace_splits_for_size_at_once_and_for_writes_only_when_they_last() {
        let s = GroupSettings::default();
        let mut t = GroupTracker::default();
        let got = run(&mut t, &s, 1_000, 3, |_| vec![obs("/big/", true, Some(5_000), 0)]);
        assert!(matches!(got, Some((1_000, GroupChange::Split { .. }))), "{got:?}");
        // 300 writes a round = 1,800 a minute: a burst of three rounds
        // does not split …
        let mut t = GroupTracker::default();
        let burst = |i: u64| if (1..=3).contains(&i) { 300 * i } else { 900 };
        assert_eq!(run(&mut t, &s, 1_000, 100, |i| vec![obs("/hot/", true, Some(10), burst(i))]), None);
        // … a steady rate does, once it lasted split_sustain_ms.
        let mut t = GroupTracker::default();
        let (at, change) = run(&mut t, &s, 1_000, 100, |i| vec![obs("/hot/", true, Some(10), 300 * i)]).expect("split");
        assert!(matches!(change, GroupChange::Split { ref reason, .. } if reason.contains("1800 writes/min")), "{change:?}");
        assert_eq!(at - (1_000 + ROUND), s.split_sustain_ms);
    }

    #[test]
    fn a_refused_change_is_left_alone_and_unmovable_namespaces_never_change() {
        let s = GroupSettings::default();
        let mut t = GroupTracker::default();
        t.observe(1_000, &[obs("/big/", true, Some(9_000), 0)], &s);
        assert!(t.plan(1_000, &s).is_some());
        t.failed("/big/", 1_000, &s);
        assert_eq!(t.plan(1_000 + s.retry_after_ms - 1, &s), None);
        assert!(t.plan(1_000 + s.retry_after_ms, &s).is_some());
        let mut pinned = obs("/pinned/", true, Some(9_000), 0);
        pinned.movable = false;
        let mut t = GroupTracker::default();
        assert_eq!(run(&mut t, &s, 1_000, 100, |_| vec![pinned.clone()]), None);
        let off = GroupSettings { enabled: false, ..GroupSettings::default() };
        let mut t = GroupTracker::default();
        assert_eq!(run(&mut t, &off, 1_000, 100, |_| vec![obs("/big/", true, Some(9_000), 0)]), None);
    }

    #[test]
    fn a_namespace_just_merged_or_split_starts_over() {
        let s = GroupSettings::default();
        let mut t = GroupTracker::default();
        t.observe(1_000, &[obs("/n/", false, Some(10), 0)], &s);
        t.observe(11_000, &[obs("/n/", false, Some(10), 0)], &s);
        // Merged: now shared, with a count the split bound is far above.
        t.observe(21_000, &[obs("/n/", true, None, 0)], &s);
        assert_eq!(t.plan(21_000, &s), None);
        // Dropped: forgotten.
        t.observe(31_000, &[], &s);
        assert!(t.is_empty());
    }

    #[test]
    fn bytes_count_too_few_large_keys_keep_a_group_and_split_a_shared_namespace() {
        let s = GroupSettings::default();
        // Ten keys of large values, above merge_max_bytes: not merged.
        let mut t = GroupTracker::default();
        let heavy = Observation { bytes: Some(s.merge_max_bytes + 1), ..obs("/blobs/", false, Some(10), 0) };
        assert_eq!(run(&mut t, &s, 1_000, 200, |_| vec![heavy.clone()]), None);
        // Bytes not read yet: no merge on keys alone.
        let mut t = GroupTracker::default();
        let unknown = Observation { bytes: None, ..obs("/n/", false, Some(10), 0) };
        assert_eq!(run(&mut t, &s, 1_000, 200, |_| vec![unknown.clone()]), None);
        // Shared with ten keys past split_min_bytes: split at once, saying why.
        let mut t = GroupTracker::default();
        let grown = Observation { bytes: Some(s.split_min_bytes), ..obs("/blobs/", true, Some(10), 0) };
        let got = run(&mut t, &s, 1_000, 3, |_| vec![grown.clone()]);
        assert!(
            matches!(got, Some((1_000, GroupChange::Split { ref reason, .. })) if reason.contains("placement.split_min_bytes")),
            "{got:?}"
        );
    }

    #[test]
    fn the_byte_thresholds_must_leave_a_gap_too() {
        let bad = GroupSettings { split_min_bytes: 1 << 20, ..GroupSettings::default() };
        assert!(bad.validate().unwrap_err().contains("split_min_bytes"));
    }

    #[test]
    fn the_thresholds_must_leave_a_gap() {
        assert!(GroupSettings::default().validate().is_ok());
        let bad = GroupSettings { split_min_keys: 1_000, ..GroupSettings::default() };
        assert!(bad.validate().unwrap_err().contains("merged and split in turn"));
        let bad = GroupSettings { split_min_writes_per_min: 30, ..GroupSettings::default() };
        assert!(bad.validate().is_err());
    }
}

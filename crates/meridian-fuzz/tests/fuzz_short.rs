//! A short, fixed-seed fuzz run of every target, for CI: no input may
//! panic, break a target's invariant, or hold more than 64 MiB of heap.
//!
//! A failing test prints each failure with its seed, iteration, minimized
//! input (hex) and the command that replays it; the inputs are saved under
//! `$CARGO_TARGET_DIR/fuzz-failures/` (or `target/fuzz-failures/`).
//! Longer runs: `cargo run -p meridian-fuzz -- --help` (see the crate docs).

use std::time::Duration;

use meridian_fuzz::harness::{run_target, RunConfig};
use meridian_fuzz::{known, targets, CountingAlloc, FailureKind, Target, Verdict};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SEED: u64 = 20_240_601;
/// Inputs per target: a few seconds in all in a debug build.
const INPUTS: u64 = 5_000;

fn fuzz(name: &str) {
    let target = targets::by_name(name).expect("known target");
    let mut cfg = RunConfig::new(SEED, INPUTS);
    cfg.progress_every = Duration::from_secs(3600);
    let report = run_target(target.as_ref(), &cfg, &mut |_| {}, &mut |_| {});
    eprintln!("{}", report.summary_line());
    assert!(report.alloc_checked, "the counting allocator must be installed, or the heap bound checks nothing");
    let mut unexpected = Vec::new();
    for f in &report.failures {
        match known::classify(name, f) {
            Some(k) => eprintln!("  known finding {} ({} inputs): {}", k.id, f.occurrences, f.kind.signature()),
            None => unexpected.push(f.describe()),
        }
    }
    assert!(unexpected.is_empty(), "{name}: {} new distinct failure(s):\n{}", unexpected.len(), unexpected.join("\n"));
    assert!(report.accepted > 0 && report.rejected > 0, "{name}: mutation reaches both outcomes: {}", report.summary_line());
}

#[test]
fn peer_frame_decoding_never_panics_and_stays_bounded() {
    fuzz("peer-frame");
}

#[test]
fn raft_message_parsing_never_panics_and_stays_bounded() {
    fuzz("raft-message");
}

/// Known findings F1 and F3 (see `meridian_fuzz::known`): checksummed records with edge
/// values make `PeerStorage::open` panic or accept a log raft-rs cannot
/// handle. Any other failure fails this test.
#[test]
fn stored_records_are_errors_not_panics() {
    fuzz("storage-records");
}

/// Known findings F1–F7 (see `meridian_fuzz::known`): `Store::open` on checksummed but
/// inconsistent state panics, in Meridian (F1, F2) or in raft-rs on state
/// `PeerStorage::open` let through (F3–F7). Any other failure fails this
/// test.
#[test]
fn store_open_on_corrupt_state_is_an_error_not_a_panic() {
    fuzz("store-open");
}

#[test]
fn snapshot_payloads_are_errors_not_panics() {
    fuzz("snapshot-payload");
}

#[test]
fn kv_commands_never_panic_and_failed_ones_change_nothing() {
    fuzz("kv-command");
}

#[test]
fn kv_queries_never_panic() {
    fuzz("kv-query");
}

#[test]
fn etcd_requests_decode_without_panics() {
    fuzz("etcd-requests");
}

#[test]
fn gossip_packets_are_checked_and_decoded_without_panics() {
    fuzz("gossip-packet");
}

// ---- the harness catches what it claims to ---------------------------------

/// A decoder with both bugs the harness exists for: it trusts a length
/// prefix when allocating, and panics on a zero tag.
struct TrustingDecoder;

impl Target for TrustingDecoder {
    fn name(&self) -> &'static str {
        "self-test"
    }
    fn describe(&self) -> &'static str {
        "a deliberately broken decoder"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![vec![1, 4, 0, 0, 0, b'a', b'b', b'c', b'd']]
    }
    fn is_protobuf(&self) -> bool {
        false
    }
    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let Some((&tag, rest)) = input.split_first() else { return Ok(Verdict::Rejected) };
        if tag == 0 {
            panic!("zero tag");
        }
        let Some(len) = rest.get(..4) else { return Ok(Verdict::Rejected) };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        // The bug: trusts `len` (capped at 256 MiB so that a machine
        // without overcommit does not abort the test instead).
        let mut buf = Vec::with_capacity(len.min(256 << 20));
        buf.extend_from_slice(rest.get(4..).unwrap_or_default());
        std::hint::black_box(&buf);
        Ok(Verdict::Accepted)
    }
}

#[test]
fn harness_reports_giant_allocations_and_panics_with_replayable_inputs() {
    let mut cfg = RunConfig::new(SEED, 300);
    cfg.out_dir = std::env::temp_dir().join(format!("meridian-fuzz-self-test-{}", std::process::id()));
    let report = run_target(&TrustingDecoder, &cfg, &mut |_| {}, &mut |_| {});
    let alloc = report.failures.iter().find(|f| matches!(f.kind, FailureKind::Alloc { .. })).expect("a giant allocation is caught");
    let panic = report.failures.iter().find(|f| matches!(f.kind, FailureKind::Panic { .. })).expect("a panic is caught");
    assert!(panic.kind.signature().contains("zero tag"), "{}", panic.kind.signature());
    for f in [alloc, panic] {
        assert!(f.minimized.len() <= f.input.len());
        assert_eq!(
            meridian_fuzz::run_one(&TrustingDecoder, &f.minimized, cfg.max_alloc_bytes).err().map(|k| k.signature()),
            Some(f.kind.signature())
        );
        let saved = std::fs::read(f.saved.last().expect("saved")).expect("saved file");
        assert_eq!(saved, f.minimized, "the saved file replays the failure");
        assert!(f.describe().contains(&format!("--seed {SEED} --start {}", f.iteration)));
    }
    let _ = std::fs::remove_dir_all(&cfg.out_dir);
}

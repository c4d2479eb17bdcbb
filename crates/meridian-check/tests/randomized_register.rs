//! Histories generated from a simulated sequential register are always
//! linearizable; corrupting one read must (mostly) be caught.

use meridian_check::models::{Register, RegisterInput as In, RegisterOutput as Out};
use meridian_check::{check, check_partitioned, Budget, CheckResult, History, Operation};
use meridian_codes::seeded::SplitMix64;

const KEYS: [&str; 3] = ["a", "b", "c"];

/// `n` operations; the i-th takes effect at time 100·(i+3) on a sequential
/// register, and its call and return are pushed up to 250 units either way,
/// so each overlaps about five neighbours. Written values are unique. One in
/// twenty responses is lost (the operation still took effect).
fn generate(seed: u64, n: u64) -> History<In, Out> {
    let mut rng = SplitMix64::new(seed);
    let mut values = std::collections::HashMap::new();
    let mut ops = Vec::new();
    for i in 0..n {
        let key = KEYS[rng.below(3) as usize].to_owned();
        let current = values.get(&key).copied();
        let (input, output) = match rng.below(3) {
            0 => (In::Read { key }, Out::Read(current)),
            1 => {
                values.insert(key.clone(), i);
                (In::Write { key, value: i }, Out::Write)
            }
            _ => {
                let expected = if rng.below(2) == 0 { current } else { Some(rng.below(i + 1)) };
                let swaps = expected == current;
                if swaps {
                    values.insert(key.clone(), i);
                }
                (In::Cas { key, expected, new: i }, Out::Cas(swaps))
            }
        };
        let effect = 100 * (i + 3);
        let (call, ret) = (effect - rng.below(250), effect + rng.below(250));
        ops.push(if rng.below(20) == 0 {
            Operation::unknown(i % 5, input, call)
        } else {
            Operation::completed(i % 5, input, output, call, ret)
        });
    }
    History::from(ops)
}

/// The value an operation certainly left in its register if it completed.
fn wrote(op: &Operation<In, Out>) -> Option<u64> {
    match (&op.input, &op.output) {
        (In::Write { value, .. }, Some(_)) => Some(*value),
        (In::Cas { new, .. }, Some(Out::Cas(true))) => Some(*new),
        _ => None,
    }
}

/// Replaces a random completed read's result with another value once held
/// by that key (or absent). Returns whether the new result is provably stale:
/// its write completed before another completed write to the key was
/// invoked, which completed before the read was invoked.
fn corrupt_one_read(history: &mut History<In, Out>, rng: &mut SplitMix64) -> Option<bool> {
    let reads: Vec<usize> = (0..history.ops.len()).filter(|&i| matches!(history.ops[i].output, Some(Out::Read(_)))).collect();
    let r = reads[rng.below(reads.len() as u64) as usize];
    let (key, read_call) = (history.ops[r].input.key().to_owned(), history.ops[r].call);
    let Some(Out::Read(seen)) = history.ops[r].output else { unreachable!() };
    let writers: Vec<&Operation<In, Out>> =
        history.ops.iter().filter(|op| op.input.key() == key && !matches!(op.input, In::Read { .. })).collect();
    let mut candidates: Vec<Option<u64>> = writers.iter().filter_map(|op| wrote(op).map(Some)).collect();
    candidates.push(None);
    candidates.retain(|&v| v != seen);
    if candidates.is_empty() {
        return None;
    }
    let forged = candidates[rng.below(candidates.len() as u64) as usize];
    let origin_ret = match forged {
        Some(v) => writers.iter().find(|op| wrote(op) == Some(v)).and_then(|op| op.ret),
        None => Some(0), // "absent" holds from time 0
    };
    let provably_stale = origin_ret.is_some_and(|origin_ret| {
        writers.iter().any(|w| wrote(w).is_some() && w.call > origin_ret && w.ret.is_some_and(|ret| ret < read_call))
    });
    history.ops[r].output = Some(Out::Read(forged));
    Some(provably_stale)
}

#[test]
fn generated_histories_pass_and_corrupted_reads_are_caught() {
    let (mut mutated, mut caught, mut stale) = (0, 0, 0);
    for seed in 0..60 {
        let mut history = generate(seed, 90);
        let verdict = check_partitioned(&Register, &history, Budget::default()).unwrap();
        assert_eq!(verdict, CheckResult::Ok, "seed {seed}: a sequential execution was rejected");
        let mut rng = SplitMix64::new(seed ^ 0xdead_beef);
        let Some(provably_stale) = corrupt_one_read(&mut history, &mut rng) else { continue };
        mutated += 1;
        let verdict = check_partitioned(&Register, &history, Budget::default()).unwrap();
        assert!(!verdict.is_unknown(), "seed {seed}: budget exhausted on a small history");
        if provably_stale {
            stale += 1;
            let CheckResult::Violation(v) = &verdict else { panic!("seed {seed}: provably stale read not caught") };
            assert!(KEYS.contains(&v.partition.as_str()));
        }
        caught += u32::from(verdict.is_violation());
        assert_eq!(check(&Register, &history, Budget::default()).unwrap().is_violation(), verdict.is_violation(), "seed {seed}");
    }
    eprintln!("mutated {mutated}, caught {caught}, provably stale {stale}");
    assert!(stale >= 20, "too few provably stale mutations to mean anything: {stale}");
    assert!(caught * 10 >= mutated * 8, "only {caught} of {mutated} corrupted histories caught");
}

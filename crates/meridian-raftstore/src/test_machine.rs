//! A small state machine for the simulation and benchmarks: a register
//! store plus a hash chain over every applied command, so two replicas at
//! the same applied index can be compared in one value.
//!
//! Commands: `P <key> <value>` (put; answers the previous value) and
//! anything else (answers `ERR`). Queries: a key (answers its value) or
//! [`CHAIN_KEY`] (the hash chain).

use meridian_storage::{keys, Cf, Engine, StorageResult};

use crate::state_machine::{ApplyContext, StateMachine};

/// The key under which the machine keeps its hash chain (the value a
/// query for it answers, 8 bytes little-endian). Commands cannot write it.
pub const CHAIN_KEY: &[u8] = b"\x00chain";

/// The register store (see the module docs). Keeps no in-memory state: all
/// of it is in the range's data.
#[derive(Default)]
pub struct RegisterMachine;

/// The command that puts `value` at `key` (`key` must be non-empty and
/// hold no space: the first space ends it).
pub fn put_command(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(3 + key.len() + value.len());
    c.extend_from_slice(b"P ");
    c.extend_from_slice(key);
    c.push(b' ');
    c.extend_from_slice(value);
    c
}

/// FNV-1a, enough to tell two different histories apart in tests.
fn chain(prev: u64, index: u64, cmd: &[u8]) -> u64 {
    let mut h = prev ^ 0xcbf2_9ce4_8422_2325;
    for b in index.to_le_bytes().iter().chain(cmd) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn read_u64(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

impl StateMachine for RegisterMachine {
    fn apply(&mut self, ctx: &mut ApplyContext<'_>, index: u64, command: &[u8]) -> Vec<u8> {
        let prev = read_u64(ctx.get(CHAIN_KEY).unwrap_or(None));
        ctx.put(CHAIN_KEY, &chain(prev, index, command).to_le_bytes());
        let Some(rest) = command.strip_prefix(b"P ") else { return b"ERR".to_vec() };
        let Some(space) = rest.iter().position(|b| *b == b' ') else { return b"ERR".to_vec() };
        let (key, value) = (&rest[..space], &rest[space + 1..]);
        if key.is_empty() || key == CHAIN_KEY {
            return b"ERR".to_vec();
        }
        let old = ctx.get(key).unwrap_or(None).unwrap_or_default();
        ctx.put(key, value);
        old
    }

    fn reload(&mut self, _engine: &dyn Engine, _namespace_id: u64) -> StorageResult<()> {
        Ok(())
    }

    fn read(&self, engine: &dyn Engine, namespace_id: u64, query: &[u8]) -> Vec<u8> {
        engine.get(Cf::Data, &keys::data_key(namespace_id, query)).ok().flatten().unwrap_or_default()
    }
}

/// The chain value of a replica, for comparing replicas.
pub fn chain_of(engine: &dyn Engine, range_id: u64) -> u64 {
    read_u64(engine.get(Cf::Data, &keys::data_key(range_id, CHAIN_KEY)).ok().flatten())
}

//! raft-rs logs through slog; forward it to `tracing` so one subscriber
//! sees everything, with the range and node ids attached.

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

struct TracingDrain;

struct Fields(String);

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Nothing is formatted for a level nobody listens to: raft-rs logs
        // every message it sends and receives at debug, with the message.
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::enabled!(target: "raft", tracing::Level::ERROR),
            slog::Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            slog::Level::Info | slog::Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            slog::Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut f = Fields(String::new());
        let _ = record.kv().serialize(record, &mut f);
        let _ = values.serialize(record, &mut f);
        let msg = record.msg();
        // raft-rs reports routine elections at info; keep those at debug so
        // thousands of ranges do not flood operators' logs.
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}{}", f.0),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", f.0),
            slog::Level::Info | slog::Level::Debug => tracing::debug!(target: "raft", "{msg}{}", f.0),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{}", f.0),
        }
        Ok(())
    }
}

pub(crate) fn raft_logger(node_id: u64, range_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("node" => node_id, "range" => range_id))
}

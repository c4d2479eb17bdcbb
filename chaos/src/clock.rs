//! The run's one time base: microseconds since the run started, on the
//! monotonic clock, shared by every history so call/return intervals of
//! different clients compare.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    start: Instant,
}

impl RunClock {
    pub fn start() -> RunClock {
        RunClock { start: Instant::now() }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A time of the run for reports: seconds with millisecond precision.
pub fn fmt_us(t: u64) -> String {
    format!("{:.3}s", t as f64 / 1e6)
}

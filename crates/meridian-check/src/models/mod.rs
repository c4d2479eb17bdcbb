//! Sequential specifications of the objects Meridian offers.

pub mod fenced_mutex;
pub mod register;

pub use fenced_mutex::{FenceMode, FencedMutex, Holder, MutexInput, MutexOutput, MutexState};
pub use register::{Register, RegisterInput, RegisterOutput};

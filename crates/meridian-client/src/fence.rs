//! [`Fence`]: the downstream half of fencing. A resource (a ledger, a
//! file, a queue) keeps the highest token it has accepted and refuses
//! writes that carry a smaller one — so a paused ex-holder, whose session
//! expired and whose lock went to someone else, cannot overwrite the new
//! holder's work.

use std::sync::Mutex;

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FenceError {
    #[error("stale fencing token {token}: a holder with token {highest} has already written")]
    Stale { token: i64, highest: i64 },
    #[error("fence store: {0}")]
    Store(String),
}

/// Where a fence keeps its highest token when it must survive restarts or
/// be shared: a compare-and-set on one number (a database row, a file).
pub trait FenceStore: Send + Sync {
    fn load(&self) -> Result<i64, String>;
    /// Sets `new` if the stored value is still `expected`.
    fn compare_and_set(&self, expected: i64, new: i64) -> Result<bool, String>;
}

struct Memory(Mutex<i64>);

impl FenceStore for Memory {
    fn load(&self) -> Result<i64, String> {
        Ok(*self.0.lock().map_err(|_| "poisoned".to_string())?)
    }

    fn compare_and_set(&self, expected: i64, new: i64) -> Result<bool, String> {
        let mut g = self.0.lock().map_err(|_| "poisoned".to_string())?;
        if *g != expected {
            return Ok(false);
        }
        *g = new;
        Ok(true)
    }
}

/// Keeps the highest fencing token seen and rejects older ones.
pub struct Fence {
    store: Box<dyn FenceStore>,
}

/// Compare-and-set attempts before giving up under contention.
const MAX_CAS_ATTEMPTS: u32 = 64;

impl Default for Fence {
    fn default() -> Self {
        Fence::in_memory()
    }
}

impl Fence {
    pub fn in_memory() -> Fence {
        Fence { store: Box::new(Memory(Mutex::new(0))) }
    }

    pub fn with_store(store: Box<dyn FenceStore>) -> Fence {
        Fence { store }
    }

    /// Admits a write carrying `token`: equal to or above the highest seen
    /// (which it becomes), else [`FenceError::Stale`]. Check and record are
    /// one step, so two writers cannot both pass with crossed tokens.
    pub fn admit(&self, token: i64) -> Result<(), FenceError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let highest = self.store.load().map_err(FenceError::Store)?;
            if token < highest {
                return Err(FenceError::Stale { token, highest });
            }
            if token == highest || self.store.compare_and_set(highest, token).map_err(FenceError::Store)? {
                return Ok(());
            }
        }
        Err(FenceError::Store("too much contention on the fence".into()))
    }

    pub fn highest(&self) -> Result<i64, FenceError> {
        self.store.load().map_err(FenceError::Store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_older_tokens_only() {
        let f = Fence::in_memory();
        f.admit(5).unwrap();
        f.admit(5).unwrap();
        assert_eq!(f.admit(4), Err(FenceError::Stale { token: 4, highest: 5 }));
        f.admit(9).unwrap();
        assert_eq!(f.admit(5), Err(FenceError::Stale { token: 5, highest: 9 }));
        assert_eq!(f.highest().unwrap(), 9);
    }

    #[test]
    fn concurrent_writers_never_cross() {
        let f = std::sync::Arc::new(Fence::in_memory());
        let hs: Vec<_> = (1..=8)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || (0..1000).filter(|_| f.admit(t).is_ok()).count())
            })
            .collect();
        let _: Vec<usize> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(f.highest().unwrap(), 8);
        assert!(f.admit(7).is_err());
    }
}

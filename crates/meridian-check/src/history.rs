//! What a test harness records: one [`Operation`] per client request.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::CheckError;

/// One client request as observed from outside the system.
///
/// Times are in any monotonic unit shared by the whole history. Intervals
/// are closed: an operation that returns at `t` and one invoked at `t` are
/// concurrent, so equal timestamps never produce a false violation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// The client (process) that issued the request; informational only.
    pub client: u64,
    /// What the client asked for.
    pub input: I,
    /// What the client was told, or `None` when the outcome is unknown (a
    /// timeout, a lost connection). Such an operation may take effect at any
    /// time after `call`, with any result, or never; `ret` is then ignored.
    pub output: Option<O>,
    /// Invocation time.
    pub call: u64,
    /// Return time; `None` when unknown, read as +infinity.
    pub ret: Option<u64>,
}

impl<I, O> Operation<I, O> {
    /// An operation that returned `output` at `ret`.
    pub fn completed(client: u64, input: I, output: O, call: u64, ret: u64) -> Self {
        Operation { client, input, output: Some(output), call, ret: Some(ret) }
    }

    /// An operation invoked at `call` whose outcome is unknown.
    pub fn unknown(client: u64, input: I, call: u64) -> Self {
        Operation { client, input, output: None, call, ret: None }
    }
}

/// A recorded history: operations in any order (the checker sorts them by
/// time). Saved and loaded as JSON so a failing chaos run can be re-checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History<I, O> {
    /// The operations; indices into this vector identify operations in
    /// [`Violation`](crate::Violation) reports and [`Partition`](crate::Partition)s.
    pub ops: Vec<Operation<I, O>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        History { ops: Vec::new() }
    }
}

impl<I, O> From<Vec<Operation<I, O>>> for History<I, O> {
    fn from(ops: Vec<Operation<I, O>>) -> Self {
        History { ops }
    }
}

impl<I, O> History<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an invocation whose outcome is not known yet and returns its
    /// index for [`History::complete`].
    pub fn invoke(&mut self, client: u64, input: I, call: u64) -> usize {
        self.ops.push(Operation::unknown(client, input, call));
        self.ops.len() - 1
    }

    /// Records the response to the invocation `id`.
    ///
    /// # Panics
    /// If `id` was not returned by [`History::invoke`] on this history.
    pub fn complete(&mut self, id: usize, output: O, ret: u64) {
        let op = &mut self.ops[id];
        op.output = Some(output);
        op.ret = Some(ret);
    }

    /// Checks the history is well-formed: no operation returns before it is
    /// invoked. The checks run this first.
    pub fn validate(&self) -> Result<(), CheckError> {
        for (index, op) in self.ops.iter().enumerate() {
            if let Some(ret) = op.ret.filter(|&ret| ret < op.call) {
                return Err(CheckError::ReturnBeforeCall { index, call: op.call, ret });
            }
        }
        Ok(())
    }
}

impl<I: Serialize + DeserializeOwned, O: Serialize + DeserializeOwned> History<I, O> {
    /// The history as pretty-printed JSON.
    pub fn to_json(&self) -> Result<String, CheckError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parses a history written by [`History::to_json`].
    pub fn from_json(json: &str) -> Result<Self, CheckError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Writes the history to `path` as JSON.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CheckError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()?).map_err(|source| CheckError::Io { path: path.into(), source })
    }

    /// Reads a history written by [`History::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CheckError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|source| CheckError::Io { path: path.into(), source })?;
        Self::from_json(&json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{RegisterInput as In, RegisterOutput as Out};

    #[test]
    fn save_then_load_round_trips() {
        let mut history = History::new();
        let w = history.invoke(1, In::Write { key: "k".into(), value: 7 }, 0);
        history.complete(w, Out::Write, 5);
        history.invoke(2, In::Cas { key: "k".into(), expected: Some(7), new: 8 }, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        history.save(&path).unwrap();
        assert_eq!(History::<In, Out>::load(&path).unwrap(), history);
        assert!(matches!(History::<In, Out>::load(dir.path().join("missing")), Err(CheckError::Io { .. })));
    }

    #[test]
    fn return_before_call_is_rejected() {
        let history = History::from(vec![Operation::completed(1, In::Read { key: "k".into() }, Out::Read(None), 5, 4)]);
        assert!(matches!(history.validate(), Err(CheckError::ReturnBeforeCall { index: 0, call: 5, ret: 4 })));
    }
}

//! What `idem keys` asks for, and the answer for a record that is not there.

use std::fmt;
use std::time::Duration;

use idem::core::record::RecordId;
use idem::core::scope::Scope;
use idem::core::store::StateFilter;

/// The record asked for does not exist: exit code 1.
#[derive(Debug)]
pub struct NotFound(pub String);

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

impl NotFound {
    /// No live record for `id`.
    pub(super) fn record(id: &RecordId) -> anyhow::Error {
        Self(format!(
            "no live record for key `{}` in scope {}",
            id.key(),
            id.scope()
        ))
        .into()
    }
}

/// `idem keys list`'s filter.
#[derive(Debug)]
pub(super) struct ListQuery {
    pub(super) state: StateFilter,
    pub(super) older_than: Option<Duration>,
    pub(super) scope: Option<Scope>,
    pub(super) limit: usize,
    pub(super) after: Option<String>,
}

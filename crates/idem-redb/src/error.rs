//! Why a store could not be opened, and how redb's errors become [`StoreError`]s.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;

use idem_core::store::StoreError;

/// The name this store gives in [`StoreError::Backend`].
pub(crate) const STORE: &str = "redb";

/// Why [`RedbStore::open`](crate::RedbStore::open) failed.
///
/// It reaches the caller as the source of a [`StoreError::Backend`], so it can be told
/// apart with `downcast_ref::<OpenError>()`.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process, or another [`RedbStore`](crate::RedbStore) in this one, has the
    /// directory's database open. redb locks the file for a single writer, so two
    /// idem instances cannot share a directory: give each its own, or share a
    /// networked store instead (R18).
    DirectoryInUse {
        /// The directory.
        dir: PathBuf,
        /// redb's answer.
        source: redb::DatabaseError,
    },
    /// The directory could not be created.
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// redb could not open or create the database file (unreadable, not a redb file,
    /// an older file format …).
    Database {
        /// The database file.
        path: PathBuf,
        /// redb's answer.
        source: redb::DatabaseError,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DirectoryInUse { dir, .. } => write!(
                f,
                "another idem process holds the store directory {} (its database is open elsewhere)",
                dir.display()
            ),
            Self::CreateDir { dir, .. } => {
                write!(f, "cannot create the store directory {}", dir.display())
            }
            Self::Database { path, .. } => {
                write!(f, "cannot open the database file {}", path.display())
            }
        }
    }
}

impl Error for OpenError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::DirectoryInUse { source, .. } | Self::Database { source, .. } => Some(source),
            Self::CreateDir { source, .. } => Some(source),
        }
    }
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        StoreError::backend(STORE, e)
    }
}

/// Any redb error, kept whole as the source of a [`StoreError::Backend`].
pub(crate) fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::backend(STORE, e.into())
}

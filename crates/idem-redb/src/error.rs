//! Why a store could not be opened, and how redb's errors become [`StoreError`]s.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;

use idem_core::record::Record;
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
    /// redb could not open or create the database file (an older file format, an I/O
    /// failure …).
    Database {
        /// The database file.
        path: PathBuf,
        /// redb's answer.
        source: redb::DatabaseError,
    },
    /// The database file cannot be read or created (permissions, a directory in its
    /// place …).
    Unreadable {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database file is there but empty (0 bytes): opening it would start an empty
    /// store and run every key again. Refused unless the store is opened `fresh`.
    Empty {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not idem's database: not a redb file, or a redb file without idem's
    /// format marker. Refused unless the store is opened `fresh`.
    Foreign {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        found: String,
    },
    /// The database file is a redb file that does not open: damaged. Refused unless the
    /// store is opened `fresh`.
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What redb said (or where it panicked).
        detail: String,
    },
}

impl OpenError {
    /// True for a file that is there but not a usable idem database (empty, foreign or
    /// damaged): what opening `fresh` moves aside.
    pub fn is_unusable_file(&self) -> bool {
        matches!(
            self,
            Self::Empty { .. } | Self::Foreign { .. } | Self::Damaged { .. }
        )
    }
}

/// What to tell an operator who wants the store started anyway.
const START_FRESH: &str = "restore it from a backup, or start with an empty store using \
                           file:DIR?fresh=true (the file is moved aside, not deleted)";

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
            Self::Unreadable { path, .. } => {
                write!(
                    f,
                    "cannot read or create the database file {}",
                    path.display()
                )
            }
            Self::Empty { path } => write!(
                f,
                "the database file {} is empty (0 bytes), so every stored record would be \
                 lost and its key run again; {START_FRESH}",
                path.display()
            ),
            Self::Foreign { path, found } => write!(
                f,
                "{} is not an idem database ({found}); {START_FRESH}",
                path.display()
            ),
            Self::Damaged { path, detail } => write!(
                f,
                "the database file {} is damaged ({detail}); {START_FRESH}",
                path.display()
            ),
        }
    }
}

impl Error for OpenError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::DirectoryInUse { source, .. } | Self::Database { source, .. } => Some(source),
            Self::CreateDir { source, .. } | Self::Unreadable { source, .. } => Some(source),
            Self::Empty { .. } | Self::Foreign { .. } | Self::Damaged { .. } => None,
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

/// Reads a stored value; a value that does not decode is an error, never a replay (R16).
pub(crate) fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
    Record::decode(bytes).map_err(|e| {
        // No key in the log: raw keys are the client's and never logged.
        tracing::error!(store = STORE, error = %e, "stored record does not decode");
        StoreError::Corrupt(e)
    })
}

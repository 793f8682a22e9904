//! Opening the database file without trusting it (R25): a missing file is a new store,
//! anything else must prove to be idem's database before a record is served from it.
//!
//! | what is at `DIR/records.redb` | [`open`] |
//! |---|---|
//! | nothing | creates the database (a new store) |
//! | idem's database | opens it |
//! | idem's database from before the format marker (only idem's tables) | opens it, records the marker |
//! | a 0-byte file | [`OpenError::Empty`]: every record would be lost without a word |
//! | not a redb file, or a redb file with other tables | [`OpenError::Foreign`] |
//! | a redb file that does not open (or panics redb) | [`OpenError::Damaged`] |
//!
//! With `fresh`, an empty, foreign or damaged file is moved aside (never deleted) and a
//! new database created in its place; idem's own database is opened as it is.
//!
//! redb trusts a file it shut down cleanly and may panic on one changed behind its back;
//! every step that reads the file runs under [`contained`], so such a panic is an
//! [`OpenError::Damaged`] instead of the end of the process.

use std::cell::RefCell;
use std::io::Read as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable as _, StorageError,
    TableHandle,
};

use crate::error::{OpenError, STORE};
use crate::layout::{EXPIRY, FORMAT, FORMAT_KEY, META, RECORDS};

/// The first bytes of every redb file (redb's file format: "redb", then bytes that catch
/// text-mode transfers, as PNG's do).
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Opens (or creates) idem's database at `path`, refusing a file that is not one; with
/// `fresh`, such a file is moved aside and a new database created instead.
pub(crate) fn open(dir: &Path, path: &Path, fresh: bool) -> Result<Database, OpenError> {
    match open_existing(dir, path) {
        Ok(Some(db)) => Ok(db),
        Ok(None) => create(dir, path),
        Err(e) if fresh && e.is_unusable_file() => {
            let aside = set_aside(path)?;
            tracing::warn!(
                store = STORE,
                error = %e,
                moved_to = %aside.display(),
                "fresh=true: the database file was not usable; moved it aside and started an empty store"
            );
            create(dir, path)
        }
        Err(e) => Err(e),
    }
}

/// The database at `path` if there is one and it is idem's; `None` when there is no file.
fn open_existing(dir: &Path, path: &Path) -> Result<Option<Database>, OpenError> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OpenError::Unreadable {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let unreadable = |source| OpenError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(unreadable)?.len();
    if len == 0 {
        return Err(OpenError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut magic = Vec::with_capacity(REDB_MAGIC.len());
    (&mut file)
        .take(REDB_MAGIC.len() as u64)
        .read_to_end(&mut magic)
        .map_err(unreadable)?;
    if magic != REDB_MAGIC {
        return Err(OpenError::Foreign {
            path: path.to_path_buf(),
            found: "it is not a redb database".into(),
        });
    }
    drop(file);

    let rolled_back = Arc::new(AtomicBool::new(false));
    let db = contained(|| {
        let mut builder = Builder::new();
        let flag = Arc::clone(&rolled_back);
        builder.set_repair_callback(move |session| {
            // redb calls back at 0.3 only when the newest commit failed its checksums
            // and the repair falls back to the one before.
            if (0.25..0.5).contains(&session.progress()) {
                flag.store(true, Ordering::Relaxed);
            }
        });
        builder.open(path)
    });
    let db = match db {
        Ok(Ok(db)) => db,
        Ok(Err(source)) => return Err(refused(dir, path, source)),
        Err(panic) => {
            return Err(OpenError::Damaged {
                path: path.to_path_buf(),
                detail: format!("redb failed reading it: {panic}"),
            });
        }
    };
    if rolled_back.load(Ordering::Relaxed) {
        tracing::error!(
            store = STORE,
            path = %path.display(),
            "the newest commit of the database did not verify and was rolled back: it was \
             torn by a crash mid-commit, or the file was damaged since (then the records of \
             its last write are gone; run idem check-store)"
        );
    }
    let owned = contained(|| claim_format(&db))
        .unwrap_or_else(|panic| Err(Refusal::Damaged(format!("redb failed reading it: {panic}"))));
    match owned {
        Ok(()) => Ok(Some(db)),
        Err(Refusal::Foreign(found)) => Err(OpenError::Foreign {
            path: path.to_path_buf(),
            found,
        }),
        Err(Refusal::Damaged(detail)) => Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail,
        }),
    }
}

/// Why an opened redb file is not served from.
enum Refusal {
    Foreign(String),
    Damaged(String),
}

/// Checks the format marker; a file with only idem's tables (written before the marker
/// existed, or created and never written) gets it now. Also makes sure both tables exist:
/// read transactions cannot open a table that was never created.
fn claim_format(db: &Database) -> Result<(), Refusal> {
    let damaged = |e: &dyn std::fmt::Display| Refusal::Damaged(e.to_string());
    let txn = db.begin_read().map_err(|e| damaged(&e))?;
    let names: Vec<String> = txn
        .list_tables()
        .map_err(|e| damaged(&e))?
        .map(|t| t.name().to_owned())
        .collect();
    let multimap = txn.list_multimap_tables().map_err(|e| damaged(&e))?.count();
    let has_meta = names.iter().any(|n| n == META.name());
    if has_meta {
        let meta = txn.open_table(META).map_err(|e| damaged(&e))?;
        let format = meta.get(FORMAT_KEY).map_err(|e| damaged(&e))?;
        match format.as_ref().map(|v| v.value()) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(Refusal::Foreign(format!(
                    "its format is `{}`, not `{FORMAT}` (written by another idem version?)",
                    other.escape_debug()
                )));
            }
            None => return Err(Refusal::Foreign("its format marker is missing".into())),
        }
    } else {
        let ours = [RECORDS.name(), EXPIRY.name()];
        let others: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !ours.contains(n))
            .collect();
        if !others.is_empty() || multimap > 0 {
            let mut found = others
                .iter()
                .take(5)
                .map(|n| format!("`{}`", n.escape_debug()))
                .collect::<Vec<_>>()
                .join(", ");
            if found.is_empty() {
                found = "multimap tables".into();
            }
            return Err(Refusal::Foreign(format!(
                "it is a redb database with tables idem never writes ({found})"
            )));
        }
    }
    drop(txn);
    init(db).map_err(|e| damaged(&e))
}

/// Creates the tables and the format marker (a no-op write for a database that has them).
fn init(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(RECORDS)?;
    txn.open_table(EXPIRY)?;
    {
        let mut meta = txn.open_table(META)?;
        if meta.get(FORMAT_KEY)?.is_none() {
            meta.insert(FORMAT_KEY, FORMAT)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// A new database at `path` (no file there, or it was just moved aside).
fn create(dir: &Path, path: &Path) -> Result<Database, OpenError> {
    // `create_new`: a file that appeared since the check is never initialised over.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| OpenError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
    let db = Builder::new()
        .create(path)
        .map_err(|source| refused(dir, path, source))?;
    init(&db).map_err(|e| OpenError::Damaged {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(db)
}

/// What redb's refusal to open `path` means.
fn refused(dir: &Path, path: &Path, source: DatabaseError) -> OpenError {
    match source {
        // redb locks the file for one writer; a second opener (another process or
        // another handle here) is refused at once instead of waiting.
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            OpenError::DirectoryInUse {
                dir: dir.to_path_buf(),
                source,
            }
        }
        source if is_damage(&source) => OpenError::Damaged {
            path: path.to_path_buf(),
            detail: source.to_string(),
        },
        source => OpenError::Database {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Renames `path` to a name beside it that says when and why; never deletes.
fn set_aside(path: &Path) -> Result<PathBuf, OpenError> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".unusable-{ms}"));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside).map_err(|source| OpenError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(aside)
}

/// True when redb's refusal means the file's bytes are wrong, not the environment
/// (permissions, a full disk, a lock).
fn is_damage(e: &DatabaseError) -> bool {
    match e {
        DatabaseError::Storage(StorageError::Corrupted(_)) | DatabaseError::RepairAborted => true,
        DatabaseError::Storage(StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        _ => false,
    }
}

thread_local! {
    /// The message of a panic inside [`contained`] on this thread, kept instead of printed.
    static CONTAINED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic into its message. While `f` runs, a panic on this thread is
/// not printed (startup reports it as one line); panics elsewhere print as before.
pub(crate) fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let kept = CONTAINED.with(|c| match c.borrow_mut().as_mut() {
                Some(messages) => {
                    let mut message = panic_message(info.payload());
                    if let Some(at) = info.location() {
                        message.push_str(&format!(" (at {}:{})", at.file(), at.line()));
                    }
                    messages.push(message);
                    true
                }
                None => false,
            });
            if !kept {
                previous(info);
            }
        }));
    });
    let outer = CONTAINED.with(|c| c.borrow_mut().replace(Vec::new()));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let messages = CONTAINED.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    result.map_err(|payload| {
        messages
            .and_then(|m| m.into_iter().next())
            .unwrap_or_else(|| panic_message(payload.as_ref()))
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    // One line: the message is part of a one-line startup error.
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_turns_a_panic_into_its_message_and_passes_values_through() {
        assert_eq!(contained(|| 7), Ok(7));
        let e = contained(|| -> u8 { panic!("index out of bounds: the len is 3") }).unwrap_err();
        assert!(
            e.starts_with("index out of bounds: the len is 3 (at "),
            "{e}"
        );
        // Nested: the inner panic is the inner call's.
        let outer = contained(|| contained(|| -> u8 { panic!("inner") }));
        assert!(matches!(outer, Ok(Err(m)) if m.starts_with("inner (at ")));
    }
}

//! [`RedbStore`]: the state machine of `idem_core::store::machine` applied inside redb
//! write transactions.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use idem_core::clock::{Clock, Millis, SystemClock};
use idem_core::record::{Record, RecordId, Snapshot};
use idem_core::store::machine::{self, Write};
use idem_core::store::{
    Claim, ClaimRequest, CorruptRecord, Finish, Lease, ListFilter, ListPage, Store, StoreError,
    WaitHub, Watch,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::error::{OpenError, STORE, backend, decode};
use crate::layout::{EXPIRY, FILE_NAME, RECORDS};
use crate::writer::{Durability, WriteTarget, Writer};

/// Settings of a [`RedbStore`].
#[derive(Clone, Debug)]
pub struct RedbStoreConfig {
    /// How often the background sweeper deletes expired records (default 10 s).
    pub sweep_interval: Duration,
    /// How many expired records one sweep transaction deletes at most (default 1000).
    /// Smaller batches hold the single writer for less time, so claims queue behind
    /// the sweeper for less long; a sweep runs as many batches as it needs.
    pub sweep_batch: usize,
    /// The time source for leases and expiry (default [`SystemClock`]).
    pub clock: Arc<dyn Clock>,
    /// Start with an empty store when the directory's database file is not usable (0
    /// bytes, not idem's, or damaged so it does not open): the file is moved aside
    /// (renamed `records.redb.unusable-<ms>`, never deleted) instead of refused with an
    /// [`OpenError`]. Every key it held may run again. A usable database is opened as
    /// it is. Default `false`; the store URL's `file:DIR?fresh=true`.
    pub fresh: bool,
}

impl Default for RedbStoreConfig {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_secs(10),
            sweep_batch: 1000,
            clock: Arc::new(SystemClock),
            fresh: false,
        }
    }
}

/// A durable, embedded [`Store`] in one redb file. Clones share one store.
///
/// See the [crate docs](crate) for an example and the guarantees.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: Database,
    dir: PathBuf,
    pub(crate) config: RedbStoreConfig,
    hub: WaitHub,
    writer: Writer,
}

impl RedbStore {
    /// Opens the store kept in `dir`, creating the directory and its database file
    /// ([`FILE_NAME`](crate::layout::FILE_NAME)) if missing.
    ///
    /// Starts the background sweeper when called inside a tokio runtime; it stops when
    /// the last clone of the store is dropped. The database file is closed (and its
    /// lock released) when the last clone is dropped and any sweep batch or operation
    /// still running on a blocking thread has finished.
    ///
    /// This blocks on file I/O (opening a large file after a crash runs redb's repair):
    /// call it at start-up, or inside `spawn_blocking`.
    ///
    /// A file that is there must be idem's database: an empty (0-byte), foreign or
    /// damaged file is refused (unless [`RedbStoreConfig::fresh`]), never silently
    /// replaced by an empty store, and a panic inside redb while reading it is reported
    /// as [`OpenError::Damaged`] (R25).
    ///
    /// # Errors
    ///
    /// A [`StoreError::Backend`] whose source is an [`OpenError`]:
    /// [`OpenError::DirectoryInUse`] when another process (or another `RedbStore` in
    /// this one) has the directory open; [`OpenError::Empty`], [`OpenError::Foreign`]
    /// or [`OpenError::Damaged`] for a file that is not a usable idem database;
    /// [`OpenError::CreateDir`], [`OpenError::Unreadable`] or [`OpenError::Database`]
    /// when the directory or file cannot be used.
    pub fn open(dir: impl AsRef<Path>, config: RedbStoreConfig) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| OpenError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = crate::open::open(&dir, &path, config.fresh)?;

        let (writer, writer_thread) = Writer::new();
        let inner = Arc::new(Inner {
            db,
            dir,
            config,
            hub: WaitHub::new(),
            writer,
        });
        writer_thread
            .spawn(Arc::downgrade(&inner))
            .map_err(|e| StoreError::backend(STORE, e))?;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&inner), inner.config.sweep_interval));
        }
        tracing::debug!(store = STORE, dir = %inner.dir.display(), "opened");
        Ok(Self { inner })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How many records are stored, live or not yet swept.
    pub async fn len(&self) -> Result<u64, StoreError> {
        self.blocking(|inner| inner.count(RECORDS)).await
    }

    /// True when no record is stored.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    /// How many entries the expiry index holds; equal to [`RedbStore::len`] unless
    /// the layout's invariant broke. For tests.
    #[doc(hidden)]
    pub async fn expiry_len(&self) -> Result<u64, StoreError> {
        self.blocking(|inner| inner.count(EXPIRY)).await
    }

    /// Runs `f` on a blocking thread: redb reads may touch the disk and every commit
    /// waits for fsync, which must not stall the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            // A panic inside redb (or a runtime shutting down) is an infrastructure
            // failure like any other: answer it as an error, so the engine fails closed.
            .map_err(|e| StoreError::backend(STORE, e))?
    }
}

impl WriteTarget for Inner {
    fn db(&self) -> &Database {
        &self.db
    }

    fn now_ms(&self) -> Millis {
        self.config.clock.now_ms()
    }
}

impl Inner {
    fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let now = self.config.clock.now_ms();
        Ok(self.read(id)?.filter(|r| r.is_live(now)))
    }

    /// The stored record of `id`, live or not, from a read transaction.
    fn read(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let records = txn.open_table(RECORDS).map_err(backend)?;
        match records.get(id.to_bytes().as_slice()).map_err(backend)? {
            Some(value) => Ok(Some(decode(value.value())?)),
            None => Ok(None),
        }
    }

    /// A claim answered from a read transaction, when the answer changes nothing: a
    /// replay, a mismatch, a duplicate in flight. `None` when the claim must write.
    /// Read transactions run side by side and never wait for a commit, so replays
    /// do not queue behind the fsyncs of new keys. Answering from a snapshot is as
    /// good as answering at the instant it was taken: the record was in that state.
    fn claim_without_writing(&self, req: &ClaimRequest) -> Result<Option<Claim>, StoreError> {
        let now = self.config.clock.now_ms();
        let existing = self.read(&req.id)?;
        Ok(match machine::claim(existing, req, now) {
            (answer, Write::Keep) => Some(answer),
            _ => None,
        })
    }

    /// One page of live records in id order: the table's own key order is the id order
    /// ([`RecordId::to_bytes`] is the 16 scope bytes, then the key), so the scan starts
    /// at the cursor (or the scope) and stops once the page is full.
    fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(backend)?;
        let now = self.config.clock.now_ms();
        let records = txn.open_table(RECORDS).map_err(backend)?;
        let after = filter.after.as_ref().map(RecordId::to_bytes);
        let scope = filter.scope.map(|s| s.as_bytes().to_vec());
        let start = match (&after, &scope) {
            (Some(a), Some(s)) if a.as_slice() < s.as_slice() => Bound::Included(s.as_slice()),
            (Some(a), _) => Bound::Excluded(a.as_slice()),
            (None, Some(s)) => Bound::Included(s.as_slice()),
            (None, None) => Bound::Unbounded,
        };
        let limit = filter.page_size();
        let mut found = Vec::new();
        // Entries whose id does not read, with how many entries came before each: they
        // cannot be a cursor, so each is reported on the page it falls within.
        let mut unreadable = Vec::new();
        for entry in records
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(backend)?
        {
            let (k, v) = entry.map_err(backend)?;
            let raw = k.value();
            // Past the scope's 16 bytes: compared raw, as a damaged id is still sorted.
            if scope
                .as_deref()
                .is_some_and(|s| raw.get(..16).unwrap_or(raw) > s)
            {
                break;
            }
            let id = match RecordId::from_bytes(raw) {
                Ok(id) => id,
                Err(why) => {
                    tracing::error!(store = STORE, error = %why, "a stored record id does not decode");
                    unreadable.push((found.len(), why));
                    continue;
                }
            };
            // A record that does not decode is reported, not a failure of the page: one
            // damaged record must not hide the others from on-call (R16).
            match decode(v.value()) {
                Ok(record) if filter.matches(&id, &record, now) => found.push((id, Ok(record))),
                Ok(_) => continue,
                Err(StoreError::Corrupt(why)) => found.push((id, Err(why))),
                Err(e) => return Err(e),
            }
            if found.len() > limit {
                break;
            }
        }
        let more = found.len() > limit;
        let mut page = ListPage::from_sorted_entries(found, filter);
        page.corrupt.extend(
            unreadable
                .into_iter()
                .filter(|&(before, _)| !more || before < limit)
                .map(|(_, why)| CorruptRecord { id: None, why }),
        );
        Ok(page)
    }

    fn count<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: redb::TableDefinition<'_, K, V>,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(table).map_err(backend)?;
        table.len().map_err(backend)
    }

    /// Deletes every expired record, one batch per write transaction.
    fn purge(&self) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let (n, more) = self.purge_batch()?;
            removed += n;
            if !more {
                return Ok(removed);
            }
        }
    }

    /// Deletes up to `sweep_batch` expired records in one write transaction. Answers
    /// how many records it deleted and whether more index entries may be due.
    fn purge_batch(&self) -> Result<(u64, bool), StoreError> {
        let batch = self.config.sweep_batch.max(1);
        let txn = self.db.begin_write().map_err(backend)?;
        let now = self.config.clock.now_ms();
        let mut removed = 0;
        let more = {
            let mut expiry = txn.open_table(EXPIRY).map_err(backend)?;
            let mut records = txn.open_table(RECORDS).map_err(backend)?;
            // Every entry due at or before `now`: keys sort by instant first, and
            // `(now + 1, [])` is the smallest key of the next millisecond. (At
            // `u64::MAX` ms, 584 million years out, the last millisecond is skipped.)
            let bound = now.saturating_add(1);
            let due = expiry
                .range(..(bound, &[][..]))
                .map_err(backend)?
                .take(batch)
                .map(|entry| {
                    let (k, _) = entry.map_err(backend)?;
                    let (at, id) = k.value();
                    Ok((at, id.to_vec()))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            for (at, id) in &due {
                let id = id.as_slice();
                expiry.remove((*at, id)).map_err(backend)?;
                let stored = records
                    .get(id)
                    .map_err(backend)?
                    .map(|value| Record::decode(value.value()));
                match stored {
                    // The record is gone already: the entry was stale.
                    None => {}
                    // Renewed or completed since the entry was written: never delete a
                    // live record; make sure its own deadline is indexed instead.
                    Some(Ok(record)) if record.is_live(now) => {
                        expiry.insert((record.ends_at(), id), ()).map_err(backend)?;
                    }
                    Some(Ok(_)) => {
                        records.remove(id).map_err(backend)?;
                        removed += 1;
                    }
                    // A damaged record past its indexed deadline would have been deleted
                    // had it been readable; deleting it frees its key instead of
                    // answering Corrupt for it forever.
                    Some(Err(e)) => {
                        tracing::warn!(store = STORE, error = %e, "sweeping an expired record that does not decode");
                        records.remove(id).map_err(backend)?;
                        removed += 1;
                    }
                }
            }
            due.len() == batch
        };
        txn.commit().map_err(backend)?;
        Ok((removed, more))
    }
}

/// The background sweeper (R14). It holds only a [`Weak`] reference, so it never keeps
/// the store (and its file lock) alive: it stops at the first tick after the last
/// handle is dropped.
async fn sweep(inner: Weak<Inner>, every: Duration) {
    // `interval` panics on zero; a zero setting means "as often as possible".
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut removed = 0;
        // One blocking task per batch, re-checking the handle each time, so a sweep
        // of a large backlog neither outlives the store nor blocks a thread for long.
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match tokio::task::spawn_blocking(move || strong.purge_batch()).await {
                Ok(Ok((n, more))) => {
                    removed += n;
                    if !more {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(store = STORE, error = %e, "sweep failed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(store = STORE, error = %e, "sweep task failed");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::debug!(store = STORE, removed, "swept expired records");
        }
    }
}

impl Store for RedbStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let read = req.clone();
        if let Some(answer) = self
            .blocking(move |inner| inner.claim_without_writing(&read))
            .await?
        {
            return Ok(answer);
        }
        let req = req.clone();
        self.inner
            .writer
            .apply(
                &req.id.clone(),
                Durability::UntilNextDurable,
                // The writer lends its record; a claim gets here only when the read
                // above found it missing or lapsed, so the copy is rare.
                move |r, now| machine::claim(r.cloned(), &req, now),
            )
            .await
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<Finish, StoreError> {
        let owned = lease.clone();
        self.inner
            .writer
            .apply(&lease.id, Durability::UntilNextDurable, move |r, now| {
                machine::renew(r, &owned, lease_for, now)
            })
            .await
    }

    async fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let (owned, snapshot) = (lease.clone(), snapshot.clone());
        let done = self
            .inner
            .writer
            .apply(&lease.id, Durability::Durable, move |r, now| {
                machine::complete(r, &owned, &snapshot, ttl, now)
            })
            .await?;
        // After the commit: a woken waiter re-claims and must find the snapshot.
        self.inner.hub.notify(&lease.id);
        Ok(done)
    }

    async fn release(&self, lease: &Lease) -> Result<Finish, StoreError> {
        let owned = lease.clone();
        let done = self
            .inner
            .writer
            .apply(&lease.id, Durability::UntilNextDurable, move |r, _| {
                machine::release(r, &owned)
            })
            .await?;
        self.inner.hub.notify(&lease.id);
        Ok(done)
    }

    async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let id = id.clone();
        self.blocking(move |inner| inner.lookup(&id)).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        let filter = filter.clone();
        self.blocking(move |inner| inner.list(&filter)).await
    }

    async fn delete(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let gone = self.inner.writer.delete(id).await?;
        // After the commit, as for a release: a woken waiter claims afresh.
        self.inner.hub.notify(id);
        Ok(gone)
    }

    fn watch(&self, id: &RecordId) -> Watch {
        self.inner.hub.watch(id)
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.blocking(Inner::purge).await
    }
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("dir", &self.inner.dir)
            .field("config", &self.inner.config)
            .field("hub", &self.inner.hub)
            .finish_non_exhaustive()
    }
}

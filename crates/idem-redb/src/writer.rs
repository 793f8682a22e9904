//! Group commit: one writer thread applies every transition that queued up while the
//! previous commit was being written, in a single write transaction, so concurrent
//! requests share one fsync instead of paying one each.
//!
//! Durability: no caller gets its answer before the commit that holds its write has
//! returned (R16). A batch is fsynced only when it holds a write that must survive a
//! crash ([`Durability::Durable`]: completions and deletions). Claims, renewals and
//! releases are [`Durability::UntilNextDurable`]: they commit without an fsync of their
//! own and reach the disk with the next durable commit. A crash loses only such writes,
//! and none of them was ever told to a client as a result: a lost claim or renewal is an
//! in-flight record whose owner died with the process (the retry runs again, as after
//! its lease, R11), and a lost release brings back an in-flight record that frees itself
//! when its lease ends. Atomicity is unchanged too: the transitions of a batch run
//! one after the other inside the transaction, each reading what the previous ones
//! wrote, exactly as if each had its own transaction in that order.
//!
//! A transition that fails before writing anything (its record does not decode, say)
//! fails alone. A failure while writing poisons the batch: the transaction is aborted
//! and every transition in it fails, so no half-applied write is ever committed.

use std::sync::Weak;

use idem_core::clock::Millis;
use idem_core::record::{Record, RecordId};
use idem_core::store::StoreError;
use idem_core::store::machine::Write;
use redb::{Database, ReadableTable, Table};
use tokio::sync::{mpsc, oneshot};

use crate::error::{STORE, backend, decode};
use crate::layout::{EXPIRY, RECORDS};

/// The most transitions one transaction takes; more wait for the next commit.
const MAX_BATCH: usize = 512;

/// A transition waiting for the writer: it runs inside the batch's transaction (or is
/// given `None` when the transaction could not start) and hands back what to tell its
/// caller once the commit's outcome is known.
type Job = Box<dyn FnOnce(Option<&mut Batch<'_>>) -> Reply + Send>;

/// Delivers one caller's answer, given how the batch's commit went.
type Reply = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// The sending side, kept by the store. Dropping it (with the last store handle)
/// stops the writer thread once the queue is empty.
#[derive(Debug)]
pub(crate) struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
}

/// Whether a transition's write must be on disk before its caller hears back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Fsynced before the answer: a completion or deletion, which a client is told of
    /// (R16).
    Durable,
    /// Committed without an fsync of its own; on disk with the next durable commit. For
    /// in-flight state, which dies with its owner anyway (R11).
    UntilNextDurable,
}

/// The open tables of one batch's write transaction.
pub(crate) struct Batch<'txn> {
    records: Table<'txn, &'static [u8], &'static [u8]>,
    expiry: Table<'txn, (u64, &'static [u8]), ()>,
    now: Millis,
    wrote: bool,
    /// A write of this batch must be fsynced before the answers go out.
    durable: bool,
    poisoned: Option<StoreError>,
}

impl Writer {
    /// The queue, and its receiving end to [`spawn`](WriterThread::spawn) once the
    /// store exists.
    pub(crate) fn new() -> (Self, WriterThread) {
        let (jobs, queue) = mpsc::unbounded_channel();
        (Self { jobs }, WriterThread { queue })
    }

    /// Applies `f` to the stored record of `id` in the next batch: `f` gets the record
    /// (if any) and the batch's clock reading and answers what to return and what to
    /// write. Resolves after the batch has committed (or failed).
    pub(crate) async fn apply<T: Send + 'static>(
        &self,
        id: &RecordId,
        durability: Durability,
        f: impl FnOnce(Option<&Record>, Millis) -> (T, Write) + Send + 'static,
    ) -> Result<T, StoreError> {
        let key = id.to_bytes();
        self.submit(move |batch| batch.transition(&key, durability, f))
            .await
    }

    /// Deletes the record of `id` in the next batch, whatever its state and even if it
    /// does not decode (on-call must be able to remove a damaged record). Answers the
    /// record it removed if it was live and readable.
    pub(crate) async fn delete(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let key = id.to_bytes();
        self.submit(move |batch| batch.remove(&key)).await
    }

    async fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |batch: Option<&mut Batch<'_>>| -> Reply {
            let outcome = batch.map(f);
            Box::new(move |commit: Result<(), &StoreError>| {
                let answer = match (outcome, commit) {
                    // Its own failure says the most (a record that does not decode).
                    (Some(Err(e)), _) => Err(e),
                    (Some(Ok(answer)), Ok(())) => Ok(answer),
                    (_, Err(e)) => Err(StoreError::backend(
                        STORE,
                        format!("the write transaction failed: {e}"),
                    )),
                    (None, Ok(())) => {
                        Err(StoreError::backend(STORE, "the transition was not applied"))
                    }
                };
                // The caller may have gone (its request was dropped): nothing to tell.
                let _ = tx.send(answer);
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::backend(STORE, "the store's writer has stopped"))?;
        rx.await
            .map_err(|_| StoreError::backend(STORE, "the store's writer stopped mid-batch"))?
    }
}

impl Batch<'_> {
    fn transition<T>(
        &mut self,
        key: &[u8],
        durability: Durability,
        f: impl FnOnce(Option<&Record>, Millis) -> (T, Write),
    ) -> Result<T, StoreError> {
        if let Some(e) = &self.poisoned {
            return Err(StoreError::backend(
                STORE,
                format!("an earlier write of this transaction failed: {e}"),
            ));
        }
        let existing = match self.records.get(key).map_err(backend)? {
            Some(value) => Some(decode(value.value())?),
            None => None,
        };
        let (answer, write) = f(existing.as_ref(), self.now);
        if write == Write::Keep {
            return Ok(answer);
        }
        self.wrote = true;
        self.durable |= durability == Durability::Durable;
        match self.write(key, existing.as_ref(), write) {
            Ok(()) => Ok(answer),
            Err(e) => {
                let failed = StoreError::backend(STORE, format!("writing a record failed: {e}"));
                self.poisoned = Some(e);
                Err(failed)
            }
        }
    }

    fn remove(&mut self, key: &[u8]) -> Result<Option<Record>, StoreError> {
        if let Some(e) = &self.poisoned {
            return Err(StoreError::backend(
                STORE,
                format!("an earlier write of this transaction failed: {e}"),
            ));
        }
        self.wrote = true;
        self.durable = true;
        match self.remove_raw(key) {
            Ok(gone) => Ok(gone.filter(|r| r.is_live(self.now))),
            Err(e) => {
                let failed = StoreError::backend(STORE, format!("deleting a record failed: {e}"));
                self.poisoned = Some(e);
                Err(failed)
            }
        }
    }

    fn remove_raw(&mut self, key: &[u8]) -> Result<Option<Record>, StoreError> {
        let Some(old) = self.records.remove(key).map_err(backend)? else {
            return Ok(None);
        };
        let Ok(record) = Record::decode(old.value()) else {
            // Unreadable, so its deadline is unknown: its index entry stays behind, and
            // the sweeper drops it when it finds no record there.
            tracing::warn!(store = STORE, "deleted a record that does not decode");
            return Ok(None);
        };
        drop(old);
        self.expiry
            .remove((record.ends_at(), key))
            .map_err(backend)?;
        Ok(Some(record))
    }

    /// Writes a record and keeps the expiry index in step: the old entry goes in the
    /// same transaction as the change, so the index never points at a deadline the
    /// record no longer has (see [`layout`](crate::layout)).
    fn write(
        &mut self,
        key: &[u8],
        existing: Option<&Record>,
        write: Write,
    ) -> Result<(), StoreError> {
        if let Some(old) = existing {
            self.expiry.remove((old.ends_at(), key)).map_err(backend)?;
        }
        match write {
            Write::Put(record) => {
                self.records
                    .insert(key, record.encode().as_slice())
                    .map_err(backend)?;
                self.expiry
                    .insert((record.ends_at(), key), ())
                    .map_err(backend)?;
            }
            Write::Delete => {
                self.records.remove(key).map_err(backend)?;
            }
            Write::Keep => {}
        }
        Ok(())
    }
}

/// What the writer thread writes to: the store's database, and the clock its deadlines
/// are read from.
pub(crate) trait WriteTarget: Send + Sync + 'static {
    /// The database every batch is one write transaction of.
    fn db(&self) -> &Database;
    /// Now, read once per batch with the writer lock held.
    fn now_ms(&self) -> Millis;
}

/// The receiving side of the queue.
pub(crate) struct WriterThread {
    queue: mpsc::UnboundedReceiver<Job>,
}

impl WriterThread {
    /// Starts the writer thread for the store behind `inner`. The thread holds only a
    /// [`Weak`] reference between batches, so it never keeps the database (and its
    /// file lock) open on its own; it ends when the [`Writer`] is dropped.
    pub(crate) fn spawn<T: WriteTarget>(self, inner: Weak<T>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("idem-redb-writer".into())
            .spawn(move || self.run(&inner))
            .map(drop)
    }

    /// Takes whatever has queued up, applies it in one transaction, commits, answers;
    /// until every sender is gone.
    fn run<T: WriteTarget>(mut self, inner: &Weak<T>) {
        let mut jobs = Vec::new();
        while let Some(first) = self.queue.blocking_recv() {
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match self.queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let Some(inner) = inner.upgrade() else {
                // Every handle is gone; dropping the jobs tells their callers.
                return;
            };
            // redb may panic on a file damaged behind its back. The batch's callers
            // then get an error (their replies are dropped) and the writer goes on, so
            // one damaged page does not stop every later write (R25).
            let batch = std::mem::take(&mut jobs);
            let Ok((replies, commit)) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_batch(&*inner, batch)
                }))
            else {
                tracing::error!(
                    store = STORE,
                    "a write batch panicked; its callers got an error"
                );
                continue;
            };
            // Let go of the store before answering: a caller that drops its last
            // handle on hearing back must find the database closed.
            drop(inner);
            for reply in replies {
                reply(commit.as_ref().map(|_| ()));
            }
        }
    }
}

/// One write transaction for `jobs`: the replies to deliver and how the commit went.
fn run_batch(inner: &impl WriteTarget, jobs: Vec<Job>) -> (Vec<Reply>, Result<(), StoreError>) {
    let not_run = |jobs: Vec<Job>, e: StoreError| {
        let replies = jobs.into_iter().map(|job| job(None)).collect();
        (replies, Err(e))
    };
    let mut txn = match inner.db().begin_write() {
        Ok(txn) => txn,
        Err(e) => return not_run(jobs, backend(e)),
    };
    // Read the clock once the writer lock is held, so deadlines follow commit order.
    let now = inner.now_ms();
    // The tables borrow the transaction: they close at the end of this block,
    // before it commits.
    let (replies, wrote, poisoned) = {
        let (records, expiry) = match txn
            .open_table(RECORDS)
            .and_then(|records| Ok((records, txn.open_table(EXPIRY)?)))
        {
            Ok(tables) => tables,
            Err(e) => return not_run(jobs, backend(e)),
        };
        let mut batch = Batch {
            records,
            expiry,
            now,
            wrote: false,
            durable: false,
            poisoned: None,
        };
        let replies: Vec<Reply> = jobs.into_iter().map(|job| job(Some(&mut batch))).collect();
        (
            replies,
            batch.wrote.then_some(batch.durable),
            batch.poisoned,
        )
    };
    let commit = match poisoned {
        // Dropping the transaction aborts it: nothing of this batch is written.
        Some(e) => Err(e),
        // Immediate (the default): the commit returns after fsync, so a client that got
        // a response finds its record after a crash (R16).
        None if wrote == Some(true) => txn.commit().map_err(backend),
        // Only in-flight state changed: no fsync of its own (see the module docs).
        None if wrote == Some(false) => match txn.set_durability(redb::Durability::None) {
            Ok(()) => txn.commit().map_err(backend),
            Err(e) => Err(backend(e)),
        },
        None => {
            // Nothing changed (mismatches, duplicates in flight): no fsync needed.
            if let Err(e) = txn.abort() {
                tracing::warn!(store = STORE, error = %e, "aborting a read-only transaction failed");
            }
            Ok(())
        }
    };
    (replies, commit)
}

//! `idem check-store --store URL`: reads every stored record and reports how many decode
//! and which do not (R16, R25).
//!
//! A record that does not decode (its checksum fails, it is truncated, it was sealed
//! under a key no longer listed …) is never replayed: the proxy answers its key with a
//! 503 problem and does not run it again. This command finds such records before a
//! client does, so on call can decide what to do with each (`idem keys delete` lets
//! its key run again). Opening the store is itself a check: a file: store whose
//! database file is empty, foreign or damaged is refused with one line.
//!
//! With encryption at rest the stored records are checked as stored (their checksum and
//! layout); the sealed responses inside are not opened, so no key list is needed.
//!
//! Exit code 0 when every record decodes, 1 when some do not ([`Damaged`]), 2 when the
//! store cannot be opened or read.

use std::fmt;

use anyhow::Context as _;
use clap::Args;
use idem::core::record::State;
use idem::core::store::{CorruptRecord, ListFilter, ListPage};
use idem::{AnyStore, Store};

/// Flags of `idem check-store`.
#[derive(Debug, Args)]
pub struct CheckStoreArgs {
    /// The store to check: file:DIR, redis://…, postgres://… (an embedded file: store
    /// cannot be checked while `idem serve` has it open).
    #[arg(long, env = "IDEM_STORE")]
    pub store: String,
    /// How many records one read asks the store for.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub page_size: u32,
}

/// What a walk over the store found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Live completed records that decode.
    pub completed: u64,
    /// Live in-flight records that decode.
    pub in_flight: u64,
    /// Records that do not decode, in id order.
    pub corrupt: Vec<CorruptRecord>,
}

impl Report {
    /// Records that decode.
    pub fn good(&self) -> u64 {
        self.completed + self.in_flight
    }

    fn add(&mut self, page: ListPage) {
        for (_, record) in &page.records {
            match record.state {
                State::Completed { .. } => self.completed += 1,
                State::InFlight { .. } => self.in_flight += 1,
            }
        }
        self.corrupt.extend(page.corrupt);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} good record(s) ({} completed, {} in flight), {} corrupt",
            self.good(),
            self.completed,
            self.in_flight,
            self.corrupt.len()
        )
    }
}

/// Some records do not decode: exit code 1.
#[derive(Debug)]
pub struct Damaged(pub Report);

impl fmt::Display for Damaged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stored record(s) do not decode; they are never replayed, and their keys \
             answer 503 until deleted (idem keys delete) or expired",
            self.0.corrupt.len()
        )
    }
}

impl std::error::Error for Damaged {}

/// Reads every live record of `store`, `page_size` at a time.
pub async fn walk<St: Store>(store: &St, page_size: usize) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut filter = ListFilter {
        limit: page_size,
        ..ListFilter::default()
    };
    loop {
        let page = store
            .list(&filter)
            .await
            .context("reading the store failed")?;
        let next = page.next.clone();
        report.add(page);
        match next {
            Some(after) => filter.after = Some(after),
            None => return Ok(report),
        }
    }
}

/// `idem check-store`: prints the report and each corrupt record's id on stdout.
pub async fn run(args: &CheckStoreArgs) -> anyhow::Result<()> {
    let store = AnyStore::from_url(&args.store)
        .await
        .with_context(|| format!("store `{}`", args.store))?;
    let report = walk(&store, args.page_size as usize).await?;
    for c in &report.corrupt {
        match &c.id {
            Some(id) => println!("corrupt: {id} ({})", c.why),
            None => println!("corrupt: (id unreadable) ({})", c.why),
        }
    }
    println!("{}: {report}", store.kind());
    if report.corrupt.is_empty() {
        Ok(())
    } else {
        Err(Damaged(report).into())
    }
}

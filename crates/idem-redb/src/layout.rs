//! The on-disk layout: one redb file with two tables.
//!
//! - [`RECORDS`] maps a record's id ([`RecordId::to_bytes`]) to the record
//!   ([`Record::encode`], a versioned codec that refuses anything it did not write, so a
//!   damaged value is reported as corrupt and never replayed).
//! - [`EXPIRY`] indexes the same records by the instant they stop counting
//!   ([`Record::ends_at`]: the lease deadline while in flight, the expiry once completed),
//!   so the sweeper finds expired records with one range scan instead of reading every
//!   record (R14).
//!
//! - [`META`] says whose file this is: [`FORMAT_KEY`] → [`FORMAT`]. A redb file without
//!   it (other than one holding only idem's two tables, written before the marker) is
//!   refused as foreign rather than served from (R25).
//!
//! Invariant: every write transaction that puts a record removes the record's old
//! [`EXPIRY`] entry and inserts the new one, and a delete removes both, so the index
//! never disagrees with the table after a commit. The sweeper still re-reads the record
//! before deleting it, so a stale entry can never remove a live record.
//!
//! [`RecordId::to_bytes`]: idem_core::record::RecordId::to_bytes
//! [`Record::encode`]: idem_core::record::Record::encode
//! [`Record::ends_at`]: idem_core::record::Record::ends_at

use redb::TableDefinition;

/// The name of the redb file inside the store's directory.
pub const FILE_NAME: &str = "records.redb";

/// Records by id: `RecordId::to_bytes()` → `Record::encode()`.
pub const RECORDS: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("records");

/// The expiry index: `(Record::ends_at(), RecordId::to_bytes())` → `()`.
///
/// Keys sort by instant first, so every entry due at or before `now` lies in the range
/// `..(now + 1, [])`.
pub const EXPIRY: TableDefinition<'static, (u64, &[u8]), ()> = TableDefinition::new("expiry");

/// The file's owner and format: [`FORMAT_KEY`] → [`FORMAT`].
pub const META: TableDefinition<'static, &str, &str> = TableDefinition::new("idem_meta");

/// The key of the format marker in [`META`].
pub const FORMAT_KEY: &str = "format";

/// The format marker: idem's redb layout, version 1 (these three tables; values are
/// `Record::encode` output, whose own version byte says how to read each).
pub const FORMAT: &str = "idem-redb/1";

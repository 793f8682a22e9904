//! The store's SQL, from the `.sql` files beside the crate, with the schema spliced in.
//!
//! Each file explains the race it closes and why it holds under READ COMMITTED. The
//! texts are built once per store; pooled connections prepare each once and cache it.

use crate::config::Schema;

const CLAIM: &str = include_str!("../sql/claim.sql");
const RENEW: &str = include_str!("../sql/renew.sql");
const COMPLETE: &str = include_str!("../sql/complete.sql");
const RELEASE: &str = include_str!("../sql/release.sql");
const LOOKUP: &str = include_str!("../sql/lookup.sql");
const LIST: &str = include_str!("../sql/list.sql");
const DELETE: &str = include_str!("../sql/delete.sql");
const SWEEP: &str = include_str!("../sql/sweep.sql");
const ADVANCE: &str = include_str!("../sql/advance.sql");
const RECOVERY: &str = include_str!("../sql/recovery.sql");
const SWEEP_RECOVERY: &str = include_str!("../sql/sweep_recovery.sql");

/// The statements of one store, for its schema.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) claim: String,
    pub(crate) renew: String,
    pub(crate) complete: String,
    pub(crate) release: String,
    pub(crate) lookup: String,
    pub(crate) list: String,
    pub(crate) delete: String,
    pub(crate) sweep: String,
    pub(crate) advance: String,
    pub(crate) recovery: String,
    pub(crate) sweep_recovery: String,
}

/// Replaces `{schema}` with the quoted schema name; the name was validated as a plain
/// identifier, so the result cannot break out of the identifier.
pub(crate) fn in_schema(sql: &str, schema: &Schema) -> String {
    sql.replace("{schema}", &schema.quoted())
}

impl Sql {
    pub(crate) fn new(schema: &Schema) -> Self {
        Self {
            claim: in_schema(CLAIM, schema),
            renew: in_schema(RENEW, schema),
            complete: in_schema(COMPLETE, schema),
            release: in_schema(RELEASE, schema),
            lookup: in_schema(LOOKUP, schema),
            list: in_schema(LIST, schema),
            delete: in_schema(DELETE, schema),
            sweep: in_schema(SWEEP, schema),
            advance: in_schema(ADVANCE, schema),
            recovery: in_schema(RECOVERY, schema),
            sweep_recovery: in_schema(SWEEP_RECOVERY, schema),
        }
    }
}

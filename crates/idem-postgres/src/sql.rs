//! The store's SQL, from the `.sql` files beside the crate, with the schema spliced in.
//!
//! Each file explains the race it closes and why it holds under READ COMMITTED. The
//! texts are built once per store; pooled connections prepare each once and cache it.

use crate::config::Schema;

const PEEK: &str = include_str!("../sql/peek.sql");
const INSERT: &str = include_str!("../sql/insert.sql");
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
    pub(crate) peek: String,
    pub(crate) insert: String,
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

/// The statement without its `--` comments and blank lines: the text each call hashes
/// to find its prepared statement, under a third of the commented file's length for the
/// claim. The statements hold no string literal with `--` in it (a test checks).
fn statement(sql: &str, schema: &Schema) -> String {
    let code: Vec<&str> = sql
        .lines()
        .map(|line| {
            line.split_once("--")
                .map_or(line, |(code, _)| code)
                .trim_end()
        })
        .filter(|line| !line.trim().is_empty())
        .collect();
    in_schema(&code.join("\n"), schema)
}

impl Sql {
    pub(crate) fn new(schema: &Schema) -> Self {
        Self {
            peek: statement(PEEK, schema),
            insert: statement(INSERT, schema),
            claim: statement(CLAIM, schema),
            renew: statement(RENEW, schema),
            complete: statement(COMPLETE, schema),
            release: statement(RELEASE, schema),
            lookup: statement(LOOKUP, schema),
            list: statement(LIST, schema),
            delete: statement(DELETE, schema),
            sweep: statement(SWEEP, schema),
            advance: statement(ADVANCE, schema),
            recovery: statement(RECOVERY, schema),
            sweep_recovery: statement(SWEEP_RECOVERY, schema),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_lose_only_their_comments() {
        let schema = Schema::new("idem").unwrap();
        let sql = Sql::new(&schema);
        for text in [
            &sql.peek,
            &sql.insert,
            &sql.claim,
            &sql.renew,
            &sql.complete,
            &sql.release,
            &sql.lookup,
            &sql.list,
            &sql.delete,
            &sql.sweep,
            &sql.advance,
            &sql.recovery,
            &sql.sweep_recovery,
        ] {
            assert!(!text.contains("--"), "{text}");
            assert!(!text.contains("{schema}"), "{text}");
            assert!(text.contains("\"idem\"."), "{text}");
        }
        // What is left of a statement is its code, line for line.
        assert!(sql.claim.starts_with("WITH now AS MATERIALIZED ("));
        assert!(
            sql.claim
                .contains("    ON CONFLICT (scope, key) DO UPDATE\n")
        );
        assert!(sql.claim.len() * 3 < CLAIM.len());
        // No statement has a literal that holds "--", which stripping would cut.
        for file in [
            PEEK,
            INSERT,
            CLAIM,
            RENEW,
            COMPLETE,
            RELEASE,
            LOOKUP,
            LIST,
            DELETE,
            SWEEP,
            ADVANCE,
            RECOVERY,
            SWEEP_RECOVERY,
        ] {
            for line in file.lines() {
                if let Some((code, _)) = line.split_once("--") {
                    assert_eq!(code.matches('\'').count() % 2, 0, "{line}");
                }
            }
        }
    }
}

//! Settings of a [`PostgresStore`](crate::PostgresStore) and their validation.

use std::fmt;
use std::time::Duration;

/// Settings of a [`PostgresStore`](crate::PostgresStore).
///
/// ```
/// use std::time::Duration;
/// use idem::postgres::PostgresStoreConfig;
///
/// let config = PostgresStoreConfig {
///     schema: "billing_idem".into(),
///     pool_size: 32,
///     ..PostgresStoreConfig::default()
/// };
/// assert_eq!(config.statement_timeout, Duration::from_secs(2));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresStoreConfig {
    /// The schema holding the store's tables (default `idem`): a plain lower-case
    /// identifier, `[a-z_][a-z0-9_]*`, at most 55 bytes, not starting with `pg_`.
    /// Stores sharing a schema share their records (several proxy instances, R18).
    pub schema: String,
    /// The most pooled connections (default 16). The notification listener uses one
    /// more connection of its own.
    pub pool_size: usize,
    /// How long establishing a connection may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long one store operation may take, waiting for a pooled connection
    /// included (default 2 s); beyond it the operation fails with
    /// [`StoreError::Timeout`](idem_core::store::StoreError::Timeout). The same value
    /// is set as the server's `statement_timeout` on the store's connections, so the
    /// server stops working on a statement nobody waits for.
    pub statement_timeout: Duration,
    /// How often the background sweeper deletes expired records (default 10 s);
    /// zero disables it ([`purge_expired`](idem_core::Store::purge_expired) still
    /// works). Every instance sweeps; that is safe (R14).
    pub sweep_interval: Duration,
    /// How many records one sweep statement deletes at most (default 500); a sweep
    /// repeats while batches come back full.
    pub sweep_batch: u32,
    /// Whether [`connect`](crate::PostgresStore::connect) applies the embedded
    /// migrations (default true). With `false`, `connect` does not contact the
    /// database at all; run [`migrate`](crate::PostgresStore::migrate) (or
    /// `idem migrate`) with a role allowed to create the schema.
    pub migrate: bool,
}

impl Default for PostgresStoreConfig {
    fn default() -> Self {
        Self {
            schema: "idem".to_owned(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(10),
            sweep_batch: 500,
            migrate: true,
        }
    }
}

impl PostgresStoreConfig {
    pub(crate) fn validate(&self) -> Result<Schema, ConfigError> {
        let schema = Schema::new(&self.schema)?;
        if self.pool_size == 0 {
            return Err(ConfigError::Setting {
                name: "pool_size",
                why: "must be at least 1",
            });
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("statement_timeout", self.statement_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Setting {
                    name,
                    why: "must be more than zero",
                });
            }
        }
        if self.sweep_batch == 0 {
            return Err(ConfigError::Setting {
                name: "sweep_batch",
                why: "must be at least 1",
            });
        }
        Ok(schema)
    }
}

/// A setting of [`PostgresStoreConfig`] or the database URL is not usable. Returned
/// by [`PostgresStore::connect`](crate::PostgresStore::connect) inside
/// [`StoreError::Backend`](idem_core::store::StoreError::Backend).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The schema name is not a plain identifier.
    #[error(
        "invalid schema name {0:?}: expected [a-z_][a-z0-9_]*, at most 55 bytes, not starting with pg_"
    )]
    Schema(String),
    /// The database URL does not parse.
    #[error("invalid database url")]
    Url(#[source] tokio_postgres::Error),
    /// A TLS parameter of the URL (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) is
    /// not usable; the text says which and why.
    #[error("{0}")]
    Tls(String),
    /// A setting is out of range.
    #[error("invalid setting {name}: {why}")]
    Setting {
        /// The field of [`PostgresStoreConfig`].
        name: &'static str,
        /// What it must be.
        why: &'static str,
    },
}

/// A validated schema name. Only `[a-z_][a-z0-9_]*` passes, so quoting it needs no
/// escaping and it can be spliced into SQL text and the notification channel name.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Schema(String);

/// The longest schema name: the channel name `<schema>.records` must fit PostgreSQL's
/// 63-byte identifiers, or LISTEN would silently truncate it.
const MAX_SCHEMA_LEN: usize = 63 - ".records".len();

impl Schema {
    pub(crate) fn new(name: &str) -> Result<Self, ConfigError> {
        let mut bytes = name.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        // `pg_` names are reserved for the system: CREATE SCHEMA refuses them.
        if first_ok && rest_ok && name.len() <= MAX_SCHEMA_LEN && !name.starts_with("pg_") {
            Ok(Self(name.to_owned()))
        } else {
            Err(ConfigError::Schema(name.to_owned()))
        }
    }

    /// The bare name, as `pg_namespace.nspname` holds it.
    pub(crate) fn name(&self) -> &str {
        &self.0
    }

    /// The quoted identifier for SQL text.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The LISTEN/NOTIFY channel of this schema's records.
    pub(crate) fn channel(&self) -> String {
        format!("{}.records", self.0)
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Milliseconds as the SQL statements take them (`int8`), capped at 100 years so
/// `now() + interval` stays far inside PostgreSQL's timestamp range.
pub(crate) fn millis(d: Duration) -> i64 {
    const CAP: u128 = 100 * 366 * 24 * 3600 * 1000;
    // The cap fits i64 by far, so the conversion cannot fail.
    i64::try_from(d.as_millis().min(CAP)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["idem", "_x", "idem_t_0af3", &"a".repeat(55)] {
            assert!(Schema::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Idem",
            "1idem",
            "idem-x",
            "idem x",
            "idem\"; DROP TABLE x; --",
            "pg_idem",
            "idém",
            &"a".repeat(56),
        ] {
            assert!(Schema::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Schema::new("idem").unwrap().quoted(), "\"idem\"");
        assert_eq!(Schema::new("idem").unwrap().channel(), "idem.records");
    }

    #[test]
    fn millis_are_capped() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert!(millis(Duration::MAX) < i64::MAX / 1000);
    }

    #[test]
    fn defaults_are_valid() {
        assert!(PostgresStoreConfig::default().validate().is_ok());
        let bad = PostgresStoreConfig {
            pool_size: 0,
            ..PostgresStoreConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}

//! Test helpers shared by the proxy and the library: the SPEC suite over HTTP
//! ([`spec`], [`spec_tests!`]), a real counting upstream ([`upstream`]) and a small
//! client ([`client`]), and a PostgreSQL server of a test's own ([`PgCluster`]). Not
//! published.

pub mod client;
pub mod memory;
pub mod pg_cluster;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod redb;
pub mod spec;
pub mod upstream;

pub use client::{Client, Resp};
pub use pg_cluster::{PgCluster, PgClusterOptions};
pub use pki::TestPki;
pub use spec::{Front, On, Start, Target};
pub use upstream::CountingUpstream;

/// `bytes` in lower-case hex, as PostgreSQL prints a `bytea` in a row's text: for
/// checking that secrets are not stored in the clear in that form either.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

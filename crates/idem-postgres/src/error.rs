//! How PostgreSQL and pool failures become [`StoreError`]s (R15).

use deadpool_postgres::PoolError;
use idem_core::store::StoreError;
use tokio_postgres::error::SqlState;

/// The `store` name in [`StoreError::Backend`].
pub(crate) const STORE: &str = "postgres";

/// Maps a tokio-postgres error: a lost or refused connection is `Unavailable`, a
/// cancelled statement (our `statement_timeout`) is `Timeout`, the rest `Backend`.
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(e.into());
    }
    let Some(code) = e.code() else {
        // No server error: an I/O error or a failed connect (a connect timeout is an
        // I/O error too) means unreachable; anything else (a decoding problem) is ours.
        return if is_io(&e) {
            StoreError::Unavailable(e.into())
        } else {
            StoreError::backend(STORE, e)
        };
    };
    if *code == SqlState::QUERY_CANCELED {
        StoreError::Timeout
    } else if unavailable(code) {
        StoreError::Unavailable(e.into())
    } else {
        StoreError::backend(STORE, e)
    }
}

/// Maps a pool error: waiting or connecting too long is `Timeout`, failing to connect
/// is `Unavailable`.
pub(crate) fn pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => StoreError::Timeout,
        // Any error while creating a connection means the database cannot be reached
        // as configured (refused, unknown host, bad credentials, too many clients).
        PoolError::Backend(e) => StoreError::Unavailable(e.into()),
        PoolError::Closed => StoreError::Unavailable("connection pool closed".into()),
        e @ (PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_)) => {
            StoreError::backend(STORE, e)
        }
    }
}

fn is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// SQLSTATEs that say the server cannot serve us now, rather than that the request
/// was wrong: connection exceptions (class 08), shutdown and start-up, too many
/// connections.
fn unavailable(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code)
}

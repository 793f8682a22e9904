//! Many instances, one truth: the SPEC suite through the proxy on Redis and PostgreSQL,
//! and several `idem serve` processes sharing one store (R15, R16, R18).
//!
//! Needs Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 (user postgres, database
//! test) and `redis-server` on PATH; `scripts/test.sh` provides them. Unreachable
//! services fail the tests.

#[path = "../common/mod.rs"]
mod common;
mod outage;
mod processes;

use std::time::Duration;

use idem::core::policy::Policy;
use idem::core::record::OwnerToken;
use idem::core::store::testkit::RealTimeFixture;
use idem::postgres::{PostgresStore, PostgresStoreConfig};
use idem::redis::{RedisStore, RedisStoreConfig};
use idem_proxy::config::ProxyConfig;
use idem_testkit::postgres::Schema;
use idem_testkit::{CountingUpstream, Front, Target};

const REDIS: &str = "redis://127.0.0.1:6379";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const LEASE: Duration = Duration::from_millis(400);

/// A name no other test run uses.
pub fn unique(what: &str) -> String {
    format!("{what}_{}", &OwnerToken::random().to_hex()[..12])
}

async fn start(store: impl idem::Store, upstream: &CountingUpstream, policy: Policy) -> Front {
    let mut config = ProxyConfig::new(format!("http://{}", upstream.addr()).parse().unwrap());
    config.policy = policy;
    let running = idem_proxy::spawn("127.0.0.1:0".parse().unwrap(), store, config)
        .await
        .unwrap();
    Front::new(running.addr(), running)
}

/// The proxy on the shared Redis, a fresh key prefix per test.
#[derive(Debug)]
pub struct RedisProxy;

impl Target for RedisProxy {
    type Fixture = RealTimeFixture<RedisStore>;
    async fn fixture(&self) -> Self::Fixture {
        let config = RedisStoreConfig {
            prefix: unique("idem-test"),
            ..RedisStoreConfig::default()
        };
        let store = RedisStore::connect(REDIS, config)
            .await
            .unwrap_or_else(|e| panic!("Redis at {REDIS} must be reachable: {e:?}"));
        RealTimeFixture::new(store, LEASE, ())
    }
    async fn start(&self, store: RedisStore, upstream: &CountingUpstream, policy: Policy) -> Front {
        start(store, upstream, policy).await
    }
}

/// The proxy on PostgreSQL, a fresh schema per test.
#[derive(Debug)]
pub struct PostgresProxy;

impl Target for PostgresProxy {
    type Fixture = RealTimeFixture<PostgresStore>;
    async fn fixture(&self) -> Self::Fixture {
        let schema = Schema::fresh("idem_t");
        let config = PostgresStoreConfig {
            schema: schema.name().to_owned(),
            pool_size: 4,
            ..PostgresStoreConfig::default()
        };
        let store = PostgresStore::connect(POSTGRES, config)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {POSTGRES} must be reachable: {e:?}"));
        RealTimeFixture::new(store, LEASE, schema)
    }
    async fn start(
        &self,
        store: PostgresStore,
        upstream: &CountingUpstream,
        policy: Policy,
    ) -> Front {
        start(store, upstream, policy).await
    }
}

mod redis {
    idem_testkit::spec_tests!(super::RedisProxy);
}

mod postgres {
    idem_testkit::spec_tests!(super::PostgresProxy);
}

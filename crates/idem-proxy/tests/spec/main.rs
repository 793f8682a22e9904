//! SPEC.md over HTTP against `idem serve`, in-process, on each single-machine store.

#[path = "../common/mod.rs"]
mod common;
mod process;
mod proxy;

use idem::policy::Policy;
use idem::redb::RedbStore;
use idem::store::testkit::ManualFixture;
use idem::store::{MemoryStore, Store};
use idem_proxy::config::ProxyConfig;
use idem_testkit::{CountingUpstream, Front, Target};

/// Starts `idem serve` in-process over `store`; dropping the front shuts it down.
pub async fn start_proxy<St: Store>(
    store: St,
    upstream: &CountingUpstream,
    policy: Policy,
) -> Front {
    let mut config = ProxyConfig::new(format!("http://{}", upstream.addr()).parse().unwrap());
    config.policy = policy;
    start_with(store, config).await
}

/// Starts `idem serve` in-process with a whole config.
pub async fn start_with<St: Store>(store: St, config: ProxyConfig) -> Front {
    let running = idem_proxy::spawn("127.0.0.1:0".parse().unwrap(), store, config)
        .await
        .unwrap();
    Front::new(running.addr(), running)
}

/// The proxy on the memory store.
#[derive(Debug)]
pub struct MemoryProxy;

impl Target for MemoryProxy {
    type Fixture = ManualFixture<MemoryStore>;
    async fn fixture(&self) -> Self::Fixture {
        ManualFixture::memory()
    }
    async fn start(
        &self,
        store: MemoryStore,
        upstream: &CountingUpstream,
        policy: Policy,
    ) -> Front {
        start_proxy(store, upstream, policy).await
    }
}

/// The proxy on the embedded redb store, in a fresh directory.
#[derive(Debug)]
pub struct RedbProxy;

/// A redb store in a temporary directory on a manual clock.
pub fn redb_fixture() -> ManualFixture<RedbStore> {
    idem_testkit::redb::fixture()
}

impl Target for RedbProxy {
    type Fixture = ManualFixture<RedbStore>;
    async fn fixture(&self) -> Self::Fixture {
        redb_fixture()
    }
    async fn start(&self, store: RedbStore, upstream: &CountingUpstream, policy: Policy) -> Front {
        start_proxy(store, upstream, policy).await
    }
}

mod memory {
    idem_testkit::spec_tests!(super::MemoryProxy);
}

mod redb {
    idem_testkit::spec_tests!(super::RedbProxy);
}

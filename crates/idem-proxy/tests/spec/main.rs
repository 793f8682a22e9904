//! SPEC.md over HTTP against `idem serve`, in-process, on each single-machine store.

mod at_most_once;
mod browser;
mod clients;
#[path = "../common/mod.rs"]
mod common;
mod config_file;
mod deploy;
mod key_sources;
mod last_bytes;
mod process;
mod proxy;
mod sealed;
mod serve;
mod store_tls;
mod tls;

use idem::core::policy::Policy;
use idem::core::store::Store;
use idem_proxy::config::{ProxyConfig, Runtime};
use idem_testkit::{CountingUpstream, Front, Start};

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

/// `idem serve`, in-process.
#[derive(Debug)]
pub struct Proxy;

impl Start for Proxy {
    async fn start<St: Store>(
        &self,
        store: St,
        upstream: &CountingUpstream,
        policy: Policy,
    ) -> Front {
        start_proxy(store, upstream, policy).await
    }
}

idem_testkit::spec_tests!(single_machine_stores: Proxy);

/// `idem serve` in-process with `--runtime workers`: each connection served on a
/// single-threaded runtime of its own thread, with that thread's upstream pool.
#[derive(Debug)]
pub struct ProxyOnWorkers;

impl Start for ProxyOnWorkers {
    async fn start<St: Store>(
        &self,
        store: St,
        upstream: &CountingUpstream,
        policy: Policy,
    ) -> Front {
        let mut config = ProxyConfig::new(format!("http://{}", upstream.addr()).parse().unwrap());
        config.policy = policy;
        config.runtime = Runtime::Workers;
        start_with(store, config).await
    }
}

/// The whole suite again on the worker runtimes.
mod on_workers {
    use super::ProxyOnWorkers;

    idem_testkit::spec_tests!(single_machine_stores: ProxyOnWorkers);
}

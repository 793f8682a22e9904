//! SPEC.md over HTTP against an axum app with the layer (the library issue: the same
//! suite as the proxy, not a second one), on each single-machine store, plus the
//! library's own tests.

mod context;
mod layer;

use axum::Router;
use idem::IdempotencyLayer;
use idem::core::policy::Policy;
use idem::core::store::Store;
use idem_testkit::{CountingUpstream, Front, Start};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Aborts the server task when the front is dropped.
struct ServerGuard(JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `app` on `127.0.0.1:0`; dropping the front stops it.
pub async fn serve(app: Router) -> Front {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Front::new(addr, ServerGuard(task))
}

/// The app of a Rust service: the upstream's own routes behind the layer.
pub async fn start_app<St: Store>(store: St, upstream: &CountingUpstream, policy: Policy) -> Front {
    let layer = IdempotencyLayer::builder(store)
        .policy(policy)
        .build()
        .expect("the suite's policies are valid");
    let app = upstream.router().layer(layer);
    serve(app).await
}

/// An axum app with the layer in front of the upstream's routes.
#[derive(Debug)]
pub struct App;

impl Start for App {
    async fn start<St: Store>(
        &self,
        store: St,
        upstream: &CountingUpstream,
        policy: Policy,
    ) -> Front {
        start_app(store, upstream, policy).await
    }
}

idem_testkit::spec_tests!(single_machine_stores: App);

#[cfg(feature = "postgres")]
mod r21_postgres;

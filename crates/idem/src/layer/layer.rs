use std::fmt;
use std::sync::Arc;

use idem_core::policy::{BuildTarget, PolicyBuilder};
use idem_core::{Engine, Policy, Store};
use tokio_util::task::TaskTracker;
use tower_layer::Layer;

use super::Idempotency;

pub(crate) struct Shared<St: Store> {
    pub(crate) engine: Engine<St>,
    pub(crate) tracker: TaskTracker,
}

/// Applies idempotency keys to the requests of an inner service.
///
/// Cheap to clone: clones share the engine, its store and its background tasks.
///
/// # Configuration
///
/// [`IdempotencyLayer::new`] gives the defaults ([`Policy`]'s, the contract's). For
/// anything else, [`IdempotencyLayer::builder`]: one method per setting of the
/// [`Policy`] (the same list as [`Policy::builder`]'s), all checked once by
/// [`build`](PolicyBuilder::build), which returns a [`ConfigError`] instead of
/// panicking, now or later.
///
/// [`ConfigError`]: idem_core::policy::ConfigError
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use std::time::Duration;
/// use axum::http::Method;
/// use axum::{Router, routing::post};
/// use idem::core::policy::OnConcurrent;
/// use idem::{IdempotencyLayer, MemoryStore};
///
/// # fn main() -> Result<(), idem::ConfigError> {
/// let layer = IdempotencyLayer::builder(MemoryStore::new())
///     .ttl(Duration::from_secs(3600))
///     .lease(Duration::from_secs(10))
///     .methods([Method::POST])
///     .require_key(true)
///     .on_concurrent(OnConcurrent::Wait { timeout: Duration::from_secs(5) })
///     .build()?;
/// assert_eq!(layer.policy().ttl(), Duration::from_secs(3600));
///
/// // Out-of-range values are an error, not a panic.
/// assert!(IdempotencyLayer::builder(MemoryStore::new()).ttl(Duration::ZERO).build().is_err());
///
/// let app: Router = Router::new()
///     .route("/payments", post(|| async { "paid" }))
///     .layer(layer);
/// # let _ = app;
/// # Ok(()) }
/// # main().unwrap(); }
/// ```
///
/// A [`Policy`] made elsewhere (e.g. read from a configuration file) is one more
/// setting: `IdempotencyLayer::builder(store).policy(policy).build()`.
///
/// # Per-route settings
///
/// Give a route its own layer with axum's `route_layer`, over the same store: the
/// records are shared (scope and key identify them), each layer applies its own policy.
/// `route_layer` wraps the routes added before it, so give each group of routes exactly
/// one layer (nesting two idempotency layers on one route would make the inner one see
/// its own request as a concurrent duplicate), e.g. with `merge`:
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::{Router, routing::post};
/// use idem::{IdempotencyLayer, MemoryStore};
///
/// # fn main() -> Result<(), idem::ConfigError> {
/// let store = MemoryStore::new();
/// let payments = Router::new()
///     .route("/payments", post(|| async { "paid" }))
///     .route_layer(IdempotencyLayer::builder(store.clone()).require_key(true).build()?);
/// let notes = Router::new()
///     .route("/notes", post(|| async { "noted" }))
///     .route_layer(IdempotencyLayer::new(store));
/// let app: Router = payments.merge(notes);
/// # let _ = app; Ok(()) }
/// # main().unwrap(); }
/// ```
pub struct IdempotencyLayer<St: Store> {
    pub(crate) shared: Arc<Shared<St>>,
}

impl<St: Store> IdempotencyLayer<St> {
    /// A layer over `store` with the default [`Policy`]; the shortcut for
    /// `IdempotencyLayer::builder(store).build()`, which cannot fail.
    pub fn new(store: St) -> Self {
        Self::from_policy(store, Policy::default())
    }

    /// A builder of a layer over `store`, starting from the default [`Policy`]: one
    /// method per setting, checked once by [`build`](PolicyBuilder::build).
    pub fn builder(store: St) -> IdempotencyLayerBuilder<St> {
        PolicyBuilder::with_target(LayerTarget { store })
    }

    fn from_policy(store: St, policy: Policy) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine: Engine::new(store, policy),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<St> {
        &self.shared.engine
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        self.shared.engine.policy()
    }

    /// The store.
    pub fn store(&self) -> &St {
        self.shared.engine.store()
    }

    /// The tracker of the tasks that run protected requests to the end even when their
    /// client went away ([R6](crate::contract#r6)). On shutdown, `close()` it and
    /// `wait()` so every started operation records its result.
    pub fn tasks(&self) -> &TaskTracker {
        &self.shared.tracker
    }
}

impl<St: Store> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St: Store> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("policy", self.shared.engine.policy())
            .finish()
    }
}

impl<S, St: Store> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The builder [`IdempotencyLayer::builder`] answers: a [`PolicyBuilder`] whose
/// [`build`](PolicyBuilder::build) makes the layer over its store. Its methods are
/// the policy's settings; see [`PolicyBuilder`].
pub type IdempotencyLayerBuilder<St> = PolicyBuilder<LayerTarget<St>>;

/// What an [`IdempotencyLayerBuilder`] builds: a layer over this store.
#[derive(Clone)]
pub struct LayerTarget<St> {
    store: St,
}

impl<St> fmt::Debug for LayerTarget<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerTarget").finish_non_exhaustive()
    }
}

impl<St: Store> BuildTarget for LayerTarget<St> {
    type Output = IdempotencyLayer<St>;

    fn make(self, policy: Policy) -> IdempotencyLayer<St> {
        IdempotencyLayer::from_policy(self.store, policy)
    }
}

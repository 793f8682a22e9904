use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use idem_core::fingerprint::FingerprintMode;
use idem_core::policy::{ConfigError, OnConcurrent, StatusSet, StoreFailure};
use idem_core::scope::ScopeSource;
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
/// Two ways, one source of defaults ([`Policy`]):
///
/// - [`IdempotencyLayer::new`] with the defaults, refined by the setters on the layer
///   itself ([`require_key`](Self::require_key), [`fingerprint`](Self::fingerprint),
///   [`scope`](Self::scope), [`header`](Self::header)). Their inputs cannot be invalid,
///   so they are infallible and never panic.
/// - [`IdempotencyLayer::builder`] for settings that can be out of range (TTL, lease,
///   methods, wait timeout, limits …): the builder checks them all once in
///   [`build`](IdempotencyLayerBuilder::build), which returns a [`ConfigError`] instead
///   of panicking, now or later.
///
/// ```
/// use std::time::Duration;
/// use http::Method;
/// use idem::IdempotencyLayer;
/// use idem::policy::OnConcurrent;
/// use idem::store::MemoryStore;
///
/// # fn main() -> Result<(), idem::policy::ConfigError> {
/// let layer = IdempotencyLayer::builder(MemoryStore::new())
///     .ttl(Duration::from_secs(3600))
///     .lease(Duration::from_secs(10))
///     .methods([Method::POST])
///     .on_concurrent(OnConcurrent::Wait { timeout: Duration::from_secs(5) })
///     .build()?
///     .require_key(true);
/// assert_eq!(layer.policy().ttl(), Duration::from_secs(3600));
///
/// // Out-of-range values are an error, not a panic.
/// assert!(IdempotencyLayer::builder(MemoryStore::new()).ttl(Duration::ZERO).build().is_err());
/// # Ok(()) }
/// ```
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
/// use idem::IdempotencyLayer;
/// use idem::store::MemoryStore;
///
/// let store = MemoryStore::new();
/// let payments = Router::new()
///     .route("/payments", post(|| async { "paid" }))
///     .route_layer(IdempotencyLayer::new(store.clone()).require_key(true));
/// let notes = Router::new()
///     .route("/notes", post(|| async { "noted" }))
///     .route_layer(IdempotencyLayer::new(store));
/// let app: Router = payments.merge(notes);
/// # let _ = app; }
/// ```
pub struct IdempotencyLayer<St: Store> {
    pub(crate) shared: Arc<Shared<St>>,
}

impl<St: Store> IdempotencyLayer<St> {
    /// A layer over `store` with the default [`Policy`].
    pub fn new(store: St) -> Self {
        Self::with_policy(store, Policy::default())
    }

    /// A layer over `store` with `policy`.
    pub fn with_policy(store: St, policy: Policy) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine: Engine::new(store, policy),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// A builder over `store`, starting from the default [`Policy`]; settings are
    /// checked once by [`IdempotencyLayerBuilder::build`].
    pub fn builder(store: St) -> IdempotencyLayerBuilder<St> {
        IdempotencyLayerBuilder {
            store,
            policy: Policy::builder(),
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
    /// client went away (R6). On shutdown, `close()` it and `wait()` so every started
    /// operation records its result.
    pub fn tasks(&self) -> &TaskTracker {
        &self.shared.tracker
    }

    /// Requires a key on covered requests (R3): without one they are 400.
    #[must_use]
    pub fn require_key(self, yes: bool) -> Self {
        self.map(|b| b.require_key(yes))
    }

    /// How bodies are fingerprinted (R5).
    #[must_use]
    pub fn fingerprint(self, mode: FingerprintMode) -> Self {
        self.map(|b| b.fingerprint(mode))
    }

    /// How the scope is computed (R4).
    #[must_use]
    pub fn scope(self, scope: ScopeSource) -> Self {
        self.map(|b| b.scope(scope))
    }

    /// The key header's name (R1).
    #[must_use]
    pub fn header(self, name: HeaderName) -> Self {
        self.map(|b| b.header(name))
    }

    /// Rebuilds the engine with one setting changed, keeping the task tracker.
    fn map(
        self,
        f: impl FnOnce(idem_core::policy::PolicyBuilder) -> idem_core::policy::PolicyBuilder,
    ) -> Self {
        let old = self.policy().clone();
        // The setters that call this change settings no check looks at, on a policy
        // that was already valid, so `build` cannot fail; keep the old policy if it did.
        let policy = f(old.to_builder()).build().unwrap_or(old);
        Self {
            shared: Arc::new(Shared {
                engine: Engine::new(self.store().clone(), policy),
                tracker: self.shared.tracker.clone(),
            }),
        }
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

/// Builds an [`IdempotencyLayer`] whose settings are checked once, by
/// [`build`](Self::build). Each method replaces one setting; see [`Policy`] for the
/// defaults.
#[must_use]
pub struct IdempotencyLayerBuilder<St> {
    store: St,
    policy: idem_core::policy::PolicyBuilder,
}

impl<St: Store> IdempotencyLayerBuilder<St> {
    fn with(
        mut self,
        f: impl FnOnce(idem_core::policy::PolicyBuilder) -> idem_core::policy::PolicyBuilder,
    ) -> Self {
        self.policy = f(self.policy);
        self
    }

    /// Starts from `policy` instead of the defaults.
    pub fn policy(self, policy: &Policy) -> Self {
        self.with(|_| policy.to_builder())
    }
    /// How long a completed record lives (R14; default 24 h, at least 1 s).
    pub fn ttl(self, d: Duration) -> Self {
        self.with(|b| b.ttl(d))
    }
    /// The in-flight lease (R6, R11; default 60 s, at least 30 ms).
    pub fn lease(self, d: Duration) -> Self {
        self.with(|b| b.lease(d))
    }
    /// Require a key on covered requests (R3; default false).
    pub fn require_key(self, yes: bool) -> Self {
        self.with(|b| b.require_key(yes))
    }
    /// Covered methods (R2; default POST and PATCH; at least one).
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.with(|b| b.methods(methods))
    }
    /// What a concurrent duplicate gets (R10; default 409).
    pub fn on_concurrent(self, mode: OnConcurrent) -> Self {
        self.with(|b| b.on_concurrent(mode))
    }
    /// How bodies are fingerprinted (R5; default raw).
    pub fn fingerprint(self, mode: FingerprintMode) -> Self {
        self.with(|b| b.fingerprint(mode))
    }
    /// Headers that count in the fingerprint (R5; default none).
    pub fn significant_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.with(|b| b.significant_headers(names))
    }
    /// How the scope is computed (R4; default the `Authorization` header).
    pub fn scope(self, scope: ScopeSource) -> Self {
        self.with(|b| b.scope(scope))
    }
    /// The key header's name (R1; default `Idempotency-Key`).
    pub fn header(self, name: HeaderName) -> Self {
        self.with(|b| b.header(name))
    }
    /// Which responses are stored (R7).
    pub fn cacheable(self, set: StatusSet) -> Self {
        self.with(|b| b.cacheable(set))
    }
    /// The status of a payload mismatch (R9): 422 (default), 400 or 409.
    pub fn mismatch_status(self, status: StatusCode) -> Self {
        self.with(|b| b.mismatch_status(status))
    }
    /// The largest request body accepted (R13; default 1 MiB).
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.with(|b| b.max_request_body(bytes))
    }
    /// The largest response body stored (R13; default 1 MiB).
    pub fn max_stored_body(self, bytes: usize) -> Self {
        self.with(|b| b.max_stored_body(bytes))
    }
    /// What happens when the store fails (R15; default fail-closed).
    pub fn store_failure(self, mode: StoreFailure) -> Self {
        self.with(|b| b.store_failure(mode))
    }
    /// Headers never stored, beyond the hop-by-hop ones (R19).
    pub fn deny_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.with(|b| b.deny_headers(names))
    }

    /// Checks the settings and makes the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first setting out of range.
    pub fn build(self) -> Result<IdempotencyLayer<St>, ConfigError> {
        Ok(IdempotencyLayer::with_policy(
            self.store,
            self.policy.build()?,
        ))
    }
}

impl<St: Store> fmt::Debug for IdempotencyLayerBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

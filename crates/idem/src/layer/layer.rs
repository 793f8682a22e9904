use std::fmt;
use std::sync::Arc;

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

    /// The engine.
    pub fn engine(&self) -> &Engine<St> {
        &self.shared.engine
    }

    /// The tracker of the tasks that run protected requests to the end even when their
    /// client went away (R6). On shutdown, `close()` it and `wait()` so every started
    /// operation records its result.
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;

use crate::Body;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where a request stands after its decision.
pub(crate) enum Step<E> {
    /// Answered (replayed, refused, passed through …).
    Done(Result<Response<Body>, E>),
    /// It owns its record: this runs the exchange and records its result. It must run to
    /// the end even when the client goes away ([R6](crate::contract#r6)).
    Execute(BoxFuture<Result<Response<Body>, E>>),
}

enum Phase<E> {
    Deciding(BoxFuture<Step<E>>),
    Executing(BoxFuture<Result<Response<Body>, E>>),
    Finished,
}

/// The response future of [`Idempotency`](super::Idempotency).
///
/// The exchange of a request that owns its record runs inside this future, on the
/// connection's own task; only if the future is dropped before it finished (the client
/// went away) is the rest of the exchange handed to a task of its own, which completes
/// or releases the record ([R6](crate::contract#r6)). So the common path spawns nothing.
pub struct ResponseFuture<E: Send + 'static> {
    phase: Phase<E>,
}

impl<E: Send + 'static> ResponseFuture<E> {
    pub(crate) fn new(deciding: BoxFuture<Step<E>>) -> Self {
        Self {
            phase: Phase::Deciding(deciding),
        }
    }
}

impl<E: Send + 'static> Future for ResponseFuture<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.phase {
                Phase::Deciding(f) => match ready!(f.as_mut().poll(cx)) {
                    Step::Done(result) => {
                        self.phase = Phase::Finished;
                        return Poll::Ready(result);
                    }
                    Step::Execute(run) => self.phase = Phase::Executing(run),
                },
                Phase::Executing(run) => {
                    let result = ready!(run.as_mut().poll(cx));
                    self.phase = Phase::Finished;
                    return Poll::Ready(result);
                }
                Phase::Finished => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl<E: Send + 'static> Drop for ResponseFuture<E> {
    fn drop(&mut self) {
        if let Phase::Executing(run) = std::mem::replace(&mut self.phase, Phase::Finished) {
            // R6: the client is gone, the exchange goes on. Without a runtime (it is
            // shutting down) nothing can run: the lease lapses, as after a crash (R11).
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = run.await;
                });
            }
        }
    }
}

impl<E: Send + 'static> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

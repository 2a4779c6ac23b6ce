//! Load shedding: a tower layer on the whole gRPC server that lets at most
//! `limit` calls run at once and answers any call beyond that at once with
//! `RESOURCE_EXHAUSTED`, instead of queueing it without bound.
//!
//! Health is exempt, so a load balancer still gets an answer from an
//! overloaded server (it is alive; it is only busy). The limit is a semaphore
//! taken without waiting; a call holds its permit until its response headers
//! are ready (for a server stream, until its first message is ready).
//!
//! Not tower's `ConcurrencyLimit` + `LoadShed`: their limit covers every
//! path, health included, and `Overloaded` reaches the client as a generic
//! message; this answers with one that says what to do.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::Status;

/// Calls on these paths are never shed.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// Adds [`Shed`] in front of a service.
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ShedLayer {
    /// At most `limit` calls (at least one) at once.
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        ShedLayer {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: Arc::clone(&self.permits),
            limit: self.limit,
        }
    }
}

/// Runs a call to `S` if a permit is free; answers `RESOURCE_EXHAUSTED`
/// otherwise.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower::Service<Request<B>> for Shed<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let permit = if request.uri().path().starts_with(EXEMPT_PREFIX) {
            None
        } else {
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let limit = self.limit;
                    return Box::pin(async move {
                        Ok(Status::resource_exhausted(format!(
                            "the server is at its limit of {limit} concurrent calls; retry after a backoff, or raise `--max-concurrent-calls`"
                        ))
                        .into_http())
                    });
                }
            }
        };
        // The clone that was made ready goes to this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let result = inner.call(request).await;
            drop(permit);
            result
        })
    }
}

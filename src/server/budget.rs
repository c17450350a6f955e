//! The request budget of one listener: at most `server.max_pending_requests`
//! requests in progress at once, over all its connections. A request over
//! the budget is refused at once with `RESOURCE_EXHAUSTED` instead of
//! waiting, so what clients hold open (for example HTTP/2 streams that
//! send headers and never a body) cannot grow the process's memory without
//! bound. It does not choose between clients (the per-connection stream
//! limit does that). The forward-auth HTTP listener has a budget of its own
//! ([`Budget`]) and answers 503 over it.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::Status;

/// One listener's budget: at most `max` requests in progress at once, over
/// all its connections. The gRPC listeners hold it through
/// [`RequestBudgetLayer`], the forward-auth HTTP listener directly.
#[derive(Debug, Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Budget {
    /// A budget of `max` requests in progress at once (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Budget {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A place for one more request (held until it is dropped, and counted
    /// in `portcullis_requests_in_progress` meanwhile), or, over the budget,
    /// what to tell the client (counted in
    /// `portcullis_requests_over_budget_total`).
    pub fn enter(&self) -> Result<Permit, String> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            crate::metrics::global().request_over_budget();
            format!(
                "the server has {} requests in progress (server.max_pending_requests): retry later",
                self.max
            )
        })?;
        Ok(Permit {
            _place: permit,
            _counted: crate::metrics::global().request_in_progress(),
        })
    }
}

/// A request's place in a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _place: OwnedSemaphorePermit,
    _counted: crate::metrics::InProgress,
}

/// A tower layer sharing one budget between the connections of a listener
/// (tonic applies server layers per connection; the budget is shared).
#[derive(Debug, Clone)]
pub struct RequestBudgetLayer {
    budget: Budget,
}

impl RequestBudgetLayer {
    /// A budget of `max` requests in progress at once (at least 1).
    pub fn new(max: usize) -> Self {
        RequestBudgetLayer {
            budget: Budget::new(max),
        }
    }
}

impl<S> tower_layer::Layer<S> for RequestBudgetLayer {
    type Service = RequestBudget<S>;

    fn layer(&self, inner: S) -> RequestBudget<S> {
        RequestBudget {
            inner,
            budget: self.clone(),
        }
    }
}

/// The service under a [`RequestBudgetLayer`].
#[derive(Debug, Clone)]
pub struct RequestBudget<S> {
    inner: S,
    budget: RequestBudgetLayer,
}

impl<S, B> Service<http::Request<B>> for RequestBudget<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let permit = match self.budget.budget.enter() {
            Ok(permit) => permit,
            Err(message) => {
                let status = Status::resource_exhausted(message);
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}

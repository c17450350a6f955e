//! The HTTP listener for operations: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (the shared readiness
//! answer, see `health.rs`). Plain HTTP/1.1 on a loopback address by
//! default; it serves nothing about requests or policies.

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::health::Readiness;
use crate::app::State;

#[derive(Clone)]
struct Shared {
    state: Arc<State>,
    readiness: Readiness,
}

/// The router of the operations listener.
pub fn router(state: Arc<State>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { state, readiness })
}

/// Serves `router` on `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    readiness: Readiness,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state, readiness))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

async fn metrics(AxumState(shared): AxumState<Shared>) -> impl IntoResponse {
    let body = crate::app::metrics::render(&shared.state, &shared.readiness);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
}

async fn readyz(AxumState(shared): AxumState<Shared>) -> impl IntoResponse {
    let status = shared.readiness.current();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&*status).expect("status serialises");
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
}

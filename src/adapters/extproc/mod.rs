//! The Envoy ext_proc v3 adapter (`ExternalProcessor/Process`): one
//! bidirectional stream per HTTP request, on the decision listener next to
//! ext_authz and RLS. It decides nothing: `Check` decided and reserved;
//! here the response is read as it passes, its reservation settled when it
//! ends, and every body chunk handed to the response hook (`hook.rs`).
//!
//! Correlation with the `Check` decision is by the gateway's request id:
//! Envoy's `x-request-id`, which `Check` sees as
//! `attributes.request.http.id` (or the header) and ext_proc as a request
//! header (or the `request.id` attribute, with `request_attributes`). At
//! the edge Envoy generates it (`use_remote_address: true`, without
//! `preserve_external_request_id`), so clients cannot choose it. The
//! `x-portcullis-decision-id` that ext_authz adds to the request is
//! checked against the reservation's decision when present. With no
//! reservation under the id (no token rule on the route, a refused
//! request, no request id, a store that did not answer) the response
//! passes untouched, counted (`portcullis_ext_proc_streams_total{outcome=
//! "uncorrelated"}`) and logged at debug level; a reservation nobody
//! settles expires and settles by its rule.

mod exchange;
pub mod hook;

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::metrics;

pub use exchange::METADATA_NAMESPACE;

use crate::app::State;

/// The ext_proc `ExternalProcessor` service.
#[derive(Debug, Clone)]
pub struct ExtProcService {
    state: Arc<State>,
}

impl ExtProcService {
    /// A service settling with the shared state.
    pub fn new(state: Arc<State>) -> Self {
        ExtProcService { state }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let state = Arc::clone(&self.state);
        // On the state's tracker: a stream under way at shutdown still
        // settles (the server waits for its tasks).
        self.state.tasks.spawn(async move {
            let mut exchange = exchange::Exchange::new(state);
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if let Some(answer) = exchange.handle(message).await {
                            if tx.send(Ok(answer)).await.is_err() {
                                // Envoy stopped listening mid-response.
                                exchange.broken().await;
                                return;
                            }
                        }
                        if exchange.finished() {
                            // The response has ended and is settled: our
                            // side closes now, cleanly ("if the server
                            // closes the gRPC stream cleanly, then Envoy
                            // proceeds without consulting the server",
                            // external_processor.proto). Waiting for Envoy
                            // instead meets its reset (RST_STREAM
                            // INTERNAL_ERROR once the filter is done), which
                            // reads as an error on every request.
                            return;
                        }
                    }
                    // Envoy closed its side: the response is complete (it
                    // was settled at its end) or was cut short.
                    Ok(None) => {
                        exchange.broken().await;
                        return;
                    }
                    // A message that cannot be read (larger than
                    // `server.max_message_bytes`, undecodable) or a stream
                    // Envoy reset. The stream ends with that status, so that
                    // Envoy's `failure_mode_allow` decides, never as a clean
                    // end that passes the rest of the response unchecked.
                    Err(status) => {
                        if reset_by_peer(&status) {
                            // Envoy gave up on the response (its client
                            // went away, a timeout): the reservation
                            // settles by its rule, counted as `broken`.
                            tracing::debug!(
                                target: "portcullis::ext_proc",
                                error = %status.message(),
                                "ext_proc stream reset by the gateway before the response ended"
                            );
                            exchange.broken().await;
                            return;
                        }
                        let unreadable = matches!(
                            status.code(),
                            Code::OutOfRange
                                | Code::ResourceExhausted
                                | Code::InvalidArgument
                                | Code::Internal
                        );
                        if unreadable {
                            metrics::global().ext_proc_stream("unreadable_message");
                            tracing::warn!(
                                target: "portcullis::ext_proc",
                                code = ?status.code(),
                                error = %status.message(),
                                "ext_proc stream ended: a message from the gateway could not be read"
                            );
                        }
                        exchange.broken().await;
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The stream was reset by the gateway (HTTP/2 `RST_STREAM`), not ended by
/// a message that could not be read. Envoy 1.40 resets with
/// `INTERNAL_ERROR` (h2's debug log in the Envoy e2e tests), which tonic
/// reports as `INTERNAL` with the message "h2 protocol error: ..."
/// (`Status::from_hyper_error`); `CANCEL` as `CANCELLED`; hyper reads a
/// `NO_ERROR` reset as the end of the stream (RFC 9113 §8.1). A message tonic cannot decode is `INTERNAL` too, with its
/// own message ("failed to decode ..."), so the text tells them apart.
/// The text does not carry the reset's reason, so an HTTP/2 failure of the
/// whole connection (which ends every stream on it) reads as a reset too.
fn reset_by_peer(status: &Status) -> bool {
    match status.code() {
        Code::Cancelled => true,
        Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    }
}

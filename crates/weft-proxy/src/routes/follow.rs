//! A discovered Service's routes, kept current from the controller's
//! `OutboundPolicies.Watch` stream, beside its endpoints' `Destination.Get` stream
//! (same target, same connection to the controller).
//!
//! Each policy is read whole ([`super::convert::routes`]); one the proxy cannot apply is
//! logged and the last valid routes stay in force. When the stream is lost, the routes
//! in use stay until a new stream's first policy replaces them. A controller without
//! the service (`Unimplemented`), or a target it does not know as a Service
//! (`NotFound`, `InvalidArgument`: a pod address, a host outside the mesh), leaves the
//! destination without routes: its requests go to its own endpoints.
//!
//! The stream's messages are read as weft's extension of the policy
//! ([`OutboundPolicyExt`]: the policy, plus `URLRewrite` and `RequestMirror` filters);
//! a controller that sends linkerd's plain `OutboundPolicy` (Linkerd's own) is read
//! the same, without extensions.

use std::sync::Arc;
use std::time::Duration;

use linkerd2_proxy_api::outbound::{traffic_spec, TrafficSpec};
use tokio::sync::watch;
use tonic::transport::Channel;
use weft_core::outbound_ext::OutboundPolicyExt;

use super::Routes;
use crate::backoff::Backoff;
use crate::destination::Known;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const WATCH_PATH: &str = "/io.linkerd.proxy.outbound.OutboundPolicies/Watch";

/// `OutboundPolicies.Watch`, its answers decoded as [`OutboundPolicyExt`] (tonic's
/// generated client is typed to linkerd's `OutboundPolicy`).
async fn watch_ext(
    channel: &Channel,
    spec: TrafficSpec,
) -> Result<tonic::Response<tonic::codec::Streaming<OutboundPolicyExt>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("controller connection: {e}")))?;
    let codec = tonic_prost::ProstCodec::<TrafficSpec, OutboundPolicyExt>::default();
    grpc.server_streaming(
        tonic::Request::new(spec),
        http::uri::PathAndQuery::from_static(WATCH_PATH),
        codec,
    )
    .await
}

/// Follows the routes of the destination `path` (as `Destination.Get` names it) and
/// gives them to the destination's service, whichever `state` holds, until the
/// destination is forgotten (the task is aborted) or the controller says it has none.
pub(crate) async fn follow(channel: Channel, path: String, mut state: watch::Receiver<Known>) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut routes: Option<Arc<Routes>> = None;
    loop {
        let spec = TrafficSpec {
            source_workload: String::new(),
            target: Some(traffic_spec::Target::Authority(path.clone())),
        };
        let ended = match watch_ext(&channel, spec).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(policy)) => {
                                backoff.reset();
                                match super::convert::routes_ext(policy) {
                                    Ok(new) => {
                                        tracing::debug!(destination = %path, routes = new.routes.len(), "routes updated");
                                        routes = (!new.is_empty()).then(|| Arc::new(new));
                                        give(&state, &routes);
                                    }
                                    Err(error) => {
                                        tracing::warn!(destination = %path, %error, "routes refused; the last valid routes stay in force");
                                    }
                                }
                            }
                            Ok(None) => break "the controller ended the stream".to_owned(),
                            Err(status) => break status.to_string(),
                        },
                        changed = state.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            give(&state, &routes);
                        }
                    }
                }
            }
            Err(status) => match status.code() {
                tonic::Code::Unimplemented
                | tonic::Code::NotFound
                | tonic::Code::InvalidArgument => {
                    tracing::debug!(destination = %path, error = %status, "no routes for this destination");
                    routes = None;
                    give(&state, &routes);
                    return;
                }
                _ => status.to_string(),
            },
        };
        let wait = backoff.next_wait();
        tracing::debug!(destination = %path, error = %ended, retry_in = ?wait, "route stream lost; keeping the routes in use");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                give(&state, &routes);
            }
        }
    }
}

/// Gives the destination's current service (if it is one) the routes.
fn give(state: &watch::Receiver<Known>, routes: &Option<Arc<Routes>>) {
    if let Known::Service(s) = &*state.borrow() {
        s.set_routes(routes.clone());
    }
}

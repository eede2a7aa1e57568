//! `RequestMirror`: a copy of a request sent to the mirror backend, fire and forget.
//!
//! The copy goes in a task of its own once its body is known: at once for a request
//! without a body, after the primary's response for one whose body was buffered (the
//! retry module's [`Replay`](crate::retry::Replay) copy, up to
//! [`MAX_REPLAY_BODY`](crate::retry::MAX_REPLAY_BODY)). A larger body, or one still
//! streaming when the primary answered, is not copied: the request is counted as
//! `skipped` and goes to its backend as usual. The copy's answer is read (to reuse
//! the connection) and discarded; nothing of it reaches the client, and a mirror
//! that is down, slow or unknown never delays or fails the primary.
//!
//! Each mirror filter has at most [`MAX_MIRRORS_IN_FLIGHT`] copies in flight; past
//! that, copies are dropped (`dropped`), not queued. `mirror_requests_total`
//! counts every copy by result.
//!
//! [`MAX_MIRRORS_IN_FLIGHT`]: crate::routes::MAX_MIRRORS_IN_FLIGHT

use std::sync::Arc;
use std::time::Duration;

use ::http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::balance::Outcome;
use crate::http::ConnContext;
use crate::metrics::{RouteLabel, Str};
use crate::retry::RequestBody;
use crate::routes::{Mirror, RouteMeta};
use crate::upstream::{HttpVersion, Reusable};
use crate::{Destination, Shared};

/// What became of a copy.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MirrorResult {
    /// The mirror answered, with a status below 500.
    Success,
    /// No answer (unknown backend, no endpoint, connection failed, timed out), or a
    /// 5xx.
    Failure,
    /// Not sent: the mirror had its most copies in flight.
    Dropped,
    /// Not sent: the request's body was not buffered.
    Skipped,
}

impl EncodeLabelValue for MirrorResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            MirrorResult::Success => "success",
            MirrorResult::Failure => "failure",
            MirrorResult::Dropped => "dropped",
            MirrorResult::Skipped => "skipped",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    /// The route whose filter it is.
    #[prometheus(flatten)]
    route: RouteLabel,
    /// The mirror Service's name.
    mirror_backend: Str,
    result: MirrorResult,
}

/// `mirror_requests_total{route_*, mirror_backend, result}`.
#[derive(Clone, Default)]
pub struct MirrorMetrics {
    requests: Family<MirrorLabels, Counter>,
}

impl MirrorMetrics {
    pub fn count(&self, route: Option<&Arc<RouteMeta>>, backend: &Str, result: MirrorResult) {
        self.requests
            .get_or_create(&MirrorLabels {
                route: RouteLabel(route.cloned()),
                mirror_backend: backend.clone(),
                result,
            })
            .inc();
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "mirror_requests",
            "Copies of requests for RequestMirror filters, by route, mirror backend and result (success, failure: no answer or 5xx, dropped: too many in flight, skipped: body not buffered)",
            self.requests.clone(),
        );
    }
}

/// A copy's time to its answer when the proxy has no `--response-timeout`.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a copy's answer read to keep its connection for another request.
const MAX_DRAINED: usize = 64 * 1024;

/// Sends a copy of a request to each of `mirrors`, each in a task of its own; `copy`
/// makes one (`None`: the body was not buffered, and nothing is sent).
pub(super) fn send(
    ctx: &ConnContext,
    mirrors: &[Arc<Mirror>],
    route: Option<&Arc<RouteMeta>>,
    version: HttpVersion,
    copy: impl Fn() -> Option<Request<RequestBody>>,
) {
    let metrics = &ctx.metrics().mirrors;
    for mirror in mirrors {
        let count = |result| metrics.count(route, &Str(mirror.name.clone()), result);
        let Ok(permit) = mirror.in_flight.clone().try_acquire_owned() else {
            tracing::debug!(mirror = %mirror.authority, "mirror copy dropped: too many in flight");
            count(MirrorResult::Dropped);
            continue;
        };
        let Some(req) = copy() else {
            tracing::debug!(mirror = %mirror.authority, "mirror copy skipped: the request body was not buffered (larger than the replay limit, or still streaming)");
            count(MirrorResult::Skipped);
            continue;
        };
        let shared = ctx.shared.clone();
        let mirror = mirror.clone();
        let route = route.cloned();
        tokio::spawn(async move {
            let result = match copy_to(&shared, &mirror, version, req).await {
                Ok(status) if !status.is_server_error() => MirrorResult::Success,
                Ok(status) => {
                    tracing::debug!(mirror = %mirror.authority, %status, "mirror answered with an error");
                    MirrorResult::Failure
                }
                Err(error) => {
                    tracing::debug!(mirror = %mirror.authority, %error, "mirror copy failed");
                    MirrorResult::Failure
                }
            };
            shared
                .metrics
                .http
                .mirrors
                .count(route.as_ref(), &Str(mirror.name.clone()), result);
            drop(permit);
        });
    }
}

/// Sends one copy to an endpoint of the mirror backend; its answer's status.
async fn copy_to(
    shared: &Shared,
    mirror: &Mirror,
    version: HttpVersion,
    req: Request<RequestBody>,
) -> Result<StatusCode, String> {
    let service = super::route::backend_service(shared, &mirror.authority)
        .await
        .ok_or("not known to the destination service")?;
    let resolved = shared
        .resolve_or_wait(&Destination::Service(service), &mirror.authority)
        .await
        .map_err(|e| e.to_string())?;
    let server = resolved.picked.as_ref().and_then(|p| p.identity()).cloned();
    let limit = shared.config.response_timeout.unwrap_or(MIRROR_TIMEOUT);
    let answered = tokio::time::timeout(limit, async {
        let (rsp, reusable) = shared
            .outbound
            .send(resolved.addr, version, server.as_ref(), req)
            .await
            .map_err(|e| e.error.to_string())?;
        let status = rsp.status();
        drain(rsp, reusable).await;
        Ok::<_, String>(status)
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
    if let Some(picked) = resolved.picked {
        let outcome = match &answered {
            Ok(s) if !s.is_server_error() => Outcome::Success,
            _ => Outcome::Failure,
        };
        picked.finish(outcome);
    }
    answered
}

/// Reads and discards an answer (a small one whole, so that its HTTP/1 connection
/// goes back to the pool).
async fn drain(rsp: Response<Incoming>, reusable: Option<Reusable>) {
    let mut body = rsp.into_body();
    let mut read = 0usize;
    while read <= MAX_DRAINED {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            Some(Err(_)) => return,
            None => {
                if let Some(r) = reusable {
                    r.give_back();
                }
                return;
            }
        }
    }
}

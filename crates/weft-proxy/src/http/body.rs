//! Response bodies: the upstream's, streamed through to the client while
//! `response_total` waits for the end (and a gRPC status in trailers) and the request's
//! deadline keeps running, or one the proxy made itself.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::headers::grpc_status_of;
use crate::metrics::{Classification, Direction, Metrics, RouteLabels};
use crate::upstream::Reusable;

/// The request's deadline, carried into its response body.
pub(crate) struct BodyDeadline {
    pub(super) sleep: Pin<Box<tokio::time::Sleep>>,
    pub(super) limit: Duration,
}

/// gRPC status (possibly in trailers) is known.
pub(crate) struct ResponseRecorder {
    /// The proxy's metrics: one reference count per response (a clone of the
    /// `HttpMetrics` handles was a dozen).
    metrics: std::sync::Arc<Metrics>,
    route: Option<RouteLabels>,
    status: u16,
    grpc: bool,
    /// `Some(true)` once a grpc-status of OK was seen, `Some(false)` for any other.
    grpc_status: Option<bool>,
    broken: bool,
}

impl ResponseRecorder {
    pub(super) fn new(
        metrics: std::sync::Arc<Metrics>,
        route: RouteLabels,
        status: u16,
        grpc: bool,
        grpc_status: Option<bool>,
    ) -> Self {
        ResponseRecorder {
            metrics,
            route: Some(route),
            status,
            grpc,
            grpc_status,
            broken: false,
        }
    }

    fn record(&mut self) {
        let Some(route) = self.route.take() else {
            return;
        };
        let failed =
            self.broken || self.status >= 500 || (self.grpc && self.grpc_status != Some(true));
        let classification = if failed {
            Classification::Failure
        } else {
            Classification::Success
        };
        self.metrics
            .http
            .response(route, self.status, classification);
    }
}

impl Drop for ResponseRecorder {
    fn drop(&mut self) {
        self.record();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body did not end before the request's deadline.
#[derive(Debug, thiserror::Error)]
#[error("request timeout: the response did not end within {0:?}")]
struct BodyTimeout(Duration);

pin_project_lite::pin_project! {
    /// A response body: the upstream's, streamed through, or one the proxy made.
    #[project = ProxyBodyProj]
    pub(crate) enum ProxyBody {
        Upstream {
            #[pin]
            inner: Incoming,
            recorder: ResponseRecorder,
            // The upstream HTTP/1 connection, back to the pool once the body is read.
            reusable: Option<Reusable>,
            // The request's deadline: past it the body is cut (gRPC: ended with
            // DEADLINE_EXCEEDED), and the upstream request cancelled.
            deadline: Option<BodyDeadline>,
            expired: bool,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl ProxyBody {
    pub(crate) fn full(data: Bytes) -> Self {
        ProxyBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Upstream {
                mut inner,
                recorder,
                reusable,
                deadline,
                expired,
            } => {
                if *expired {
                    return Poll::Ready(None);
                }
                if let Some(d) = deadline {
                    if std::future::Future::poll(d.sleep.as_mut(), cx).is_ready() {
                        let limit = d.limit;
                        *deadline = None;
                        *expired = true;
                        // The connection is mid-response: closed, not pooled.
                        reusable.take();
                        recorder.broken = true;
                        recorder.metrics.http.error(
                            recorder
                                .route
                                .as_ref()
                                .map_or(Direction::Outbound, |r| r.direction),
                            "request timeout",
                        );
                        recorder.record();
                        if recorder.grpc {
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("4"));
                            if let Ok(m) = HeaderValue::from_str(&BodyTimeout(limit).to_string()) {
                                trailers.insert("grpc-message", m);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout(limit)))));
                    }
                }
                let polled = inner.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            if let Some(ok) = grpc_status_of(trailers) {
                                recorder.grpc_status = Some(ok);
                            }
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        recorder.broken = true;
                        recorder.record();
                    }
                    Poll::Ready(None) => recorder.record(),
                    Poll::Pending => {}
                }
                let done = matches!(polled, Poll::Ready(None))
                    || (matches!(polled, Poll::Ready(Some(Ok(_)))) && inner.is_end_stream());
                if done {
                    if let Some(r) = reusable.take() {
                        r.give_back();
                    }
                }
                polled.map(|p| p.map(|r| r.map_err(Into::into)))
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, expired, .. } => *expired || inner.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

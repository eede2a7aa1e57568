//! Request bodies sent upstream, and the copy that lets a request be sent again.
//!
//! A request that may be retried on its response keeps its head (method, URI,
//! headers) and a copy of its body while the body streams to the first attempt: the
//! copy shares the body's buffers (`Bytes` are reference counted) and stops, freeing
//! what it held, once the body passes the limit. The body is never held back: a
//! request is replayable only once its body has been sent whole within the limit,
//! which for requests answered before their body ends (streaming) it never is.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The body of a request sent upstream.
#[derive(Debug)]
pub enum RequestBody<B = Incoming> {
    /// The client's body, streamed through.
    Stream(B),
    /// The client's body, streamed through while a copy is kept for a retry.
    Tee {
        inner: B,
        copy: Arc<Mutex<BodyCopy>>,
    },
    /// A copy, sent again.
    Replay {
        data: std::vec::IntoIter<Bytes>,
        trailers: Option<HeaderMap>,
        remaining: u64,
    },
}

/// What the first attempt's body has seen so far.
#[derive(Debug)]
pub struct BodyCopy {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    len: usize,
    max: usize,
    state: CopyState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyState {
    Copying,
    /// The body ended within the limit: the copy is whole.
    Complete,
    /// Too large, or the body failed: nothing can be replayed.
    Abandoned,
}

impl BodyCopy {
    fn record(&mut self, frame: &Frame<Bytes>) {
        if self.state != CopyState::Copying {
            return;
        }
        if let Some(data) = frame.data_ref().cloned() {
            self.len += data.len();
            if self.len > self.max {
                self.abandon();
                return;
            }
            self.data.push(data);
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
    }

    fn complete(&mut self) {
        if self.state == CopyState::Copying {
            self.state = CopyState::Complete;
        }
    }

    fn abandon(&mut self) {
        self.state = CopyState::Abandoned;
        self.data = Vec::new();
        self.trailers = None;
    }
}

fn lock(copy: &Mutex<BodyCopy>) -> MutexGuard<'_, BodyCopy> {
    copy.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's head and body copy, to build further attempts from.
#[derive(Debug)]
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// `None`: the request has no body.
    body: Option<Arc<Mutex<BodyCopy>>>,
}

impl Replay {
    /// Wraps `req` so that it can be sent again: its head is cloned and its body copied
    /// as it streams, up to `max` bytes. A body known to be larger is streamed without
    /// a copy and `None` comes back.
    pub fn capture<B>(req: Request<B>, max: usize) -> (Request<RequestBody<B>>, Option<Replay>)
    where
        B: Body<Data = Bytes>,
    {
        let empty = req.body().is_end_stream();
        if !empty && req.body().size_hint().lower() > max as u64 {
            return (req.map(RequestBody::Stream), None);
        }
        let mut replay = Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body: None,
        };
        if empty {
            return (req.map(RequestBody::Stream), Some(replay));
        }
        let copy = Arc::new(Mutex::new(BodyCopy {
            data: Vec::new(),
            trailers: None,
            len: 0,
            max,
            state: CopyState::Copying,
        }));
        replay.body = Some(copy.clone());
        let req = req.map(|inner| RequestBody::Tee { inner, copy });
        (req, Some(replay))
    }

    /// Whether another attempt can be made: the body was sent whole within the limit.
    pub fn is_ready(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(|copy| lock(copy).state == CopyState::Complete)
    }

    /// The request again, for another attempt (`None` unless [`Self::is_ready`]).
    pub fn request<B>(&self) -> Option<Request<RequestBody<B>>> {
        let body = match &self.body {
            None => RequestBody::Replay {
                data: Vec::new().into_iter(),
                trailers: None,
                remaining: 0,
            },
            Some(copy) => {
                let copy = lock(copy);
                if copy.state != CopyState::Complete {
                    return None;
                }
                RequestBody::Replay {
                    data: copy.data.clone().into_iter(),
                    trailers: copy.trailers.clone(),
                    remaining: copy.len as u64,
                }
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut() {
            RequestBody::Stream(inner) => Pin::new(inner).poll_frame(cx),
            RequestBody::Tee { inner, copy } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        let mut copy = lock(copy);
                        copy.record(frame);
                        if inner.is_end_stream() {
                            copy.complete();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => lock(copy).abandon(),
                    Poll::Ready(None) => lock(copy).complete(),
                    Poll::Pending => {}
                }
                polled
            }
            RequestBody::Replay {
                data,
                trailers,
                remaining,
            } => Poll::Ready(match data.next() {
                Some(chunk) => {
                    *remaining -= chunk.len() as u64;
                    Some(Ok(Frame::data(chunk)))
                }
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(inner) | RequestBody::Tee { inner, .. } => inner.is_end_stream(),
            RequestBody::Replay { data, trailers, .. } => {
                data.as_slice().is_empty() && trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(inner) | RequestBody::Tee { inner, .. } => inner.size_hint(),
            RequestBody::Replay { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    type Frames = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<FrameResult>>>;
    type FrameResult = Result<Frame<Bytes>, Infallible>;

    fn streamed(chunks: &[&'static str], trailers: Option<HeaderMap>) -> Frames {
        let mut frames: Vec<FrameResult> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn put<B>(body: B) -> Request<B> {
        Request::builder()
            .method(Method::PUT)
            .uri("/things/1")
            .header("x-test", "1")
            .body(body)
            .unwrap()
    }

    async fn read<B>(req: Request<RequestBody<B>>) -> (Bytes, Option<HeaderMap>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        let collected = req.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn a_small_body_is_replayed_with_its_head_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "42".parse().unwrap());
        let (first, replay) = Replay::capture(put(streamed(&["ab", "cd"], Some(trailers))), 16);
        let replay = replay.expect("small bodies are replayable");
        assert!(!replay.is_ready(), "not before the body was sent");
        assert!(replay.request::<Frames>().is_none());
        let (body, t) = read(first).await;
        assert_eq!(body, "abcd");
        assert_eq!(t.unwrap()["x-checksum"], "42");

        for _ in 0..2 {
            let again = replay.request::<Frames>().expect("the copy is whole");
            assert_eq!(again.method(), Method::PUT);
            assert_eq!(again.uri(), "/things/1");
            assert_eq!(again.headers()["x-test"], "1");
            assert_eq!(again.body().size_hint().exact(), Some(4));
            let (body, t) = read(again).await;
            assert_eq!(body, "abcd");
            assert_eq!(t.unwrap()["x-checksum"], "42");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_streamed_and_not_replayed() {
        let (first, replay) = Replay::capture(put(streamed(&["0123456789", "abcdefgh"], None)), 16);
        let replay = replay.expect("the size is not known up front");
        assert_eq!(read(first).await.0, "0123456789abcdefgh");
        assert!(!replay.is_ready());
        assert!(replay.request::<Frames>().is_none());
    }

    #[tokio::test]
    async fn a_body_known_to_be_too_large_is_not_copied() {
        let (first, replay) = Replay::capture(put(Full::new(Bytes::from_static(b"0123456789"))), 4);
        assert!(replay.is_none());
        assert!(matches!(first.body(), RequestBody::Stream(_)));
        assert_eq!(read(first).await.0, "0123456789");
    }

    #[tokio::test]
    async fn an_empty_body_is_replayable_at_once() {
        let empty = http_body_util::Empty::<Bytes>::new();
        let (_first, replay) = Replay::capture(put(empty), 16);
        let replay = replay.unwrap();
        assert!(replay.is_ready());
        let again = replay.request::<http_body_util::Empty<Bytes>>().unwrap();
        assert!(again.body().is_end_stream());
        assert_eq!(read(again).await.0, "");
    }

    #[tokio::test]
    async fn a_body_dropped_half_way_is_not_replayable() {
        let (first, replay) = Replay::capture(put(streamed(&["ab", "cd"], None)), 16);
        let mut body = first.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(body);
        assert!(!replay.unwrap().is_ready());
    }
}

//! The upstream pools of `weft_proxy::upstream`, on their own: concurrent HTTP/2
//! requests share one connection attempt (a slow one holds no lock, a failed one is
//! made again by the next request), and pools unused for the idle timeout are dropped
//! without breaking a request in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;
use weft_core::identity::Identity;
use weft_proxy::identity::LocalIdentity;
use weft_proxy::metrics::{Direction, Metrics};
use weft_proxy::retry::RequestBody;
use weft_proxy::upstream::{Connector, HttpUpstreams, HttpVersion, UpstreamError};
use weft_test::ca::TestCa;
use weft_test::TestServer;

/// A listener that counts the connections it accepts and passes them on to
/// `to`, or holds them without a word when `to` is `None`.
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    async fn start(to: Option<SocketAddr>) -> Counting {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut silent = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                match to {
                    Some(to) => {
                        tokio::spawn(async move {
                            let mut upstream = TcpStream::connect(to).await.unwrap();
                            let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                        });
                    }
                    None => silent.push(socket),
                }
            }
        });
        Counting {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn upstreams(timeout: Duration, identity: Option<Arc<LocalIdentity>>) -> HttpUpstreams {
    let connector = Connector::new(
        Direction::Outbound,
        timeout,
        Metrics::new(&Default::default()).tcp.clone(),
        identity,
    );
    HttpUpstreams::new(connector, Duration::from_secs(60))
}

fn get(path: &str) -> Request<RequestBody> {
    Request::get(format!("http://test{path}"))
        .body(RequestBody::Replay {
            data: Vec::new().into_iter(),
            trailers: None,
            remaining: 0,
        })
        .unwrap()
}

#[tokio::test]
async fn concurrent_h2_requests_share_one_connection() {
    let app = TestServer::loopback("app").await;
    let counting = Counting::start(Some(app.addr())).await;
    let upstreams = Arc::new(upstreams(Duration::from_secs(5), None));
    let sends = (0..10).map(|_| {
        let upstreams = upstreams.clone();
        let addr = counting.addr;
        tokio::spawn(async move {
            let (rsp, _) = upstreams
                .send(addr, HttpVersion::Http2, None, get("/"))
                .await
                .map_err(|e| e.error)
                .unwrap();
            rsp.status()
        })
    });
    for send in sends.collect::<Vec<_>>() {
        assert_eq!(send.await.unwrap(), 200);
    }
    assert_eq!(counting.accepted(), 1, "one HTTP/2 connection for all");
    assert_eq!(app.requests(), 10);
}

#[tokio::test]
async fn a_slow_h2_connect_fails_its_waiting_requests_together_and_the_next_one_tries_again() {
    // An endpoint that accepts TCP and never answers the TLS handshake: each
    // attempt takes the whole connect timeout.
    let silent = Counting::start(None).await;
    let ca = TestCa::default();
    let local = ca.identity("web", "default", Duration::from_secs(3600));
    let server: Identity = "books.default.serviceaccount.identity.weft.cluster.local"
        .parse()
        .unwrap();
    let timeout = Duration::from_millis(300);
    let upstreams = Arc::new(upstreams(timeout, Some(local)));
    let started = Instant::now();
    let sends = (0..8).map(|_| {
        let (upstreams, server) = (upstreams.clone(), server.clone());
        let addr = silent.addr;
        tokio::spawn(async move {
            let failed = upstreams
                .send(addr, HttpVersion::Http2, Some(&server), get("/"))
                .await
                .err()
                .expect("no connection");
            (failed.error, failed.unsent.is_some(), started.elapsed())
        })
    });
    for send in sends.collect::<Vec<_>>() {
        let (error, unsent, after) = send.await.unwrap();
        assert!(
            matches!(error, UpstreamError::ConnectTimeout { .. }),
            "{error}"
        );
        assert!(unsent, "a request that never left comes back");
        // Together, not one connect timeout after the other (8 × 300 ms).
        assert!(after < timeout * 3, "{after:?}");
    }
    assert_eq!(silent.accepted(), 1, "one attempt for all");

    // The attempt failed: the next request makes a new one.
    let failed = upstreams
        .send(silent.addr, HttpVersion::Http2, Some(&server), get("/"))
        .await
        .err()
        .expect("no connection");
    assert!(matches!(failed.error, UpstreamError::ConnectTimeout { .. }));
    assert_eq!(silent.accepted(), 2);
}

#[tokio::test]
async fn pools_unused_for_the_idle_timeout_are_dropped_and_made_again_on_use() {
    let app = TestServer::loopback("app").await;
    let upstreams = upstreams(Duration::from_secs(5), None);
    let idle = upstreams.idle_timeout();
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let (rsp, reusable) = upstreams
            .send(app.addr(), version, None, get("/"))
            .await
            .map_err(|e| e.error)
            .unwrap();
        rsp.into_body().collect().await.unwrap();
        if let Some(r) = reusable {
            r.give_back();
        }
    }
    assert_eq!(upstreams.pool_count(), 2);
    let now = tokio::time::Instant::now();
    assert_eq!(upstreams.evict_idle(now), 0, "used just now");
    assert_eq!(upstreams.evict_idle(now + idle), 2);
    assert_eq!(upstreams.pool_count(), 0);

    // Used again: a new pool, and a new connection.
    let (rsp, _) = upstreams
        .send(app.addr(), HttpVersion::Http2, None, get("/"))
        .await
        .map_err(|e| e.error)
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(upstreams.pool_count(), 1);
}

#[tokio::test]
async fn eviction_breaks_no_request_in_flight() {
    let app = TestServer::loopback("app").await;
    let upstreams = upstreams(Duration::from_secs(5), None);
    let later = tokio::time::Instant::now() + upstreams.idle_timeout() * 2;

    // An HTTP/1 connection lent out for a response being read keeps its pool.
    let (rsp, reusable) = upstreams
        .send(app.addr(), HttpVersion::Http1, None, get("/chunks/3"))
        .await
        .map_err(|e| e.error)
        .unwrap();
    assert_eq!(upstreams.evict_idle(later), 0);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
    drop(reusable);
    assert_eq!(upstreams.evict_idle(later), 1);

    // An HTTP/2 response still streaming survives its pool's eviction: the
    // connection closes only once its last stream ends.
    let (rsp, _) = upstreams
        .send(app.addr(), HttpVersion::Http2, None, get("/chunks/3"))
        .await
        .map_err(|e| e.error)
        .unwrap();
    assert_eq!(upstreams.evict_idle(later), 1);
    assert_eq!(upstreams.pool_count(), 0);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
}

//! hyper's HTTP/1 header-read timeout on one timer per connection.
//!
//! hyper's server times how long a request head takes to arrive (slowloris protection,
//! 30 s by default; it also closes a kept-alive connection idle for that long). It asks
//! its [`Timer`] for a new sleep for every request and drops it once the head is in:
//! with `TokioTimer` that is an allocation, a registration in tokio's timer wheel and a
//! removal from it (both under the time driver's lock) per request.
//!
//! [`ConnTimer`] keeps one tokio [`tokio::time::Sleep`] for the connection instead,
//! armed at the first head's deadline. A later head's sleep leaves it as it is while it
//! is armed no later than the new deadline and would wake the same task: when it fires
//! early, it is moved to the deadline the head being read has, and fires again then.
//! So a request costs hyper's small box and a compare, and tokio's timer is touched once
//! per timeout period (30 s) at most. The timeout itself is unchanged: a sleep completes
//! at the deadline hyper asked for, not before.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// A [`Timer`] for one HTTP/1 server connection (see the module's documentation).
#[derive(Clone, Default)]
pub(crate) struct ConnTimer {
    slot: Arc<Mutex<Option<Armed>>>,
}

/// The connection's tokio sleep (made at the first head) and the task it wakes. hyper
/// holds at most one of its sleeps at a time (the head being read); the lock is for
/// `Sync`, never contended.
struct Armed {
    sleep: Pin<Box<tokio::time::Sleep>>,
    waker: Waker,
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock (as `TokioTimer`'s): the deadlines are tokio's, and tests pause it.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(ConnSleep {
            slot: self.slot.clone(),
            deadline: tokio::time::Instant::from_std(deadline),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<ConnSleep>() {
            Some(mut sleep) => sleep.deadline = tokio::time::Instant::from_std(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// One sleep hyper asked for: the connection's tokio sleep, until this deadline.
struct ConnSleep {
    slot: Arc<Mutex<Option<Armed>>>,
    deadline: tokio::time::Instant,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let armed = slot.get_or_insert_with(|| Armed {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            waker: Waker::noop().clone(),
        });
        loop {
            let sleep = &mut armed.sleep;
            if sleep.is_elapsed() {
                // Fired: at or past this deadline, the head is late; else it fired for
                // an earlier head, and is armed again for this one.
                if sleep.deadline() >= deadline {
                    return Poll::Ready(());
                }
                sleep.as_mut().reset(deadline);
            } else if sleep.deadline() > deadline {
                // Armed later than asked (hyper never asks for an earlier deadline than
                // the last; kept right anyway).
                sleep.as_mut().reset(deadline);
            } else if armed.waker.will_wake(cx.waker()) {
                // Armed no later than this deadline, for this task: it wakes the task in
                // time to be looked at again.
                return Poll::Pending;
            }
            // Outside tokio's cooperative budget: an exhausted budget would return
            // Pending without registering the timer, and with the waker kept, no later
            // poll would.
            match std::pin::pin!(tokio::task::coop::unconstrained(sleep.as_mut())).poll(cx) {
                // Registered, to wake this task.
                Poll::Pending => {
                    armed.waker.clone_from(cx.waker());
                    return Poll::Pending;
                }
                // Fired (is_elapsed now): decided at the top.
                Poll::Ready(()) => continue,
            }
        }
    }
}

impl Sleep for ConnSleep {}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;

    use super::ConnTimer;

    const TIMEOUT: Duration = Duration::from_secs(30);
    const RELEASE: Duration = crate::http::IDLE_BUFFER_RELEASE;
    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    /// An HTTP/1 server connection with the proxy's header-read timeout, and the
    /// client's end of it.
    fn serve() -> (DuplexStream, JoinHandle<hyper::Result<()>>) {
        let (client, server) = tokio::io::duplex(4096);
        let svc = service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let conn = http1::Builder::new()
            .timer(ConnTimer::default())
            .header_read_timeout(TIMEOUT)
            .idle_buffer_release(RELEASE)
            .serve_connection(TokioIo::new(server), svc);
        (client, tokio::spawn(conn))
    }

    /// Reads one response (the test's responses all end with their 2-byte body).
    async fn response(client: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0; 1024];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a whole response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    /// A first request in time, then, `wait` after it, a second head that stops
    /// half-way: the connection is closed at the header-read deadline, which hyper
    /// counts from when the connection went idle, and not before.
    async fn half_a_head_is_cut_at_the_deadline(wait: Duration) {
        let (mut client, conn) = serve();
        client.write_all(GET).await.unwrap();
        assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
        let idle = tokio::time::Instant::now();
        tokio::time::sleep(wait).await;
        client.write_all(&GET[..10]).await.unwrap();
        tokio::time::sleep_until(idle + TIMEOUT - Duration::from_millis(10)).await;
        assert!(!conn.is_finished(), "not closed before the timeout");
        let closed = tokio::time::timeout(Duration::from_secs(1), conn)
            .await
            .expect("the connection closed at the timeout")
            .unwrap();
        assert!(
            closed.as_ref().is_err_and(|e| e.is_timeout()),
            "closed for the slow head: {closed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
        half_a_head_is_cut_at_the_deadline(TIMEOUT / 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn each_head_gets_its_own_time() {
        let (mut client, conn) = serve();
        // Heads every 20 s: more than the timeout in all, each in time.
        for _ in 0..5 {
            client.write_all(GET).await.unwrap();
            assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
            tokio::time::sleep(TIMEOUT * 2 / 3).await;
        }
        assert!(!conn.is_finished(), "the connection is still open");
        // Idle past the timeout: closed (as with hyper's own timer).
        tokio::time::sleep(TIMEOUT).await;
        let closed = tokio::time::timeout(Duration::from_secs(1), conn)
            .await
            .expect("the idle connection closed")
            .unwrap();
        assert!(closed.is_err_and(|e| e.is_timeout()));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_go_on_after_the_buffers_are_given_back() {
        let (mut client, conn) = serve();
        client.write_all(GET).await.unwrap();
        assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
        // Idle past the release point: the next request reads into a new buffer.
        tokio::time::sleep(RELEASE * 3).await;
        client.write_all(GET).await.unwrap();
        assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
        // A head begun before the release point and finished after it: its bytes are
        // kept (the buffer is not given back under them).
        client.write_all(&GET[..10]).await.unwrap();
        tokio::time::sleep(RELEASE * 2).await;
        client.write_all(&GET[10..]).await.unwrap();
        assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
        assert!(!conn.is_finished(), "the connection is still open");
    }

    #[tokio::test(start_paused = true)]
    async fn the_release_point_does_not_move_the_timeout() {
        // Half a head begun after the buffers were given back.
        half_a_head_is_cut_at_the_deadline(RELEASE * 2).await;
    }
}

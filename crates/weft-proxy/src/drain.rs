//! Graceful drain: a signal every connection watches, and a way to wait until all of
//! them have finished.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

/// Owned by the proxy; signals drain and waits for every [`Watch`] to be dropped.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Held by each listener and connection for as long as it runs.
pub struct Watch {
    /// Only looked at: has anything been sent since it subscribed? (Only `true` ever
    /// is.)
    rx: watch::Receiver<bool>,
    /// tokio's wait on a clone of the receiver once polled, and the waker it holds;
    /// kept across polls (and [`Watch::signaled`] futures) so that the wait is made
    /// once per watch.
    wait: Option<(Wait, Waker)>,
}

/// tokio's wait for the signal, on a receiver of its own.
type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Clone for Watch {
    fn clone(&self) -> Self {
        Watch {
            rx: self.rx.clone(),
            wait: None,
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("signaled", &self.is_signaled())
            .field("waiting", &self.wait.is_some())
            .finish()
    }
}

pub fn channel() -> (Drain, Watch) {
    let (tx, rx) = watch::channel(false);
    (Drain { tx }, Watch { rx, wait: None })
}

impl Drain {
    /// Tells every watcher to stop taking new work.
    pub fn signal(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_signaled(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once every watcher is gone.
    pub async fn drained(&self) {
        self.tx.closed().await
    }

    /// A new watcher (also usable after drain started: it sees the signal at once).
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
            wait: None,
        }
    }
}

impl Watch {
    /// Resolves when drain is signalled (or the proxy's `Drain` is gone).
    pub fn signaled(&mut self) -> Signaled<'_> {
        Signaled(self)
    }

    /// Ready once drain is signalled (or the proxy's `Drain` is gone); otherwise this
    /// task is woken when it is.
    ///
    /// Made to be polled often: a connection polls it each time the connection is
    /// polled, several times per request. The first poll registers this task's waker
    /// with the channel; later ones only compare the channel's version and the waker
    /// (tokio's own future would take the channel's waiter lock at every poll: about
    /// 400 instructions per request, bench/instructions).
    pub fn poll_signaled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some((_, waker)) = &self.wait {
            // Nothing sent, and the wait registered wakes this task: it wakes the task
            // when something is.
            if waker.will_wake(cx.waker()) && !self.rx.has_changed().unwrap_or(true) {
                return Poll::Pending;
            }
        }
        let rx = &self.rx;
        let (wait, waker) = self.wait.get_or_insert_with(|| {
            let mut rx = rx.clone();
            let wait = async move {
                let _ = rx.wait_for(|draining| *draining).await;
            };
            (Box::pin(wait), Waker::noop().clone())
        });
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // A finished wait is never polled again: a later poll makes a new one,
                // which is ready at once.
                self.wait = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                waker.clone_from(cx.waker());
                Poll::Pending
            }
        }
    }

    pub fn is_signaled(&self) -> bool {
        *self.rx.borrow()
    }
}

/// The future of [`Watch::signaled`].
pub struct Signaled<'a>(&'a mut Watch);

impl Future for Signaled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_signaled(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::channel;

    #[test]
    fn signaled_wakes_its_task_and_resolves_once_drain_is_signalled() {
        let (drain, mut watch) = channel();
        let woken = std::sync::Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut signaled = pin!(watch.signaled());
        // Polled again and again before drain: pending, and no wake-up.
        for _ in 0..3 {
            assert!(signaled.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(woken.count(), 0);
        drain.signal();
        assert_eq!(woken.count(), 1, "drain wakes the task");
        assert!(signaled.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn signaled_follows_a_new_waker() {
        let (drain, mut watch) = channel();
        let first = std::sync::Arc::new(Woken::default());
        let second = std::sync::Arc::new(Woken::default());
        let mut signaled = pin!(watch.signaled());
        let waker = Waker::from(first.clone());
        assert!(signaled
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        // Moved to another task: that task is the one woken.
        let waker = Waker::from(second.clone());
        assert!(signaled
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drain.signal();
        assert_eq!((first.count(), second.count()), (0, 1));
    }

    #[test]
    fn a_watch_made_after_drain_is_signalled_at_once() {
        let (drain, _watch) = channel();
        drain.signal();
        let mut late = drain.watch();
        let waker = Waker::noop();
        assert_eq!(
            pin!(late.signaled()).poll(&mut Context::from_waker(waker)),
            Poll::Ready(())
        );
    }

    #[test]
    fn a_watch_polled_again_after_the_signal_stays_ready() {
        let (drain, mut watch) = channel();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(watch.poll_signaled(&mut cx).is_pending());
        drain.signal();
        // The finished wait is not polled again (that would panic): each later poll,
        // and each later `signaled()`, is ready at once.
        for _ in 0..2 {
            assert!(watch.poll_signaled(&mut cx).is_ready());
            assert!(pin!(watch.signaled()).poll(&mut cx).is_ready());
        }
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicUsize);

    impl Woken {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl std::task::Wake for Woken {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

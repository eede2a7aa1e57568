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
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

pub fn channel() -> (Drain, Watch) {
    let (tx, rx) = watch::channel(false);
    (Drain { tx }, Watch { rx })
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
        }
    }
}

impl Watch {
    /// Resolves when drain is signalled (or the proxy's `Drain` is gone).
    ///
    /// Made to be polled often: a connection's `select!` polls it each time the
    /// connection is polled, several times per request. The first poll registers this
    /// task's waker with the channel; later ones only compare the channel's version and
    /// the waker (tokio's own future would take the channel's waiter lock at every poll:
    /// about 400 instructions per request, bench/instructions).
    pub fn signaled(&mut self) -> Signaled<'_> {
        Signaled {
            probe: &self.rx,
            wait: None,
        }
    }

    pub fn is_signaled(&self) -> bool {
        *self.rx.borrow()
    }
}

/// The future of [`Watch::signaled`].
pub struct Signaled<'a> {
    /// The watch's own receiver, only looked at: has anything been sent since it
    /// subscribed? (Only `true` ever is.)
    probe: &'a watch::Receiver<bool>,
    /// tokio's wait on a clone of the receiver, once polled, and the waker it holds.
    wait: Option<(Wait, Waker)>,
}

/// tokio's wait for the signal, on a receiver of its own.
type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Future for Signaled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some((_, waker)) = &this.wait {
            // Nothing sent, and the wait registered wakes this task: it wakes the task
            // when something is.
            if waker.will_wake(cx.waker()) && !this.probe.has_changed().unwrap_or(true) {
                return Poll::Pending;
            }
        }
        let probe = this.probe;
        let (wait, waker) = this.wait.get_or_insert_with(|| {
            let mut rx = probe.clone();
            let wait = async move {
                let _ = rx.wait_for(|draining| *draining).await;
            };
            (Box::pin(wait), Waker::noop().clone())
        });
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                waker.clone_from(cx.waker());
                Poll::Pending
            }
        }
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

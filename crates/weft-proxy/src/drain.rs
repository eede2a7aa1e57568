//! Graceful drain: a signal every connection watches, and a way to wait until all of
//! them have finished.

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
    /// Resolves when drain is signalled.
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|draining| *draining).await;
    }

    pub fn is_signaled(&self) -> bool {
        *self.rx.borrow()
    }
}

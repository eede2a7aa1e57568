//! A file whose next read blocks: for tests that a component reads files off its
//! runtime's threads (a blocked read on a single-threaded runtime would stop it).

use std::io::Write as _;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer waits to hear that the runtime kept running.
const RUNTIME_WAIT: Duration = Duration::from_secs(5);

/// `path`, replaced by a FIFO: a reader that opens it blocks until the writer writes
/// `contents`, which it does once told the runtime kept running meanwhile (or after
/// [`RUNTIME_WAIT`]).
pub struct BlockedRead {
    opened: Option<tokio::sync::oneshot::Receiver<()>>,
    ack: mpsc::Sender<()>,
    writer: JoinHandle<bool>,
}

impl BlockedRead {
    pub fn start(path: &Path, contents: Vec<u8>) -> BlockedRead {
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let (ack_tx, ack_rx) = mpsc::channel();
        let path = path.to_owned();
        let writer = std::thread::spawn(move || {
            let fifo = path.with_extension("fifo");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success(), "mkfifo {}", fifo.display());
            std::fs::rename(&fifo, &path).unwrap();
            // Opens once a reader opened it, and is blocked reading.
            let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let _ = opened_tx.send(());
            let runtime_ran = ack_rx.recv_timeout(RUNTIME_WAIT).is_ok();
            file.write_all(&contents).unwrap();
            runtime_ran
        });
        BlockedRead {
            opened: Some(opened_rx),
            ack: ack_tx,
            writer,
        }
    }

    /// Waits (on the runtime under test) until a reader is blocked on the FIFO, then
    /// tells the writer the runtime runs: only a runtime that was not blocked gets here.
    pub async fn reader_blocked(&mut self) {
        if let Some(opened) = self.opened.take() {
            opened.await.expect("the FIFO's writer stopped");
        }
        // (The writer stopped waiting after RUNTIME_WAIT: `runtime_ran` says so.)
        let _ = self.ack.send(());
    }

    /// Whether the runtime ran while the read was blocked.
    pub fn runtime_ran(self) -> bool {
        self.writer.join().unwrap()
    }
}

//! Knowing when files may have changed: inotify (through `notify`) on the directories
//! that hold them, polling when inotify cannot be used. The proxy's endpoints file and
//! the controller's mesh directory and pods file are watched this way (feature `watch`).
//!
//! [`Changes::next`] only says *when* to look; the caller still compares what it reads
//! (a file's mtime, size and inode) with what it has, so a missed or spurious wake-up
//! costs a `stat`, never a wrong index. That is what makes the three ways of waking up
//! interchangeable:
//!
//! - **Events.** The directory is watched, not the file: writers replace files by
//!   renaming a new one over them, and a watch on the file would follow the old inode.
//!   Events on other files of the directory are ignored, as are opens and reads (our
//!   own reads would wake us up again). A burst (an editor's save, `weft up` writing
//!   several files) is let settle for [`WatchOptions::debounce`] and gives one wake-up.
//! - **A slow re-check** every [`WatchOptions::recheck`], as a safety net for events
//!   the kernel did not deliver (a network file system, a bind mount changed beneath).
//! - **Polling** every [`WatchOptions::poll`] when inotify is not there or fails: no
//!   inotify instance or watch left (`fs.inotify.max_user_instances`,
//!   `max_user_watches`), a directory that does not exist yet, a watched directory
//!   removed or renamed (its watch is gone with it), the kernel's event queue
//!   overflowing repeatedly, or an error reading events. Polling does not go back to
//!   events: it is what weft did before, and it is cheap.
//!
//! Setting a watch up makes a few system calls on the calling thread
//! (`inotify_init`, one `inotify_add_watch` per directory) and starts one thread that
//! reads events; call [`Changes::watch`] from the blocking pool. [`Changes::next`]
//! itself never touches the file system.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

/// How a watch wakes its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// How long a burst of events may go quiet before the one wake-up it gives; a burst
    /// that never settles wakes the caller every ten times this.
    pub debounce: Duration,
    /// Wake-ups without an event, in case one was not delivered.
    pub recheck: Duration,
    /// How often the caller is woken when inotify cannot be used.
    pub poll: Duration,
}

impl WatchOptions {
    /// Events settle for 10 ms, a re-check every 10 s, and polling every `poll`.
    pub fn polling_every(poll: Duration) -> WatchOptions {
        WatchOptions {
            debounce: Duration::from_millis(10),
            recheck: Duration::from_secs(10),
            poll,
        }
    }
}

/// What a watched directory's events are about: the files the caller reads.
pub type FileFilter = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// How a [`Changes`] learns of changes at the moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Woken by inotify events (and the slow re-check).
    Events,
    /// Woken every [`WatchOptions::poll`]; why inotify is not used.
    Polling { reason: String },
}

/// Wake-ups for a set of watched directories; see the module's documentation.
pub struct Changes {
    /// What is watched, for the log (`endpoints file`, `mesh directory`).
    what: &'static str,
    options: WatchOptions,
    mode: Mode,
    /// Dropped when polling takes over: the event thread ends with it.
    watcher: Option<RecommendedWatcher>,
    events: Arc<Events>,
    /// Whether the next wake-up is due at once: the first one, for what changed between
    /// the caller's last read and the watch being set up.
    due: bool,
}

/// What the event thread tells [`Changes::next`].
#[derive(Default)]
struct Events {
    notify: Notify,
    /// The watch cannot be trusted any more (see [`Mode::Polling`]); set once.
    broken: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Events {
    fn wake(&self) {
        self.notify.notify_one();
    }

    fn break_with(&self, reason: String) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(reason);
        self.broken.store(true, Ordering::Release);
        self.wake();
    }
}

impl Changes {
    /// Watches `dirs` (not recursively) for events on the files `filter` accepts; falls
    /// back to polling, saying why in [`Changes::mode`] and the log, when that cannot be
    /// set up. `what` names the files in the log. Blocking: system calls on the file
    /// system.
    pub fn watch(
        what: &'static str,
        dirs: &[PathBuf],
        filter: FileFilter,
        options: WatchOptions,
    ) -> Changes {
        let events = Arc::new(Events::default());
        match watcher(dirs, filter, events.clone()) {
            Ok(watcher) => {
                tracing::debug!(what, ?dirs, "watching with inotify");
                Changes {
                    what,
                    options,
                    mode: Mode::Events,
                    watcher: Some(watcher),
                    events,
                    due: true,
                }
            }
            Err(reason) => Changes::polling(what, reason, options),
        }
    }

    /// Polling only, for `reason`.
    pub fn polling(what: &'static str, reason: String, options: WatchOptions) -> Changes {
        warn_polling(what, &reason, options.poll);
        Changes {
            what,
            options,
            mode: Mode::Polling { reason },
            watcher: None,
            events: Arc::default(),
            due: true,
        }
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Waits until the files should be looked at again: at once the first time (what
    /// changed before the watch was set up), then after a burst of events has settled,
    /// at the re-check, or at the next poll. Cancel-safe.
    pub async fn next(&mut self) {
        if std::mem::take(&mut self.due) {
            return;
        }
        if self.watcher.is_some() && self.events.broken.load(Ordering::Acquire) {
            self.fall_back();
            // What happened before the watch broke may not have been looked at.
            return;
        }
        if self.watcher.is_none() {
            tokio::time::sleep(self.options.poll).await;
            return;
        }
        let recheck = Instant::now() + self.options.recheck;
        tokio::select! {
            _ = self.events.notify.notified() => {}
            _ = sleep_until(recheck) => return,
        }
        // Let the burst settle: wait while events keep coming, within a bound.
        let bound = Instant::now() + self.options.debounce * 10;
        loop {
            let quiet = (Instant::now() + self.options.debounce).min(bound);
            tokio::select! {
                _ = self.events.notify.notified() => {}
                _ = sleep_until(quiet) => break,
            }
            if Instant::now() >= bound {
                break;
            }
        }
        if self.events.broken.load(Ordering::Acquire) {
            self.fall_back();
        }
    }

    fn fall_back(&mut self) {
        let reason = self
            .events
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "the watch failed".to_owned());
        warn_polling(self.what, &reason, self.options.poll);
        self.watcher = None;
        self.mode = Mode::Polling { reason };
    }
}

fn warn_polling(what: &'static str, reason: &str, poll: Duration) {
    tracing::warn!(
        what,
        reason,
        "changes are noticed by polling every {poll:?}, not by inotify events"
    );
}

/// Sets the watches up; on an error, why inotify cannot be used.
fn watcher(
    dirs: &[PathBuf],
    filter: FileFilter,
    events: Arc<Events>,
) -> Result<RecommendedWatcher, String> {
    let watched: Vec<PathBuf> = dirs.to_vec();
    let handler = move |event: notify::Result<Event>| match event {
        Ok(event) => {
            if let Some(reason) = lost_watch(&event, &watched) {
                events.break_with(reason);
            } else if wakes(&event, &filter) {
                events.wake();
            }
        }
        Err(error) => events.break_with(format!("reading inotify events failed: {error}")),
    };
    let mut watcher = notify::recommended_watcher(handler)
        .map_err(|error| format!("inotify cannot be used: {}", describe(&error)))?;
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|error| format!("cannot watch {}: {}", dir.display(), describe(&error)))?;
    }
    Ok(watcher)
}

/// `notify`'s error, with what to do about inotify's limits.
fn describe(error: &notify::Error) -> String {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "no inotify watch left (fs.inotify.max_user_watches)".to_owned()
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
            "no inotify instance left (fs.inotify.max_user_instances)".to_owned()
        }
        notify::ErrorKind::PathNotFound => "no such directory".to_owned(),
        _ => error.to_string(),
    }
}

/// Whether an event says a watched directory itself went away (removed or renamed):
/// its watch is gone, and nothing in the directory would wake us again.
fn lost_watch(event: &Event, watched: &[PathBuf]) -> Option<String> {
    if !matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    ) {
        return None;
    }
    let dir = event.paths.iter().find(|p| watched.contains(p))?;
    Some(format!("{} was removed or renamed", dir.display()))
}

/// Whether an event is about a file the caller reads (or the kernel asks for a rescan).
fn wakes(event: &Event, filter: &FileFilter) -> bool {
    if event.need_rescan() {
        return true;
    }
    match event.kind {
        // Opens and reads, ours included, change nothing; a write ends with Close(Write).
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    event.paths.iter().any(|p| filter(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WatchOptions {
        WatchOptions {
            debounce: Duration::from_millis(5),
            // Long enough that only an event (or the fallback's polling) wakes a test.
            recheck: Duration::from_secs(3600),
            poll: Duration::from_millis(10),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn named(name: &'static str) -> FileFilter {
        Arc::new(move |p: &Path| p.file_name().is_some_and(|n| n == name))
    }

    /// A watch of `dir`'s watched.yaml, past its first wake-up (due at once).
    async fn watching(dir: &Path, options: WatchOptions) -> Changes {
        let mut changes = Changes::watch(
            "test files",
            &[dir.to_owned()],
            named("watched.yaml"),
            options,
        );
        let first = tokio::time::timeout(Duration::from_millis(100), changes.next()).await;
        assert!(first.is_ok(), "the first wake-up was not at once");
        changes
    }

    /// Whether `changes` wakes within five seconds.
    async fn wakes_soon(changes: &mut Changes) -> bool {
        tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_file_renamed_into_place_wakes_and_other_files_do_not() {
        let dir = temp_dir("rename");
        let mut changes = watching(&dir, options()).await;
        assert_eq!(changes.mode(), &Mode::Events);
        // Another file of the directory: no wake-up.
        std::fs::write(dir.join("other.log"), "x").unwrap();
        let early = tokio::time::timeout(Duration::from_millis(200), changes.next()).await;
        assert!(early.is_err(), "an unwatched file woke the watch");
        std::fs::write(dir.join("watched.tmp"), "a: 1\n").unwrap();
        std::fs::rename(dir.join("watched.tmp"), dir.join("watched.yaml")).unwrap();
        assert!(wakes_soon(&mut changes).await, "the rename gave no wake-up");
        assert_eq!(changes.mode(), &Mode::Events);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_watched_is_polled() {
        let dir = temp_dir("missing").join("not-yet");
        let mut changes = watching(&dir, options()).await;
        match changes.mode() {
            Mode::Polling { reason } => assert!(
                reason.contains("not-yet") && reason.contains("no such directory"),
                "{reason}"
            ),
            mode => panic!("expected polling, got {mode:?}"),
        }
        // Woken by polling, with nothing happening at all.
        assert!(wakes_soon(&mut changes).await);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_removed_directory_turns_the_watch_into_polling() {
        let dir = temp_dir("removed");
        let mut changes = watching(&dir, options()).await;
        assert_eq!(changes.mode(), &Mode::Events);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(wakes_soon(&mut changes).await);
        // The next wake-ups come from polling, for the directory made again.
        assert!(wakes_soon(&mut changes).await);
        match changes.mode() {
            Mode::Polling { reason } => {
                assert!(reason.contains("removed or renamed"), "{reason}")
            }
            mode => panic!("expected polling, got {mode:?}"),
        }
    }

    #[tokio::test]
    async fn a_burst_of_writes_gives_few_wake_ups() {
        let dir = temp_dir("burst");
        let options = WatchOptions {
            debounce: Duration::from_millis(50),
            ..options()
        };
        let mut changes = watching(&dir, options).await;
        for i in 0..50 {
            std::fs::write(dir.join("watched.yaml"), format!("n: {i}\n")).unwrap();
        }
        assert!(wakes_soon(&mut changes).await);
        let mut more = 0;
        while tokio::time::timeout(Duration::from_millis(300), changes.next())
            .await
            .is_ok()
        {
            more += 1;
        }
        // Each write is several events (create/modify/close); a slow machine may split
        // the burst, but not into one wake-up per write.
        assert!(more < 5, "{more} more wake-ups for one burst of 50 writes");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The `local` source: a mesh directory (`mesh.yaml` and Kubernetes objects in other
//! `*.yaml` files) and the pods file `weft up` writes, both watched for changes
//! (inotify events on their directories, polling every `--watch-interval` where inotify
//! cannot be used: [`weft_core::watch`]). A change is applied as a new [`Index`]; a mesh directory that does not load is logged
//! (file, object and field of every problem) and the last good one keeps serving, as
//! does the last good pods file.
//!
//! The files are read (and the mesh directory parsed) on the blocking pool
//! (`spawn_blocking`), never on the runtime's worker threads that serve the streams.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use weft_core::mesh::{Mesh, MeshError};
use weft_core::pods::{PodsFile, PodsFileError};
use weft_core::watch::{Changes, FileFilter, WatchOptions};

use super::Index;
use crate::metrics::{DestinationMetrics, ReloadLabels};

/// How often the files are checked by default when inotify cannot be used: cheap (a
/// directory listing and a few `stat`s) and short next to the one second a change may
/// take to reach proxies.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct LocalSourceConfig {
    pub mesh_dir: PathBuf,
    /// Where pods run (written by `weft up`); a missing file means no pods yet.
    pub pods_file: PathBuf,
    /// How often the files are polled when inotify cannot watch their directories.
    pub watch_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the mesh directory {dir} does not load:\n{source}")]
    Mesh { dir: PathBuf, source: MeshError },
    #[error(transparent)]
    Pods(#[from] PodsFileError),
    #[error("--watch-interval must be at least 1 ms")]
    Interval,
}

/// A loaded source, ready to watch its files.
pub struct LocalSource {
    config: LocalSourceConfig,
    trust_domain: String,
    opaque_ports: Vec<u16>,
    mesh: Mesh,
    pods: PodsFile,
    mesh_stamp: Vec<FileStamp>,
    pods_stamp: Option<FileStamp>,
}

/// What tells that a file changed: its name, modification time, size and inode.
type FileStamp = (PathBuf, SystemTime, u64, u64);

fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((
        path.to_owned(),
        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        m.len(),
        m.ino(),
    ))
}

fn dir_stamp(dir: &Path) -> Vec<FileStamp> {
    weft_core::mesh::yaml_files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| file_stamp(p))
        .collect()
}

impl LocalSource {
    /// Loads both files once: the mesh directory must be valid to start; the pods file
    /// may not exist yet.
    pub fn load(
        config: LocalSourceConfig,
        trust_domain: &str,
        opaque_ports: &[u16],
    ) -> Result<LocalSource, SourceError> {
        if config.watch_interval < Duration::from_millis(1) {
            return Err(SourceError::Interval);
        }
        let mesh_stamp = dir_stamp(&config.mesh_dir);
        let pods_stamp = file_stamp(&config.pods_file);
        let mesh = Mesh::load(&config.mesh_dir).map_err(|source| SourceError::Mesh {
            dir: config.mesh_dir.clone(),
            source,
        })?;
        let pods = PodsFile::load(&config.pods_file)?.unwrap_or_default();
        Ok(LocalSource {
            config,
            trust_domain: trust_domain.to_owned(),
            opaque_ports: opaque_ports.to_vec(),
            mesh,
            pods,
            mesh_stamp,
            pods_stamp,
        })
    }

    /// The index of what was loaded.
    pub fn index(&self) -> Index {
        Index::new(
            self.mesh.clone(),
            self.pods.clone(),
            &self.trust_domain,
            &self.opaque_ports,
        )
    }

    /// Watches the files forever (until the task is dropped), publishing a new index to
    /// `publish` whenever what they say changes.
    pub async fn watch(self, publish: watch::Sender<Arc<Index>>, metrics: DestinationMetrics) {
        let options = WatchOptions::polling_every(self.config.watch_interval);
        self.watch_with(options, publish, metrics).await
    }

    /// [`LocalSource::watch`] with every setting of the watch given.
    pub async fn watch_with(
        mut self,
        options: WatchOptions,
        publish: watch::Sender<Arc<Index>>,
        metrics: DestinationMetrics,
    ) {
        if self.mesh.trust_domain != self.trust_domain {
            tracing::warn!(
                mesh = %self.mesh.trust_domain,
                controller = %self.trust_domain,
                "the mesh directory's trustDomain differs from the controller's; endpoint identities use the controller's"
            );
        }
        let (dirs, filter) = watched(&self.config);
        let set_up = tokio::task::spawn_blocking(move || {
            Changes::watch("mesh directory and pods file", &dirs, filter, options)
        });
        // Not set up: the runtime is shutting down.
        let Ok(mut changes) = set_up.await else {
            return;
        };
        loop {
            changes.next().await;
            let poll_metrics = metrics.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let reloaded = self.poll(&poll_metrics);
                (self, reloaded)
            })
            .await;
            let reloaded;
            (self, reloaded) = match polled {
                Ok(polled) => polled,
                // The runtime is shutting down.
                Err(error) if error.is_cancelled() => return,
                Err(error) => {
                    // A panic while loading: the source is gone with it.
                    tracing::error!(%error, "the local source stopped: its files are no longer watched");
                    return;
                }
            };
            if reloaded {
                let index = self.index();
                // Taken before streams can see the index: updates count from here.
                let now = unix_now();
                let changed = publish.send_if_modified(|current| {
                    if **current == index {
                        return false;
                    }
                    *current = Arc::new(index);
                    true
                });
                if changed {
                    metrics.index_timestamp.set(now);
                    let index = publish.borrow().clone();
                    let (services, pods, ready) = index.counts();
                    tracing::info!(services, pods, ready, "destination index updated");
                    let orphans = index.orphans();
                    if !orphans.is_empty() {
                        tracing::debug!(?orphans, "pods of workloads the mesh directory no longer defines take no traffic");
                    }
                }
            }
        }
    }

    /// Reloads what changed; returns whether anything was (re)loaded. Blocking: file
    /// system calls and parsing.
    fn poll(&mut self, metrics: &DestinationMetrics) -> bool {
        let mut reloaded = false;
        let stamp = dir_stamp(&self.config.mesh_dir);
        if stamp != self.mesh_stamp {
            self.mesh_stamp = stamp;
            match Mesh::load(&self.config.mesh_dir) {
                Ok(mesh) => {
                    count(metrics, "mesh", "ok");
                    for w in &mesh.warnings {
                        tracing::debug!(file = %w.file, at = %w.location, warning = %w.message, "mesh directory warning");
                    }
                    tracing::info!(dir = %self.config.mesh_dir.display(), "mesh directory reloaded");
                    self.mesh = mesh;
                    reloaded = true;
                }
                Err(error) => {
                    count(metrics, "mesh", "error");
                    log_mesh_error(&self.config.mesh_dir, &error);
                }
            }
        }
        let stamp = file_stamp(&self.config.pods_file);
        if stamp != self.pods_stamp {
            self.pods_stamp = stamp;
            match PodsFile::load(&self.config.pods_file) {
                Ok(pods) => {
                    count(metrics, "pods", "ok");
                    if pods.is_none() {
                        tracing::info!(path = %self.config.pods_file.display(), "the pods file is gone: no pods");
                    }
                    self.pods = pods.unwrap_or_default();
                    reloaded = true;
                }
                Err(error) => {
                    count(metrics, "pods", "error");
                    tracing::warn!(%error, "pods file not applied; the last good one keeps serving");
                }
            }
        }
        reloaded
    }
}

/// The directories to watch (the mesh directory, the pods file's) and which of their
/// files are read: the mesh directory's `*.yaml` / `*.yml` files and the pods file.
fn watched(config: &LocalSourceConfig) -> (Vec<PathBuf>, FileFilter) {
    let mesh_dir = config.mesh_dir.clone();
    let pods_dir = match config.pods_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    // Events name a file as its watched directory joined with its name.
    let pods_file = pods_dir.join(config.pods_file.file_name().unwrap_or_default());
    let mut dirs = vec![mesh_dir.clone()];
    if pods_dir != mesh_dir {
        dirs.push(pods_dir);
    }
    let filter: FileFilter = Arc::new(move |path: &Path| {
        if path == pods_file {
            return true;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        path.parent() == Some(&*mesh_dir)
            && !name.starts_with('.')
            && (name.ends_with(".yaml") || name.ends_with(".yml"))
    });
    (dirs, filter)
}

fn count(metrics: &DestinationMetrics, file: &'static str, result: &'static str) {
    metrics
        .reloads
        .get_or_create(&ReloadLabels { file, result })
        .inc();
}

/// One line per problem, naming the file, the object and the field.
fn log_mesh_error(dir: &Path, error: &MeshError) {
    let problems = error.problems();
    if problems.is_empty() {
        tracing::warn!(dir = %dir.display(), %error, "mesh directory not applied; the last good one keeps serving");
    }
    for p in problems {
        tracing::warn!(
            dir = %dir.display(),
            file = %p.file,
            at = %p.location,
            problem = %p.message,
            "mesh directory not applied; the last good one keeps serving"
        );
    }
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_off_the_runtime_thread() {
        // A single-threaded runtime: a read that blocks (a pods file that is a FIFO
        // whose writer has not written yet) must leave it free to serve streams.
        let dir = std::env::temp_dir().join(format!("weft-local-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mesh")).unwrap();
        std::fs::write(
            dir.join("mesh/mesh.yaml"),
            "kind: Mesh\nworkloads:\n  - name: web\n    ports: [8080]\n    command: [app]\n",
        )
        .unwrap();
        let pods_file = dir.join("pods.yaml");
        PodsFile::default().write(&pods_file).unwrap();
        let pods_text = std::fs::read(&pods_file).unwrap();
        let config = LocalSourceConfig {
            mesh_dir: dir.join("mesh"),
            pods_file: pods_file.clone(),
            watch_interval: Duration::from_millis(10),
        };
        let source = LocalSource::load(config, "cluster.local", &[]).unwrap();
        let metrics = DestinationMetrics::default();
        let reloads = metrics.reloads.get_or_create(&ReloadLabels {
            file: "pods",
            result: "ok",
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Replaced by a FIFO: the source's next read waits for a writer.
        let mut blocked = weft_test::fifo::BlockedRead::start(&pods_file, pods_text);
        let reloaded = runtime.block_on(async {
            let (publish, _subscribe) = watch::channel(Arc::new(source.index()));
            let task = tokio::spawn(source.watch(publish, metrics.clone()));
            // Runs while the source's read is blocked.
            blocked.reader_blocked().await;
            let seen =
                weft_test::eventually(Duration::from_secs(5), || async { reloads.get() >= 1 })
                    .await;
            task.abort();
            seen
        });
        // A later poll may be blocked on the FIFO again: not waited for.
        runtime.shutdown_background();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            blocked.runtime_ran(),
            "the runtime stood still while the pods file was read"
        );
        assert!(reloaded, "the pods file the FIFO gave was not loaded");
    }

    /// A mesh directory with one workload (web) and no Service, and a pods file beside
    /// it that does not exist yet.
    fn source_dir(test: &str) -> (PathBuf, LocalSourceConfig) {
        let dir = std::env::temp_dir().join(format!("weft-local-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mesh")).unwrap();
        std::fs::write(
            dir.join("mesh/mesh.yaml"),
            "kind: Mesh\nworkloads:\n  - name: web\n    ports: [8080]\n    command: [app]\n",
        )
        .unwrap();
        let config = LocalSourceConfig {
            mesh_dir: dir.join("mesh"),
            pods_file: dir.join("pods.yaml"),
            watch_interval: Duration::from_millis(10),
        };
        (dir, config)
    }

    /// Adds Service `name` (selecting web) as an editor would: a new file renamed into
    /// the mesh directory.
    fn add_service(dir: &Path, name: &str) {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(
            &tmp,
            format!("kind: Service\nmetadata: {{name: {name}}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"),
        )
        .unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.yaml"))).unwrap();
    }

    /// A source of [`source_dir`] watched with polling every `poll` and no re-check
    /// within a test: the test's directory, the mesh directory, the published index and
    /// the task.
    fn watching(
        test: &str,
        poll: Duration,
    ) -> (
        PathBuf,
        PathBuf,
        watch::Receiver<Arc<Index>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (dir, config) = source_dir(test);
        let mesh_dir = config.mesh_dir.clone();
        let source = LocalSource::load(config, "cluster.local", &[]).unwrap();
        let (publish, subscribe) = watch::channel(Arc::new(source.index()));
        let options = WatchOptions {
            debounce: Duration::from_millis(10),
            recheck: Duration::from_secs(3600),
            poll,
        };
        let metrics = DestinationMetrics::default();
        let task = tokio::spawn(source.watch_with(options, publish, metrics));
        (dir, mesh_dir, subscribe, task)
    }

    async fn services_become(subscribe: &watch::Receiver<Arc<Index>>, n: usize) -> bool {
        weft_test::eventually(Duration::from_secs(5), || async {
            subscribe.borrow().counts().0 == n
        })
        .await
    }

    #[tokio::test]
    async fn a_change_is_picked_up_by_an_inotify_event() {
        // Neither polling nor the re-check within the test: only events reload.
        let (dir, mesh_dir, subscribe, task) = watching("event", Duration::from_secs(3600));
        // Seen by the first look (due as soon as the watch is set up) or by an event.
        add_service(&mesh_dir, "one");
        let first = services_become(&subscribe, 1).await;
        // The watch is set up and its first look is done: only an event sees this one.
        let started = std::time::Instant::now();
        add_service(&mesh_dir, "two");
        let second = services_become(&subscribe, 2).await;
        let took = started.elapsed();
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(first, "the first Service was not loaded");
        assert!(second, "the second Service was not picked up by an event");
        eprintln!("picked up {took:?} after the rename");
    }

    #[tokio::test]
    async fn a_mesh_directory_replaced_beneath_the_watch_is_polled() {
        // Events and polling, but no re-check within the test.
        let (dir, mesh_dir, subscribe, task) = watching("replaced", Duration::from_millis(20));
        add_service(&mesh_dir, "one");
        let first = services_become(&subscribe, 1).await;
        // The directory's watch goes with it (renamed away); what the new directory
        // holds is only seen by polling.
        std::fs::rename(&mesh_dir, dir.join("mesh.old")).unwrap();
        std::fs::create_dir(&mesh_dir).unwrap();
        std::fs::copy(dir.join("mesh.old/mesh.yaml"), mesh_dir.join("mesh.yaml")).unwrap();
        add_service(&mesh_dir, "one");
        add_service(&mesh_dir, "two");
        let second = services_become(&subscribe, 2).await;
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(first, "the first Service was not loaded");
        assert!(
            second,
            "the new mesh directory was not picked up by polling"
        );
    }
}

//! The supervisor's side of the control directory (see [`crate::local::control`]): it
//! publishes its status and serves requested rolling restarts, one step per tick of
//! its loop, between its own supervision steps.
//!
//! A pod under a requested restart is *held*: supervision neither counts its stopping
//! processes as exits nor restarts them. Its steps: out of the endpoints (and the
//! propagation delay, so proxies stop sending to it), SIGTERM to its proxy's and
//! app's process groups, SIGKILL after [`STOP_GRACE`], its proxy started again, its
//! app once the proxy is ready (as at start-up), both with the restart counts they
//! had (a requested restart is not a crash), then the start-up checks; the next pod
//! follows once this one is back in the endpoints.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::readiness::{pod_ready, RESTART_CHECK};
use super::{Runner, CONTROLLER_KEY};
use crate::local::control::{
    control_dir, spell, write_atomic, Outcome, PodStatus, Progress, RestartRequest, Status,
    STATUS_FILE,
};
use crate::local::state::{PodRecord, ProcRecord};
use crate::local::sys::set_mode;
use crate::local::teardown::STOP_GRACE;
use crate::local::CONTROLLER_PORT;

/// How long a pod may take to be back in the endpoints after its processes started
/// again before the rolling restart gives up.
const READY_WITHIN: Duration = Duration::from_secs(RESTART_CHECK.as_secs() + 5);
/// How long after SIGKILL a process may take to be collected.
const KILLED_WITHIN: Duration = Duration::from_secs(5);

/// The supervisor's requests and the status it last published.
#[derive(Default)]
pub(super) struct Requests {
    /// The control directory, once made.
    dir: Option<PathBuf>,
    /// The status file's text as last written.
    last_status: String,
    /// Restarts waiting for the one under way.
    queue: VecDeque<Job>,
    job: Option<Job>,
    /// Pods whose processes a requested restart stops and starts (supervision leaves
    /// them alone meanwhile).
    held: HashSet<String>,
}

/// One requested rolling restart.
struct Job {
    who: String,
    progress_path: PathBuf,
    progress: Progress,
    /// (pod key, pod name) still to restart.
    todo: VecDeque<(String, String)>,
    step: Option<Step>,
}

/// The pod a job restarts now.
struct Step {
    key: String,
    name: String,
    /// Its processes when the restart took it (the ones it started, after that):
    /// others mean the pod was replaced meanwhile (its workload changed).
    pids: Vec<u32>,
    phase: Phase,
    since: Instant,
    /// The outcome of the restarted proxy's readiness check ([`Phase::ProxyStarting`]).
    proxy_ready: Option<std::sync::mpsc::Receiver<anyhow::Result<()>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Out of the endpoints; waiting for proxies to notice.
    Draining,
    /// SIGTERM sent (SIGKILL too once `killed`); waiting for the processes to end.
    Stopping { killed: bool },
    /// Its proxy started again; its app starts once the proxy is ready (as at start:
    /// the app's first calls already go through a proxy with its certificate).
    ProxyStarting,
    /// Its app started again; waiting until the pod is back in the endpoints.
    Starting,
}

impl Job {
    fn say(&mut self, line: String) {
        self.progress.lines.push(line);
        self.report();
    }

    fn report(&self) {
        if let Ok(body) = serde_json::to_vec(&self.progress) {
            let _ = write_atomic(&self.progress_path, &body);
        }
    }
}

impl Runner {
    /// Makes the control directory (recorded, so `weft down` removes it) and publishes
    /// a first status.
    pub(super) fn start_requests(&mut self) {
        let dir = control_dir(&self.paths.state_dir);
        if !self.state.files.contains(&dir) {
            self.state.files.push(dir.clone());
            if let Err(e) = self.save() {
                self.event(format!("cannot record {}: {e:#}", dir.display()));
                return;
            }
        }
        let made = std::fs::create_dir_all(&dir).map_err(anyhow::Error::from);
        // Anyone may read the status (`weft ps`); only its owner (root, or in loopback
        // mode the user) may ask for restarts.
        if let Err(e) = made.and_then(|()| set_mode(&dir, 0o755)) {
            self.event(format!(
                "cannot make {}: `weft restart` and `weft ps` will not reach this weft up: {e:#}",
                dir.display()
            ));
            return;
        }
        self.requests.dir = Some(dir);
        self.publish_status();
    }

    /// Whether supervision leaves pod `key` alone (a requested restart handles it).
    pub(super) fn held(&self, key: &str) -> bool {
        self.requests.held.contains(key)
    }

    /// One step of the control directory's work: new requests, the restart under way,
    /// the status file.
    pub(super) fn serve_requests(&mut self) {
        if self.requests.dir.is_none() {
            return;
        }
        self.take_requests();
        self.drive_restart();
        self.publish_status();
    }

    /// Takes new restart requests (renaming each, so a client that gave up on it can
    /// no longer withdraw it), in the order they were made.
    fn take_requests(&mut self) {
        let Some(dir) = self.requests.dir.clone() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let id = name
                    .strip_prefix("restart-")?
                    .strip_suffix(".request.json")?;
                Some(id.to_owned())
            })
            .collect();
        ids.sort();
        for id in ids {
            let request = dir.join(format!("restart-{id}.request.json"));
            let taken = dir.join(format!("restart-{id}.taken"));
            if std::fs::rename(&request, &taken).is_err() {
                continue;
            }
            let mut job = Job {
                who: String::new(),
                progress_path: dir.join(format!("restart-{id}.progress.json")),
                progress: Progress::default(),
                todo: VecDeque::new(),
                step: None,
            };
            let parsed: Option<RestartRequest> = std::fs::read_to_string(&taken)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let Some(req) = parsed else {
                job.progress.outcome = Outcome::Failed {
                    error: format!("{} is not a restart request", request.display()),
                };
                job.report();
                continue;
            };
            job.who = spell(&req.namespace, &req.workload);
            job.todo = self
                .state
                .pods
                .iter()
                .filter(|p| p.namespace == req.namespace && p.workload == req.workload)
                .map(|p| (p.netns.clone(), p.name.clone()))
                .collect();
            if job.todo.is_empty() {
                job.progress.outcome = Outcome::Failed {
                    error: format!("workload {} has no pods", job.who),
                };
                job.report();
                continue;
            }
            if self.requests.job.is_some() || !self.requests.queue.is_empty() {
                job.say("waiting for the restart under way to finish".into());
            }
            self.event(format!(
                "restart of {} requested: {} pods, one at a time",
                job.who,
                job.todo.len()
            ));
            self.requests.queue.push_back(job);
        }
    }

    /// Moves the restart under way on by what has happened since the last tick.
    fn drive_restart(&mut self) {
        if self.requests.job.is_none() {
            self.requests.job = self.requests.queue.pop_front();
        }
        let Some(mut job) = self.requests.job.take() else {
            return;
        };
        match self.restart_step(&mut job) {
            Ok(true) => {
                job.progress.outcome = Outcome::Done;
                job.report();
                self.event(format!("restart of {} done", job.who));
            }
            Ok(false) => self.requests.job = Some(job),
            Err(e) => {
                if let Some(step) = job.step.take() {
                    self.requests.held.remove(&step.key);
                }
                let error = format!("{e:#}");
                self.event(format!("restart of {} failed: {error}", job.who));
                job.progress.outcome = Outcome::Failed { error };
                job.report();
            }
        }
    }

    /// Takes the job's next pod out of the endpoints (the first step of its restart);
    /// `Ok(true)` when none is left.
    fn next_pod(&mut self, job: &mut Job) -> anyhow::Result<bool> {
        let Some((key, name)) = job.todo.pop_front() else {
            return Ok(true);
        };
        if !self.state.pods.iter().any(|p| p.netns == key) {
            job.say(format!("{name}: gone (scaled down or replaced), skipped"));
            return Ok(false);
        }
        let pids = self.pod_pids(&key);
        // Its own restarts (due after a crash) give way to this one.
        self.restarts.retain(|(k, _), _| *k != key);
        self.requests.held.insert(key.clone());
        self.ready.remove(&key);
        self.refresh_published()?;
        job.say(format!("{name}: out of the endpoints"));
        job.step = Some(Step {
            key,
            name,
            pids,
            phase: Phase::Draining,
            since: Instant::now(),
            proxy_ready: None,
        });
        Ok(false)
    }

    /// A pod whose processes were signalled: once they are gone its proxy starts
    /// again (its readiness checked as at start); SIGKILL after [`STOP_GRACE`]; an
    /// error if they outlive SIGKILL. Returns what to report.
    fn stopping(
        &mut self,
        step: &mut Step,
        pod: &PodRecord,
        alive: &[ProcRecord],
        killed: bool,
    ) -> anyhow::Result<Option<String>> {
        if alive.is_empty() {
            // What its processes left in their groups goes too (it would hold
            // the ports).
            for p in &pod.procs {
                p.kill_group();
            }
            let pid = self.respawn(&step.key, "proxy")?;
            // Checked as at start: its /ready answers; the old app's record
            // (gone) is not its business.
            let mut proxy_only = pod.clone();
            proxy_only.procs = self
                .state
                .pods
                .iter()
                .find(|p| p.netns == step.key)
                .map(|p| {
                    p.procs
                        .iter()
                        .filter(|p| p.role == "proxy")
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let loopback = self.paths.loopback.is_some();
            let (tx, rx) = std::sync::mpsc::channel();
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(pod_ready(&proxy_only, &[], READY_WITHIN, loopback));
            });
            step.proxy_ready = Some(rx);
            step.pids = self.pod_pids(&step.key);
            step.phase = Phase::ProxyStarting;
            step.since = Instant::now();
            return Ok(Some(format!(
                "{}: proxy started again (pid {pid})",
                step.name
            )));
        } else if !killed && step.since.elapsed() >= STOP_GRACE {
            for p in alive {
                p.kill_group();
            }
            step.phase = Phase::Stopping { killed: true };
            step.since = Instant::now();
            return Ok(Some(format!(
                "{}: did not stop within {STOP_GRACE:?}: killed",
                step.name
            )));
        } else if killed && step.since.elapsed() >= KILLED_WITHIN {
            anyhow::bail!(
                "{}: its processes ({}) are still there {KILLED_WITHIN:?} after SIGKILL",
                step.name,
                alive
                    .iter()
                    .map(|p| format!("{} pid {}", p.role, p.pid))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(None)
    }

    /// One step of `job`; `Ok(true)` once every pod is restarted.
    fn restart_step(&mut self, job: &mut Job) -> anyhow::Result<bool> {
        let Some(step) = &mut job.step else {
            return self.next_pod(job);
        };
        let pod = self
            .state
            .pods
            .iter()
            .find(|p| p.netns == step.key)
            .cloned();
        let replaced = step.phase != Phase::Starting && self.pod_pids(&step.key) != step.pids;
        let Some(pod) = pod.filter(|_| !replaced) else {
            let name = step.name.clone();
            self.requests.held.remove(&step.key);
            job.step = None;
            job.say(format!("{name}: gone (scaled down or replaced), skipped"));
            return Ok(false);
        };
        let alive: Vec<ProcRecord> = pod
            .procs
            .iter()
            .filter(|p| self.alive(p))
            .cloned()
            .collect();
        match step.phase {
            Phase::Draining => {
                // A check of an earlier start finishing now must not put it back.
                self.ready.remove(&step.key);
                if step.since.elapsed() >= self.propagation() {
                    for p in &alive {
                        p.signal(Signal::SIGTERM);
                    }
                    step.phase = Phase::Stopping { killed: false };
                    step.since = Instant::now();
                    let line = format!("{}: stopping (SIGTERM)", step.name);
                    job.say(line);
                }
            }
            Phase::Stopping { killed } => {
                self.ready.remove(&step.key);
                if let Some(line) = self.stopping(step, &pod, &alive, killed)? {
                    job.say(line);
                }
            }
            Phase::ProxyStarting => {
                self.ready.remove(&step.key);
                let outcome = match step.proxy_ready.as_ref().map(|rx| rx.try_recv()) {
                    Some(Err(std::sync::mpsc::TryRecvError::Empty)) => return Ok(false),
                    Some(Ok(outcome)) => outcome,
                    _ => Err(anyhow::anyhow!("its check stopped")),
                };
                if let Err(e) = outcome {
                    anyhow::bail!(
                        "{name}: its proxy is not ready after it started again: {e:#}; the pods after it were not restarted (see `weft logs {name} --proxy`)",
                        name = step.name
                    );
                }
                let key = step.key.clone();
                let pid = self.respawn(&key, "app")?;
                self.requests.held.remove(&key);
                self.check_pod(&key);
                let pids = self.pod_pids(&key);
                if let Some(step) = &mut job.step {
                    step.proxy_ready = None;
                    step.pids = pids;
                    step.phase = Phase::Starting;
                    let line = format!("{}: proxy ready, app started again (pid {pid})", step.name);
                    job.say(line);
                }
            }
            Phase::Starting => {
                if self.published.contains(&step.key) {
                    let line = format!(
                        "{}: ready ({:.1}s after it started)",
                        step.name,
                        step.since.elapsed().as_secs_f64()
                    );
                    job.step = None;
                    job.say(line);
                } else if step.since.elapsed() >= READY_WITHIN {
                    anyhow::bail!(
                        "{name} is not ready {READY_WITHIN:?} after it started again; the pods after it were not restarted (see `weft logs {name}` and `weft logs {name} --proxy`)",
                        name = step.name
                    );
                }
            }
        }
        Ok(false)
    }

    /// The pids recorded for pod `key`'s processes.
    fn pod_pids(&self, key: &str) -> Vec<u32> {
        self.state
            .pods
            .iter()
            .find(|p| p.netns == key)
            .map(|p| p.procs.iter().map(|p| p.pid).collect())
            .unwrap_or_default()
    }

    /// Starts pod `key`'s `role` (proxy, app) again with the restart count it had,
    /// after a line in its log; returns its pid.
    fn respawn(&mut self, key: &str, role: &str) -> anyhow::Result<u32> {
        let (pod, w) = self.pod_and_workload(key)?;
        let old = pod.procs.iter().find(|p| p.role == role);
        if let Some(log) = old.and_then(|p| p.log.as_deref()) {
            use std::io::Write as _;
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
                let _ = writeln!(
                    f,
                    "--- weft restart: the {role} is restarted on request ---"
                );
            }
        }
        let restarts = old.map_or(0, |p| p.restarts);
        self.spawn_role(&w, key, role, restarts)
    }

    /// Rewrites the status file when what it says changed.
    fn publish_status(&mut self) {
        let Some(dir) = self.requests.dir.clone() else {
            return;
        };
        let restarting: Option<&str> = self
            .requests
            .job
            .as_ref()
            .and_then(|j| j.step.as_ref())
            .map(|s| s.key.as_str());
        let due: HashSet<&str> = self
            .restarts
            .iter()
            .filter(|(_, r)| r.due.is_some())
            .map(|((key, _), _)| key.as_str())
            .collect();
        let status = Status {
            supervisor: std::process::id(),
            controller_address: format!("{}:{CONTROLLER_PORT}", self.controller_ip()),
            controller_ready: self.controller_ready && !due.contains(CONTROLLER_KEY),
            pods: self
                .state
                .pods
                .iter()
                .map(|p| {
                    let status = PodStatus {
                        ready: self.published.contains(&p.netns),
                        checked: self.ready.contains(&p.netns),
                        wanted: self.wanted(p),
                        restart_due: due.contains(p.netns.as_str()),
                        restarting: self.held(&p.netns) || restarting == Some(p.netns.as_str()),
                    };
                    (p.netns.clone(), status)
                })
                .collect(),
        };
        let Ok(text) = serde_json::to_string_pretty(&status) else {
            return;
        };
        if text == self.requests.last_status {
            return;
        }
        if write_atomic(&dir.join(STATUS_FILE), text.as_bytes()).is_ok() {
            self.requests.last_status = text;
        }
    }
}

//! What `weft up` made, on disk: every namespace, link, file and process is written here
//! before it is created (processes right after they start), so `weft down` can undo a
//! mesh whose `weft up` crashed or was killed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::sys;

pub const STATE_VERSION: u32 = 1;

/// A process `weft up` started, as the leader of its own process group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcRecord {
    /// `proxy`, `app`, `controller` or `weft-up`.
    pub role: String,
    pub pid: u32,
    /// From `/proc/{pid}/stat`: a pid reused by another process has another one.
    pub start_time: u64,
    #[serde(default)]
    pub log: Option<PathBuf>,
    /// How many times `weft up` restarted this role after it exited (the record is
    /// replaced by the new process's, atomically, with the count carried over).
    #[serde(default)]
    pub restarts: u32,
}

/// Whether a recorded process (group) is still ours and running.
#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The leader runs with the recorded start time.
    Running,
    /// The leader is gone (or a zombie) but members of its group remain.
    GroupOnly,
    /// Nothing of it runs.
    Gone,
    /// The pid now belongs to an unrelated process: never signal it.
    Reused,
}

impl ProcRecord {
    /// Records process `pid` (just started) with its start time.
    pub fn of(role: &str, pid: u32, log: Option<PathBuf>) -> ProcRecord {
        ProcRecord {
            role: role.to_owned(),
            pid,
            start_time: sys::proc_stat(pid).map(|s| s.start_time).unwrap_or(0),
            log,
            restarts: 0,
        }
    }

    pub fn liveness(&self) -> Liveness {
        match sys::proc_stat(self.pid) {
            Some(s) if s.start_time != self.start_time => Liveness::Reused,
            Some(s) if s.state != 'Z' => Liveness::Running,
            // A pid is not handed out again while a process group of that number exists,
            // so members of group `pid` are ours.
            _ if !sys::group_members(self.pid).is_empty() => Liveness::GroupOnly,
            _ => Liveness::Gone,
        }
    }

    pub fn is_running(&self) -> bool {
        self.liveness() == Liveness::Running
    }

    /// Signals the process group if it is still ours.
    pub fn signal(&self, signal: Signal) {
        match self.liveness() {
            Liveness::Running | Liveness::GroupOnly => {
                let _ = killpg(Pid::from_raw(self.pid as i32), signal);
            }
            Liveness::Gone | Liveness::Reused => {}
        }
    }

    /// Kills what is left of the process group (members of a leader that exited)
    /// before the role is started again.
    pub fn kill_group(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Signals only the process itself (not its group) if it is still ours.
    pub fn signal_leader(&self, signal: Signal) -> bool {
        self.is_running() && kill(Pid::from_raw(self.pid as i32), signal).is_ok()
    }
}

/// Stops recorded process groups: SIGTERM, up to `grace` to exit, then SIGKILL.
/// `reap` is called while waiting, so a parent can collect its children.
pub fn stop_all(procs: &[ProcRecord], grace: Duration, mut reap: impl FnMut()) {
    let alive = |p: &ProcRecord| matches!(p.liveness(), Liveness::Running | Liveness::GroupOnly);
    for p in procs {
        p.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && procs.iter().any(alive) {
        reap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in procs.iter().filter(|p| alive(p)) {
        eprintln!(
            "  {} (pid {}, {}) did not stop within {grace:?}: killing it",
            p.role,
            p.pid,
            sys::cmdline(p.pid)
        );
        p.signal(Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && procs.iter().any(alive) {
        reap();
        std::thread::sleep(Duration::from_millis(10));
    }
    reap();
}

/// One replica of a workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodRecord {
    /// `{workload}-{index}`: the pod's name in metrics and logs.
    pub name: String,
    pub workload: String,
    pub namespace: String,
    pub index: u32,
    pub zone: Option<String>,
    /// The network namespace; in loopback mode no namespace exists and this is only
    /// the pod's key (`{prefix}-{name}`).
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The veth end in the hub namespace (the pod's end is `eth0`).
    pub link: String,
    /// Files and directories made for this pod (removed with it).
    #[serde(default)]
    pub files: Vec<PathBuf>,
    #[serde(default)]
    pub procs: Vec<ProcRecord>,
}

impl PodRecord {
    /// How many times the pod's processes (proxy and app) were restarted.
    pub fn restarts(&self) -> u32 {
        self.procs.iter().map(|p| p.restarts).sum()
    }
}

/// A Service's virtual IP.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipRecord {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub mesh_dir: PathBuf,
    pub prefix: String,
    /// Loopback mode (no root): pods are loopback addresses, not network namespaces,
    /// so there are no namespaces, links, rules or hosts files to remove.
    #[serde(default)]
    pub loopback: bool,
    /// The hub namespace holding the bridge (recorded before it is made).
    pub hub: Option<String>,
    /// `weft up` itself while it runs in the foreground.
    pub owner: Option<ProcRecord>,
    /// The mesh's weft-controller (identity), in the hub namespace.
    #[serde(default)]
    pub controller: Option<ProcRecord>,
    /// `weft up --prometheus`: Prometheus (in the hub namespace) and where the host
    /// reaches it.
    #[serde(default)]
    pub prometheus: Option<ProcRecord>,
    #[serde(default)]
    pub prometheus_url: Option<String>,
    #[serde(default)]
    pub pods: Vec<PodRecord>,
    #[serde(default)]
    pub services: Vec<VipRecord>,
    /// Files and directories of the mesh as a whole (pods file, logs, ...).
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

impl State {
    pub fn new(mesh_dir: &Path, prefix: &str) -> State {
        State {
            version: STATE_VERSION,
            mesh_dir: mesh_dir.to_owned(),
            prefix: prefix.to_owned(),
            loopback: false,
            hub: None,
            owner: None,
            controller: None,
            prometheus: None,
            prometheus_url: None,
            pods: Vec::new(),
            services: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The state at `path`, `None` if there is none.
    pub fn load(path: &Path) -> anyhow::Result<Option<State>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a weft state file", path.display()))?;
        anyhow::ensure!(
            state.version == STATE_VERSION,
            "{} has version {}; this weft reads version {STATE_VERSION}",
            path.display(),
            state.version
        );
        Ok(Some(state))
    }

    /// Writes the state atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Every recorded process: the pods', the controller and Prometheus.
    pub fn procs(&self) -> impl Iterator<Item = &ProcRecord> {
        self.pods
            .iter()
            .flat_map(|p| p.procs.iter())
            .chain(self.controller.iter())
            .chain(self.prometheus.iter())
    }
}

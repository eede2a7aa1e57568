//! Talking to the running mesh's `weft up` (foreground, or the supervisor `weft up -d`
//! leaves running) through its control directory, `{state}/control/` (0755: anyone
//! may read the status; only root, or in loopback mode the user, may ask for restarts):
//!
//! - `status.json`: what only the supervisor knows, rewritten atomically whenever it
//!   changes: each pod's readiness (in the endpoints or not), whether it passed its
//!   start-up checks, whether a restart of it is due or under way, and the
//!   controller's. `weft ps` and `weft scale` read it; its `supervisor` pid must be the
//!   state file's `owner`, else it is stale.
//! - `restart-{id}.request.json`: `weft restart` asks for a rolling restart (written
//!   to a temporary name, then renamed: never read half-written). The supervisor takes
//!   it in its loop by renaming it to `restart-{id}.taken` (so an abandoned request
//!   can be withdrawn without a race: whoever renames or removes it first wins), does
//!   the restart there, between its own supervision steps (so its own crash restarts
//!   and a requested restart never act on one pod at the same time), and reports in
//!   `restart-{id}.progress.json`.
//!
//! Also here: finding a pod or workload by the name a user gives, for `weft logs`,
//! `exec`, `restart` and `scale`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

use super::state::{PodRecord, ProcRecord, State};
use super::LocalArgs;

/// The control directory's name under the state directory.
pub const CONTROL_DIR: &str = "control";
/// The supervisor's status file in the control directory.
pub const STATUS_FILE: &str = "status.json";
/// How long `weft restart` waits for the supervisor to take its request.
const TAKE_WITHIN: Duration = Duration::from_secs(10);

pub fn control_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_DIR)
}

/// What the supervisor knows about the pods that the state file does not say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The pid of the `weft up` that wrote it (the state file's `owner`).
    pub supervisor: u32,
    /// The controller's gRPC address.
    pub controller_address: String,
    /// Whether the controller runs and its `/ready` answers.
    pub controller_ready: bool,
    /// By pod key (the state file's `netns`).
    pub pods: BTreeMap<String, PodStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// In the endpoints (the pods file's `ready`): checked, both processes run, its
    /// proxy's `/ready` answers, and the mesh wants it.
    pub ready: bool,
    /// Passed its start-up checks since its processes (re)started.
    pub checked: bool,
    /// Within its workload's replicas (else it is on its way out).
    pub wanted: bool,
    /// A process of it exited and its restart is due (after the backoff).
    pub restart_due: bool,
    /// A requested (rolling) restart is stopping or starting it.
    pub restarting: bool,
}

impl Status {
    /// The status the running supervisor of `state` wrote; `None` if no `weft up`
    /// supervises the mesh or it has written none (yet).
    pub fn load(state_dir: &Path, state: &State) -> Option<Status> {
        let owner = state.owner.as_ref().filter(|o| o.is_running())?;
        let path = control_dir(state_dir).join(STATUS_FILE);
        let status: Status = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        (status.supervisor == owner.pid).then_some(status)
    }
}

/// A rolling restart asked of the supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRequest {
    pub namespace: String,
    pub workload: String,
}

/// How a requested restart goes, as the supervisor reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Lines for the user, in order (the client prints the new ones).
    pub lines: Vec<String>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Running,
    Done,
    Failed {
        error: String,
    },
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, renamed over it).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The running `weft up` that supervises the mesh, or why there is none.
pub fn supervisor(state: &State) -> anyhow::Result<ProcRecord> {
    match &state.owner {
        Some(owner) if owner.is_running() => Ok(owner.clone()),
        Some(owner) => bail!(
            "the mesh's weft up (pid {}) is not running any more: nothing supervises the mesh; `weft down` and `weft up` again",
            owner.pid
        ),
        None => bail!("no weft up supervises the mesh; `weft down` and `weft up` again"),
    }
}

/// A pod by the name a user gives: its name (`books-0`, `books.shop-0`), or its
/// workload's (`books`, `books.shop`) when the workload has one pod.
pub fn find_pod<'a>(state: &'a State, name: &str) -> anyhow::Result<&'a PodRecord> {
    if let Some(pod) = state.pods.iter().find(|p| p.name == name) {
        return Ok(pod);
    }
    let of_workload: Vec<&PodRecord> = state
        .pods
        .iter()
        .filter(|p| workload_named(&p.namespace, &p.workload, name))
        .collect();
    match of_workload.as_slice() {
        [one] => Ok(one),
        [] => bail!("no pod named {name}; pods: {}", pod_names(state)),
        many => bail!(
            "workload {name} has {} pods ({}): name one",
            many.len(),
            many.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Every pod's name, for messages (`none` without pods).
pub fn pod_names(state: &State) -> String {
    if state.pods.is_empty() {
        return "none".into();
    }
    state
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `given` names workload `name` of namespace `namespace`: `name`, or
/// `name.namespace` (as pod names outside `default` spell it).
pub fn workload_named(namespace: &str, name: &str, given: &str) -> bool {
    given == name
        || given
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|ns| ns == namespace)
}

/// The one workload of `workloads` (namespace, name) that `given` names.
pub fn find_workload<'a>(
    workloads: &'a [(String, String)],
    given: &str,
    what: &str,
) -> anyhow::Result<&'a (String, String)> {
    let found: Vec<&(String, String)> = workloads
        .iter()
        .filter(|(ns, name)| workload_named(ns, name, given))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => {
            let mut names: Vec<String> = workloads.iter().map(|(ns, n)| spell(ns, n)).collect();
            names.dedup();
            bail!(
                "no workload named {given} {what}; workloads: {}",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )
        }
        many => bail!(
            "{given} names workloads in several namespaces ({}): say which",
            many.iter()
                .map(|(ns, n)| format!("{n}.{ns}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A workload as users name it: `books`, or `books.shop` outside `default`.
pub fn spell(namespace: &str, name: &str) -> String {
    if namespace == "default" {
        name.to_owned()
    } else {
        format!("{name}.{namespace}")
    }
}

/// The workloads that have pods, (namespace, name), in the state's order.
pub fn workloads_with_pods(state: &State) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for p in &state.pods {
        let key = (p.namespace.clone(), p.workload.clone());
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

#[derive(clap::Args)]
#[command(after_help = "\
Each pod in turn is taken out of the endpoints, its proxy and app are stopped \
(SIGTERM, 3 s, then SIGKILL), its proxy is started again and its app once the proxy \
is ready, and the next pod follows once it is ready again. The running weft up (foreground or the supervisor of `weft up -d`) does \
the work; this command asks it and prints its progress. A requested restart is not a \
crash: the pods' RESTARTS (weft ps) do not change.

Examples:
  weft restart books
  weft restart books.shop          # workload books of namespace shop")]
pub struct RestartArgs {
    /// The workload whose pods to restart (`NAME`, or `NAME.NAMESPACE`).
    workload: String,
    /// How long to wait for the restart to finish.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    local: LocalArgs,
}

/// `weft restart WORKLOAD`: a rolling restart by the running `weft up`.
pub fn run_restart(args: RestartArgs) -> anyhow::Result<()> {
    let state = args.local.running_mesh("start one with `weft up`")?;
    anyhow::ensure!(
        state.loopback || super::sys::is_root(),
        "weft restart needs root: the mesh's weft up runs as root"
    );
    let owner = supervisor(&state)?;
    let workloads = workloads_with_pods(&state);
    let (namespace, workload) = find_workload(&workloads, &args.workload, "with pods")?.clone();
    let pods: Vec<&str> = state
        .pods
        .iter()
        .filter(|p| p.namespace == namespace && p.workload == workload)
        .map(|p| p.name.as_str())
        .collect();
    let dir = control_dir(&args.local.state_dir());
    anyhow::ensure!(
        dir.is_dir(),
        "weft up (pid {}) takes no requests ({} does not exist): it is older than this weft; restart the mesh with this one",
        owner.pid,
        dir.display()
    );
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let id = format!("{nanos}-{}", std::process::id());
    let request = dir.join(format!("restart-{id}.request.json"));
    let taken = dir.join(format!("restart-{id}.taken"));
    let progress_path = dir.join(format!("restart-{id}.progress.json"));
    let body = serde_json::to_vec(&RestartRequest {
        namespace: namespace.clone(),
        workload: workload.clone(),
    })?;
    write_atomic(&request, &body)?;
    let who = spell(&namespace, &workload);
    println!(
        "restarting {who}: {} pods, one at a time ({}), by weft up (pid {})",
        pods.len(),
        pods.join(", "),
        owner.pid
    );
    let started = Instant::now();
    let mut printed = 0;
    let clean = || {
        let _ = std::fs::remove_file(&taken);
        let _ = std::fs::remove_file(&progress_path);
    };
    loop {
        if request.exists() && started.elapsed() > TAKE_WITHIN {
            // Withdrawn unless the supervisor took it in the meantime.
            if std::fs::remove_file(&request).is_ok() {
                bail!(
                    "weft up (pid {}) did not take the request within {TAKE_WITHIN:?} (busy applying a change, or older than this weft); nothing was restarted",
                    owner.pid
                );
            }
        }
        let progress: Option<Progress> = std::fs::read_to_string(&progress_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(progress) = progress {
            for line in progress.lines.iter().skip(printed) {
                println!("  {line}");
            }
            printed = progress.lines.len();
            match progress.outcome {
                Outcome::Running => {}
                Outcome::Done => {
                    clean();
                    println!("restarted {who} in {:.1}s", started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Outcome::Failed { error } => {
                    clean();
                    return Err(anyhow!("restart of {who} failed: {error}"));
                }
            }
        }
        if !owner.is_running() {
            bail!("weft up (pid {}) exited during the restart", owner.pid);
        }
        if started.elapsed() > args.timeout {
            bail!(
                "the restart of {who} did not finish within {}; weft up (pid {}) goes on with it (see `weft ps` and {})",
                humantime::format_duration(args.timeout),
                owner.pid,
                args.local.state_dir().join("logs").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn state(pods: &[(&str, &str, &str)]) -> State {
        let mut s = State::new(Path::new("/m"), "wf");
        for (name, workload, namespace) in pods {
            s.pods.push(PodRecord {
                name: (*name).into(),
                workload: (*workload).into(),
                namespace: (*namespace).into(),
                index: 0,
                zone: None,
                netns: format!("wf-{name}"),
                ip: Ipv4Addr::LOCALHOST,
                link: String::new(),
                files: Vec::new(),
                procs: Vec::new(),
            });
        }
        s
    }

    #[test]
    fn pods_are_found_by_name_or_by_a_workload_with_one_pod() {
        let s = state(&[
            ("books-0", "books", "default"),
            ("books-1", "books", "default"),
            ("authors-0", "authors", "default"),
            ("authors.shop-0", "authors", "shop"),
        ]);
        assert_eq!(find_pod(&s, "books-1").unwrap().name, "books-1");
        assert_eq!(find_pod(&s, "authors.shop").unwrap().name, "authors.shop-0");
        assert_eq!(
            find_pod(&s, "nope").unwrap_err().to_string(),
            "no pod named nope; pods: books-0, books-1, authors-0, authors.shop-0"
        );
        assert_eq!(
            find_pod(&s, "books").unwrap_err().to_string(),
            "workload books has 2 pods (books-0, books-1): name one"
        );
        // `authors` is in two namespaces: two pods.
        assert!(find_pod(&s, "authors").is_err());
        let w = workloads_with_pods(&s);
        assert_eq!(
            find_workload(&w, "books", "here").unwrap(),
            &("default".to_owned(), "books".to_owned())
        );
        assert_eq!(
            find_workload(&w, "authors", "here")
                .unwrap_err()
                .to_string(),
            "authors names workloads in several namespaces (authors.default, authors.shop): say which"
        );
        assert_eq!(
            find_workload(&w, "web", "here").unwrap_err().to_string(),
            "no workload named web here; workloads: books, authors, authors.shop"
        );
    }
}

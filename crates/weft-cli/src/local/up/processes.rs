//! The processes of the mesh: the controller, each pod's proxy and app, started with
//! their logs and recorded in the state file at once; supervision restarts the ones
//! that exit with a backoff (Kubernetes' CrashLoopBackOff, shorter).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use weft_core::mesh::Workload;

use super::prometheus::PROMETHEUS_KEY;
use super::{Argv, Runner, CONTROLLER_KEY};
use crate::local::apps::{app_argv, app_env, app_ids, EnvVars, PROXY_ENV};
use crate::local::state::{PodRecord, ProcRecord};
use crate::local::{
    ADMIN_PORT, CONTROLLER_ADMIN_PORT, CONTROLLER_PORT, DEFAULT_OPAQUE_PORTS, HUB_IP, INBOUND_PORT,
    OUTBOUND_PORT, PROXY_UID,
};

/// Restart backoff: the first restart waits this long, each next one twice as long up
/// to [`RESTART_MAX`]; a process that ran [`RESTART_RESET`] starts over at the first.
const RESTART_FIRST: Duration = Duration::from_secs(1);

const RESTART_MAX: Duration = Duration::from_secs(30);

const RESTART_RESET: Duration = Duration::from_secs(60);

/// The delay before restarting a process that exited after running `ran`, given the
/// delay before its previous restart (`None`: none yet): 1 s, doubling up to 30 s, and
/// 1 s again after a run of 60 s (Kubernetes' CrashLoopBackOff, shorter).
fn restart_delay(last: Option<Duration>, ran: Duration) -> Duration {
    match last {
        Some(d) if ran < RESTART_RESET => (d * 2).min(RESTART_MAX),
        _ => RESTART_FIRST,
    }
}

/// An exit status in words: `exit status 1`, `signal 9 (SIGKILL)`.
fn exit_words(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (_, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        _ => status.to_string(),
    }
}

/// Restarts of one supervised process (a pod's proxy or app, or the controller).
#[derive(Default)]
pub(super) struct Restarts {
    /// The delay before the last restart.
    last_delay: Option<Duration>,
    /// A restart is due then (the process exited), with how it exited.
    pub(super) due: Option<(Instant, String)>,
}

impl Runner {
    /// Makes the mesh's identity (a fresh trust anchor and issuer), a token per service
    /// account, and starts weft-controller in the hub namespace; waits until it is ready.
    pub(super) async fn start_controller(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.make_identity()?;
        let (identity_dir, tokens_dir) = (
            self.paths.identity_dir.clone(),
            self.paths.tokens_dir.clone(),
        );
        let td = self.mesh.trust_domain.clone();
        let ip = self.controller_ip();
        let mut argv = vec![
            self.paths.controller_bin.display().to_string(),
            "--identity-dir".into(),
            identity_dir.display().to_string(),
            "--tokens-dir".into(),
            tokens_dir.display().to_string(),
            "--trust-domain".into(),
            td,
            "--cert-lifetime".into(),
            humantime::format_duration(self.paths.cert_lifetime).to_string(),
            "--listen".into(),
            SocketAddr::from((ip, CONTROLLER_PORT)).to_string(),
            "--admin-listen".into(),
            SocketAddr::from((ip, CONTROLLER_ADMIN_PORT)).to_string(),
        ];
        let policy = self.paths.default_inbound_policy.as_deref();
        if let Some(policy) = super::default_inbound_policy(policy, &self.mesh) {
            argv.extend(["--default-inbound-policy".into(), policy.to_owned()]);
        }
        if self.paths.loopback.is_none() {
            // The destination service: Services and workloads from the mesh directory,
            // where their pods run from the pods file. (Loopback proxies read endpoints
            // files instead: the destination service would give them the apps' ports
            // and the calls would bypass the callee's proxy.)
            argv.extend([
                "--mesh-dir".into(),
                self.paths.mesh_dir.display().to_string(),
                "--pods-file".into(),
                self.paths.pods_file.display().to_string(),
            ]);
        }
        let hub = self.hub_netns();
        let log = self.paths.log_dir.join("controller.log");
        self.controller_argv = argv.clone();
        let record = self.start_process(hub.as_deref(), "controller", &argv, &[], None, log)?;
        self.state.controller = Some(record.clone());
        self.save()?;

        self.wait_controller(record, timeout).await
    }

    /// A pod's proxy: its command line, environment and stdin (its token).
    pub(super) fn proxy_command(
        &self,
        w: &Workload,
        netns: &str,
    ) -> anyhow::Result<(Argv, EnvVars, Vec<u8>)> {
        let pod = self.recorded_pod(netns);
        let (name, ip) = (pod.name.clone(), pod.ip);
        let mut opaque: Vec<u16> = DEFAULT_OPAQUE_PORTS.to_vec();
        opaque.extend(&w.opaque_ports);
        let opaque = opaque
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let controller = SocketAddr::from((self.controller_ip(), CONTROLLER_PORT)).to_string();
        let mut proxy = vec![self.paths.proxy_bin.display().to_string()];
        proxy.extend(self.proxy_mode_flags(w, ip, &controller));
        proxy.extend([
            "--namespace".into(),
            w.namespace.clone(),
            "--deployment".into(),
            w.name.clone(),
            "--pod".into(),
            name.clone(),
            "--service-account".into(),
            w.service_account.clone(),
            "--trust-domain".into(),
            self.mesh.trust_domain.clone(),
            // mTLS: the proxy makes its key, gets its certificate from the controller.
            "--trust-anchors".into(),
            self.paths.anchors.display().to_string(),
            "--controller".into(),
            controller,
            // The token on stdin: no file the proxies' shared UID can read holds it.
            "--identity-token".into(),
            "-".into(),
            "--opaque-ports".into(),
            opaque,
            "--drain-grace".into(),
            "2s".into(),
            "--log".into(),
            self.paths.proxy_log.clone(),
        ]);
        if let Some(zone) = &w.zone {
            // Zone-aware balancing: the proxy prefers endpoints of its own zone.
            proxy.extend(["--zone".to_owned(), zone.clone()]);
        }
        // mesh.yaml's `proxy:` settings (zone mode, extra flags), after ours.
        proxy.extend(w.proxy.flags());
        let argv = match self.paths.loopback {
            Some(_) => proxy,
            None => {
                let uid = PROXY_UID.to_string();
                let mut argv = vec![
                    "setpriv".to_owned(),
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    "--no-new-privs".into(),
                    "--".into(),
                ];
                argv.append(&mut proxy);
                argv
            }
        };
        let token = self.token(w)?;
        Ok((argv, vec![("NO_COLOR".into(), "1".into())], token))
    }

    /// The proxy's flags for the mesh's mode: transparent with the controller's
    /// destination service (`controller`), or explicit on the pod's loopback address
    /// with its namespace's endpoints file.
    fn proxy_mode_flags(&self, w: &Workload, ip: Ipv4Addr, controller: &str) -> Vec<String> {
        match self.paths.loopback {
            None => vec![
                "--mode".into(),
                "transparent".into(),
                // Endpoints from the controller's destination service.
                "--destination".into(),
                controller.to_owned(),
                // Metrics (identities, topology) for `weft stat` in the hub, not for
                // other pods.
                "--admin-metrics-from".into(),
                HUB_IP.to_string(),
            ],
            Some(_) => {
                // Inbound traffic goes to the workload's first port (a workload
                // without ports gets none: nothing listens on port 9).
                let forward = w.ports.first().map_or(9, |p| p.port);
                vec![
                    "--mode".into(),
                    "explicit".into(),
                    "--endpoints".into(),
                    self.endpoints_path(&w.namespace).display().to_string(),
                    "--inbound-listen".into(),
                    SocketAddr::from((ip, INBOUND_PORT)).to_string(),
                    "--outbound-listen".into(),
                    SocketAddr::from((ip, OUTBOUND_PORT)).to_string(),
                    "--admin-listen".into(),
                    SocketAddr::from((ip, ADMIN_PORT)).to_string(),
                    "--inbound-forward".into(),
                    SocketAddr::from((ip, forward)).to_string(),
                ]
            }
        }
    }

    /// A pod's workload command: its command line and environment.
    pub(super) fn app_command(&self, w: &Workload, netns: &str) -> anyhow::Result<(Argv, EnvVars)> {
        let pod = self.recorded_pod(netns);
        let env = app_env(&pod.name, pod.ip, w, self.paths.loopback.is_some());
        let argv = match self.paths.loopback {
            // Loopback mode: as the invoking user, like everything else (no isolation).
            Some(_) => w.command.clone(),
            None => {
                let (uid, gid) = app_ids(w)?;
                let state_dir = std::path::absolute(&self.paths.state_dir)?;
                app_argv(&state_dir, uid, gid, &w.command)
            }
        };
        Ok((argv, env))
    }

    /// Starts `argv` in `netns` through `ip netns exec` (which also bind-mounts the
    /// pod's hosts file), as the leader of a new process group, output to a log file.
    /// Its record replaces the role's earlier one (a restart: `restarts` so far), and the
    /// state file is saved at once, so `weft down` finds the new pid.
    pub(super) fn spawn(
        &mut self,
        netns: &str,
        role: &str,
        argv: &[String],
        env: &[(String, String)],
        stdin: Option<Vec<u8>>,
        restarts: u32,
    ) -> anyhow::Result<()> {
        let pod = self.recorded_pod(netns);
        let log = self.paths.log_dir.join(format!("{}.{role}.log", pod.name));
        let mut record = self.start_process(self.pod_netns(netns), role, argv, env, stdin, log)?;
        record.restarts = restarts;
        let pod = self
            .state
            .pods
            .iter_mut()
            .find(|p| p.netns == netns)
            .expect("recorded pod");
        match pod.procs.iter_mut().find(|p| p.role == role) {
            Some(old) => *old = record,
            None => pod.procs.push(record),
        }
        self.save()
    }

    /// Starts `argv` in `netns` (see [`Runner::spawn`]; directly in loopback mode) and
    /// returns its record; the caller records it in the state. `stdin` is written to the
    /// process's stdin, which is then closed (else it reads nothing).
    pub(super) fn start_process(
        &mut self,
        netns: Option<&str>,
        role: &str,
        argv: &[String],
        env: &[(String, String)],
        stdin: Option<Vec<u8>>,
        log: PathBuf,
    ) -> anyhow::Result<ProcRecord> {
        // Appended to: a restarted process's log follows its predecessor's.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| anyhow!("{role}: empty command"))?;
        let mut cmd = match netns {
            Some(netns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", netns, program]);
                cmd
            }
            None => Command::new(program),
        };
        for var in PROXY_ENV {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .env("PATH", &self.paths.path_env)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.paths.mesh_dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        let mut child = cmd.spawn().with_context(|| match netns {
            Some(netns) => format!("cannot start {} in {netns}", argv.join(" ")),
            None => format!("cannot start {}", argv.join(" ")),
        })?;
        let pid = child.id();
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write as _;
            // A token is far below a pipe's buffer: this does not wait for the reader.
            // Dropping the pipe closes it, so the reader sees the end.
            let written = pipe.write_all(&input);
            drop(pipe);
            if let Err(e) = written {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).with_context(|| format!("cannot write to {role}'s stdin"));
            }
        }
        self.children.insert(pid, child);
        self.started_at.insert(pid, Instant::now());
        Ok(ProcRecord::of(role, pid, Some(log)))
    }

    /// Collects exited children (so they do not linger as zombies), keeping their exit
    /// statuses for supervision.
    pub(super) fn reap(&mut self) {
        let exits = &mut self.exits;
        self.children.retain(|pid, child| match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                exits.insert(*pid, status);
                false
            }
            Err(_) => false,
        });
    }

    /// Whether a process this run started still runs (after [`Runner::reap`]: its
    /// child is not collected yet). Cheaper than reading `/proc` for every process
    /// every tick.
    pub(super) fn alive(&self, p: &ProcRecord) -> bool {
        self.children.contains_key(&p.pid)
    }

    /// Whether a pod is one the mesh wants (not beyond its workload's replicas, nor of
    /// a workload that is gone).
    pub(super) fn wanted(&self, pod: &PodRecord) -> bool {
        self.mesh
            .workload(&pod.namespace, &pod.workload)
            .is_some_and(|w| pod.index < w.replicas)
    }

    /// Supervision (foreground): a pod's proxy or app, or the controller, that exited is
    /// taken out of readiness at once and restarted after its backoff (1 s doubling to
    /// 30 s; 1 s again after a run of 60 s), each exit and restart an event.
    pub(super) fn supervise(&mut self) {
        let now = Instant::now();
        self.note_exits(now);
        self.restart_due(now);
        self.forget_gone();
    }

    /// Takes processes that exited out of readiness and schedules their restarts.
    fn note_exits(&mut self, now: Instant) {
        let mut exited: Vec<(String, String, ProcRecord)> = Vec::new();
        for pod in self
            .state
            .pods
            .iter()
            .filter(|p| self.wanted(p) && !self.held(&p.netns))
        {
            for p in pod.procs.iter().filter(|p| !self.alive(p)) {
                exited.push((pod.netns.clone(), pod.name.clone(), p.clone()));
            }
        }
        if let Some(c) = self.state.controller.as_ref().filter(|c| !self.alive(c)) {
            exited.push((CONTROLLER_KEY.into(), String::new(), c.clone()));
        }
        if let Some(p) = self.prometheus_exited() {
            exited.push((PROMETHEUS_KEY.into(), String::new(), p));
        }
        for (key, pod, record) in exited {
            let entry = self
                .restarts
                .entry((key.clone(), record.role.clone()))
                .or_default();
            if entry.due.is_some() {
                continue;
            }
            // Members of its process group that outlived it (an app's children) would
            // hold its ports.
            record.kill_group();
            let how = self
                .exits
                .remove(&record.pid)
                .map_or_else(|| "exited".to_owned(), exit_words);
            let ran = self
                .started_at
                .remove(&record.pid)
                .map_or(Duration::ZERO, |t| now - t);
            let delay = restart_delay(entry.last_delay, ran);
            entry.last_delay = Some(delay);
            entry.due = Some((now + delay, how.clone()));
            let what = if key == CONTROLLER_KEY || key == PROMETHEUS_KEY {
                key.clone()
            } else {
                self.ready.remove(&key);
                format!("pod {pod}: {}", record.role)
            };
            if key == CONTROLLER_KEY {
                self.controller_ready = false;
            }
            self.event(format!(
                "{what} (pid {}) exited ({how}) after {:.1}s; restart {} in {}",
                record.pid,
                ran.as_secs_f64(),
                record.restarts + 1,
                humantime::format_duration(delay)
            ));
        }
    }

    /// Restarts the processes whose backoff is over; a restart that fails backs off.
    fn restart_due(&mut self, now: Instant) {
        let due: Vec<(String, String, String)> = self
            .restarts
            .iter()
            .filter_map(|((key, role), r)| match &r.due {
                Some((at, how)) if *at <= now => Some((key.clone(), role.clone(), how.clone())),
                _ => None,
            })
            .collect();
        for (key, role, how) in due {
            match self.restart(&key, &role, &how) {
                Ok(()) => {
                    if let Some(r) = self.restarts.get_mut(&(key, role)) {
                        r.due = None;
                    }
                }
                Err(e) => {
                    let entry = self
                        .restarts
                        .entry((key.clone(), role.clone()))
                        .or_default();
                    let delay = restart_delay(entry.last_delay, Duration::ZERO);
                    entry.last_delay = Some(delay);
                    entry.due = Some((now + delay, how));
                    self.event(format!(
                        "cannot restart {role} of {key}: {e:#}; trying again in {}",
                        humantime::format_duration(delay)
                    ));
                }
            }
        }
    }

    /// Forgets the supervision of pods that are gone (scaled down, replaced).
    fn forget_gone(&mut self) {
        let keys: HashSet<&str> = self
            .state
            .pods
            .iter()
            .map(|p| p.netns.as_str())
            .chain([CONTROLLER_KEY, PROMETHEUS_KEY])
            .collect();
        self.restarts
            .retain(|(key, _), _| keys.contains(key.as_str()));
        self.probe_failures
            .retain(|key, _| keys.contains(key.as_str()));
        self.checked_at.retain(|key, _| keys.contains(key.as_str()));
        let pids: HashSet<u32> = self.state.procs().map(|p| p.pid).collect();
        self.started_at.retain(|pid, _| pids.contains(pid));
        self.exits.retain(|pid, _| pids.contains(pid));
    }

    /// Starts `role` of pod `key` (or the controller) again after it exited `how`;
    /// the new pid is in the state file before this returns.
    pub(super) fn restart(&mut self, key: &str, role: &str, how: &str) -> anyhow::Result<()> {
        if key == PROMETHEUS_KEY {
            return self.restart_prometheus(how);
        }
        if key == CONTROLLER_KEY {
            let old = self
                .state
                .controller
                .clone()
                .ok_or_else(|| anyhow!("no controller is recorded"))?;
            let restarts = old.restarts + 1;
            let log = self.paths.log_dir.join("controller.log");
            note_restart(&log, role, how, restarts);
            let argv = self.controller_argv.clone();
            let mut record =
                self.start_process(self.hub_netns().as_deref(), role, &argv, &[], None, log)?;
            record.restarts = restarts;
            let pid = record.pid;
            self.state.controller = Some(record);
            self.save()?;
            self.event(format!(
                "controller restarted (pid {pid}, restart {restarts})"
            ));
            return Ok(());
        }
        let (pod, w) = self.pod_and_workload(key)?;
        let old = pod.procs.iter().find(|p| p.role == role);
        let restarts = old.map_or(0, |p| p.restarts) + 1;
        if let Some(log) = old.and_then(|p| p.log.as_deref()) {
            note_restart(log, role, how, restarts);
        }
        let pid = self.spawn_role(&w, key, role, restarts)?;
        self.event(format!(
            "pod {}: {role} restarted (pid {pid}, restart {restarts}; pod restarts {})",
            pod.name,
            pod.restarts() + 1
        ));
        self.check_pod(key);
        Ok(())
    }
    /// The recorded pod whose netns is `netns`.
    fn recorded_pod(&self, netns: &str) -> &PodRecord {
        self.state
            .pods
            .iter()
            .find(|p| p.netns == netns)
            .expect("recorded pod")
    }

    /// Pod `key` and its workload, as they are now (a copy).
    pub(super) fn pod_and_workload(&self, key: &str) -> anyhow::Result<(PodRecord, Workload)> {
        let pod = self
            .state
            .pods
            .iter()
            .find(|p| p.netns == key)
            .cloned()
            .ok_or_else(|| anyhow!("pod {key} is gone"))?;
        let w = self
            .mesh
            .workload(&pod.namespace, &pod.workload)
            .cloned()
            .ok_or_else(|| anyhow!("workload {} is gone", pod.workload))?;
        Ok((pod, w))
    }

    /// Starts `role` (proxy, app) of pod `key` of workload `w` again, its record counting
    /// `restarts`; returns its pid.
    pub(super) fn spawn_role(
        &mut self,
        w: &Workload,
        key: &str,
        role: &str,
        restarts: u32,
    ) -> anyhow::Result<u32> {
        match role {
            "proxy" => {
                let (argv, env, token) = self.proxy_command(w, key)?;
                self.spawn(key, role, &argv, &env, Some(token), restarts)?;
            }
            "app" => {
                let (argv, env) = self.app_command(w, key)?;
                self.spawn(key, role, &argv, &env, None, restarts)?;
            }
            other => bail!("unknown role {other}"),
        }
        Ok(self
            .state
            .pods
            .iter()
            .find(|p| p.netns == key)
            .and_then(|p| p.procs.iter().find(|p| p.role == role))
            .map_or(0, |p| p.pid))
    }
}

/// Notes a restart in the log the new process appends to.
fn note_restart(log: &Path, role: &str, how: &str, restarts: u32) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
        let _ = writeln!(
            f,
            "--- weft up: the {role} exited ({how}); restart {restarts} ---"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_from_1s_doubling_to_30s_and_start_over_after_a_run_of_60s() {
        let s = Duration::from_secs;
        assert_eq!(restart_delay(None, s(0)), s(1));
        let mut last = None;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let d = restart_delay(last, s(2));
            delays.push(d.as_secs());
            last = Some(d);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        // A process that ran 60 s before it exited starts over at 1 s.
        assert_eq!(restart_delay(Some(s(30)), s(60)), s(1));
        assert_eq!(restart_delay(Some(s(30)), s(59)), s(30));
    }

    #[test]
    fn exit_statuses_are_said_in_words() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            exit_words(std::process::ExitStatus::from_raw(9)),
            "signal 9 (SIGKILL)"
        );
        assert_eq!(
            exit_words(std::process::ExitStatus::from_raw(1 << 8)),
            "exit status 1"
        );
    }
}

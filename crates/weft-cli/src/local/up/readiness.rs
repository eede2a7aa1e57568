//! Readiness: a pod takes traffic once its proxy's `/ready` answers and its workload's
//! ports accept connections, and while its processes run and the prober's polls of
//! its `/ready` pass; the pods file (loopback: the endpoints files) follows it.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use weft_core::mesh::Workload;

use super::{Runner, CONTROLLER_KEY};
use crate::fetch;
use crate::local::state::{PodRecord, ProcRecord};
use crate::local::{sys, ADMIN_PORT, CONTROLLER_ADMIN_PORT, CONTROLLER_PORT};

/// How often every pod proxy's `/ready` and the controller's are polled (foreground).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// Probes that time out in a row before a pod is out of the endpoints (a refused
/// connection or a 503 takes it out at once).
const PROBE_TIMEOUTS_UNREADY: u32 = 2;

/// How long a restarted pod may take to pass its readiness checks before they start
/// over (with an event).
pub(super) const RESTART_CHECK: Duration = Duration::from_secs(30);

/// A readiness probe's outcome.
#[derive(Clone, Debug)]
pub(super) enum Probe {
    Ok,
    /// No answer within [`PROBE_TIMEOUT`].
    TimedOut,
    /// Refused, or an answer other than 200 (503 without a certificate).
    Failed(String),
}

/// Consecutive failed probes of one target, and the last failure.
#[derive(Default)]
pub(super) struct ProbeFailures {
    count: u32,
    timeouts: u32,
    last: String,
}

impl ProbeFailures {
    /// Whether the target counts as not ready.
    fn failing(&self) -> bool {
        self.count > self.timeouts || self.timeouts >= PROBE_TIMEOUTS_UNREADY
    }
}

/// What the prober polls: (key, admin address) of every pod proxy and the controller.
pub(super) type ProbeTargets = std::sync::Arc<std::sync::Mutex<Vec<(String, SocketAddr)>>>;

/// Polls every target's `/ready` every [`PROBE_EVERY`] from inside `netns` (the hub;
/// `None`: here) on a thread of its own, sending each round's outcomes. Ends when the
/// receiver is gone.
pub(super) fn start_prober(
    netns: Option<String>,
    targets: ProbeTargets,
) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, Vec<(String, Probe)>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("weft up prober".into())
        .spawn(move || {
            let forever = Duration::from_secs(100 * 365 * 24 * 3600);
            let outcome = sys::in_netns(netns.as_deref(), forever, move || async move {
                let mut tick = tokio::time::interval(PROBE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let started = Instant::now();
                    let now: Vec<(String, SocketAddr)> =
                        targets.lock().map(|t| t.clone()).unwrap_or_default();
                    let mut set = tokio::task::JoinSet::new();
                    for (key, addr) in now {
                        set.spawn(async move {
                            let probe = match tokio::time::timeout(
                                PROBE_TIMEOUT,
                                fetch::get(addr, "/ready"),
                            )
                            .await
                            {
                                Ok(Ok(_)) => Probe::Ok,
                                Ok(Err(e)) => Probe::Failed(format!("{e:#}")),
                                Err(_) => Probe::TimedOut,
                            };
                            (key, probe)
                        });
                    }
                    let mut round = Vec::new();
                    while let Some(joined) = set.join_next().await {
                        if let Ok(r) = joined {
                            round.push(r);
                        }
                    }
                    if tx.send((started, round)).is_err() {
                        return;
                    }
                }
            });
            if let Err(e) = outcome {
                eprintln!("weft up: readiness probes stopped: {e:#}");
            }
        });
    if let Err(e) = spawned {
        eprintln!("weft up: cannot start the readiness probes: {e:#}");
    }
    rx
}

impl Runner {
    /// Waits until the controller just started (`record`) answers on its `/ready`, then
    /// says so; fails with its log's last lines if it exits or does not within `timeout`.
    pub(super) async fn wait_controller(
        &mut self,
        record: ProcRecord,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let (hub, ip) = (self.hub_netns(), self.controller_ip());
        let started = Instant::now();
        let ready = tokio::task::spawn_blocking(move || {
            let limit = timeout + Duration::from_secs(1);
            sys::in_netns(hub.as_deref(), limit, move || async move {
                let admin = SocketAddr::from((ip, CONTROLLER_ADMIN_PORT));
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    if !record.is_running() {
                        bail!("it exited");
                    }
                    let step = Duration::from_millis(500);
                    if let Ok(Ok(_)) = tokio::time::timeout(step, fetch::get(admin, "/ready")).await
                    {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        bail!("its /ready did not answer within {timeout:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })?
        })
        .await?;
        if let Err(e) = ready {
            let log = self.paths.log_dir.join("controller.log");
            bail!(
                "weft-controller is not ready: {e:#}\n  its log, last lines:\n    {}",
                sys::tail(&log, 5).replace('\n', "\n    ")
            );
        }
        self.controller_ready = true;
        self.event(format!(
            "controller ready   {ip}:{CONTROLLER_PORT}  trust domain {}  {:.2}s",
            self.mesh.trust_domain,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Starts every pod of the mesh and waits until all are ready.
    pub(super) async fn start_all(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.start_controller(timeout).await?;
        let wanted: Vec<(Workload, u32)> = self
            .mesh
            .workloads
            .iter()
            .flat_map(|w| (0..w.replicas).map(move |i| (w.clone(), i)))
            .collect();
        let mut new = Vec::new();
        for (w, i) in wanted {
            let netns = self.create_pod(&w, i)?;
            new.push((w, netns));
        }
        self.write_pods()?;
        match self.start_pods(&new, timeout).await.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts pods the way Kubernetes does with Linkerd's proxy-await: each pod's proxy
    /// first, its app once the proxy is ready (it holds a certificate, so the app's
    /// first call is already mTLS), and the pod published in the endpoints once its app
    /// listens. Until then callers' proxies hold their requests for it (failfast
    /// timeout), and none of them reach a pod that cannot answer yet.
    pub(super) async fn start_pods(
        &mut self,
        pods: &[(Workload, String)],
        timeout: Duration,
    ) -> Vec<anyhow::Error> {
        let mut failures = Vec::new();
        let mut proxies = Vec::new();
        for (w, netns) in pods {
            let started = self.proxy_command(w, netns).and_then(|(argv, env, token)| {
                self.spawn(netns, "proxy", &argv, &env, Some(token), 0)
            });
            match started {
                Ok(()) => proxies.push(netns.clone()),
                Err(e) => failures.push(e.context(format!("starting the proxy of {netns}"))),
            }
        }
        let mut apps = Vec::new();
        for (netns, result) in self.check_ready(&proxies, timeout, false).await {
            let Some((w, _)) = pods.iter().find(|(_, n)| *n == netns) else {
                continue;
            };
            let started = result.and_then(|()| {
                let (argv, env) = self.app_command(w, &netns)?;
                self.spawn(&netns, "app", &argv, &env, None, 0)
            });
            match started {
                Ok(()) => apps.push(netns),
                Err(e) => failures.push(e),
            }
        }
        failures.extend(self.wait_ready(&apps, timeout).await);
        failures
    }

    /// Waits until the pods are ready (proxy `/ready` answers, every declared port
    /// accepts connections, both processes run), printing each as it gets there, and
    /// publishes them in the pods file. Returns the failures.
    /// Checks pods in parallel until each is ready (its proxy's `/ready`, and with
    /// `app` its workload's ports) or fails; a failure carries the last lines of the
    /// pod's logs.
    pub(super) async fn check_ready(
        &mut self,
        netnses: &[String],
        timeout: Duration,
        app: bool,
    ) -> Vec<(String, anyhow::Result<()>)> {
        let mut tasks = tokio::task::JoinSet::new();
        for netns in netnses {
            let Some(pod) = self.state.pods.iter().find(|p| &p.netns == netns).cloned() else {
                continue;
            };
            let ports = if app {
                self.pod_ports(&pod)
            } else {
                Vec::new()
            };
            let loopback = self.paths.loopback.is_some();
            tasks.spawn_blocking(move || {
                let result = pod_ready(&pod, &ports, timeout, loopback);
                (pod, result)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((pod, result)) = joined else {
                results.push((String::new(), Err(anyhow!("a readiness check panicked"))));
                continue;
            };
            self.reap();
            let result = result.map_err(|e| {
                let mut msg = format!("pod {} ({}) is not ready: {e:#}", pod.name, pod.netns);
                for p in &pod.procs {
                    if let Some(log) = &p.log {
                        let tail = sys::tail(log, 5);
                        if !tail.is_empty() {
                            let _ = write!(
                                msg,
                                "\n  {} log, last lines:\n    {}",
                                p.role,
                                tail.replace('\n', "\n    ")
                            );
                        }
                    }
                }
                self.event(msg.lines().next().unwrap_or_default().to_owned());
                anyhow!(msg)
            });
            results.push((pod.netns.clone(), result));
        }
        results
    }

    /// Waits until pods are ready ([`Runner::check_ready`]) and publishes those that
    /// are, in one write of the pods file.
    pub(super) async fn wait_ready(
        &mut self,
        netnses: &[String],
        timeout: Duration,
    ) -> Vec<anyhow::Error> {
        let started = Instant::now();
        let mut failures = Vec::new();
        for (netns, result) in self.check_ready(netnses, timeout, true).await {
            let Some(pod) = self.state.pods.iter().find(|p| p.netns == netns).cloned() else {
                failures.extend(result.err());
                continue;
            };
            match result {
                Ok(()) => {
                    // The check saw its /ready answer: earlier probes (while it started)
                    // do not count.
                    self.probe_failures.remove(&pod.netns);
                    self.checked_at.insert(pod.netns.clone(), Instant::now());
                    self.ready.insert(pod.netns.clone());
                    self.published.insert(pod.netns.clone());
                    self.event(format!(
                        "pod {:<20} ready  {:<14} zone {:<8} {:.2}s",
                        pod.name,
                        pod.ip,
                        pod.zone.as_deref().unwrap_or("-"),
                        started.elapsed().as_secs_f64()
                    ));
                }
                Err(e) => failures.push(e),
            }
        }
        if let Err(e) = self.write_pods() {
            failures.push(e);
        }
        failures
    }

    /// The ports a pod's workload declares (what its readiness check connects to).
    pub(super) fn pod_ports(&self, pod: &PodRecord) -> Vec<u16> {
        self.mesh
            .workload(&pod.namespace, &pod.workload)
            .map(|w| w.ports.iter().map(|p| p.port).collect())
            .unwrap_or_default()
    }

    /// Checks a restarted pod as at its start (its proxy ready, its ports accepting)
    /// once all its processes run; it takes traffic again when that passes.
    pub(super) fn check_pod(&mut self, key: &str) {
        let Some(pod) = self.state.pods.iter().find(|p| p.netns == key).cloned() else {
            return;
        };
        if pod.procs.is_empty() || !pod.procs.iter().all(|p| self.alive(p)) {
            return;
        }
        let ports = self.pod_ports(&pod);
        let loopback = self.paths.loopback.is_some();
        let pids: Vec<u32> = pod.procs.iter().map(|p| p.pid).collect();
        self.checks.spawn_blocking(move || {
            let result = pod_ready(&pod, &ports, RESTART_CHECK, loopback);
            (pod.netns, pids, result)
        });
    }

    /// Outcomes of restarted pods' readiness checks (those of processes since replaced
    /// are dropped).
    pub(super) fn collect_checks(&mut self) {
        while let Some(joined) = self.checks.try_join_next() {
            let Ok((key, pids, result)) = joined else {
                continue;
            };
            let Some(pod) = self.state.pods.iter().find(|p| p.netns == key) else {
                continue;
            };
            let now: Vec<u32> = pod.procs.iter().map(|p| p.pid).collect();
            if now != pids {
                continue;
            }
            let name = pod.name.clone();
            match result {
                Ok(()) => {
                    // The check saw its /ready answer.
                    self.probe_failures.remove(&key);
                    self.checked_at.insert(key.clone(), Instant::now());
                    self.ready.insert(key);
                    self.event(format!("pod {name}: ready again after its restart"));
                }
                Err(e) => {
                    self.event(format!(
                        "pod {name}: not ready after its restart: {e:#}; checking again"
                    ));
                    self.check_pod(&key);
                }
            }
        }
    }

    /// Who the prober polls: every pod proxy's admin port and the controller's.
    pub(super) fn probe_targets(&self) -> Vec<(String, SocketAddr)> {
        self.state
            .pods
            .iter()
            .map(|p| (p.netns.clone(), SocketAddr::from((p.ip, ADMIN_PORT))))
            .chain([(
                CONTROLLER_KEY.to_owned(),
                SocketAddr::from((self.controller_ip(), CONTROLLER_ADMIN_PORT)),
            )])
            .collect()
    }

    /// Takes in a round of probes: failures and recoveries of pods that passed their
    /// checks are events.
    pub(super) fn probed(&mut self, started: Instant, round: Vec<(String, Probe)>) {
        for (key, probe) in round {
            if self.checked_at.get(&key).is_some_and(|t| *t > started) {
                continue;
            }
            let name = if key == CONTROLLER_KEY {
                "controller".to_owned()
            } else {
                match self.state.pods.iter().find(|p| p.netns == key) {
                    Some(p) => format!("pod {}: proxy", p.name),
                    None => continue,
                }
            };
            let watched = if key == CONTROLLER_KEY {
                self.state
                    .controller
                    .as_ref()
                    .is_some_and(|c| self.alive(c))
            } else {
                self.ready.contains(&key)
            };
            match probe {
                Probe::Ok => {
                    if let Some(f) = self.probe_failures.remove(&key) {
                        if f.failing() && watched {
                            self.event(format!("{name} /ready answers again"));
                        }
                    }
                    if key == CONTROLLER_KEY {
                        self.controller_ready = watched;
                    }
                }
                failed => {
                    let f = self.probe_failures.entry(key.clone()).or_default();
                    let was = f.failing();
                    f.count += 1;
                    match failed {
                        Probe::TimedOut => {
                            f.timeouts += 1;
                            f.last = format!("no answer within {PROBE_TIMEOUT:?}");
                        }
                        Probe::Failed(e) => f.last = e,
                        Probe::Ok => {}
                    }
                    let (now, last) = (f.failing(), f.last.clone());
                    if now && key == CONTROLLER_KEY {
                        self.controller_ready = false;
                    }
                    if now && !was && watched {
                        self.event(format!("{name} not ready: {last}"));
                    }
                }
            }
        }
    }

    /// Whether the last probes of `key` did not fail.
    pub(super) fn probe_ok(&self, key: &str) -> bool {
        self.probe_failures.get(key).is_none_or(|f| !f.failing())
    }

    /// Makes the pods file (loopback: endpoints files) follow readiness: a pod takes
    /// traffic while it passed its checks since its processes started, both run, its
    /// proxy's `/ready` answers, and the mesh wants it.
    pub(super) fn refresh_published(&mut self) -> anyhow::Result<()> {
        let now: HashSet<String> = self
            .state
            .pods
            .iter()
            .filter(|p| {
                self.ready.contains(&p.netns)
                    && !p.procs.is_empty()
                    && p.procs.iter().all(|p| self.alive(p))
                    && self.probe_ok(&p.netns)
                    && self.wanted(p)
            })
            .map(|p| p.netns.clone())
            .collect();
        if now == self.published {
            return Ok(());
        }
        let mut lines = Vec::new();
        for p in &self.state.pods {
            match (self.published.contains(&p.netns), now.contains(&p.netns)) {
                (true, false) => lines.push(format!(
                    "pod {}: ready: false (out of the endpoints)",
                    p.name
                )),
                (false, true) => {
                    lines.push(format!("pod {}: ready: true (in the endpoints)", p.name))
                }
                _ => {}
            }
        }
        self.published = now;
        self.write_pods()?;
        for line in lines {
            self.event(line);
        }
        Ok(())
    }
}

/// Polls, from inside the pod (in loopback mode: at its address), until its proxy is
/// ready and its ports accept connections; fails early when a process exits.
pub(super) fn pod_ready(
    pod: &PodRecord,
    ports: &[u16],
    timeout: Duration,
    loopback: bool,
) -> anyhow::Result<()> {
    let procs = pod.procs.clone();
    let ip = pod.ip;
    let ports = ports.to_vec();
    sys::in_netns(
        (!loopback).then_some(pod.netns.as_str()),
        timeout + Duration::from_secs(1),
        move || async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let admin = if loopback {
                SocketAddr::from((ip, ADMIN_PORT))
            } else {
                SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT))
            };
            let mut waiting_for = String::from("the proxy's /ready");
            loop {
                if let Some(p) = procs.iter().find(|p| !p.is_running()) {
                    bail!("its {} (pid {}) exited", p.role, p.pid);
                }
                let step = Duration::from_millis(500);
                let proxy = matches!(
                    tokio::time::timeout(step, fetch::get(admin, "/ready")).await,
                    Ok(Ok(_))
                );
                if proxy {
                    let mut all = true;
                    for port in &ports {
                        let ok = matches!(
                            tokio::time::timeout(step, tokio::net::TcpStream::connect((ip, *port)))
                                .await,
                            Ok(Ok(_))
                        );
                        if !ok {
                            waiting_for = format!("the workload to listen on port {port}");
                            all = false;
                            break;
                        }
                    }
                    if all {
                        return Ok(());
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!("still waiting for {waiting_for} after {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_out_at_once_when_refused_and_after_two_probes_without_answer() {
        let mut f = ProbeFailures::default();
        assert!(!f.failing());
        f.count += 1;
        f.timeouts += 1;
        assert!(!f.failing(), "one probe without answer is not enough");
        f.count += 1;
        f.timeouts += 1;
        assert!(f.failing());
        let refused = ProbeFailures {
            count: 1,
            timeouts: 0,
            last: "refused".into(),
        };
        assert!(refused.failing());
    }
}

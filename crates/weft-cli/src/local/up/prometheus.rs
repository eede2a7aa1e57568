//! `weft up --prometheus`: a real Prometheus (Debian's `prometheus` package) as one more
//! supervised process of the local mesh, scraping every pod proxy's admin `/metrics`
//! and the controller's, so rollout tools' queries (Argo Rollouts' `AnalysisTemplate`,
//! Flagger's) run against the mesh's own figures (docs/argo-rollouts.md).
//!
//! Namespace mode: Prometheus runs in the hub namespace (the pods' admin ports answer
//! `/metrics` to the hub's address only) as `nobody`, listening on the hub's address;
//! `weft up` listens on the host's `--prometheus-listen` and forwards each connection
//! into the hub from a thread inside it. Loopback mode: Prometheus runs as the invoking
//! user and listens on `--prometheus-listen` itself.
//!
//! Its files live in `{state}/prometheus/`: `prometheus.yml` (written once), the
//! targets file `targets.json` (file_sd: rewritten whenever the pods change, Prometheus
//! follows it by inotify), and the TSDB `data/`. `weft down` removes them with the
//! rest of the state directory's recorded files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use serde::Serialize;

use super::{Argv, Runner};
use crate::local::state::{PodRecord, ProcRecord};
use crate::local::{sys, ADMIN_PORT, CONTROLLER_ADMIN_PORT, HUB_IP};

/// The supervision key of Prometheus (pods use their `netns`).
pub(super) const PROMETHEUS_KEY: &str = "prometheus";
/// Where Prometheus listens inside the hub namespace.
const HUB_PORT: u16 = 9090;
/// How often Prometheus scrapes: short, so rollout analysis sees a change within
/// seconds (`irate(...[1m])` needs two samples).
const SCRAPE_INTERVAL: &str = "2s";
/// Namespace mode: Prometheus runs as `nobody`, not root.
const PROMETHEUS_UID: u32 = 65534;
/// The Debian package's binary.
pub(super) const DEFAULT_BIN: &str = "/usr/bin/prometheus";

/// `weft up`'s Prometheus flags.
#[derive(clap::Args, Clone, Debug)]
pub(super) struct PrometheusArgs {
    /// Also run Prometheus (Debian's `prometheus` package; `scripts/setup` installs it)
    /// scraping every proxy's and the controller's /metrics every 2 s, with the labels
    /// namespace, pod and deployment, new pods included; its URL is in the summary and
    /// `weft ps`, its data in the state directory; `weft down` stops it. For rollout
    /// analysis queries: docs/argo-rollouts.md.
    #[arg(long)]
    pub(super) prometheus: bool,
    /// Where the host reaches Prometheus (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:9090", requires = "prometheus")]
    prometheus_listen: SocketAddr,
    /// The prometheus binary.
    #[arg(long, env = "WEFT_PROMETHEUS_BIN", default_value = DEFAULT_BIN)]
    prometheus_bin: PathBuf,
}

impl PrometheusArgs {
    /// Fails with the package to install when `--prometheus` is given and the binary
    /// is missing.
    pub(super) fn preflight(&self) -> anyhow::Result<()> {
        if self.prometheus && !self.prometheus_bin.is_file() {
            anyhow::bail!(
                "--prometheus: {} not found: install Debian's `prometheus` package (apt-get install prometheus, or scripts/setup) or pass --prometheus-bin",
                self.prometheus_bin.display()
            );
        }
        Ok(())
    }
}

/// The running Prometheus of a mesh: how to start it again and what its targets
/// file holds.
pub(super) struct Prometheus {
    argv: Argv,
    log: PathBuf,
    targets_file: PathBuf,
    /// The targets file's content as last written.
    written: String,
    /// Where the host reaches it (`http://ADDR`).
    pub(super) url: String,
    /// What the host connects to for readiness checks.
    host_addr: SocketAddr,
    /// Namespace mode: the forwarding thread, stopped when this is dropped.
    _forward: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One file_sd target group.
#[derive(Serialize, Debug, PartialEq)]
struct TargetGroup {
    targets: Vec<String>,
    labels: std::collections::BTreeMap<&'static str, String>,
}

/// The targets file: each pod's admin address with its namespace, pod and deployment.
fn targets_json(pods: &[PodRecord]) -> String {
    let groups: Vec<TargetGroup> = pods
        .iter()
        .map(|p| TargetGroup {
            targets: vec![SocketAddr::from((p.ip, ADMIN_PORT)).to_string()],
            labels: [
                ("namespace", p.namespace.clone()),
                ("pod", p.name.clone()),
                ("deployment", p.workload.clone()),
            ]
            .into_iter()
            .collect(),
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&groups).expect("plain JSON");
    text.push('\n');
    text
}

/// `prometheus.yml`: the proxies from the targets file (their own `namespace`,
/// `deployment` and `pod` labels kept: they are the same), the controller by address.
fn config_yaml(targets_file: &Path, controller_admin: SocketAddr) -> String {
    let targets = serde_json::to_string(&targets_file.display().to_string()).expect("a string");
    [
        "# Written by `weft up --prometheus`; removed by `weft down`.",
        "global:",
        &format!("  scrape_interval: {SCRAPE_INTERVAL}"),
        &format!("  scrape_timeout: {SCRAPE_INTERVAL}"),
        &format!("  evaluation_interval: {SCRAPE_INTERVAL}"),
        "scrape_configs:",
        "  - job_name: weft-proxy",
        "    honor_labels: true",
        "    file_sd_configs:",
        &format!("      - files: [{targets}]"),
        "        refresh_interval: 5s",
        "  - job_name: weft-controller",
        "    static_configs:",
        &format!("      - targets: [\"{controller_admin}\"]"),
        "        labels: {component: controller}",
        "",
    ]
    .join("\n")
}

impl Runner {
    /// Writes Prometheus' files, starts it (recorded in the state at once) and waits
    /// until it answers `/-/ready` on the host's address.
    pub(super) async fn start_prometheus(
        &mut self,
        args: &PrometheusArgs,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let dir = std::path::absolute(self.paths.state_dir.join("prometheus"))?;
        self.state.files.push(dir.clone());
        self.save()?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        let targets_file = dir.join("targets.json");
        let config = dir.join("prometheus.yml");
        let controller_admin = SocketAddr::from((self.controller_ip(), CONTROLLER_ADMIN_PORT));
        std::fs::write(&config, config_yaml(&targets_file, controller_admin))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let written = targets_json(&self.state.pods);
        write_atomic(&targets_file, &written)?;
        let (listen, host_addr, forward) = self.prometheus_listen(args, &[&dir, &data])?;
        let argv = prometheus_argv(
            &args.prometheus_bin,
            &config,
            &data,
            listen,
            self.paths.loopback.is_none(),
        );
        let log = self.paths.log_dir.join("prometheus.log");
        let url = format!("http://{host_addr}");
        self.prometheus = Some(Prometheus {
            argv,
            log,
            targets_file,
            written,
            url: url.clone(),
            host_addr,
            _forward: forward,
        });
        self.spawn_prometheus(0)?;
        self.state.prometheus_url = Some(url);
        self.save()?;
        self.wait_prometheus(timeout).await
    }

    /// Where Prometheus listens, where the host reaches it, and the forwarder between
    /// them: namespace mode, the hub's address and a forwarder from the host's
    /// `--prometheus-listen` (Prometheus runs as `nobody`: `own` are made its); loopback
    /// mode, `--prometheus-listen` itself.
    fn prometheus_listen(
        &self,
        args: &PrometheusArgs,
        own: &[&Path],
    ) -> anyhow::Result<(
        SocketAddr,
        SocketAddr,
        Option<tokio::sync::oneshot::Sender<()>>,
    )> {
        let Some(hub) = self.hub_netns() else {
            let addr = free_port(args.prometheus_listen)?;
            return Ok((addr, addr, None));
        };
        for path in own {
            std::os::unix::fs::chown(path, Some(PROMETHEUS_UID), Some(PROMETHEUS_UID))
                .with_context(|| format!("cannot chown {}", path.display()))?;
        }
        let listener = std::net::TcpListener::bind(args.prometheus_listen).with_context(|| {
            format!(
                "--prometheus-listen {}: cannot listen (another Prometheus on it? pass another address)",
                args.prometheus_listen
            )
        })?;
        let host_addr = listener.local_addr()?;
        let inner = SocketAddr::from((HUB_IP, HUB_PORT));
        Ok((inner, host_addr, Some(forward(listener, hub, inner)?)))
    }

    /// Starts Prometheus' process (again, `restarts` so far) and records it.
    pub(super) fn spawn_prometheus(&mut self, restarts: u32) -> anyhow::Result<u32> {
        let p = self
            .prometheus
            .as_ref()
            .ok_or_else(|| anyhow!("no Prometheus was started"))?;
        let (argv, log) = (p.argv.clone(), p.log.clone());
        let hub = self.hub_netns();
        let mut record = self.start_process(hub.as_deref(), "prometheus", &argv, &[], None, log)?;
        record.restarts = restarts;
        let pid = record.pid;
        self.state.prometheus = Some(record);
        self.save()?;
        Ok(pid)
    }

    /// Restarts Prometheus after it exited `how` (supervision).
    pub(super) fn restart_prometheus(&mut self, how: &str) -> anyhow::Result<()> {
        let restarts = self.state.prometheus.as_ref().map_or(0, |p| p.restarts) + 1;
        if let Some(p) = &self.prometheus {
            use std::io::Write as _;
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&p.log) {
                let _ = writeln!(
                    f,
                    "--- weft up: prometheus exited ({how}); restart {restarts} ---"
                );
            }
        }
        let pid = self.spawn_prometheus(restarts)?;
        self.event(format!(
            "prometheus restarted (pid {pid}, restart {restarts})"
        ));
        Ok(())
    }

    /// Waits until Prometheus answers `/-/ready`; fails when it exits or `timeout`
    /// passes, with its log's last lines.
    async fn wait_prometheus(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let (addr, log) = match &self.prometheus {
            Some(p) => (p.host_addr, p.log.clone()),
            None => return Ok(()),
        };
        let deadline = Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let answer =
                tokio::time::timeout(Duration::from_secs(1), crate::fetch::get(addr, "/-/ready"))
                    .await;
            if matches!(answer, Ok(Ok(_))) {
                return Ok(());
            }
            self.reap();
            let running = self
                .state
                .prometheus
                .as_ref()
                .is_some_and(|p| self.alive(p));
            if !running || Instant::now() >= deadline {
                let tail = log_tail(&log, 10);
                anyhow::bail!(
                    "prometheus {} within {}; the last lines of {}:\n{tail}",
                    if running {
                        "was not ready at /-/ready"
                    } else {
                        "exited"
                    },
                    humantime::format_duration(timeout),
                    log.display()
                );
            }
        }
    }

    /// Rewrites the targets file when the pods changed (Prometheus follows it).
    pub(super) fn sync_prometheus_targets(&mut self) {
        let Some(p) = &self.prometheus else { return };
        let text = targets_json(&self.state.pods);
        if text == p.written {
            return;
        }
        let file = p.targets_file.clone();
        match write_atomic(&file, &text) {
            Ok(()) => {
                if let Some(p) = &mut self.prometheus {
                    p.written = text;
                }
            }
            Err(e) => self.event(format!("cannot update Prometheus' targets: {e:#}")),
        }
    }

    /// Whether Prometheus runs (supervision: `Some(record)` when it exited).
    pub(super) fn prometheus_exited(&self) -> Option<ProcRecord> {
        self.state
            .prometheus
            .as_ref()
            .filter(|p| self.prometheus.is_some() && !self.alive(p))
            .cloned()
    }
}

/// Prometheus' command line: as `nobody` (`as_nobody`, namespace mode, where `weft up`
/// is root) or as the invoking user.
fn prometheus_argv(
    bin: &Path,
    config: &Path,
    data: &Path,
    listen: SocketAddr,
    as_nobody: bool,
) -> Argv {
    let mut argv: Argv = Vec::new();
    if as_nobody {
        argv.extend([
            "setpriv".to_owned(),
            format!("--reuid={PROMETHEUS_UID}"),
            format!("--regid={PROMETHEUS_UID}"),
            "--clear-groups".into(),
            "--no-new-privs".into(),
            "--".into(),
        ]);
    }
    argv.extend([
        bin.display().to_string(),
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", data.display()),
        "--storage.tsdb.retention.time=1d".into(),
        format!("--web.listen-address={listen}"),
    ]);
    argv
}

/// Loopback mode: `listen` with a free port for port 0 (Prometheus is told the port).
fn free_port(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let probe = std::net::TcpListener::bind(listen)
        .with_context(|| format!("--prometheus-listen {listen}: cannot listen"))?;
    Ok(probe.local_addr()?)
}

/// Writes `path` through a temporary file renamed over it, readable by everyone.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    sys::set_mode(&tmp, 0o644)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The last `n` lines of a log.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Forwards connections to the host's `listener` to `to` inside `hub`, from a thread
/// that entered it (sockets belong to the namespace of the thread that made them: the
/// listener stays the host's). Stops when the returned sender is dropped.
fn forward(
    listener: std::net::TcpListener,
    hub: String,
    to: SocketAddr,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    listener.set_nonblocking(true)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (entered_tx, entered) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("prometheus-forward".into())
        .spawn(move || {
            let rt = match weft_core::netns::enter(&hub)
                .and_then(|()| weft_core::netns::current_thread_runtime())
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = entered_tx.send(Err(e.into()));
                    return;
                }
            };
            let _ = entered_tx.send(Ok(()));
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    _ = stopped => {}
                    _ = accept_loop(listener, to) => {}
                }
            });
        })
        .context("cannot start the thread forwarding to Prometheus")?;
    entered
        .recv()
        .map_err(|_| anyhow!("the thread forwarding to Prometheus ended"))??;
    Ok(stop)
}

async fn accept_loop(listener: tokio::net::TcpListener, to: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((mut inbound, _)) => {
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                    }
                });
            }
            // Out of file descriptors and the like: give it a moment rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn pod(workload: &str, namespace: &str, index: u32, ip: [u8; 4]) -> PodRecord {
        PodRecord {
            name: format!("{workload}-{index}"),
            workload: workload.into(),
            namespace: namespace.into(),
            index,
            zone: None,
            netns: format!("wf-{workload}-{index}"),
            ip: Ipv4Addr::from(ip),
            link: String::new(),
            files: Vec::new(),
            procs: Vec::new(),
        }
    }

    #[test]
    fn targets_name_every_pods_admin_address_with_namespace_pod_and_deployment() {
        let pods = [
            pod("books-v1", "default", 0, [198, 18, 0, 5]),
            pod("books-v1", "default", 1, [198, 18, 0, 6]),
            pod("api", "shop", 0, [127, 18, 0, 2]),
        ];
        let groups: serde_json::Value = serde_json::from_str(&targets_json(&pods)).unwrap();
        assert_eq!(
            groups,
            serde_json::json!([
                {"targets": ["198.18.0.5:4191"], "labels": {"deployment": "books-v1", "namespace": "default", "pod": "books-v1-0"}},
                {"targets": ["198.18.0.6:4191"], "labels": {"deployment": "books-v1", "namespace": "default", "pod": "books-v1-1"}},
                {"targets": ["127.18.0.2:4191"], "labels": {"deployment": "api", "namespace": "shop", "pod": "api-0"}},
            ])
        );
        assert_eq!(targets_json(&[]), "[]\n");
    }

    #[test]
    fn config_scrapes_the_targets_file_every_2s_and_the_controller() {
        let yaml = config_yaml(
            Path::new("/run/weft/prometheus/targets.json"),
            SocketAddr::from(([198, 18, 0, 1], 9990)),
        );
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(config["global"]["scrape_interval"], "2s");
        assert_eq!(config["global"]["scrape_timeout"], "2s");
        let jobs = config["scrape_configs"].as_sequence().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0]["job_name"], "weft-proxy");
        assert_eq!(jobs[0]["honor_labels"], true);
        assert_eq!(
            jobs[0]["file_sd_configs"][0]["files"][0],
            "/run/weft/prometheus/targets.json"
        );
        assert_eq!(jobs[1]["job_name"], "weft-controller");
        assert_eq!(
            jobs[1]["static_configs"][0]["targets"][0],
            "198.18.0.1:9990"
        );
        assert_eq!(
            jobs[1]["static_configs"][0]["labels"]["component"],
            "controller"
        );
    }

    #[test]
    fn prometheus_runs_as_nobody_in_namespace_mode_on_the_address_given() {
        let argv = prometheus_argv(
            Path::new("/usr/bin/prometheus"),
            Path::new("/run/weft/prometheus/prometheus.yml"),
            Path::new("/run/weft/prometheus/data"),
            SocketAddr::from(([198, 18, 0, 1], 9090)),
            true,
        );
        assert_eq!(
            argv,
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--no-new-privs",
                "--",
                "/usr/bin/prometheus",
                "--config.file=/run/weft/prometheus/prometheus.yml",
                "--storage.tsdb.path=/run/weft/prometheus/data",
                "--storage.tsdb.retention.time=1d",
                "--web.listen-address=198.18.0.1:9090",
            ]
        );
        let argv = prometheus_argv(
            Path::new("prometheus"),
            Path::new("c.yml"),
            Path::new("d"),
            SocketAddr::from(([127, 0, 0, 1], 9091)),
            false,
        );
        assert_eq!(argv[0], "prometheus");
        assert_eq!(argv.last().unwrap(), "--web.listen-address=127.0.0.1:9091");
    }
}

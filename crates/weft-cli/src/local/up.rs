//! `weft up [DIR] [-d]`: runs a mesh directory as pods on this machine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use weft_core::mesh::{Mesh, DEFAULT_INBOUND_POLICIES};

use self::addresses::loopback_block;
use self::processes::Restarts;
use self::readiness::{start_prober, ProbeFailures, ProbeTargets};
use self::reconcile::{dir_stamp, WATCH_EVERY};
use super::apps::{app_ids, apps_bin_dir, apps_path, world_traversable};
use super::state::{ProcRecord, State};
use super::sys::set_mode;
use super::{loopback_notice, scrape, sys, LocalArgs};

mod addresses;
mod files;
mod identity;
mod network;
mod processes;
mod prometheus;
mod readiness;
mod reconcile;
mod requests;
mod summary;

/// How often the foreground checks its processes (exits, restarts due, probe results).
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);
/// A command line.
type Argv = Vec<String>;
/// The supervision key of the controller (pods use their `netns`).
const CONTROLLER_KEY: &str = "controller";

#[derive(clap::Args)]
pub struct UpArgs {
    /// The mesh directory: mesh.yaml (workloads) and Services in other *.yaml files.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Detach: return once every pod is ready, leaving the mesh running (`weft down`
    /// stops it). Without it, `weft up` stays in the foreground with a live summary,
    /// applies changes to the directory, and Ctrl-C takes the mesh down.
    #[arg(short = 'd', long)]
    detach: bool,
    /// The weft-proxy binary (default: next to this `weft` binary).
    #[arg(long, env = "WEFT_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    /// The weft-controller binary (default: next to this `weft` binary).
    #[arg(long, env = "WEFT_CONTROLLER_BIN")]
    controller_bin: Option<PathBuf>,
    /// Lifetime of the workloads' certificates (proxies renew at 70 % of it).
    #[arg(long, env = "WEFT_CERT_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    cert_lifetime: Duration,
    /// How long pods may take to become ready.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How often the foreground summary is refreshed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Proxy log filter (tracing syntax).
    #[arg(long, default_value = "info")]
    proxy_log: String,
    /// The mesh-wide default inbound policy (what a workload's port that no Server
    /// selects allows), over mesh.yaml's `policy.default`; given to the controller
    /// [default: mesh.yaml's, else all-unauthenticated].
    #[arg(long, env = "WEFT_DEFAULT_INBOUND_POLICY", value_parser = clap::builder::PossibleValuesParser::new(DEFAULT_INBOUND_POLICIES))]
    default_inbound_policy: Option<String>,
    /// Loopback mode even as root (without root it is the only mode): every pod is an
    /// address from 127.18.0.0/16 instead of a network namespace, its proxy runs in
    /// explicit mode there, and its app must listen on $WEFT_LISTEN_ADDR and send HTTP
    /// through $HTTP_PROXY. No namespaces, iptables rules or hosts files are made.
    #[arg(long, env = "WEFT_LOOPBACK")]
    loopback: bool,
    /// Loopback mode: the block of 127.18.0.0/16 the mesh uses, 0-15 (block N is
    /// 127.18.{16N}.0/20: the controller on its first address, pods after it)
    /// [default: the first block whose controller address is free].
    #[arg(long, env = "WEFT_LOOPBACK_BLOCK", value_parser = clap::value_parser!(u8).range(0..16))]
    loopback_block: Option<u8>,
    /// Internal (`-d`): this process is the detached mesh's supervisor that `weft up -d`
    /// started; its output goes to the `weft up -d` that waits for it until the mesh is
    /// up, then to `{state}/logs/weft-up.log`.
    #[arg(long, hide = true, requires = "detach")]
    detached_supervisor: bool,
    #[command(flatten)]
    prometheus: prometheus::PrometheusArgs,
    #[command(flatten)]
    local: LocalArgs,
}

/// The line a detached supervisor prints last before its output goes to its log: the
/// `weft up -d` relaying its output returns successfully once it has seen it.
const DETACHED_LAST_LINE: &str = "the mesh keeps running; `weft down` stops it";

/// `weft up -d`: starts this same command as the mesh's supervisor in a session of its
/// own, relays its output until the mesh is up (or the supervisor fails: then with its
/// exit code), and returns leaving it running.
fn run_detached() -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut argv = std::env::args_os();
    let _ = argv.next();
    let mut child = Command::new(std::env::current_exe()?)
        .args(argv)
        .arg("--detached-supervisor")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the mesh's supervisor")?;
    let stderr = child.stderr.take().expect("piped stderr");
    let relay_err = std::thread::spawn(move || {
        let mut out = std::io::stderr();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(out, "{line}");
        }
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let mut up = false;
    {
        let mut out = std::io::stdout().lock();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(out, "{line}");
            if line == DETACHED_LAST_LINE {
                up = true;
            }
        }
        let _ = out.flush();
    }
    let _ = relay_err.join();
    if up {
        // It keeps running; `weft down` asks it to stop.
        return Ok(());
    }
    let status = child.wait()?;
    let _ = std::io::stderr().flush();
    std::process::exit(status.code().unwrap_or(1).max(1));
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.detach && !args.detached_supervisor {
        return tokio::task::block_in_place(run_detached);
    }
    if args.detached_supervisor {
        // Away from the terminal's session: no SIGHUP or Ctrl-C of it reaches the mesh.
        let _ = nix::unistd::setsid();
    }
    args.local.validate()?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("mesh directory {}", args.dir.display()))?;
    let mesh =
        Mesh::load(&dir).map_err(|e| anyhow!("{}: the mesh is not valid:\n{e}", dir.display()))?;
    for w in &mesh.warnings {
        eprintln!("warning: {w}");
    }
    let loopback = args.loopback || !sys::is_root();
    if loopback {
        println!(
            "{}",
            loopback_notice(if args.loopback {
                "--loopback"
            } else {
                "not root"
            })
        );
        let policy = default_inbound_policy(args.default_inbound_policy.as_deref(), &mesh);
        for w in loopback_warnings(&mesh, policy) {
            eprintln!("warning: {w}");
        }
    }
    let proxy_src = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("weft-proxy"),
    };
    let controller_bin = match &args.controller_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("weft-controller"),
    };
    preflight(&args.local, &proxy_src, &controller_bin, loopback)?;
    args.prometheus.preflight()?;
    if !loopback {
        let state_dir = std::path::absolute(args.local.state_dir())?;
        anyhow::ensure!(
            !dir.starts_with(&state_dir),
            "the mesh directory {} is inside the state directory {}: apps start there, and would see the state directory that is hidden from them; move one of them",
            dir.display(),
            state_dir.display()
        );
        for w in &mesh.workloads {
            app_ids(w)?;
        }
    }
    let block = if loopback {
        Some(loopback_block(args.loopback_block)?)
    } else {
        None
    };

    let started = Instant::now();
    let mut runner = Runner::create(&args, &dir, mesh, &proxy_src, &controller_bin, block)?;
    let mut result = runner.start_all(args.timeout).await;
    if result.is_ok() && args.prometheus.prometheus {
        result = runner
            .start_prometheus(&args.prometheus, args.timeout)
            .await;
    }
    if let Err(e) = result {
        // The error itself is printed once, by main; the logs go with the mesh, so the
        // error carries their last lines rather than their paths.
        eprintln!("weft up failed: taking down what was started");
        runner.teardown();
        return Err(e);
    }
    let elapsed = started.elapsed();
    println!(
        "mesh up in {:.2}s: {} pods, {} services",
        elapsed.as_secs_f64(),
        runner.state.pods.len(),
        runner.mesh.services.len()
    );
    if let Some(p) = &runner.prometheus {
        println!(
            "prometheus: {} (scraping every proxy and the controller every 2s)",
            p.url
        );
    }
    if args.detach {
        print!("{}", runner.describe(true));
        println!(
            "\nsupervisor: weft up (pid {}) restarts exited processes and follows readiness; log {}",
            std::process::id(),
            runner.paths.log_dir.join("weft-up.log").display()
        );
        println!("\n{DETACHED_LAST_LINE}");
        runner.detach_output()?;
    }
    runner.foreground(args.interval, !args.detach).await
}

/// Checks that must pass before anything is created.
fn preflight(
    local: &LocalArgs,
    proxy_bin: &Path,
    controller_bin: &Path,
    loopback: bool,
) -> anyhow::Result<()> {
    let tools: &[&str] = if loopback {
        &[]
    } else {
        &["ip", "iptables-restore", "setpriv", "unshare", "mount"]
    };
    for tool in tools {
        if sys::which(tool).is_none() {
            bail!("`{tool}` is not installed (run `weft check` for what to install)");
        }
    }
    anyhow::ensure!(
        proxy_bin.is_file(),
        "weft-proxy not found at {}: build it (cargo build --release -p weft-proxy) or pass --proxy-bin",
        proxy_bin.display()
    );
    anyhow::ensure!(
        controller_bin.is_file(),
        "weft-controller not found at {}: build it (cargo build --release -p weft-controller) or pass --controller-bin",
        controller_bin.display()
    );
    let state_path = local.state_path();
    if let Some(state) = super::state::State::load(&state_path)? {
        match &state.owner {
            Some(owner) if owner.is_running() => bail!(
                "a mesh is already up (weft up, pid {}, {}): stop it with `weft down` first",
                owner.pid,
                state.mesh_dir.display()
            ),
            _ => bail!(
                "{} records a mesh that is still up or was not cleaned up (from {}): run `weft down` first",
                state_path.display(),
                state.mesh_dir.display()
            ),
        }
    }
    let hub = local.hub();
    if !loopback && sys::netns_exists(&hub) {
        bail!("network namespace {hub} exists but no state records it: remove it with `ip netns delete {hub}` (or use another --prefix)");
    }
    Ok(())
}

/// What loopback mode cannot do for this mesh: a Service port that targets another
/// port than its workload's first (inbound traffic goes to the first port only).
fn loopback_warnings(mesh: &Mesh, default_inbound_policy: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(policy) = default_inbound_policy {
        out.push(format!(
            "default inbound policy {policy}: loopback mode's proxies do not ask the controller for policies, so it does not apply (give the proxies --default-inbound-policy in proxy.args)"
        ));
    }
    for w in mesh.workloads.iter().filter(|w| w.user.is_some()) {
        out.push(format!(
            "workload {}: user: is ignored in loopback mode (every process runs as you)",
            w.name
        ));
    }
    for svc in &mesh.services {
        for port in &svc.ports {
            for w in mesh.backends(svc) {
                let (Some(target), Some(first)) = (w.resolve(&port.target_port), w.ports.first())
                else {
                    continue;
                };
                if target != first.port {
                    out.push(format!(
                        "Service {}/{} port {} targets port {target} of workload {}, but in loopback mode a pod's inbound traffic goes to its first port ({})",
                        svc.namespace, svc.name, port.port, w.name, first.port
                    ));
                }
            }
        }
    }
    out
}

/// The mesh-wide default inbound policy: `--default-inbound-policy`, else `mesh.yaml`'s
/// `policy.default`, else none (the controller's own default).
fn default_inbound_policy<'a>(flag: Option<&'a str>, mesh: &'a Mesh) -> Option<&'a str> {
    flag.or(mesh.default_inbound_policy.as_deref())
}

/// Fixed paths and settings of one `weft up`.
struct Paths {
    state_dir: PathBuf,
    state_path: PathBuf,
    log_dir: PathBuf,
    /// Where pods run and the Services' VIPs, for the controller (see [`PodsFile`]).
    pods_file: PathBuf,
    /// Loopback mode: the proxies' endpoints files, `{dir}/{namespace}.yaml`.
    endpoints_dir: PathBuf,
    /// Loopback mode: the block of 127.18.0.0/16 in use (`None`: network namespaces).
    loopback: Option<u8>,
    proxy_bin: PathBuf,
    controller_bin: PathBuf,
    /// Trust anchor and issuer, made fresh for every `weft up`; root only (0700/0600).
    identity_dir: PathBuf,
    /// A copy of the trust anchors (public) that the proxies' UID reads.
    anchors: PathBuf,
    /// One token file per service account, `{dir}/{ns}/{sa}`; root only: each proxy gets
    /// its own token on stdin (`--identity-token -`).
    tokens_dir: PathBuf,
    cert_lifetime: Duration,
    mesh_dir: PathBuf,
    prefix: String,
    hub: String,
    /// PATH for workload commands: this binary's directory first.
    path_env: OsString,
    /// Where copies of the build's binaries go for apps that cannot reach the build
    /// directory, and that directory.
    apps_bin: Option<(PathBuf, PathBuf)>,
    proxy_log: String,
    /// `--default-inbound-policy`: over `mesh.yaml`'s.
    default_inbound_policy: Option<String>,
}

struct Runner {
    paths: Paths,
    state: State,
    mesh: Mesh,
    /// Processes started by this run, to reap (foreground).
    children: HashMap<u32, Child>,
    /// Pods (by netns) that passed their readiness checks.
    ready: HashSet<String>,
    /// Pods (by netns) that take traffic (`ready` in the pods file).
    published: HashSet<String>,
    /// Recent events for the live summary.
    events: VecDeque<String>,
    interactive: bool,
    /// When each process this run started began (by pid): the restart backoff starts
    /// over after a long run.
    started_at: HashMap<u32, Instant>,
    /// Exit statuses of reaped children, by pid, until supervision reports them.
    exits: HashMap<u32, std::process::ExitStatus>,
    /// Restarts per (pod key or [`CONTROLLER_KEY`], role).
    restarts: HashMap<(String, String), Restarts>,
    /// Failing readiness probes per pod key (and [`CONTROLLER_KEY`]).
    probe_failures: HashMap<String, ProbeFailures>,
    /// When each pod last passed its readiness checks: probes begun before do not count.
    checked_at: HashMap<String, Instant>,
    /// Readiness checks of restarted pods: (pod key, the pids checked, outcome).
    checks: tokio::task::JoinSet<(String, Vec<u32>, anyhow::Result<()>)>,
    /// The controller's command line (to restart it).
    controller_argv: Vec<String>,
    /// Whether the controller's `/ready` answered last time (and it runs).
    controller_ready: bool,
    /// `weft restart` requests and the status for `weft ps` (the control directory).
    requests: requests::Requests,
    /// `--prometheus`: the Prometheus this run started.
    prometheus: Option<prometheus::Prometheus>,
}

impl Runner {
    /// Records the state, makes the state directory and the hub with its bridge.
    fn create(
        args: &UpArgs,
        dir: &Path,
        mesh: Mesh,
        proxy_src: &Path,
        controller_bin: &Path,
        loopback: Option<u8>,
    ) -> anyhow::Result<Runner> {
        let local = &args.local;
        let state_dir = local.state_dir();
        let exe_dir = std::env::current_exe()?
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        // Apps run as an unprivileged user: when it cannot reach the build directory
        // (in /root or a home directory), the binaries apps call by name are copied
        // beside the state directory (which apps cannot see) and found there first.
        let apps_bin =
            (loopback.is_none() && !world_traversable(&exe_dir)).then(|| apps_bin_dir(&state_dir));
        let paths = Paths {
            state_path: local.state_path(),
            log_dir: state_dir.join("logs"),
            pods_file: std::path::absolute(state_dir.join("pods.yaml"))?,
            endpoints_dir: std::path::absolute(state_dir.join("endpoints"))?,
            loopback,
            // Loopback mode runs the proxies as this user, who can run the build.
            proxy_bin: match loopback {
                Some(_) => proxy_src.to_owned(),
                None => state_dir.join("bin").join("weft-proxy"),
            },
            controller_bin: controller_bin.to_owned(),
            identity_dir: state_dir.join("identity"),
            anchors: state_dir.join("trust-anchors.pem"),
            tokens_dir: state_dir.join("tokens"),
            cert_lifetime: args.cert_lifetime,
            state_dir,
            mesh_dir: dir.to_owned(),
            prefix: local.prefix.clone(),
            hub: local.hub(),
            path_env: apps_path(apps_bin.as_deref(), &exe_dir)?,
            apps_bin: apps_bin.map(|dir| (dir, exe_dir)),
            proxy_log: args.proxy_log.clone(),
            default_inbound_policy: args.default_inbound_policy.clone(),
        };
        let created_dir = !paths.state_dir.exists();
        std::fs::create_dir_all(&paths.state_dir)
            .with_context(|| format!("cannot create {}", paths.state_dir.display()))?;
        if !sys::is_root() {
            // A shared directory (the /tmp default without root) that another user
            // made could be theirs to read and change.
            use std::os::unix::fs::MetadataExt as _;
            let owner = std::fs::metadata(&paths.state_dir)?.uid();
            let me = nix::unistd::geteuid().as_raw();
            anyhow::ensure!(
                owner == me,
                "state directory {} belongs to UID {owner}, not to you (UID {me}): pass another --state-dir",
                paths.state_dir.display()
            );
        }
        set_mode(&paths.state_dir, 0o755)?;
        let mut state = State::new(dir, &local.prefix);
        state.loopback = loopback.is_some();
        state.owner = Some(ProcRecord::of("weft-up", std::process::id(), None));
        if created_dir {
            state.files.push(paths.state_dir.clone());
        }
        let mut runner = Runner {
            paths,
            state,
            mesh,
            children: HashMap::new(),
            ready: HashSet::new(),
            published: HashSet::new(),
            events: VecDeque::new(),
            interactive: std::io::stdout().is_terminal(),
            started_at: HashMap::new(),
            exits: HashMap::new(),
            restarts: HashMap::new(),
            probe_failures: HashMap::new(),
            checked_at: HashMap::new(),
            checks: tokio::task::JoinSet::new(),
            controller_argv: Vec::new(),
            controller_ready: false,
            requests: Default::default(),
            prometheus: None,
        };
        if let Err(e) = runner.create_base(proxy_src) {
            runner.teardown();
            return Err(e);
        }
        Ok(runner)
    }

    /// Foreground: live summary, directory watch, Ctrl-C.
    /// The detached supervisor's output goes to `{logs}/weft-up.log` from now on (the
    /// `weft up -d` that relayed it returns when its pipes close).
    fn detach_output(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let path = self.paths.log_dir.join("weft-up.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        nix::unistd::dup2_stdout(&log).context("cannot redirect stdout")?;
        nix::unistd::dup2_stderr(&log).context("cannot redirect stderr")?;
        Ok(())
    }

    /// Foreground: supervision, readiness, Ctrl-C; with `watch` (not detached) also the
    /// directory watch and the live summary every `interval`.
    async fn foreground(mut self, interval: Duration, watch: bool) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
        if watch {
            println!(
                "watching {} for changes; Ctrl-C stops the mesh",
                self.paths.mesh_dir.display()
            );
        } else {
            println!(
                "supervising the detached mesh and watching {} for changes; `weft down` stops it",
                self.paths.mesh_dir.display()
            );
        }
        self.start_requests();
        let mut stamp = dir_stamp(&self.paths.mesh_dir);
        let mut before = if watch {
            self.scrape().await
        } else {
            HashMap::new()
        };
        // When `before` was read, and a reading under way (the summary's scrape waits up
        // to 2 s for a proxy that does not answer: supervision must not wait with it).
        let mut before_at = Instant::now();
        let mut scraping: Option<(Instant, tokio::task::JoinHandle<HashMap<String, String>>)> =
            None;
        let mut last_watch = Instant::now();
        let targets: ProbeTargets =
            std::sync::Arc::new(std::sync::Mutex::new(self.probe_targets()));
        let mut probes = start_prober(self.hub_netns(), targets.clone());
        let mut tick = tokio::time::interval(SUPERVISE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut ctrl_c => break,
                _ = term.recv() => break,
                _ = hup.recv() => break,
            }
            self.reap();
            self.supervise();
            self.collect_checks();
            while let Ok((started, round)) = probes.try_recv() {
                self.probed(started, round);
            }
            if let Err(e) = self.refresh_published() {
                self.event(format!("cannot write the pods' readiness: {e:#}"));
            }
            self.sync_prometheus_targets();
            self.serve_requests();
            if let Ok(mut t) = targets.lock() {
                *t = self.probe_targets();
            }
            if watch {
                match scraping.take() {
                    Some((at, handle)) if handle.is_finished() => {
                        let after = handle.await.unwrap_or_default();
                        self.summary(&before, &after, at - before_at);
                        (before, before_at) = (after, at);
                    }
                    Some(running) => scraping = Some(running),
                    None if before_at.elapsed() >= interval => {
                        let (hub, pods) = (self.hub_netns(), self.state.pods.clone());
                        let handle = tokio::spawn(async move {
                            scrape::pod_metrics(hub, &pods).await.unwrap_or_default()
                        });
                        scraping = Some((Instant::now(), handle));
                    }
                    None => {}
                }
            }
            // The directory is watched detached too (`weft scale` edits it).
            if last_watch.elapsed() < WATCH_EVERY {
                continue;
            }
            last_watch = Instant::now();
            self.follow_dir(&mut stamp).await;
        }
        println!("\nstopping the mesh");
        let started = Instant::now();
        self.teardown();
        println!("mesh down in {:.2}s", started.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_warns_about_service_ports_that_target_another_port_than_the_first() {
        let mesh = Mesh::parse(&[
            (
                "mesh.yaml".into(),
                "kind: Mesh\nworkloads:\n  - {name: api, ports: [8080, {name: admin, port: 9090}], command: [x]}\n"
                    .into(),
            ),
            (
                "services.yaml".into(),
                "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec: {selector: {app: api}, ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9090, targetPort: admin}]}\n"
                    .into(),
            ),
        ])
        .unwrap();
        assert_eq!(
            loopback_warnings(&mesh, None),
            ["Service default/api port 9090 targets port 9090 of workload api, but in loopback mode a pod's inbound traffic goes to its first port (8080)"]
        );
    }

    fn mesh_with_policy(policy: &str) -> Mesh {
        Mesh::parse(&[(
            "mesh.yaml".into(),
            format!(
                "kind: Mesh\n{policy}workloads:\n  - {{name: api, ports: [8080], command: [x]}}\n"
            ),
        )])
        .unwrap()
    }

    #[test]
    fn the_flag_overrides_the_mesh_default_inbound_policy() {
        let none = mesh_with_policy("");
        let deny = mesh_with_policy("policy: {default: deny}\n");
        assert_eq!(default_inbound_policy(None, &none), None);
        assert_eq!(default_inbound_policy(None, &deny), Some("deny"));
        assert_eq!(
            default_inbound_policy(Some("all-authenticated"), &deny),
            Some("all-authenticated")
        );
        assert_eq!(
            loopback_warnings(&deny, Some("deny")),
            ["default inbound policy deny: loopback mode's proxies do not ask the controller for policies, so it does not apply (give the proxies --default-inbound-policy in proxy.args)"]
        );
    }

    #[test]
    fn the_flag_takes_the_four_policies_and_nothing_else() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            up: UpArgs,
        }
        let parse = |value: &str| {
            Cli::try_parse_from(["weft", "--default-inbound-policy", value])
                .map(|c| c.up.default_inbound_policy)
        };
        for value in DEFAULT_INBOUND_POLICIES {
            assert_eq!(parse(value).unwrap().as_deref(), Some(value));
        }
        let err = parse("allow").err().unwrap().to_string();
        assert!(
            err.contains("invalid value 'allow' for '--default-inbound-policy")
                && err.contains(
                    "all-unauthenticated, all-authenticated, cluster-authenticated, deny"
                ),
            "{err}"
        );
    }

    /// The mesh's values are the controller's: `weft up` passes them to its flag.
    #[test]
    fn the_mesh_default_inbound_policies_are_the_controllers() {
        let controller: Vec<&str> = weft_controller::policy::DefaultPolicy::ALL
            .iter()
            .map(|p| p.as_str())
            .collect();
        assert_eq!(controller, DEFAULT_INBOUND_POLICIES);
    }
}

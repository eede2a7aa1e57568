//! `weft up [DIR] [-d]`: runs a mesh directory as pods on this machine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use weft_core::mesh::{Mesh, Workload, MESH_FILE};
use weft_core::pods::{PodEntry, PodsFile, ServiceAddress};
use weft_core::prom::Scrape;

use super::apps::{
    app_argv, app_env, app_ids, apps_bin_dir, apps_path, world_traversable, EnvVars, PROXY_ENV,
};
use super::state::{PodRecord, ProcRecord, State, VipRecord};
use super::sys::set_mode;
use super::teardown::STOP_GRACE;
use super::{
    loopback_ip, loopback_notice, pod_name, scrape, sys, LocalArgs, ADMIN_PORT, BRIDGE,
    CONTROLLER_ADMIN_PORT, CONTROLLER_PORT, DEFAULT_OPAQUE_PORTS, HUB_IP, INBOUND_PORT,
    LOOPBACK_BLOCKS, LOOPBACK_BLOCK_SIZE, OUTBOUND_PORT, POD_PREFIX_LEN, PROXY_UID,
};
use crate::{fetch, stat};

mod requests;

/// How often the mesh directory is checked for changes (foreground).
const WATCH_EVERY: Duration = Duration::from_millis(300);
/// How long a change of the pods file takes to reach every proxy (the controller polls
/// it every 20 ms and streams the change; bench/local-mesh measures the rest), with a
/// wide margin: pods leaving are stopped only after it.
const PROPAGATION: Duration = Duration::from_millis(300);
/// The same in loopback mode, where proxies poll their endpoints file every 200 ms.
const LOOPBACK_PROPAGATION: Duration = Duration::from_millis(450);
/// How often the foreground checks its processes (exits, restarts due, probe results).
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);
/// How often every pod proxy's `/ready` and the controller's are polled (foreground).
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Probes that time out in a row before a pod is out of the endpoints (a refused
/// connection or a 503 takes it out at once).
const PROBE_TIMEOUTS_UNREADY: u32 = 2;
/// Restart backoff: the first restart waits this long, each next one twice as long up
/// to [`RESTART_MAX`]; a process that ran [`RESTART_RESET`] starts over at the first.
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
const RESTART_RESET: Duration = Duration::from_secs(60);
/// How long a restarted pod may take to pass its readiness checks before they start
/// over (with an event).
const RESTART_CHECK: Duration = Duration::from_secs(30);
/// A command line.
type Argv = Vec<String>;
/// The supervision key of the controller (pods use their `netns`).
const CONTROLLER_KEY: &str = "controller";

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
struct Restarts {
    /// The delay before the last restart.
    last_delay: Option<Duration>,
    /// A restart is due then (the process exited), with how it exited.
    due: Option<(Instant, String)>,
}

/// A readiness probe's outcome.
#[derive(Clone, Debug)]
enum Probe {
    Ok,
    /// No answer within [`PROBE_TIMEOUT`].
    TimedOut,
    /// Refused, or an answer other than 200 (503 without a certificate).
    Failed(String),
}

/// Consecutive failed probes of one target, and the last failure.
#[derive(Default)]
struct ProbeFailures {
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
type ProbeTargets = std::sync::Arc<std::sync::Mutex<Vec<(String, SocketAddr)>>>;

/// Polls every target's `/ready` every [`PROBE_EVERY`] from inside `netns` (the hub;
/// `None`: here) on a thread of its own, sending each round's outcomes. Ends when the
/// receiver is gone.
fn start_prober(
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
        for w in loopback_warnings(&mesh) {
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
    let result = runner.start_all(args.timeout).await;
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

/// Whether the controller of loopback block `block` could listen (nothing else does).
fn loopback_block_free(block: u8) -> bool {
    let ip = loopback_ip(block, 1);
    [CONTROLLER_PORT, CONTROLLER_ADMIN_PORT]
        .iter()
        .all(|port| std::net::TcpListener::bind((ip, *port)).is_ok())
}

/// The loopback block to use: the one asked for if it is free, else the first free one.
fn loopback_block(asked: Option<u8>) -> anyhow::Result<u8> {
    match asked {
        Some(block) if loopback_block_free(block) => Ok(block),
        Some(block) => bail!(
            "loopback block {block} is in use ({}:{CONTROLLER_PORT} or :{CONTROLLER_ADMIN_PORT} cannot be bound): another mesh runs there; take another --loopback-block (0-{})",
            loopback_ip(block, 1),
            LOOPBACK_BLOCKS - 1
        ),
        None => (0..LOOPBACK_BLOCKS).find(|b| loopback_block_free(*b)).ok_or_else(|| {
            anyhow!(
                "every loopback block (127.18.0.0/16, {LOOPBACK_BLOCKS} meshes) is in use: `weft down` a mesh first"
            )
        }),
    }
}

/// What loopback mode cannot do for this mesh: a Service port that targets another
/// port than its workload's first (inbound traffic goes to the first port only).
fn loopback_warnings(mesh: &Mesh) -> Vec<String> {
    let mut out = Vec::new();
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
        };
        if let Err(e) = runner.create_base(proxy_src) {
            runner.teardown();
            return Err(e);
        }
        Ok(runner)
    }

    /// Makes the mesh's identity (a fresh trust anchor and issuer), a token per service
    /// account, and starts weft-controller in the hub namespace; waits until it is ready.
    async fn start_controller(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let (identity_dir, tokens_dir) = (
            self.paths.identity_dir.clone(),
            self.paths.tokens_dir.clone(),
        );
        let anchors_copy = self.paths.anchors.clone();
        self.state.files.extend([
            identity_dir.clone(),
            tokens_dir.clone(),
            anchors_copy.clone(),
        ]);
        self.save()?;
        weft_controller::identity::init(&identity_dir, &self.mesh.trust_domain, true)
            .with_context(|| {
                format!(
                    "cannot make the mesh's identity in {}",
                    identity_dir.display()
                )
            })?;
        // Identity files are root's alone (the issuer key mints any identity); the
        // proxies read a copy of the trust anchors, which are public.
        set_mode(&identity_dir, 0o700)?;
        for entry in std::fs::read_dir(&identity_dir)
            .with_context(|| format!("cannot read {}", identity_dir.display()))?
        {
            let path = entry?.path();
            if path.is_file() {
                set_mode(&path, 0o600)?;
            }
        }
        copy_public(
            &identity_dir.join(weft_controller::identity::ANCHORS_FILE),
            &anchors_copy,
        )?;
        std::fs::create_dir_all(&tokens_dir)?;
        set_mode(&tokens_dir, 0o700)?;
        self.write_tokens()?;

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

    /// A token file for every service account of the mesh that has none yet, readable
    /// by root only: the controller reads them, and `weft up` hands each proxy its own
    /// token on stdin (all proxies share UID 2102, so a token file that one proxy could
    /// read, every proxy could).
    fn write_tokens(&self) -> anyhow::Result<()> {
        let mut done = HashSet::new();
        for w in &self.mesh.workloads {
            if !done.insert((w.namespace.clone(), w.service_account.clone())) {
                continue;
            }
            let path = weft_controller::identity::token_path(
                &self.paths.tokens_dir,
                &w.namespace,
                &w.service_account,
            );
            if path.exists() {
                continue;
            }
            let (path, _) = weft_controller::identity::write_token(
                &self.paths.tokens_dir,
                &w.namespace,
                &w.service_account,
            )
            .with_context(|| format!("cannot write the token of workload {}", w.name))?;
            if let Some(ns_dir) = path.parent() {
                set_mode(ns_dir, 0o700)?;
            }
            set_mode(&path, 0o600)?;
        }
        Ok(())
    }

    /// The token of `w`'s service account, for its proxy's stdin.
    fn token(&self, w: &Workload) -> anyhow::Result<Vec<u8>> {
        let path = weft_controller::identity::token_path(
            &self.paths.tokens_dir,
            &w.namespace,
            &w.service_account,
        );
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    fn save(&self) -> anyhow::Result<()> {
        self.state.save(&self.paths.state_path)
    }

    /// The controller's address: the hub's, or the loopback block's first.
    fn controller_ip(&self) -> Ipv4Addr {
        match self.paths.loopback {
            Some(block) => loopback_ip(block, 1),
            None => HUB_IP,
        }
    }

    /// The hub namespace, `None` in loopback mode.
    fn hub_netns(&self) -> Option<String> {
        self.paths
            .loopback
            .is_none()
            .then(|| self.paths.hub.clone())
    }

    /// A pod's network namespace, `None` in loopback mode (`key` is the pod's key).
    fn pod_netns<'a>(&self, key: &'a str) -> Option<&'a str> {
        self.paths.loopback.is_none().then_some(key)
    }

    /// How long to wait, after pods left the endpoints, before they are stopped.
    fn propagation(&self) -> Duration {
        match self.paths.loopback {
            Some(_) => LOOPBACK_PROPAGATION,
            None => PROPAGATION,
        }
    }

    /// Loopback mode: log and endpoints directories; no namespaces, no proxy copy.
    fn create_loopback_base(&mut self) -> anyhow::Result<()> {
        let (log_dir, endpoints_dir) =
            (self.paths.log_dir.clone(), self.paths.endpoints_dir.clone());
        self.state
            .files
            .extend([log_dir.clone(), endpoints_dir.clone()]);
        self.save()?;
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        std::fs::create_dir_all(&endpoints_dir)
            .with_context(|| format!("cannot create {}", endpoints_dir.display()))?;
        self.write_pods()
    }

    fn create_base(&mut self, proxy_src: &Path) -> anyhow::Result<()> {
        if self.paths.loopback.is_some() {
            return self.create_loopback_base();
        }
        let p = &self.paths;
        let (log_dir, bin_dir, pods_file) = (
            p.log_dir.clone(),
            p.proxy_bin.parent().expect("has a parent").to_owned(),
            p.pods_file.clone(),
        );
        self.state
            .files
            .extend([log_dir.clone(), bin_dir.clone(), pods_file]);
        let hub = self.paths.hub.clone();
        self.state.hub = Some(hub.clone());
        self.save()?;

        std::fs::create_dir_all(&log_dir)?;
        std::fs::create_dir_all(&bin_dir)?;
        set_mode(&bin_dir, 0o755)?;
        // A copy the proxy's UID can surely read and run (the build directory may sit
        // in a home directory it cannot enter).
        std::fs::copy(proxy_src, &self.paths.proxy_bin)
            .with_context(|| format!("cannot copy {}", proxy_src.display()))?;
        set_mode(&self.paths.proxy_bin, 0o755)?;
        if let Some((apps_bin, exe_dir)) = self.paths.apps_bin.clone() {
            self.state.files.push(apps_bin.clone());
            self.save()?;
            std::fs::create_dir_all(&apps_bin)
                .with_context(|| format!("cannot create {}", apps_bin.display()))?;
            set_mode(&apps_bin, 0o755)?;
            for name in ["weft", "weft-demo-app"] {
                let src = exe_dir.join(name);
                if src.is_file() {
                    let dst = apps_bin.join(name);
                    std::fs::copy(&src, &dst)
                        .with_context(|| format!("cannot copy {}", src.display()))?;
                    set_mode(&dst, 0o755)?;
                }
            }
        }

        sys::run("ip", ["netns", "add", &hub])?;
        // IPv6 off before any link exists (pods' traffic is redirected for IPv4 only).
        sys::disable_ipv6(&hub)?;
        sys::run_with_input(
            "ip",
            ["-n", &hub, "-batch", "-"],
            Some(&format!(
                "link set lo up\nlink add {BRIDGE} type bridge\nlink set {BRIDGE} up\naddr add {HUB_IP}/{POD_PREFIX_LEN} dev {BRIDGE}\n"
            )),
        )?;
        sys::ensure_no_ipv6(&hub)?;
        self.sync_vips()?;
        self.write_pods()?;
        Ok(())
    }

    /// Gives every Service a VIP (keeping the ones it has) and drops removed ones.
    fn sync_vips(&mut self) -> anyhow::Result<bool> {
        let wanted: Vec<(String, String)> = self
            .mesh
            .services
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let before = self.state.services.clone();
        self.state
            .services
            .retain(|v| wanted.contains(&(v.namespace.clone(), v.name.clone())));
        for (namespace, name) in wanted {
            if self
                .state
                .services
                .iter()
                .any(|v| v.namespace == namespace && v.name == name)
            {
                continue;
            }
            let used: HashSet<Ipv4Addr> = self.state.services.iter().map(|v| v.vip).collect();
            let vip = (1..=u16::MAX)
                .map(|i| Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8))
                .find(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255 && !used.contains(ip))
                .ok_or_else(|| anyhow!("no Service address left in 198.19.0.0/16"))?;
            self.state.services.push(VipRecord {
                namespace,
                name,
                vip,
            });
        }
        let changed = before != self.state.services;
        if changed {
            self.save()?;
        }
        Ok(changed)
    }

    fn vip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.state
            .services
            .iter()
            .find(|v| v.namespace == namespace && v.name == name)
            .map(|v| v.vip)
    }

    fn alloc_ip(&self) -> anyhow::Result<Ipv4Addr> {
        let used: HashSet<Ipv4Addr> = self.state.pods.iter().map(|p| p.ip).collect();
        if let Some(block) = self.paths.loopback {
            // Skipping addresses whose proxy port something else holds (a mesh left
            // running by a killed weft up whose controller is gone).
            return (2..LOOPBACK_BLOCK_SIZE - 1)
                .map(|i| loopback_ip(block, i))
                .find(|ip| {
                    !used.contains(ip) && std::net::TcpListener::bind((*ip, INBOUND_PORT)).is_ok()
                })
                .ok_or_else(|| anyhow!("no pod address left in 127.18.0.0/16 block {block}"));
        }
        (2..=u16::MAX)
            .map(|i| Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8))
            .find(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255 && !used.contains(ip))
            .ok_or_else(|| anyhow!("no pod address left in 198.18.0.0/16"))
    }

    fn alloc_link(&self) -> String {
        let used: HashSet<&str> = self.state.pods.iter().map(|p| p.link.as_str()).collect();
        (0..)
            .map(|i| format!("wfv{i}"))
            .find(|l| !used.contains(l.as_str()))
            .expect("an unused link name")
    }

    /// Starts every pod of the mesh and waits until all are ready.
    async fn start_all(&mut self, timeout: Duration) -> anyhow::Result<()> {
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
    async fn start_pods(
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

    /// Makes one pod's network: namespace, link, address, rules, hosts file.
    /// Returns its netns name.
    fn create_pod(&mut self, w: &Workload, index: u32) -> anyhow::Result<String> {
        let name = pod_name(w, index);
        let netns = format!("{}-{name}", self.paths.prefix);
        if self.paths.loopback.is_some() {
            // Only an address: nothing to make but the record.
            self.state.pods.push(PodRecord {
                name,
                workload: w.name.clone(),
                namespace: w.namespace.clone(),
                index,
                zone: w.zone.clone(),
                netns: netns.clone(),
                ip: self.alloc_ip()?,
                link: String::new(),
                files: Vec::new(),
                procs: Vec::new(),
            });
            self.save()?;
            return Ok(netns);
        }
        let etc = Path::new("/etc/netns").join(&netns);
        if sys::netns_exists(&netns) {
            bail!("network namespace {netns} exists but was not made by this weft up: remove it with `ip netns delete {netns}`");
        }
        if etc.exists() {
            bail!(
                "{} exists but was not made by this weft up: remove it",
                etc.display()
            );
        }
        let pod = PodRecord {
            name: name.clone(),
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            index,
            zone: w.zone.clone(),
            netns: netns.clone(),
            ip: self.alloc_ip()?,
            link: self.alloc_link(),
            files: vec![etc.clone()],
            procs: Vec::new(),
        };
        let (ip, link) = (pod.ip, pod.link.clone());
        self.state.pods.push(pod);
        self.save()?;

        let hub = &self.paths.hub;
        sys::run("ip", ["netns", "add", &netns])?;
        // IPv6 off before the pod has links: only IPv4 is redirected to the proxy, so an
        // app reachable over IPv6 (link-local addresses) would bypass the mesh.
        sys::disable_ipv6(&netns)?;
        sys::run_with_input(
            "ip",
            ["-n", hub, "-batch", "-"],
            Some(&format!(
                "link add {link} type veth peer name eth0 netns {netns}\nlink set {link} master {BRIDGE} up\n"
            )),
        )?;
        sys::run_with_input(
            "ip",
            ["-n", &netns, "-batch", "-"],
            Some(&format!(
                "link set lo up\naddr add {ip}/{POD_PREFIX_LEN} dev eth0\nlink set eth0 up\n"
            )),
        )?;
        sys::ensure_no_ipv6(&netns)?;
        sys::run_with_input(
            "ip",
            ["netns", "exec", &netns, "iptables-restore", "-w", "5"],
            Some(&weft_core::iptables::redirect_rules(&w.skip_ports)),
        )
        .context("installing the pod's iptables rules")?;
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("hosts"), self.hosts(&w.namespace, &name, ip))?;
        Ok(netns)
    }

    /// A pod's proxy: its command line, environment and stdin (its token).
    fn proxy_command(&self, w: &Workload, netns: &str) -> anyhow::Result<(Argv, EnvVars, Vec<u8>)> {
        let pod = self
            .state
            .pods
            .iter()
            .find(|p| p.netns == netns)
            .expect("recorded pod");
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
        match self.paths.loopback {
            None => proxy.extend([
                "--mode".into(),
                "transparent".into(),
                // Endpoints from the controller's destination service.
                "--destination".into(),
                controller.clone(),
                // Metrics (identities, topology) for `weft stat` in the hub, not for
                // other pods.
                "--admin-metrics-from".into(),
                HUB_IP.to_string(),
            ]),
            Some(_) => {
                // Inbound traffic goes to the workload's first port (a workload
                // without ports gets none: nothing listens on port 9).
                let forward = w.ports.first().map_or(9, |p| p.port);
                proxy.extend([
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
                ]);
            }
        }
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

    /// A pod's workload command: its command line and environment.
    fn app_command(&self, w: &Workload, netns: &str) -> anyhow::Result<(Argv, EnvVars)> {
        let pod = self
            .state
            .pods
            .iter()
            .find(|p| p.netns == netns)
            .expect("recorded pod");
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
    fn spawn(
        &mut self,
        netns: &str,
        role: &str,
        argv: &[String],
        env: &[(String, String)],
        stdin: Option<Vec<u8>>,
        restarts: u32,
    ) -> anyhow::Result<()> {
        let pod = self
            .state
            .pods
            .iter()
            .find(|p| p.netns == netns)
            .expect("recorded pod");
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
    fn start_process(
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

    /// `/etc/hosts` of a pod in `namespace`: every Service by its cluster names, and the
    /// short name for Services of the pod's own namespace.
    fn hosts(&self, namespace: &str, pod: &str, ip: Ipv4Addr) -> String {
        let mut out = String::from(
            "# written by weft up\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        let _ = writeln!(out, "{ip}\t{pod}");
        for v in &self.state.services {
            let _ = write!(
                out,
                "{}\t{n}.{ns}.svc.cluster.local {n}.{ns}.svc {n}.{ns}",
                v.vip,
                n = v.name,
                ns = v.namespace
            );
            if v.namespace == namespace {
                let _ = write!(out, " {}", v.name);
            }
            out.push('\n');
        }
        out
    }

    /// Rewrites every pod's hosts file in place (running processes see the file through
    /// a bind mount of its inode, so it must not be replaced).
    fn write_hosts(&self) -> anyhow::Result<()> {
        for pod in &self.state.pods {
            let path = Path::new("/etc/netns").join(&pod.netns).join("hosts");
            if path.exists() {
                std::fs::write(&path, self.hosts(&pod.namespace, &pod.name, pod.ip))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// The pods file: every pod (ready once it passed its checks and until it is on
    /// its way out) and every Service's VIP. The controller's destination service
    /// joins it with the mesh directory and streams the endpoints to the proxies.
    fn pods_file(&self) -> PodsFile {
        PodsFile {
            pods: self
                .state
                .pods
                .iter()
                .map(|p| PodEntry {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    workload: p.workload.clone(),
                    index: p.index,
                    ip: p.ip.into(),
                    zone: p.zone.clone(),
                    ready: self.published.contains(&p.netns),
                })
                .collect(),
            services: self
                .state
                .services
                .iter()
                .map(|v| ServiceAddress {
                    name: v.name.clone(),
                    namespace: v.namespace.clone(),
                    ip: v.vip.into(),
                })
                .collect(),
        }
    }

    /// Writes the pods file atomically (the controller reloads it when it changes); in
    /// loopback mode the endpoints files instead.
    fn write_pods(&self) -> anyhow::Result<()> {
        if self.paths.loopback.is_some() {
            return self.write_endpoints();
        }
        self.pods_file().write(&self.paths.pods_file)?;
        set_mode(&self.paths.pods_file, 0o644)?;
        Ok(())
    }

    /// Loopback mode: the endpoints file of the proxies of `namespace`'s pods.
    fn endpoints_path(&self, namespace: &str) -> PathBuf {
        self.paths.endpoints_dir.join(format!("{namespace}.yaml"))
    }

    /// Loopback mode: writes every namespace's endpoints file atomically (the proxies
    /// reload it within 200 ms of a change).
    fn write_endpoints(&self) -> anyhow::Result<()> {
        let mut namespaces: Vec<&str> = self
            .mesh
            .workloads
            .iter()
            .map(|w| w.namespace.as_str())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        for ns in namespaces {
            let path = self.endpoints_path(ns);
            let tmp = path.with_extension("yaml.tmp");
            std::fs::write(
                &tmp,
                endpoints_yaml(&self.mesh, &self.state.pods, &self.published, ns),
            )
            .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// Waits until the pods are ready (proxy `/ready` answers, every declared port
    /// accepts connections, both processes run), printing each as it gets there, and
    /// publishes them in the pods file. Returns the failures.
    /// Checks pods in parallel until each is ready (its proxy's `/ready`, and with
    /// `app` its workload's ports) or fails; a failure carries the last lines of the
    /// pod's logs.
    async fn check_ready(
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
    async fn wait_ready(&mut self, netnses: &[String], timeout: Duration) -> Vec<anyhow::Error> {
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

    /// Prints a line of progress; a terminal's live summary also lists the recent ones.
    fn event(&mut self, line: String) {
        println!("{line}");
        self.events.push_back(line);
        while self.events.len() > 10 {
            self.events.pop_front();
        }
    }

    /// Collects exited children (so they do not linger as zombies), keeping their exit
    /// statuses for supervision.
    fn reap(&mut self) {
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
    fn alive(&self, p: &ProcRecord) -> bool {
        self.children.contains_key(&p.pid)
    }

    /// Whether a pod is one the mesh wants (not beyond its workload's replicas, nor of
    /// a workload that is gone).
    fn wanted(&self, pod: &PodRecord) -> bool {
        self.mesh
            .workload(&pod.namespace, &pod.workload)
            .is_some_and(|w| pod.index < w.replicas)
    }

    /// Supervision (foreground): a pod's proxy or app, or the controller, that exited is
    /// taken out of readiness at once and restarted after its backoff (1 s doubling to
    /// 30 s; 1 s again after a run of 60 s), each exit and restart an event.
    fn supervise(&mut self) {
        let now = Instant::now();
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
            let what = if key == CONTROLLER_KEY {
                "controller".to_owned()
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
        // Pods gone (scaled down, replaced): their supervision goes too.
        let keys: HashSet<&str> = self
            .state
            .pods
            .iter()
            .map(|p| p.netns.as_str())
            .chain([CONTROLLER_KEY])
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
    fn restart(&mut self, key: &str, role: &str, how: &str) -> anyhow::Result<()> {
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
        let old = pod.procs.iter().find(|p| p.role == role);
        let restarts = old.map_or(0, |p| p.restarts) + 1;
        if let Some(log) = old.and_then(|p| p.log.as_deref()) {
            note_restart(log, role, how, restarts);
        }
        match role {
            "proxy" => {
                let (argv, env, token) = self.proxy_command(&w, key)?;
                self.spawn(key, role, &argv, &env, Some(token), restarts)?;
            }
            "app" => {
                let (argv, env) = self.app_command(&w, key)?;
                self.spawn(key, role, &argv, &env, None, restarts)?;
            }
            other => bail!("unknown role {other}"),
        }
        let pid = self
            .state
            .pods
            .iter()
            .find(|p| p.netns == key)
            .and_then(|p| p.procs.iter().find(|p| p.role == role))
            .map_or(0, |p| p.pid);
        self.event(format!(
            "pod {}: {role} restarted (pid {pid}, restart {restarts}; pod restarts {})",
            pod.name,
            pod.restarts() + 1
        ));
        self.check_pod(key);
        Ok(())
    }

    /// The ports a pod's workload declares (what its readiness check connects to).
    fn pod_ports(&self, pod: &PodRecord) -> Vec<u16> {
        self.mesh
            .workload(&pod.namespace, &pod.workload)
            .map(|w| w.ports.iter().map(|p| p.port).collect())
            .unwrap_or_default()
    }

    /// Checks a restarted pod as at its start (its proxy ready, its ports accepting)
    /// once all its processes run; it takes traffic again when that passes.
    fn check_pod(&mut self, key: &str) {
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
    fn collect_checks(&mut self) {
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
    fn probe_targets(&self) -> Vec<(String, SocketAddr)> {
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
    fn probed(&mut self, started: Instant, round: Vec<(String, Probe)>) {
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
    fn probe_ok(&self, key: &str) -> bool {
        self.probe_failures.get(key).is_none_or(|f| !f.failing())
    }

    /// Makes the pods file (loopback: endpoints files) follow readiness: a pod takes
    /// traffic while it passed its checks since its processes started, both run, its
    /// proxy's `/ready` answers, and the mesh wants it.
    fn refresh_published(&mut self) -> anyhow::Result<()> {
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

    /// Stops a set of pods: processes, namespaces, files; then forgets them.
    fn remove_pods(&mut self, netnses: &[String]) -> anyhow::Result<()> {
        let procs: Vec<ProcRecord> = self
            .state
            .pods
            .iter()
            .filter(|p| netnses.contains(&p.netns))
            .flat_map(|p| p.procs.clone())
            .collect();
        let children = &mut self.children;
        super::state::stop_all(&procs, STOP_GRACE, || {
            children.retain(|_, c| matches!(c.try_wait(), Ok(None)))
        });
        let mut result = Ok(());
        for netns in netnses {
            let Some(i) = self.state.pods.iter().position(|p| &p.netns == netns) else {
                continue;
            };
            self.state.pods[i].procs.clear();
            let pod = self.state.pods[i].clone();
            match super::teardown::remove_pod(&pod, self.state.loopback) {
                Ok(()) => {
                    self.state.pods.remove(i);
                    self.ready.remove(netns);
                    self.published.remove(netns);
                }
                Err(e) => result = Err(e),
            }
            self.save()?;
        }
        // Gone from the pods file too (they were out of the endpoints already).
        self.write_pods()?;
        result
    }

    /// Takes everything down (errors are printed; the state keeps what could not go).
    fn teardown(&mut self) {
        let children = &mut self.children;
        let outcome = super::teardown::teardown(&mut self.state, &self.paths.state_path, || {
            children.retain(|_, c| matches!(c.try_wait(), Ok(None)))
        });
        if let Err(e) = outcome {
            eprintln!("{e:#}");
        }
    }

    /// A table of pods and Services.
    /// The mesh's pods, Services and controller; with `hints`, how to call across it
    /// and read its metrics (`weft up -d` prints them; the live frame stays within
    /// 80 columns and 24 lines without them).
    fn describe(&self, hints: bool) -> String {
        let loopback = self.paths.loopback.is_some();
        // Sized to its content so the live frame fits an 80-column terminal: the pod's
        // workload is in its name, its namespace only when the mesh has several.
        let several_ns = self
            .state
            .pods
            .iter()
            .any(|p| p.namespace != self.state.pods[0].namespace);
        let pod_name = |p: &PodRecord| {
            if several_ns {
                format!("{}/{}", p.namespace, p.name)
            } else {
                p.name.clone()
            }
        };
        let width = |header: &str, cells: &mut dyn Iterator<Item = usize>| {
            cells.fold(header.len(), usize::max)
        };
        let pod_w = width(
            "POD",
            &mut self.state.pods.iter().map(|p| pod_name(p).len()),
        );
        let zone_w = width(
            "ZONE",
            &mut self
                .state
                .pods
                .iter()
                .map(|p| p.zone.as_deref().map_or(1, str::len)),
        );
        let mut out = format!(
            "\n{:<pod_w$}  {:<zone_w$}  {:<15}  {:<8}  RESTARTS\n",
            "POD", "ZONE", "IP", "STATUS"
        );
        for p in &self.state.pods {
            let status = if !p.procs.iter().all(ProcRecord::is_running) {
                "exited"
            } else if self.published.contains(&p.netns) && self.ready.contains(&p.netns) {
                "ready"
            } else if self.ready.contains(&p.netns) {
                "unready"
            } else {
                "start"
            };
            let _ = writeln!(
                out,
                "{:<pod_w$}  {:<zone_w$}  {:<15}  {:<8}  {}",
                pod_name(p),
                p.zone.as_deref().unwrap_or("-"),
                p.ip.to_string(),
                status,
                p.restarts(),
            );
        }
        let services: Vec<(String, String, String, usize)> = self
            .mesh
            .services
            .iter()
            .map(|s| {
                let vip = self
                    .vip(&s.namespace, &s.name)
                    .map_or("-".into(), |v| v.to_string());
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| format!("{}->{}", p.port, p.target_port))
                    .collect();
                let endpoints = self
                    .state
                    .pods
                    .iter()
                    .filter(|p| {
                        self.published.contains(&p.netns)
                            && self.ready.contains(&p.netns)
                            && self
                                .mesh
                                .backends(s)
                                .any(|w| w.name == p.workload && w.namespace == p.namespace)
                    })
                    .count();
                (
                    format!("{}.{}", s.name, s.namespace),
                    vip,
                    ports.join(","),
                    endpoints,
                )
            })
            .collect();
        let svc_w = width("SERVICE", &mut services.iter().map(|s| s.0.len()));
        let ports_w = width("PORTS", &mut services.iter().map(|s| s.2.len()));
        let _ = writeln!(
            out,
            "\n{:<svc_w$}  {:<15}  {:<ports_w$}  ENDPOINTS",
            "SERVICE", "VIP", "PORTS"
        );
        for (name, vip, ports, endpoints) in &services {
            let _ = writeln!(
                out,
                "{name:<svc_w$}  {vip:<15}  {ports:<ports_w$}  {endpoints}"
            );
        }
        let controller = self.state.controller.as_ref();
        let running = controller.is_some_and(ProcRecord::is_running);
        let _ = writeln!(
            out,
            "\ncontroller: {}:{CONTROLLER_PORT}  {}  pid {}  restarts {}",
            self.controller_ip(),
            match (running, self.controller_ready) {
                (false, _) => "exited",
                (true, true) => "ready",
                (true, false) => "unready",
            },
            controller.map_or("-".into(), |c| c.pid.to_string()),
            controller.map_or(0, |c| c.restarts)
        );
        if !hints {
            return out;
        }
        if loopback {
            let _ = writeln!(
                out,
                "proxies: http://POD_IP:{OUTBOUND_PORT}   endpoints: {}",
                self.paths.endpoints_dir.display(),
            );
        } else {
            let _ = writeln!(out, "network namespaces: {}-POD", self.paths.prefix);
        }
        let _ = writeln!(
            out,
            "logs: {}   state: {}",
            self.paths.log_dir.display(),
            self.paths.state_path.display()
        );
        if let Some(p) = self.state.pods.first() {
            // A Service the first pod does not serve itself, to call across the mesh.
            let svc = self
                .mesh
                .services
                .iter()
                .find(|s| !self.mesh.backends(s).any(|w| w.name == p.workload))
                .or(self.mesh.services.first());
            let url = svc.map_or("http://SERVICE.NAMESPACE.svc:PORT/".into(), |s| {
                format!("http://{}.{}.svc:{}/", s.name, s.namespace, s.ports[0].port)
            });
            let weft = std::env::current_exe().unwrap_or_else(|_| "weft".into());
            let app = weft.with_file_name("weft-demo-app");
            if loopback {
                let _ = writeln!(
                    out,
                    "call as a pod:    HTTP_PROXY=http://{}:{OUTBOUND_PORT} {} get {url}\nmetrics:          {} stat -A (per workload; `stat svc -A` per Service)",
                    p.ip,
                    app.display(),
                    weft.display(),
                );
                return out;
            }
            let _ = writeln!(
                out,
                "call from a pod:  ip netns exec {} {} get {url}\nmetrics:          {} stat -A (per workload; `stat svc -A` per Service)",
                p.netns,
                app.display(),
                weft.display(),
            );
        }
        out
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
            let now = dir_stamp(&self.paths.mesh_dir);
            if now != stamp {
                stamp = now;
                match Mesh::load(&self.paths.mesh_dir) {
                    Ok(mesh) => {
                        if mesh != self.mesh {
                            if let Err(e) = self.apply(mesh).await {
                                self.event(format!("applying the change failed: {e:#}"));
                            }
                        }
                    }
                    Err(e) => self.event(format!(
                        "{} changed but is not valid; keeping the running mesh:\n{e}",
                        self.paths.mesh_dir.display()
                    )),
                }
            }
        }
        println!("\nstopping the mesh");
        let started = Instant::now();
        self.teardown();
        println!("mesh down in {:.2}s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Reads every pod proxy's /metrics (from inside the hub namespace unless in
    /// loopback mode); pods that do not answer are left out.
    async fn scrape(&self) -> HashMap<String, String> {
        scrape::pod_metrics(self.hub_netns(), &self.state.pods)
            .await
            .unwrap_or_default()
    }

    /// Prints the pods and the golden metrics per workload over `window`.
    fn summary(
        &self,
        before: &HashMap<String, String>,
        after: &HashMap<String, String>,
        window: Duration,
    ) {
        // The `weft stat deploy -A` view: what each workload's pods served.
        let parse = |m: &HashMap<String, String>| -> HashMap<String, Scrape> {
            m.iter()
                .map(|(k, t)| (k.clone(), Scrape::parse(t)))
                .collect()
        };
        let workloads = self
            .mesh
            .workloads
            .iter()
            .map(|w| (w.namespace.clone(), w.name.clone()))
            .collect();
        let rows = stat::mesh::deploy_rows(
            &workloads,
            &self.state.pods,
            &parse(before),
            &parse(after),
            window,
        );
        let mut out = String::new();
        if self.interactive {
            out.push_str("\x1b[2J\x1b[H");
        } else {
            // Frames in a log or a pipe: each under a line of its own.
            let _ = writeln!(
                out,
                "--- {} ---",
                humantime::format_rfc3339_seconds(SystemTime::now())
            );
        }
        let _ = writeln!(
            out,
            "weft up {}: {} pods, {} services (Ctrl-C stops the mesh)",
            self.paths.mesh_dir.display(),
            self.state.pods.len(),
            self.mesh.services.len()
        );
        out.push_str(&self.describe(false));
        out.push('\n');
        let namespaces = self
            .mesh
            .workloads
            .iter()
            .any(|w| w.namespace != self.mesh.workloads[0].namespace);
        out.push_str(&stat::mesh::table(
            &rows,
            namespaces,
            true,
            "deployments",
            "in the mesh",
        ));
        // A terminal shows the newest event; all of them are in the output above (and
        // in weft-up.log when detached).
        if self.interactive {
            if let Some(e) = self.events.back() {
                let _ = write!(out, "\nlast event: {e}");
            }
        }
        println!("{out}");
    }

    /// Applies a changed mesh: Services' VIPs and hosts, pods added and removed.
    async fn apply(&mut self, mesh: Mesh) -> anyhow::Result<()> {
        let mut mesh = mesh;
        if mesh.trust_domain != self.mesh.trust_domain {
            self.event(format!(
                "trustDomain changed to {:?}: certificates are issued for {:?} until weft up is restarted",
                mesh.trust_domain, self.mesh.trust_domain
            ));
            mesh.trust_domain = self.mesh.trust_domain.clone();
        }
        let old = std::mem::replace(&mut self.mesh, mesh);
        for w in &self.mesh.warnings {
            self.events.push_back(format!("warning: {w}"));
        }
        // New service accounts need their tokens before their proxies start.
        self.write_tokens()?;
        if self.paths.loopback.is_some() {
            // New namespaces' proxies need their endpoints file before they start.
            self.write_pods()?;
        }
        // Pods of workloads removed or changed (other than in replicas) go first.
        let changed: Vec<String> = self
            .state
            .pods
            .iter()
            .filter(|p| {
                let new = self.mesh.workload(&p.namespace, &p.workload);
                let old = old.workload(&p.namespace, &p.workload);
                match (new, old) {
                    (Some(n), Some(o)) => {
                        let mut o = o.clone();
                        o.replicas = n.replicas;
                        o != *n
                    }
                    _ => true,
                }
            })
            .map(|p| p.netns.clone())
            .collect();
        if !changed.is_empty() {
            self.event(format!(
                "replacing {} pods whose workload changed",
                changed.len()
            ));
            self.remove_pods(&changed)?;
        }
        let services_changed = self.paths.loopback.is_none() && self.sync_vips()?;
        // Scale up.
        let mut created = Vec::new();
        for w in self.mesh.workloads.clone() {
            for i in 0..w.replicas {
                let exists =
                    self.state.pods.iter().any(|p| {
                        p.workload == w.name && p.namespace == w.namespace && p.index == i
                    });
                if !exists {
                    match self.create_pod(&w, i) {
                        Ok(netns) => created.push((w.clone(), netns)),
                        Err(e) => {
                            self.event(format!("cannot start pod {}: {e:#}", pod_name(&w, i)))
                        }
                    }
                }
            }
        }
        if services_changed {
            self.write_hosts()?;
        }
        // Scale down: out of the endpoints first (the controller drops pods beyond the
        // replicas at once, and the pods file marks them not ready), then stopped once
        // proxies have noticed.
        let surplus: Vec<String> = self
            .state
            .pods
            .iter()
            .filter(|p| {
                self.mesh
                    .workload(&p.namespace, &p.workload)
                    .is_none_or(|w| p.index >= w.replicas)
            })
            .map(|p| p.netns.clone())
            .collect();
        for netns in &surplus {
            self.published.remove(netns);
        }
        // Readiness publishes the new pods (and drops the surplus) in the pods file.
        let failures = self.start_pods(&created, Duration::from_secs(30)).await;
        for e in failures {
            self.events.push_back(format!("{e:#}"));
        }
        if !surplus.is_empty() {
            tokio::time::sleep(self.propagation()).await;
            let names: Vec<String> = surplus
                .iter()
                .map(|n| {
                    n.trim_start_matches(&format!("{}-", self.paths.prefix))
                        .to_owned()
                })
                .collect();
            self.remove_pods(&surplus)?;
            self.event(format!("removed pods {}", names.join(", ")));
        }
        self.save()
    }
}

/// Loopback mode: the endpoints file of `namespace`'s proxies. Every Service port is
/// a service named by its authorities (`{svc}.{ns}.svc.cluster.local:{port}`,
/// `{svc}.{ns}.svc:{port}`, `{svc}.{ns}:{port}`, and `{svc}:{port}` for Services of
/// `namespace`) whose endpoints are its ready pods' inbound proxies (`IP:4143`, with
/// zone and identity): calls go proxy to proxy over mTLS, and the callee's proxy
/// hands them to its app. Service ports without a ready pod are left out.
fn endpoints_yaml(
    mesh: &Mesh,
    pods: &[PodRecord],
    published: &HashSet<String>,
    namespace: &str,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut entries = String::new();
    let mut listed = false;
    for svc in &mesh.services {
        for port in &svc.ports {
            let mut endpoints = Vec::new();
            for w in mesh.backends(svc) {
                if w.resolve(&port.target_port).is_none() {
                    continue;
                }
                let identity = w.identity(&mesh.trust_domain).to_string();
                for pod in pods.iter().filter(|p| {
                    p.workload == w.name
                        && p.namespace == w.namespace
                        && published.contains(&p.netns)
                }) {
                    let mut e = format!(
                        "{{addr: {}, identity: {}",
                        q(&SocketAddr::from((pod.ip, INBOUND_PORT)).to_string()),
                        q(&identity)
                    );
                    if let Some(zone) = &pod.zone {
                        let _ = write!(e, ", zone: {}", q(zone));
                    }
                    e.push('}');
                    endpoints.push(e);
                }
            }
            let (n, ns, p) = (&svc.name, &svc.namespace, port.port);
            let mut authorities = vec![
                format!("{n}.{ns}.svc.cluster.local:{p}"),
                format!("{n}.{ns}.svc:{p}"),
                format!("{n}.{ns}:{p}"),
            ];
            if *ns == namespace {
                authorities.push(format!("{n}:{p}"));
            }
            let authorities: Vec<String> = authorities.iter().map(|a| q(a)).collect();
            listed = true;
            // No ready pod yet: the Service is still known, with no endpoints, so its
            // callers' requests wait for one (failfast) instead of meeting an unknown name.
            let listed_endpoints = if endpoints.is_empty() {
                " []  # no ready endpoints".to_owned()
            } else {
                format!("\n      - {}", endpoints.join("\n      - "))
            };
            let _ = writeln!(
                entries,
                "  - name: {}\n    authorities: [{}]\n    endpoints:{listed_endpoints}",
                q(n),
                authorities.join(", "),
            );
        }
    }
    let mut out = format!(
        "# written by weft up (loopback mode): the Services as namespace {namespace}'s proxies name them, and their ready pods' inbound proxies\n"
    );
    // Only comments (or nothing) below `services:` would be a null, not a list.
    out.push_str(if listed {
        "services:\n"
    } else {
        "services: []\n"
    });
    out.push_str(&entries);
    out
}

/// Polls, from inside the pod (in loopback mode: at its address), until its proxy is
/// ready and its ports accept connections; fails early when a process exits.
fn pod_ready(
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

/// Names, sizes and modification times of the mesh directory's YAML files.
fn dir_stamp(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut files = weft_core::mesh::yaml_files(dir).unwrap_or_default();
    files.push(dir.join(MESH_FILE));
    files.sort();
    files.dedup();
    files
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.len(), m.modified().ok()?))
        })
        .collect()
}

/// Copies `from` to `to` readable by everyone (0644).
fn copy_public(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proxy::endpoints::ServiceIndex;

    const MESH: &str = r#"kind: Mesh
workloads:
  - {name: books, zone: zone-b, replicas: 2, ports: [8080], command: [x]}
  - {name: books, namespace: shop, ports: [9000], command: [x]}
  - {name: idle, ports: [8080], command: [x]}
"#;
    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: books}
spec: {selector: {app: books}, ports: [{name: http, port: 8080}, {name: alt, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: books, namespace: shop}
spec: {selector: {app: books}, ports: [{port: 8080, targetPort: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: idle}
spec: {selector: {app: idle}, ports: [{port: 8080}]}
"#;

    fn pod(workload: &str, namespace: &str, index: u32, ip: [u8; 4]) -> PodRecord {
        PodRecord {
            name: format!("{workload}-{index}"),
            workload: workload.into(),
            namespace: namespace.into(),
            index,
            zone: (namespace == "default" && workload == "books").then(|| "zone-b".into()),
            netns: format!("wf-{workload}.{namespace}-{index}"),
            ip: ip.into(),
            link: String::new(),
            files: Vec::new(),
            procs: Vec::new(),
        }
    }

    /// (address, zone, identity) of a service's endpoints, sorted.
    fn endpoints_of(index: &ServiceIndex, authority: &str) -> Vec<(String, String, String)> {
        let service = index
            .by_authority(authority)
            .unwrap_or_else(|| panic!("no service for {authority}"));
        let mut out: Vec<_> = service
            .balancer()
            .endpoints()
            .into_iter()
            .map(|e| {
                (
                    e.addr.to_string(),
                    e.zone.as_deref().unwrap_or("-").to_owned(),
                    e.identity.map(|i| i.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn loopback_endpoints_files_name_services_per_namespace_and_list_ready_inbound_proxies() {
        let mesh = Mesh::parse(&[
            ("mesh.yaml".into(), MESH.into()),
            ("services.yaml".into(), SERVICES.into()),
        ])
        .unwrap();
        let pods = vec![
            pod("books", "default", 0, [127, 18, 0, 2]),
            pod("books", "default", 1, [127, 18, 0, 3]),
            pod("books", "shop", 0, [127, 18, 0, 4]),
            pod("idle", "default", 0, [127, 18, 0, 5]),
        ];
        // books-1 and idle-0 are not ready.
        let published: HashSet<String> = [&pods[0], &pods[2]]
            .iter()
            .map(|p| p.netns.clone())
            .collect();
        let books_id = "books.default.serviceaccount.identity.weft.cluster.local";
        let shop_id = "books.shop.serviceaccount.identity.weft.cluster.local";

        let text = endpoints_yaml(&mesh, &pods, &published, "default");
        let index = ServiceIndex::parse(Path::new("default.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let books = vec![(
            "127.18.0.2:4143".to_owned(),
            "zone-b".to_owned(),
            books_id.to_owned(),
        )];
        for authority in [
            "books:8080",
            "books.default:8080",
            "books.default.svc:8080",
            "books.default.svc.cluster.local:8080",
            // Port 80 also without the port, as Host headers name it.
            "books",
            "books.default.svc",
        ] {
            assert_eq!(endpoints_of(&index, authority), books, "{authority}");
        }
        // The other namespace's books by its qualified names only; its inbound proxy
        // forwards to its own first port (9000), whatever the Service's port is.
        let shop = vec![(
            "127.18.0.4:4143".to_owned(),
            "-".to_owned(),
            shop_id.to_owned(),
        )];
        assert_eq!(endpoints_of(&index, "books.shop.svc:8080"), shop);
        assert_eq!(endpoints_of(&index, "books.shop:8080"), shop);
        // No ready pod: known, without endpoints (callers wait for one, then 503).
        assert_eq!(endpoints_of(&index, "idle:8080"), Vec::new());
        assert!(
            text.contains("endpoints: []  # no ready endpoints"),
            "{text}"
        );

        // In shop's file the short name is shop's books.
        let text = endpoints_yaml(&mesh, &pods, &published, "shop");
        let index = ServiceIndex::parse(Path::new("shop.yaml"), &text).unwrap();
        assert_eq!(endpoints_of(&index, "books:8080"), shop);
        assert_eq!(endpoints_of(&index, "books.default.svc:8080"), books);

        // Nothing ready (as at start-up): every Service known, none with endpoints.
        let text = endpoints_yaml(&mesh, &pods, &HashSet::new(), "default");
        let index = ServiceIndex::parse(Path::new("default.yaml"), &text).unwrap();
        assert_eq!(endpoints_of(&index, "books:8080"), Vec::new());
        assert_eq!(endpoints_of(&index, "books.shop.svc:8080"), Vec::new());
    }

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
            loopback_warnings(&mesh),
            ["Service default/api port 9090 targets port 9090 of workload api, but in loopback mode a pod's inbound traffic goes to its first port (8080)"]
        );
    }
}

//! Linux network namespaces for end-to-end tests of transparent proxying.
//!
//! A [`TestNet`] is a small private network: one "hub" namespace holding a bridge, and
//! one namespace per pod, each with `lo` up and an `eth0` veth to the bridge carrying an
//! address from `198.18.0.0/15` (benchmarking space, never routed anywhere). Every link
//! is created directly inside a test namespace, so nothing appears in the root
//! namespace. Processes run inside a pod with [`TestNet::spawn_in`] (through
//! `ip netns exec` and `setpriv`, optionally under another UID), async code with
//! [`run_in`] (one OS thread per call) or on a pod's [`NsRuntime`] (one thread per pod,
//! alive until the net drops, for servers). [`install_redirect`] adds the sidecar's
//! iptables rules to a pod.
//!
//! Dropping the net (also while a test panics) stops the processes it started (by pid:
//! SIGTERM, then SIGKILL), stops the runtimes, and deletes its namespaces, which removes
//! their links and iptables rules. It never touches anything it did not create.
//!
//! Everything needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); tests call [`can_run`] first
//! and skip when it fails.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::server::TestServer;

/// The UID the proxy runs as and the ports the rules send traffic to (the proxy's
/// defaults), as in `weft up`'s pods.
pub use weft_core::iptables::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID};

/// How long [`run_in`] lets its code run.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long a process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

static NETS: AtomicU32 = AtomicU32::new(0);

/// Skips a test that cannot run here with its reason, except under CI (`CI` set),
/// where a skipped root test would hide a failure: there it fails.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run under CI: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// `Ok` when this process can build namespaces: root, with `ip`, `iptables`,
/// `iptables-restore` and `setpriv` installed. Otherwise the reason to print when
/// skipping.
pub fn can_run() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("network namespaces need Linux".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("not root: network namespaces and iptables need root".into());
    }
    for (tool, arg) in [
        ("ip", "-V"),
        ("iptables", "--version"),
        ("iptables-restore", "--version"),
        ("setpriv", "--version"),
    ] {
        match Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => return Err(format!("`{tool} {arg}` failed ({status})")),
            Err(e) => return Err(format!("`{tool}` is not available: {e}")),
        }
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Err("the kernel has no network namespaces".into());
    }
    Ok(())
}

/// Runs a command to completion; its stderr becomes the error.
fn sh<I, S>(program: &str, args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Ok(weft_core::netns::run(program, args, None)?)
}

/// `ip -n NS ARGS...`.
fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    sh("ip", ["-n", ns].iter().chain(args))
}

/// `ip netns exec NS iptables -t nat ARGS...`.
fn nat_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    sh(
        "ip",
        ["netns", "exec", ns, "iptables", "-w", "5", "-t", "nat"]
            .iter()
            .chain(args),
    )
}

/// Installs the sidecar's redirection in `ns`: the rules `weft up` installs in its
/// pods ([`weft_core::iptables::redirect_rules`]), which let the proxy's UID
/// ([`PROXY_UID`]), `lo`, the admin port and `skip_ports` pass and send other TCP to
/// the inbound ([`INBOUND_PORT`]) and outbound ([`OUTBOUND_PORT`]) listeners.
///
/// The rules live in the namespace and go with it.
pub fn install_redirect(ns: &str, skip_ports: &[u16]) -> anyhow::Result<()> {
    let rules = weft_core::iptables::redirect_rules(skip_ports);
    weft_core::netns::run(
        "ip",
        ["netns", "exec", ns, "iptables-restore", "-w", "5"],
        Some(&rules),
    )?;
    Ok(())
}

/// The nat table of `ns` as `iptables -S` prints it (for failure messages).
pub fn nat_rules(ns: &str) -> String {
    nat_in(ns, &["-S"]).unwrap_or_else(|e| format!("{e:#}"))
}

/// Runs `f()` to completion inside the network namespace `ns`, on a new OS thread
/// that enters the namespace and builds a current-thread runtime; blocks the caller.
/// Gives up after [`RUN_LIMIT`]; bound the work inside more tightly.
pub fn run_in<F, Fut, T>(ns: &str, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    Ok(weft_core::netns::in_netns(Some(ns), RUN_LIMIT, f)?)
}

/// A current-thread tokio runtime on its own OS thread inside a network namespace,
/// alive until [`NsRuntime::stop`] (a [`TestNet`] stops its runtimes when dropped).
/// Tasks spawned on it create their sockets inside the namespace.
pub struct NsRuntime {
    ns: String,
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl NsRuntime {
    pub fn start(ns: &str) -> anyhow::Result<NsRuntime> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let name = ns.to_owned();
        let thread = thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn(move || {
                let rt = match weft_core::netns::enter(&name)
                    .and_then(|()| weft_core::netns::current_thread_runtime())
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async move {
                    let _ = stop_rx.await;
                });
                // Dropping the runtime cancels its tasks, closing their sockets.
            })
            .context("cannot start a thread")?;
        let handle = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the runtime thread for {ns} did not start"))??;
        Ok(NsRuntime {
            ns: ns.to_owned(),
            handle,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Spawns `fut` on the runtime; it is polled (and creates sockets) in the namespace.
    pub fn spawn<Fut>(&self, fut: Fut) -> tokio::task::JoinHandle<Fut::Output>
    where
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Runs `f()` on the runtime and waits (blocking the caller, at most `limit`) for
    /// its output. Whatever `f` spawns keeps running there afterwards, so servers
    /// started this way keep serving.
    pub fn run<F, Fut, T>(&self, limit: Duration, f: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let task = self.handle.spawn(async move {
            let _ = tx.send(f().await);
        });
        match rx.recv_timeout(limit) {
            Ok(value) => Ok(value),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                task.abort();
                bail!("code in namespace {} ran longer than {limit:?}", self.ns)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("code in namespace {} panicked or was cancelled", self.ns)
            }
        }
    }

    /// Stops the runtime (cancelling its tasks) and waits a little for its thread.
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !thread.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                eprintln!("netns: the runtime thread of {} did not stop", self.ns);
            }
        }
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One pod of a [`TestNet`]: a namespace with `eth0` at `ip`/24.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// A process started by [`TestNet::spawn_in`].
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A private network of pods (network namespaces) on one bridge. Cleans up on drop.
pub struct TestNet {
    id: String,
    hub: String,
    pods: Vec<Pod>,
    /// Namespaces this net created (and so deletes), in creation order.
    created: Vec<String>,
    procs: Mutex<Vec<Proc>>,
    runtimes: Mutex<BTreeMap<String, Arc<NsRuntime>>>,
    log_dir: PathBuf,
}

impl TestNet {
    /// Creates `pods` namespaces named `wt-{pid}-{n}-{i}` with addresses
    /// `198.18.{n}.{i + 1}/24`, bridged through a hub namespace `wt-{pid}-{n}-hub`.
    pub fn new(pods: usize) -> anyhow::Result<TestNet> {
        anyhow::ensure!((1..=250).contains(&pods), "a TestNet has 1 to 250 pods");
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        let id = format!("wt-{}-{n}", std::process::id());
        let log_dir = std::env::temp_dir().join(format!("weft-{id}"));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let mut net = TestNet {
            hub: format!("{id}-hub"),
            id,
            pods: Vec::new(),
            created: Vec::new(),
            procs: Mutex::new(Vec::new()),
            runtimes: Mutex::new(BTreeMap::new()),
            log_dir,
        };
        // On an error below, dropping `net` removes what was made so far.
        net.add_ns(&net.hub.clone())?;
        ip_in(&net.hub, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&net.hub, &["link", "set", "br0", "up"])?;
        let subnet = (n % 256) as u8;
        for i in 0..pods {
            let pod = Pod {
                ns: format!("{}-{i}", net.id),
                ip: Ipv4Addr::new(198, 18, subnet, i as u8 + 1),
            };
            net.add_ns(&pod.ns)?;
            let port = format!("p{i}");
            // Made in the hub with its peer placed straight into the pod: no link ever
            // exists in the root namespace.
            ip_in(
                &net.hub,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &pod.ns,
                ],
            )?;
            ip_in(&net.hub, &["link", "set", &port, "master", "br0", "up"])?;
            ip_in(
                &pod.ns,
                &["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"],
            )?;
            ip_in(&pod.ns, &["link", "set", "eth0", "up"])?;
            net.pods.push(pod);
        }
        Ok(net)
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        sh("ip", ["netns", "add", ns])?;
        self.created.push(ns.to_owned());
        ip_in(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// `wt-{pid}-{n}`: the prefix of every namespace of this net.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    /// Where process logs go (removed with the net).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts `cmd` (program, arguments, environment and working directory are taken
    /// from it) inside `ns` as `ip netns exec {ns} [setpriv --reuid={uid} --regid={uid}
    /// --clear-groups --] PROGRAM ARGS...`, stdout and stderr to `{log_dir}/{name}.log`.
    /// Both tools exec, so the returned pid is the program's. The net stops it on drop.
    pub fn spawn_in(
        &self,
        ns: &str,
        name: &str,
        cmd: &Command,
        uid: Option<u32>,
    ) -> anyhow::Result<u32> {
        anyhow::ensure!(
            self.created.iter().any(|c| c == ns),
            "{ns} is not a namespace of this net"
        );
        let mut outer = Command::new("ip");
        outer.args(["netns", "exec", ns]);
        if let Some(uid) = uid {
            outer.arg("setpriv").args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        outer.arg(cmd.get_program()).args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => outer.env(key, value),
                None => outer.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            outer.current_dir(dir);
        }
        let log = self.log_dir.join(format!("{name}.log"));
        let file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        outer
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = outer
            .spawn()
            .with_context(|| format!("cannot start {outer:?}"))?;
        let pid = child.id();
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Proc {
                name: name.to_owned(),
                child,
                log,
            });
        Ok(pid)
    }

    /// `Some(status)` if the process `pid` (started by this net) has exited.
    pub fn exited(&self, pid: u32) -> Option<std::process::ExitStatus> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let proc = procs.iter_mut().find(|p| p.child.id() == pid)?;
        proc.child.try_wait().ok().flatten()
    }

    /// The log of the process started as `name`.
    pub fn log(&self, name: &str) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_dir.join(format!("{name}.log"))) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for p in procs.iter() {
            let mut text = String::new();
            if let Ok(mut f) = File::open(&p.log) {
                let _ = f.read_to_string(&mut text);
            }
            out.push_str(&format!(
                "----- {} (pid {}, {}) -----\n{text}\n",
                p.name,
                p.child.id(),
                p.log.display()
            ));
        }
        out
    }

    /// The long-lived runtime of `ns` (started on first use, stopped with the net).
    pub fn runtime(&self, ns: &str) -> anyhow::Result<Arc<NsRuntime>> {
        anyhow::ensure!(
            self.created.iter().any(|c| c == ns),
            "{ns} is not a namespace of this net"
        );
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = runtimes.get(ns) {
            return Ok(rt.clone());
        }
        let rt = Arc::new(NsRuntime::start(ns)?);
        runtimes.insert(ns.to_owned(), rt.clone());
        Ok(rt)
    }

    /// Starts a [`TestServer`] on `addr` inside `ns`; it serves until it is dropped or
    /// the net is.
    pub fn spawn_server_in(
        &self,
        ns: &str,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> anyhow::Result<TestServer> {
        let name = name.to_owned();
        let server = self
            .runtime(ns)?
            .run(Duration::from_secs(5), move || async move {
                TestServer::start(addr, &name).await
            })?
            .with_context(|| format!("cannot bind {addr} in {ns}"))?;
        Ok(server)
    }

    /// Stops the processes this net started: SIGTERM, then SIGKILL after a short wait.
    fn stop_procs(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        terminate(
            procs.iter_mut().map(|p| (p.name.as_str(), &mut p.child)),
            TERM_GRACE,
            "netns",
        );
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        self.stop_procs();
        if thread::panicking() {
            eprintln!(
                "netns {}: logs of the processes it ran:\n{}",
                self.id,
                self.logs()
            );
        }
        let runtimes =
            std::mem::take(&mut *self.runtimes.lock().unwrap_or_else(|e| e.into_inner()));
        for rt in runtimes.values() {
            rt.stop();
        }
        // Pods first, then the hub. Deleting a namespace removes its links (a veth's
        // peer goes with it) and its iptables rules.
        for ns in self.created.iter().rev() {
            if let Err(e) = sh("ip", ["netns", "delete", ns]) {
                eprintln!("netns: cannot delete {ns}: {e:#}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// Stops processes this test started, by their pid: SIGTERM to each still running, then,
/// past `grace`, SIGKILL to those that ignored it (named in a line prefixed `who`).
pub(crate) fn terminate<'a>(
    procs: impl Iterator<Item = (&'a str, &'a mut std::process::Child)>,
    grace: Duration,
    who: &str,
) {
    let mut procs: Vec<_> = procs.collect();
    for (_, child) in procs.iter_mut() {
        if let Ok(None) = child.try_wait() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    for (name, child) in procs.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    eprintln!(
                        "{who}: {name} (pid {}) ignored SIGTERM; killing it",
                        child.id()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                _ => break,
            }
        }
    }
}

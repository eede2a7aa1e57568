//! A test-only node agent for the Kubernetes tests: it plays the kubelet of one Node of
//! a [`KubeApi`] cluster, so pods there run for real, as network-namespace pods like
//! the local mesh's, from the spec the API server stored (the injector's changes
//! included).
//!
//! ```ignore
//! let node = KubeNode::start(&api, NodeConfig::new("weft-test-node")
//!     .zone("zone-a")
//!     .namespace("shop")
//!     .image("weft.test/weft-proxy:dev", bin.join("weft-proxy")))?;
//! node.spawn_on_node("weft-controller", &controller_command)?; // hostNetwork-like
//! ```
//!
//! What it does, as a kubelet would:
//! - registers its Node (`kubernetes.io/hostname`, the zone label, `Ready`, its
//!   `InternalIP`) and binds the unscheduled pods of the namespaces it was given to
//!   itself (the `pods/binding` subresource; no scheduler runs);
//! - gives each pod bound to it a network namespace with an `eth0` veth on the node's
//!   bridge, an address from `198.19.0.0/24` (benchmarking space) and a default route
//!   through the node (`198.19.0.254`), so Service ClusterIPs are routable;
//! - makes its volumes: `emptyDir`, and `projected` ServiceAccount tokens (TokenRequest
//!   with the projection's audience and expiry, bound to the pod, as the kubelet asks
//!   for them), ConfigMaps and downward-API items, in a directory per pod; a path in a
//!   container's env or args under one of its `volumeMounts` is rewritten to the
//!   volume's directory (containers share this machine's filesystem);
//! - runs the init containers in order (to completion), native sidecars (`restartPolicy:
//!   Always`) started and waited for (their `startupProbe`), then the containers, each
//!   as `ip netns exec POD [setpriv --reuid UID ...] EXECUTABLE ARGS` with the
//!   container's env only (downward-API `fieldRef`s resolved, `$(VAR)` expanded), as
//!   its `runAsUser` (else the pod's, else [`NodeConfig::default_uid`]); the executable
//!   is the one configured for the container's image ([`NodeConfig::image`]);
//! - runs readiness probes (`httpGet`, `tcpSocket`) from the node's network to the pod's
//!   address, as the kubelet does, and reports `Running`, `podIP` and the `Ready`
//!   conditions on the status subresource; a container that exits turns the pod
//!   un-ready (nothing is restarted);
//! - on deletion stops the containers (SIGTERM, then SIGKILL), the sidecars last,
//!   removes the namespace and the pod's directory and deletes the pod for good.
//!
//! It watches pods with `kubectl get pods --watch` (started again when it ends; a pod
//! deleted between two watches is missed) and talks to the API with kubectl.
//!
//! What it does not do: images (the executables are this machine's), filesystem
//! isolation, users' groups and capabilities beyond the UID (init containers that ask
//! for root get all of root's), resource limits, restarts, liveness probes, `exec`
//! and gRPC probes (such a container counts ready once started), token renewal (tests
//! are shorter than a token's life), Secrets, `envFrom`, cluster DNS.
//!
//! The node's own network namespace holds the bridge and stands for the node: processes
//! started with [`KubeNode::spawn_on_node`] run there (as host-network pods would), and
//! reach the API server at its usual `https://127.0.0.1:PORT` through a relay into the
//! machine's loopback, so nothing of the node appears in the machine's own network
//! namespace. Dropping the node (also while a test panics) stops every process it
//! started, by pid, and deletes every namespace it made, which removes their links and
//! iptables rules.
//!
//! Needs root (network namespaces, iptables), `ip`, `iptables-restore` and `setpriv`:
//! check [`crate::netns::can_run`] first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::core::v1::{Container, EnvVar, ObjectFieldSelector, Pod, Probe, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use crate::kube::KubeApi;

/// The node's address on its pods' bridge: pods' default gateway, where host-network
/// processes ([`KubeNode::spawn_on_node`]) can listen for pods.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 254);
/// The pods' network (`/24`).
const POD_NET: [u8; 3] = [198, 19, 0];
/// The user of containers that say none, as `weft up` runs apps.
pub const DEFAULT_UID: u32 = 2103;
/// What a container's processes get as `PATH` (their environment is the container's
/// only).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How often probes run while the agent waits for them.
const PROBE_EVERY: Duration = Duration::from_millis(100);

static NODES: AtomicUsize = AtomicUsize::new(0);

/// What the node is and what it can run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Node object's name.
    pub name: String,
    /// Its `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// Namespaces whose unscheduled pods it binds to itself (pods others bind to it run
    /// too).
    pub namespaces: Vec<String>,
    /// The executables it runs for images: an image reference as the pod names it, or
    /// without its tag (`weft-demo-app` for `weft-demo-app:1`), to the program the
    /// image's entrypoint stands for.
    pub images: BTreeMap<String, PathBuf>,
    /// The UID of containers whose spec and pod say none.
    pub default_uid: u32,
    /// How long each step of a pod's start may take: an init container's run, a
    /// sidecar's start, the readiness of the containers, the ConfigMaps it mounts.
    pub step_limit: Duration,
}

impl NodeConfig {
    pub fn new(name: &str) -> NodeConfig {
        NodeConfig {
            name: name.to_owned(),
            zone: None,
            namespaces: Vec::new(),
            images: BTreeMap::new(),
            default_uid: DEFAULT_UID,
            step_limit: Duration::from_secs(30),
        }
    }

    pub fn zone(mut self, zone: &str) -> NodeConfig {
        self.zone = Some(zone.to_owned());
        self
    }

    pub fn namespace(mut self, namespace: &str) -> NodeConfig {
        self.namespaces.push(namespace.to_owned());
        self
    }

    pub fn image(mut self, image: &str, executable: impl Into<PathBuf>) -> NodeConfig {
        self.images.insert(image.to_owned(), executable.into());
        self
    }

    /// The executable for `image`: configured for it as it is, or without its tag or
    /// digest.
    fn executable(&self, image: &str) -> Option<&PathBuf> {
        self.images.get(image).or_else(|| {
            let untagged = image.split('@').next().unwrap_or(image);
            // A ':' after the last '/' starts the tag (one before it is a registry's port).
            let untagged = match untagged.rfind(':') {
                Some(i) if !untagged[i..].contains('/') => &untagged[..i],
                _ => untagged,
            };
            self.images.get(untagged)
        })
    }
}

/// kubectl with the cluster's admin kubeconfig.
#[derive(Clone)]
struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        crate::kube::run_kubectl(self.command(), args, input)
    }
}

/// A process the node started (a container, or a host-network process).
struct Proc {
    /// The pod's uid; empty for host-network processes.
    pod: String,
    name: String,
    sidecar: bool,
    child: Child,
    log: PathBuf,
}

/// One pod the node runs.
struct PodRun {
    namespace: String,
    name: String,
    uid: String,
    netns: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    /// What it is doing, or why it failed (for failure messages).
    state: Mutex<String>,
    stopping: AtomicBool,
    starter: Mutex<Option<JoinHandle<()>>>,
}

impl PodRun {
    fn set_state(&self, state: impl Into<String>) {
        *lock(&self.state) = state.into();
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A pod the node runs, as [`KubeNode::pods`] tells.
#[derive(Clone, Debug)]
pub struct NodePod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// `starting`, `running`, `ready`, `stopping`, or what went wrong.
    pub state: String,
}

/// What the node's threads share.
struct Shared {
    config: NodeConfig,
    kubectl: Kubectl,
    hub: String,
    dir: PathBuf,
    stop: AtomicBool,
    pods: Mutex<HashMap<String, Arc<PodRun>>>,
    /// Uids of pods it asked to bind, or finished (so that late events leave them).
    seen: Mutex<HashSet<String>>,
    /// Pod addresses' last octets in use.
    ips: Mutex<BTreeSet<u8>>,
    /// Network namespaces it made and has not deleted yet, in creation order.
    netns: Mutex<Vec<String>>,
    procs: Mutex<Vec<Proc>>,
    /// Threads stopping deleted pods.
    stoppers: Mutex<Vec<JoinHandle<()>>>,
    /// The running `kubectl get pods --watch`.
    watch: Mutex<Option<Child>>,
    /// Told every pid and namespace while they exist: cleans up if this process dies
    /// without dropping the node.
    reaper: Mutex<Option<(Child, ChildStdin)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running node agent. Stops everything it started when dropped.
pub struct KubeNode {
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
    relay: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
}

impl KubeNode {
    /// Registers the Node, builds its network (the node's namespace with the pods'
    /// bridge and the API relay) and starts watching pods.
    pub fn start(api: &KubeApi, config: NodeConfig) -> anyhow::Result<KubeNode> {
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let id = format!("wkn-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("weft-{id}"));
        let _ = fs::remove_dir_all(&dir);
        create_dir(&dir, 0o755)?;
        let kubectl = Kubectl {
            program: api.kubectl_command().get_program().into(),
            kubeconfig: api.kubeconfig(),
        };
        let shared = Arc::new(Shared {
            hub: format!("{id}-node"),
            config,
            kubectl,
            dir,
            stop: AtomicBool::new(false),
            pods: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
            ips: Mutex::new(BTreeSet::new()),
            netns: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            stoppers: Mutex::new(Vec::new()),
            watch: Mutex::new(None),
            reaper: Mutex::new(None),
        });
        // From here on, dropping `node` removes what was made.
        let mut node = KubeNode {
            shared: shared.clone(),
            watcher: None,
            relay: None,
        };
        shared.start_reaper()?;
        shared.add_netns(&shared.hub)?;
        ip_in(&shared.hub, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(
            &shared.hub,
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"],
        )?;
        ip_in(&shared.hub, &["link", "set", "br0", "up"])?;
        node.relay = Some(relay_api(&shared.hub, api.url())?);
        shared.register_node()?;

        let watcher_shared = shared.clone();
        node.watcher = Some(
            thread::Builder::new()
                .name(format!("kube node {}", shared.config.name))
                .spawn(move || watcher_shared.watch_forever())
                .context("cannot start a thread")?,
        );
        Ok(node)
    }

    /// The Node object's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The node's network namespace (the pods' bridge, [`NODE_IP`]).
    pub fn netns(&self) -> &str {
        &self.shared.hub
    }

    /// The pods it runs now.
    pub fn pods(&self) -> Vec<NodePod> {
        let mut pods: Vec<NodePod> = lock(&self.shared.pods)
            .values()
            .map(|p| NodePod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ip: p.ip,
                state: lock(&p.state).clone(),
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }

    /// Starts `cmd` (program, arguments, added environment) in the node's network
    /// namespace as root, as a host-network pod would run; stopped with the node.
    /// Its output goes to a log ([`KubeNode::log`] `name`).
    pub fn spawn_on_node(&self, name: &str, cmd: &Command) -> anyhow::Result<u32> {
        let mut outer = Command::new("ip");
        outer
            .args(["netns", "exec", &self.shared.hub])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => outer.env(key, value),
                None => outer.env_remove(key),
            };
        }
        let log = self.shared.dir.join(format!("node-{name}.log"));
        self.shared.spawn_logged(outer, "", name, false, &log)
    }

    /// Starts `cmd` as it is, in this process's own network namespace (beside the API
    /// server: a webhook it calls on loopback), stopped with the node like the others
    /// (and by its reaper). Its output goes to a log ([`KubeNode::log`] `name`).
    pub fn spawn_local(&self, name: &str, cmd: Command) -> anyhow::Result<u32> {
        let log = self.shared.dir.join(format!("local-{name}.log"));
        self.shared.spawn_logged(cmd, "", name, false, &log)
    }

    /// Whether the process `pid` it started has exited, and how.
    pub fn exited(&self, pid: u32) -> Option<ExitStatus> {
        let mut procs = lock(&self.shared.procs);
        let proc = procs.iter_mut().find(|p| p.child.id() == pid)?;
        proc.child.try_wait().ok().flatten()
    }

    /// The log of a process started with [`KubeNode::spawn_on_node`] or
    /// [`KubeNode::spawn_local`], or of a container, `NAMESPACE/POD/CONTAINER`.
    pub fn log(&self, name: &str) -> String {
        // Locks in one order everywhere: pods, then procs.
        let pods = lock(&self.shared.pods);
        let procs = lock(&self.shared.procs);
        procs
            .iter()
            .filter(|p| {
                let full = match pods.get(&p.pod) {
                    Some(run) => format!("{}/{}", run.key(), p.name),
                    None => p.name.clone(),
                };
                full == name || (p.pod.is_empty() && p.name == name)
            })
            .map(|p| fs::read_to_string(&p.log).unwrap_or_default())
            .collect()
    }

    /// Every process's log and every pod's state, for failure messages.
    pub fn logs(&self) -> String {
        self.shared.logs()
    }

    /// `GET path` (HTTP/1.1) to `addr` from the node's network namespace, as the kubelet
    /// probes pods: the status code and body.
    pub fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        let path = path.to_owned();
        crate::netns::run_in(&self.shared.hub, move || async move {
            http_get(addr, &path, Duration::from_secs(5))
        })?
    }

    /// Runs `args` in the pod's network namespace as `uid` (as `kubectl exec` would in
    /// one of its containers) and waits for it: its output.
    pub fn exec(
        &self,
        namespace: &str,
        pod: &str,
        uid: u32,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let netns = lock(&self.shared.pods)
            .values()
            .find(|p| p.namespace == namespace && p.name == pod)
            .map(|p| p.netns.clone())
            .ok_or_else(|| anyhow!("the node runs no pod {namespace}/{pod}"))?;
        let (program, rest) = args.split_first().context("nothing to run")?;
        let mut cmd = in_pod(&netns, uid, Path::new(program));
        // Only PATH from here: not the test's environment (an HTTP_PROXY, say).
        cmd.args(rest).env_clear().env("PATH", PATH);
        cmd.output().with_context(|| format!("cannot run {cmd:?}"))
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        let shared = &self.shared;
        // The reaper first, so that it never signals a pid reused after ours were reaped.
        if let Some((mut reaper, stdin)) = lock(&shared.reaper).take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
            drop(stdin);
        }
        shared.stop.store(true, Ordering::SeqCst);
        if let Some(watch) = lock(&shared.watch).take() {
            shared.end_watch(watch);
        }
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        if thread::panicking() {
            eprintln!("kube node {}:\n{}", shared.config.name, shared.logs());
        }
        for stopper in std::mem::take(&mut *lock(&shared.stoppers)) {
            let _ = stopper.join();
        }
        let runs: Vec<Arc<PodRun>> = lock(&shared.pods).drain().map(|(_, r)| r).collect();
        for run in runs {
            shared.stop_pod(&run);
        }
        // Host-network processes, and anything a pod's stop left.
        shared.stop_procs(|_| true);
        if let Some((stop, thread)) = self.relay.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        let left: Vec<String> = lock(&shared.netns).drain(..).rev().collect();
        for ns in left {
            if let Err(e) = sh("ip", &["netns", "delete", &ns], None) {
                eprintln!("kube node: cannot delete network namespace {ns}: {e:#}");
            }
        }
        let _ = shared.kubectl.run(
            &[
                "delete",
                "node",
                &shared.config.name,
                "--ignore-not-found",
                "--wait=false",
                "--request-timeout=5s",
            ],
            None,
        );
        let _ = fs::remove_dir_all(&shared.dir);
    }
}

impl Shared {
    /// A shell that, when this process exits without dropping the node, sees its
    /// stdin close and then kills the pids and deletes the namespaces it still knows.
    fn start_reaper(&self) -> anyhow::Result<()> {
        const REAPER: &str = r#"
trap '' INT TERM HUP
pids= nets=
while read -r op arg; do
  case "$op" in
    pid) pids="$pids $arg" ;;
    unpid) pids=$(printf '%s\n' $pids | grep -vx "$arg" | tr '\n' ' ') ;;
    ns) nets="$nets $arg" ;;
    unns) nets=$(printf '%s\n' $nets | grep -vx "$arg" | tr '\n' ' ') ;;
  esac
done
for p in $pids; do kill -9 "$p" 2>/dev/null; done
for n in $nets; do ip netns delete "$n" 2>/dev/null; done
rm -rf "$1"
"#;
        let mut child = Command::new("sh")
            .args(["-c", REAPER, "weft-kube-node-reaper"])
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the reaper (sh)")?;
        let stdin = child.stdin.take().context("the reaper's stdin")?;
        *lock(&self.reaper) = Some((child, stdin));
        Ok(())
    }

    /// One line for the reaper: `pid N`, `unpid N`, `ns NAME`, `unns NAME`.
    fn tell_reaper(&self, line: &str) {
        if let Some((_, stdin)) = lock(&self.reaper).as_mut() {
            let _ = writeln!(stdin, "{line}");
        }
    }

    fn add_netns(&self, ns: &str) -> anyhow::Result<()> {
        self.tell_reaper(&format!("ns {ns}"));
        sh("ip", &["netns", "add", ns], None)?;
        lock(&self.netns).push(ns.to_owned());
        ip_in(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn delete_netns(&self, ns: &str) {
        if let Err(e) = sh("ip", &["netns", "delete", ns], None) {
            eprintln!("kube node: cannot delete network namespace {ns}: {e:#}");
        }
        lock(&self.netns).retain(|n| n != ns);
        self.tell_reaper(&format!("unns {ns}"));
    }

    /// The Node object, Ready at [`NODE_IP`].
    fn register_node(&self) -> anyhow::Result<()> {
        let name = &self.config.name;
        let mut labels = json!({ "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" });
        if let Some(zone) = &self.config.zone {
            labels["topology.kubernetes.io/zone"] = json!(zone);
        }
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": labels },
        });
        self.kubectl
            .run(&["apply", "-f", "-"], Some(&node.to_string()))?;
        let status = json!({ "status": {
            "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "weft's test node agent is running" }],
            "addresses": [
                { "type": "InternalIP", "address": NODE_IP.to_string() },
                { "type": "Hostname", "address": name },
            ],
        }});
        self.kubectl.run(
            &[
                "patch",
                "node",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )?;
        Ok(())
    }

    /// `kubectl get pods -A --watch`: its stdout (one JSON event after another) and the
    /// process.
    fn watch_pods(&self) -> anyhow::Result<(std::process::ChildStdout, Child)> {
        let mut child = self
            .kubectl
            .command()
            .args([
                "get",
                "pods",
                "--all-namespaces",
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start kubectl get pods --watch")?;
        let stdout = child.stdout.take().context("kubectl's stdout")?;
        Ok((stdout, child))
    }

    /// Watches pods until the node stops, starting the watch again when it ends (the
    /// API server ends watches after a while). Pods are started and stopped by uid, so
    /// the events a new watch repeats change nothing; a pod deleted between two watches
    /// is not seen.
    fn watch_forever(self: Arc<Self>) {
        while !self.stop.load(Ordering::SeqCst) {
            match self.watch_pods() {
                Ok((stdout, child)) => {
                    self.tell_reaper(&format!("pid {}", child.id()));
                    let old = lock(&self.watch).replace(child);
                    if let Some(old) = old {
                        self.end_watch(old);
                    }
                    // The node's drop may have looked before this watch was stored.
                    if self.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    self.watch_loop(stdout);
                }
                Err(e) => eprintln!("kube node: {e:#}"),
            }
            if !self.stop.load(Ordering::SeqCst) {
                eprintln!("kube node: watching pods again");
                thread::sleep(Duration::from_millis(500));
            }
        }
        if let Some(watch) = lock(&self.watch).take() {
            self.end_watch(watch);
        }
    }

    fn end_watch(&self, mut watch: Child) {
        let _ = watch.kill();
        let _ = watch.wait();
        self.tell_reaper(&format!("unpid {}", watch.id()));
    }

    fn watch_loop(self: &Arc<Self>, stdout: std::process::ChildStdout) {
        let events =
            serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
        for event in events {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    eprintln!("kube node: the pod watch ended: {e}");
                    return;
                }
            };
            if let Err(e) = self.handle(&event) {
                eprintln!("kube node: {e:#}");
            }
        }
        if !self.stop.load(Ordering::SeqCst) {
            eprintln!("kube node: the pod watch ended (kubectl exited)");
        }
    }

    /// One watch event: bind, start or stop the pod.
    fn handle(self: &Arc<Self>, event: &Value) -> anyhow::Result<()> {
        let kind = event["type"].as_str().unwrap_or_default();
        if !matches!(kind, "ADDED" | "MODIFIED" | "DELETED") {
            return Ok(());
        }
        let pod: Pod =
            serde_json::from_value(event["object"].clone()).context("a watch event's pod")?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let ours = spec.node_name.as_deref() == Some(self.config.name.as_str());
        if kind == "DELETED" || pod.metadata.deletion_timestamp.is_some() {
            let run = lock(&self.pods).remove(&uid);
            let finished = !lock(&self.seen).insert(format!("deleted {uid}"));
            if ours && !finished {
                let shared = self.clone();
                let deleted = kind == "DELETED";
                let stopper = thread::spawn(move || {
                    if let Some(run) = run {
                        shared.stop_pod(&run);
                    }
                    if !deleted {
                        // The kubelet's last word: the containers are gone.
                        if let Err(e) = shared.kubectl.run(
                            &[
                                "-n",
                                &namespace,
                                "delete",
                                "pod",
                                &name,
                                "--grace-period=0",
                                "--force",
                                "--ignore-not-found",
                                "--wait=false",
                            ],
                            None,
                        ) {
                            eprintln!("kube node: deleting {namespace}/{name}: {e:#}");
                        }
                    }
                });
                lock(&self.stoppers).push(stopper);
            }
            return Ok(());
        }
        match spec.node_name.as_deref() {
            None | Some("") => {
                if self.config.namespaces.contains(&namespace)
                    && spec
                        .scheduler_name
                        .as_deref()
                        .unwrap_or("default-scheduler")
                        == "default-scheduler"
                    && lock(&self.seen).insert(uid.clone())
                {
                    self.bind(&namespace, &name, &uid)?;
                }
            }
            Some(_) if ours => {
                let terminal = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|p| p == "Succeeded" || p == "Failed");
                if terminal || lock(&self.pods).contains_key(&uid) {
                    return Ok(());
                }
                if lock(&self.seen).contains(&format!("started {uid}")) {
                    return Ok(());
                }
                lock(&self.seen).insert(format!("started {uid}"));
                self.admit(pod)?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn bind(&self, namespace: &str, name: &str, uid: &str) -> anyhow::Result<()> {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": { "name": name, "namespace": namespace, "uid": uid },
            "target": { "apiVersion": "v1", "kind": "Node", "name": self.config.name },
        });
        // POSTed to the pods/binding subresource, as the scheduler binds (`kubectl create`
        // of a Binding would go to the `bindings` resource, which admission plugins such
        // as PodTopologyLabels do not see).
        self.kubectl
            .run(
                &[
                    "create",
                    "--raw",
                    &format!("/api/v1/namespaces/{namespace}/pods/{name}/binding"),
                    "-f",
                    "-",
                ],
                Some(&binding.to_string()),
            )
            .with_context(|| format!("binding {namespace}/{name}"))?;
        Ok(())
    }

    /// Gives the pod its address and network, then starts it on a thread of its own.
    fn admit(self: &Arc<Self>, pod: Pod) -> anyhow::Result<()> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let octet = {
            let mut ips = lock(&self.ips);
            let octet = (1..=250u8)
                .find(|o| !ips.contains(o))
                .context("the node's 250 pod addresses are all taken")?;
            ips.insert(octet);
            octet
        };
        let ip = Ipv4Addr::new(POD_NET[0], POD_NET[1], POD_NET[2], octet);
        let run = Arc::new(PodRun {
            netns: format!("{}-p{octet}", self.hub.trim_end_matches("-node")),
            dir: self.dir.join(format!("{namespace}_{name}")),
            namespace,
            name,
            uid: uid.clone(),
            ip,
            state: Mutex::new("starting".into()),
            stopping: AtomicBool::new(false),
            starter: Mutex::new(None),
        });
        lock(&self.pods).insert(uid, run.clone());
        let shared = self.clone();
        let starter_run = run.clone();
        let starter = thread::Builder::new()
            .name(format!("pod {}", run.key()))
            .spawn(move || {
                if let Err(e) = shared.run_pod(&starter_run, &pod) {
                    let message = format!("{e:#}");
                    if !starter_run.stopping.load(Ordering::SeqCst) {
                        eprintln!("kube node: pod {}: {message}", starter_run.key());
                        starter_run.set_state(format!("failed: {message}"));
                        let _ = shared.patch_status(
                            &starter_run,
                            &json!({ "status": {
                                "phase": "Failed",
                                "reason": "WeftTestNode",
                                "message": message,
                                "podIP": starter_run.ip.to_string(),
                                "podIPs": [{ "ip": starter_run.ip.to_string() }],
                            }}),
                        );
                    }
                }
            })
            .context("cannot start a thread")?;
        *lock(&run.starter) = Some(starter);
        Ok(())
    }

    /// The network namespace with `eth0` on the bridge and the default route through
    /// the node.
    fn pod_network(&self, run: &PodRun) -> anyhow::Result<()> {
        self.add_netns(&run.netns)?;
        let port = format!("p{}", run.ip.octets()[3]);
        // Made in the node's namespace, its peer placed straight into the pod's.
        ip_in(
            &self.hub,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &run.netns,
            ],
        )?;
        ip_in(&self.hub, &["link", "set", &port, "master", "br0", "up"])?;
        ip_in(
            &run.netns,
            &["addr", "add", &format!("{}/24", run.ip), "dev", "eth0"],
        )?;
        ip_in(&run.netns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &run.netns,
            &["route", "add", "default", "via", &NODE_IP.to_string()],
        )?;
        Ok(())
    }

    /// Starts the pod as the kubelet would and reports it; then watches its processes
    /// until it stops.
    fn run_pod(self: &Arc<Self>, run: &Arc<PodRun>, pod: &Pod) -> anyhow::Result<()> {
        let spec = pod.spec.clone().unwrap_or_default();
        create_dir(&run.dir, 0o755)?;
        create_dir(&run.dir.join("volumes"), 0o755)?;
        self.pod_network(run)?;
        let ctx = PodContext {
            pod,
            ip: run.ip,
            node: &self.config.name,
        };
        let volumes = self.volumes(run, &ctx, spec.volumes.as_deref().unwrap_or_default())?;
        // Scheduled, with an address: what the kubelet reports before the containers run.
        self.patch_status(
            run,
            &json!({ "status": {
                "phase": "Pending",
                "hostIP": NODE_IP.to_string(),
                "hostIPs": [{ "ip": NODE_IP.to_string() }],
                "podIP": run.ip.to_string(),
                "podIPs": [{ "ip": run.ip.to_string() }],
            }}),
        )?;
        let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
        let mut watched = Vec::new();
        let mut probed: Vec<&Container> = Vec::new();
        for init in spec.init_containers.iter().flatten() {
            self.check_stopping(run)?;
            let sidecar = init.restart_policy.as_deref() == Some("Always");
            run.set_state(format!("starting init container {}", init.name));
            let pid = self.start_container(run, &ctx, init, pod_uid, &volumes, sidecar)?;
            if sidecar {
                // The next container starts once the sidecar's startup probe passes.
                if let Some(probe) = &init.startup_probe {
                    self.wait_probe(run, init, probe, pid, "startup")?;
                }
                watched.push((init.name.clone(), pid));
                probed.push(init);
            } else {
                self.wait_exit(run, &init.name, pid)?;
            }
        }
        for container in &spec.containers {
            self.check_stopping(run)?;
            run.set_state(format!("starting container {}", container.name));
            let pid = self.start_container(run, &ctx, container, pod_uid, &volumes, false)?;
            watched.push((container.name.clone(), pid));
            probed.push(container);
        }
        run.set_state("running");
        self.report(run, &spec, false, None)?;
        for container in probed {
            if let Some(probe) = &container.readiness_probe {
                let pid = watched
                    .iter()
                    .find(|(n, _)| *n == container.name)
                    .map_or(0, |(_, pid)| *pid);
                self.wait_probe(run, container, probe, pid, "readiness")?;
            }
        }
        run.set_state("ready");
        self.report(run, &spec, true, None)?;
        // As long as it runs: a container that exits makes the pod un-ready.
        while !run.stopping.load(Ordering::SeqCst) {
            let exited = {
                let mut procs = lock(&self.procs);
                procs
                    .iter_mut()
                    .filter(|p| watched.iter().any(|(_, pid)| *pid == p.child.id()))
                    .find_map(|p| {
                        let status = p.child.try_wait().ok().flatten()?;
                        Some((p.name.clone(), p.child.id(), status))
                    })
            };
            if let Some((container, pid, status)) = exited {
                self.tell_reaper(&format!("unpid {pid}"));
                let message = format!("container {container} exited ({status}); not restarted");
                run.set_state(format!("failed: {message}"));
                self.report(run, &spec, false, Some(&message))?;
                return Ok(());
            }
            thread::sleep(PROBE_EVERY);
        }
        Ok(())
    }

    fn check_stopping(&self, run: &PodRun) -> anyhow::Result<()> {
        if run.stopping.load(Ordering::SeqCst) {
            bail!("stopped while starting");
        }
        Ok(())
    }

    /// Phase Running with the pod's conditions and container statuses.
    fn report(
        &self,
        run: &PodRun,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        ready: bool,
        message: Option<&str>,
    ) -> anyhow::Result<()> {
        let condition = |kind: &str, status: bool| {
            let mut c = json!({ "type": kind, "status": if status { "True" } else { "False" } });
            if let (false, Some(message)) = (status, message) {
                c["reason"] = json!("ContainerExited");
                c["message"] = json!(message);
            }
            c
        };
        let statuses = |containers: &[Container], sidecars_only: bool| -> Vec<Value> {
            containers
                .iter()
                .map(|c| {
                    let running = !sidecars_only || c.restart_policy.as_deref() == Some("Always");
                    let state = if running {
                        json!({ "running": {} })
                    } else {
                        json!({ "terminated": { "exitCode": 0, "reason": "Completed" } })
                    };
                    json!({
                        "name": c.name,
                        "image": c.image.clone().unwrap_or_default(),
                        "imageID": "",
                        "ready": running && ready,
                        "started": running,
                        "restartCount": 0,
                        "state": state,
                    })
                })
                .collect()
        };
        let status = json!({ "status": {
            "phase": "Running",
            "hostIP": NODE_IP.to_string(),
            "hostIPs": [{ "ip": NODE_IP.to_string() }],
            "podIP": run.ip.to_string(),
            "podIPs": [{ "ip": run.ip.to_string() }],
            "conditions": [
                condition("PodScheduled", true),
                condition("Initialized", true),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "initContainerStatuses": statuses(spec.init_containers.as_deref().unwrap_or_default(), true),
            "containerStatuses": statuses(&spec.containers, false),
        }});
        self.patch_status(run, &status)
    }

    fn patch_status(&self, run: &PodRun, status: &Value) -> anyhow::Result<()> {
        self.kubectl
            .run(
                &[
                    "-n",
                    &run.namespace,
                    "patch",
                    "pod",
                    &run.name,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &status.to_string(),
                ],
                None,
            )
            .with_context(|| format!("reporting the status of {}", run.key()))?;
        Ok(())
    }

    /// Makes the pod's volumes: name → directory.
    fn volumes(
        &self,
        run: &PodRun,
        ctx: &PodContext<'_>,
        volumes: &[Volume],
    ) -> anyhow::Result<HashMap<String, PathBuf>> {
        let mut dirs = HashMap::new();
        for volume in volumes {
            let dir = run.dir.join("volumes").join(&volume.name);
            if volume.empty_dir.is_some() {
                create_dir(&dir, 0o777)?;
            } else if let Some(projected) = &volume.projected {
                create_dir(&dir, 0o755)?;
                for source in projected.sources.iter().flatten() {
                    if let Some(token) = &source.service_account_token {
                        let token_text = self.token_request(ctx, token)?;
                        write_file(&dir.join(&token.path), &token_text)?;
                    } else if let Some(config_map) = &source.config_map {
                        let data = self.config_map(
                            run,
                            &config_map.name,
                            config_map.optional == Some(true),
                        )?;
                        let items: Vec<(String, String)> = match &config_map.items {
                            Some(items) => items
                                .iter()
                                .map(|i| (i.key.clone(), i.path.clone()))
                                .collect(),
                            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                        };
                        for (key, path) in items {
                            if let Some(value) = data.get(&key) {
                                write_file(&dir.join(path), value)?;
                            }
                        }
                    } else if let Some(downward) = &source.downward_api {
                        for item in downward.items.iter().flatten() {
                            let field = item.field_ref.as_ref().with_context(|| {
                                format!(
                                    "volume {}: downward API item {}: only fieldRef is emulated",
                                    volume.name, item.path
                                )
                            })?;
                            write_file(&dir.join(&item.path), &ctx.field(field)?)?;
                        }
                    } else {
                        bail!(
                            "volume {}: only serviceAccountToken, configMap and downwardAPI projections are emulated",
                            volume.name
                        );
                    }
                }
            } else {
                bail!(
                    "volume {}: only emptyDir and projected volumes are emulated",
                    volume.name
                );
            }
            dirs.insert(volume.name.clone(), dir);
        }
        Ok(dirs)
    }

    /// TokenRequest for the pod's ServiceAccount, bound to the pod, as the kubelet asks
    /// for a projected token.
    fn token_request(
        &self,
        ctx: &PodContext<'_>,
        projection: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
    ) -> anyhow::Result<String> {
        let spec = ctx.pod.spec.as_ref().context("a pod without a spec")?;
        let account = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let meta = &ctx.pod.metadata;
        let mut args = vec![
            "-n".to_owned(),
            meta.namespace.clone().unwrap_or_default(),
            "create".into(),
            "token".into(),
            account.clone(),
            "--bound-object-kind=Pod".into(),
            format!(
                "--bound-object-name={}",
                meta.name.clone().unwrap_or_default()
            ),
            format!(
                "--bound-object-uid={}",
                meta.uid.clone().unwrap_or_default()
            ),
            format!(
                "--duration={}s",
                projection.expiration_seconds.unwrap_or(3600)
            ),
        ];
        if let Some(audience) = projection.audience.as_deref().filter(|a| !a.is_empty()) {
            args.push(format!("--audience={audience}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let token = self
            .kubectl
            .run(&args, None)
            .with_context(|| format!("TokenRequest for ServiceAccount {account}"))?;
        Ok(token.trim().to_owned())
    }

    /// A ConfigMap's data, waited for (within the step limit) unless optional.
    fn config_map(
        &self,
        run: &PodRun,
        name: &str,
        optional: bool,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + self.config.step_limit;
        loop {
            match self.kubectl.run(
                &[
                    "-n",
                    &run.namespace,
                    "get",
                    "configmap",
                    name,
                    "-o",
                    "json",
                    "--ignore-not-found",
                ],
                None,
            ) {
                Ok(out) if !out.trim().is_empty() => {
                    let value: Value =
                        serde_json::from_str(&out).with_context(|| format!("ConfigMap {name}"))?;
                    return Ok(serde_json::from_value(value["data"].clone()).unwrap_or_default());
                }
                Ok(_) if optional => return Ok(BTreeMap::new()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            self.check_stopping(run)?;
            if Instant::now() >= deadline {
                bail!(
                    "ConfigMap {name} not found within {:?}",
                    self.config.step_limit
                );
            }
            thread::sleep(PROBE_EVERY);
        }
    }

    /// Starts one container in the pod's namespace; its pid.
    fn start_container(
        &self,
        run: &PodRun,
        ctx: &PodContext<'_>,
        container: &Container,
        pod_uid: Option<i64>,
        volumes: &HashMap<String, PathBuf>,
        sidecar: bool,
    ) -> anyhow::Result<u32> {
        let image = container.image.clone().unwrap_or_default();
        let executable = self.config.executable(&image).with_context(|| {
            format!(
                "container {}: the node has no executable for image {image:?}",
                container.name
            )
        })?;
        // Mount paths, longest first, to this machine's directories.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let dir = volumes.get(&mount.name).with_context(|| {
                format!(
                    "container {}: volumeMount of unknown volume {}",
                    container.name, mount.name
                )
            })?;
            let dir = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => dir.join(sub),
                None => dir.clone(),
            };
            mounts.push((mount.mount_path.trim_end_matches('/').to_owned(), dir));
        }
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let remap = |value: String| -> String {
            for (path, dir) in &mounts {
                if value == *path {
                    return dir.display().to_string();
                }
                if let Some(rest) = value.strip_prefix(&format!("{path}/")) {
                    return dir.join(rest).display().to_string();
                }
            }
            value
        };
        if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            bail!("container {}: envFrom is not emulated", container.name);
        }
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), PATH.into()),
            (
                "HOSTNAME".into(),
                ctx.pod.metadata.name.clone().unwrap_or_default(),
            ),
        ];
        for var in container.env.iter().flatten() {
            let value = remap(ctx.env_value(var, &env)?);
            env.retain(|(k, _)| *k != var.name);
            env.push((var.name.clone(), value));
        }
        // The image's entrypoint is the executable; `command` may name it again.
        let mut argv: Vec<String> = Vec::new();
        if let Some(command) = container.command.as_ref().filter(|c| !c.is_empty()) {
            let named = Path::new(&command[0]).file_name();
            if named != executable.file_name() {
                bail!(
                    "container {}: command {:?} is not the executable of image {image:?} ({})",
                    container.name,
                    command[0],
                    executable.display()
                );
            }
            argv.extend(command[1..].iter().cloned());
        }
        argv.extend(container.args.iter().flatten().cloned());
        let argv: Vec<String> = argv.into_iter().map(|a| remap(expand(&a, &env))).collect();
        let uid = container
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_uid)
            .map_or(self.config.default_uid, |u| u as u32);
        let mut cmd = in_pod(&run.netns, uid, executable);
        cmd.args(&argv).env_clear().envs(env).current_dir(&run.dir);
        let log = run.dir.join(format!("{}.log", container.name));
        self.spawn_logged(cmd, &run.uid, &container.name, sidecar, &log)
    }

    fn spawn_logged(
        &self,
        mut cmd: Command,
        pod: &str,
        name: &str,
        sidecar: bool,
        log: &Path,
    ) -> anyhow::Result<u32> {
        let file =
            fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // A pod's stop joins its start thread before stopping its processes, so what
        // that thread starts here is stopped too.
        let mut procs = lock(&self.procs);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let pid = child.id();
        self.tell_reaper(&format!("pid {pid}"));
        procs.push(Proc {
            pod: pod.to_owned(),
            name: name.to_owned(),
            sidecar,
            child,
            log: log.to_owned(),
        });
        Ok(pid)
    }

    /// Waits for an init container to exit 0 (within the step limit).
    fn wait_exit(&self, run: &PodRun, name: &str, pid: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.config.step_limit;
        loop {
            self.check_stopping(run)?;
            let status = {
                let mut procs = lock(&self.procs);
                let proc = procs
                    .iter_mut()
                    .find(|p| p.child.id() == pid)
                    .context("the init container's process is gone")?;
                proc.child.try_wait().context("waiting for a process")?
            };
            if status.is_some() {
                // Reaped: its pid may be reused.
                self.tell_reaper(&format!("unpid {pid}"));
            }
            match status {
                Some(status) if status.success() => return Ok(()),
                Some(status) => bail!(
                    "init container {name} failed ({status}): {}",
                    fs::read_to_string(run.dir.join(format!("{name}.log"))).unwrap_or_default()
                ),
                None if Instant::now() >= deadline => bail!(
                    "init container {name} still runs after {:?}",
                    self.config.step_limit
                ),
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Runs `probe` until it passes (within the step limit); fails early when the
    /// container exits.
    fn wait_probe(
        &self,
        run: &PodRun,
        container: &Container,
        probe: &Probe,
        pid: u32,
        what: &str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.config.step_limit;
        let mut last;
        loop {
            self.check_stopping(run)?;
            match self.probe_once(run, container, probe) {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            let exited = {
                let mut procs = lock(&self.procs);
                procs
                    .iter_mut()
                    .find(|p| p.child.id() == pid)
                    .and_then(|p| p.child.try_wait().ok().flatten())
            };
            if let Some(status) = exited {
                self.tell_reaper(&format!("unpid {pid}"));
                bail!(
                    "container {} exited ({status}) before its {what} probe passed: {}",
                    container.name,
                    fs::read_to_string(run.dir.join(format!("{}.log", container.name)))
                        .unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {}: {what} probe still failing after {:?}: {last}",
                    container.name,
                    self.config.step_limit
                );
            }
            thread::sleep(PROBE_EVERY);
        }
    }

    /// One probe from the node's network namespace to the pod's address.
    fn probe_once(&self, run: &PodRun, container: &Container, probe: &Probe) -> anyhow::Result<()> {
        let port_of = |port: &IntOrString| -> anyhow::Result<u16> {
            match port {
                IntOrString::Int(n) => u16::try_from(*n).context("a probe's port"),
                IntOrString::String(name) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok())
                    .with_context(|| format!("no container port named {name}")),
            }
        };
        let limit = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        if let Some(http) = &probe.http_get {
            let host: Ipv4Addr = match http.host.as_deref().filter(|h| !h.is_empty()) {
                Some(host) => host.parse().context("a probe's host")?,
                None => run.ip,
            };
            let addr = SocketAddr::from((host, port_of(&http.port)?));
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            let (status, _) =
                crate::netns::run_in(
                    &self.hub,
                    move || async move { http_get(addr, &path, limit) },
                )??;
            anyhow::ensure!((200..400).contains(&status), "HTTP {status}");
            Ok(())
        } else if let Some(tcp) = &probe.tcp_socket {
            let addr = SocketAddr::from((run.ip, port_of(&tcp.port)?));
            crate::netns::run_in(&self.hub, move || async move {
                TcpStream::connect_timeout(&addr, limit).map(drop)
            })?
            .with_context(|| format!("connecting to {addr}"))
        } else {
            // exec and gRPC probes are not run: the container counts as passing.
            Ok(())
        }
    }

    /// Stops a pod: the start thread, the containers (SIGTERM, SIGKILL after a grace),
    /// the sidecars after them, its network and directory.
    fn stop_pod(&self, run: &PodRun) {
        run.stopping.store(true, Ordering::SeqCst);
        run.set_state("stopping");
        let starter = lock(&run.starter).take();
        // The start thread sees `stopping` within a probe interval or a kubectl call
        // (the monitoring loop within PROBE_EVERY).
        if let Some(starter) = starter {
            if starter.thread().id() != thread::current().id() {
                let _ = starter.join();
            }
        }
        self.stop_procs(|p| p.pod == run.uid && !p.sidecar);
        self.stop_procs(|p| p.pod == run.uid);
        self.delete_netns(&run.netns);
        lock(&self.ips).remove(&run.ip.octets()[3]);
        let _ = fs::remove_dir_all(&run.dir);
    }

    /// SIGTERM to the processes `which` selects, SIGKILL to those left after the grace;
    /// they are forgotten afterwards.
    fn stop_procs(&self, which: impl Fn(&Proc) -> bool) {
        let mut procs = lock(&self.procs);
        crate::netns::terminate(
            procs
                .iter_mut()
                .filter(|p| which(p))
                .map(|p| (p.name.as_str(), &mut p.child)),
            TERM_GRACE,
            "kube node",
        );
        for p in procs.iter().filter(|p| which(p)) {
            self.tell_reaper(&format!("unpid {}", p.child.id()));
        }
        procs.retain(|p| !which(p));
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for run in lock(&self.pods).values() {
            out.push_str(&format!(
                "pod {} ({}, {}): {}\n",
                run.key(),
                run.ip,
                run.netns,
                lock(&run.state)
            ));
        }
        let pods = lock(&self.pods);
        for p in lock(&self.procs).iter() {
            let owner = pods
                .get(&p.pod)
                .map_or_else(|| "node".to_owned(), |r| r.key());
            out.push_str(&format!(
                "----- {owner}: {} (pid {}, {}) -----\n{}\n",
                p.name,
                p.child.id(),
                p.log.display(),
                fs::read_to_string(&p.log).unwrap_or_default()
            ));
        }
        out
    }
}

/// What the downward API reads: the pod as stored, its address and its node.
struct PodContext<'a> {
    pod: &'a Pod,
    ip: Ipv4Addr,
    node: &'a str,
}

impl PodContext<'_> {
    fn field(&self, selector: &ObjectFieldSelector) -> anyhow::Result<String> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let path = selector.field_path.as_str();
        let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
            let key = path
                .strip_prefix(prefix)?
                .strip_prefix("['")?
                .strip_suffix("']")?;
            Some(
                map.as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        let value = match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "spec.nodeName" => self.node.to_owned(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            "status.podIP" | "status.podIPs" => self.ip.to_string(),
            "status.hostIP" | "status.hostIPs" => NODE_IP.to_string(),
            _ => keyed("metadata.labels", &meta.labels)
                .or_else(|| keyed("metadata.annotations", &meta.annotations))
                .with_context(|| format!("fieldRef {path} is not emulated"))?,
        };
        Ok(value)
    }

    /// An env var's value: literal (with `$(VAR)` of the earlier ones expanded) or from
    /// the downward API.
    fn env_value(&self, var: &EnvVar, earlier: &[(String, String)]) -> anyhow::Result<String> {
        match &var.value_from {
            None => Ok(expand(var.value.as_deref().unwrap_or_default(), earlier)),
            Some(from) => match &from.field_ref {
                Some(field) => self.field(field),
                None => bail!(
                    "env {}: only fieldRef is emulated (not secrets, ConfigMaps or resources)",
                    var.name
                ),
            },
        }
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is `$`, anything
/// else stays as it is.
fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(name_end) = after.strip_prefix('(').and_then(|a| a.find(')')) {
            let name = &after[1..=name_end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, value)) => out.push_str(value),
                None => out.push_str(&rest[i..i + name_end + 3]),
            }
            rest = &after[name_end + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `ip netns exec NETNS [setpriv --reuid=UID --regid=UID --clear-groups --] PROGRAM`.
fn in_pod(netns: &str, uid: u32, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]);
    if uid != 0 {
        cmd.arg("setpriv").args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "--".into(),
        ]);
    }
    cmd.arg(program);
    cmd
}

/// A directory with `mode` (whatever the umask).
fn create_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

/// A volume's file, readable by every container's user (as the kubelet's 0644).
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        create_dir(parent, 0o755)?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn sh(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    Ok(weft_core::netns::run(program, args, input)?)
}

/// `ip -n NS ARGS...`.
fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    sh("ip", &all, None)
}

/// A plain `GET path` to `addr`: status and body.
fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, limit)
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(limit))?;
    tcp.set_write_timeout(Some(limit))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weft-test-node\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)
        .with_context(|| format!("reading {addr}'s answer"))?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer from {addr}: {response:?}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// A chunked body's data.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// Relays `127.0.0.1:PORT` in the node's namespace to the API server's
/// `127.0.0.1:PORT` on this machine, so processes on the node use the fixture's
/// kubeconfig as it is. The listener is made inside the namespace; the connections to
/// the API server from this process's own.
fn relay_api(
    hub: &str,
    url: &str,
) -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)> {
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in the API server's URL {url}"))?;
    let listener =
        weft_core::netns::in_netns(Some(hub), Duration::from_secs(5), move || async move {
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        })?
        .with_context(|| format!("binding 127.0.0.1:{port} in {hub}"))?;
    listener.set_nonblocking(true)?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let rt = weft_core::netns::current_thread_runtime()?;
    let thread = thread::Builder::new()
        .name("kube node api relay".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        accepted = listener.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            tokio::spawn(async move {
                                if let Ok(mut upstream) =
                                    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await
                                {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                                }
                            });
                        }
                    }
                }
            });
        })
        .context("cannot start a thread")?;
    Ok((stop_tx, thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_replaces_defined_variables_only() {
        let vars = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ];
        assert_eq!(expand("x$(A)y$(B)", &vars), "x1ytwo");
        assert_eq!(expand("$(C) $$(A) $ $", &vars), "$(C) $(A) $ $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn images_match_with_or_without_their_tag() {
        let config = NodeConfig::new("n")
            .image("weft-demo-app", "/bin/app")
            .image("registry:5000/proxy:dev", "/bin/proxy");
        assert_eq!(
            config.executable("weft-demo-app:1.2"),
            Some(&PathBuf::from("/bin/app"))
        );
        assert_eq!(
            config.executable("registry:5000/proxy:dev"),
            Some(&PathBuf::from("/bin/proxy"))
        );
        assert_eq!(config.executable("registry:5000/proxy:other"), None);
        assert_eq!(config.executable("other"), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}

//! A real Kubernetes API server for tests: etcd and kube-apiserver (and, on request,
//! kube-controller-manager) started on free loopback ports in a directory of their own,
//! with no kubelet and no container runtime (pods stay `Pending` unless a test plays the
//! node). The binaries come from `scripts/setup --kube` (see `docs/kubernetes.md`).
//!
//! ```ignore
//! let Some(api) = KubeApi::start() else { return }; // skipped (not under CI) when not built
//! api.kubectl(&["create", "namespace", "books"])?;
//! ```
//!
//! Every process is stopped when the [`KubeApi`] is dropped, also when a test panics; a
//! small reaper process stops them and removes the directory if the test process dies
//! without dropping it (killed, or the fixture kept in a `static` by [`KubeApi::shared`]).

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The versions file shared with `scripts/kube-setup`: `K8S_VERSION=v1.36.5`.
const VERSIONS: &str = include_str!("../../../scripts/kube.env");

/// How long etcd + kube-apiserver (+ kube-controller-manager) may take to become ready:
/// 5–15 s on an idle machine, much more when the Rust build shares the cores.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The audience of the API server's own service-account tokens.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The Kubernetes version the binaries are built for (`scripts/kube.env`).
pub fn k8s_version() -> &'static str {
    VERSIONS
        .lines()
        .find_map(|line| line.trim().strip_prefix("K8S_VERSION="))
        .map(str::trim)
        .unwrap_or_else(|| panic!("scripts/kube.env has no K8S_VERSION= line"))
}

/// Where `scripts/kube-setup` put the binaries: `WEFT_KUBE_BIN`, else
/// `${WEFT_KUBE_HOME:-~/.cache/weft-kube}/<version>/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_KUBE_BIN") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("WEFT_KUBE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/weft-kube")
        });
    home.join(k8s_version()).join("bin")
}

/// The binaries, or why they cannot be used.
fn find_bins(controller_manager: bool) -> Result<PathBuf, String> {
    let dir = bin_dir();
    let mut wanted = vec!["etcd", "kube-apiserver", "kubectl"];
    if controller_manager {
        wanted.push("kube-controller-manager");
    }
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "Kubernetes {} test binaries not found in {} (missing {}): run scripts/setup --kube \
             (a one-time Go build, see docs/kubernetes.md) or set WEFT_KUBE_BIN",
            k8s_version(),
            dir.display(),
            missing.join(", ")
        ))
    }
}

/// Skips a test that cannot run here, except under CI (`CI` set), where a skipped
/// Kubernetes test would hide a missing build step: there it fails.
fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run under CI: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// A running etcd + kube-apiserver (+ kube-controller-manager), killed on drop (the
/// state is thrown away with the directory).
pub struct KubeApi {
    dir: PathBuf,
    bin: PathBuf,
    url: String,
    etcd_url: String,
    /// Started processes, newest last; stopped newest first.
    procs: Vec<(&'static str, Child)>,
    reaper: Option<(Child, ChildStdin)>,
}

impl KubeApi {
    /// etcd + kube-apiserver. `None` (with a "skipped:" line) when the binaries are not
    /// built and `CI` is unset; under CI a missing build fails the test. Panics with the
    /// log's last lines when a process does not become ready.
    pub fn start() -> Option<KubeApi> {
        Self::start_inner(false)
    }

    /// Like [`KubeApi::start`], with kube-controller-manager too (EndpointSlices, garbage
    /// collection, default ServiceAccounts, namespace deletion), ready once it created the
    /// `default` ServiceAccount.
    pub fn start_with_controller_manager() -> Option<KubeApi> {
        Self::start_inner(true)
    }

    /// One etcd + kube-apiserver for the whole test binary (under nextest, which runs
    /// each test in a process of its own, one per test), stopped by the reaper when the
    /// process exits.
    pub fn shared() -> Option<&'static KubeApi> {
        static SHARED: OnceLock<Option<KubeApi>> = OnceLock::new();
        SHARED.get_or_init(KubeApi::start).as_ref()
    }

    fn start_inner(controller_manager: bool) -> Option<KubeApi> {
        let bin = match find_bins(controller_manager) {
            Ok(bin) => bin,
            Err(reason) => {
                skip(&reason);
                return None;
            }
        };
        // A port found free can be taken before the server binds it: try again then.
        let mut last = None;
        for _ in 0..3 {
            match KubeApi::try_start(&bin, controller_manager) {
                Ok(api) => return Some(api),
                Err(StartError::PortTaken(e)) => last = Some(e),
                Err(StartError::Other(e)) => panic!("starting a Kubernetes API server: {e:#}"),
            }
        }
        panic!(
            "starting a Kubernetes API server: ports taken three times: {:#}",
            last.expect("an error per try")
        )
    }

    fn try_start(bin: &Path, controller_manager: bool) -> Result<KubeApi, StartError> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-kube-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        // Left by an earlier process with the same pid that was killed with its reaper.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut api = KubeApi {
            dir,
            bin: bin.to_path_buf(),
            url: String::new(),
            etcd_url: String::new(),
            procs: Vec::new(),
            reaper: None,
        };
        // From here on, dropping `api` stops what was started and removes the directory.
        api.start_reaper()?;
        let pki = Pki::write(&api.dir.join("pki"))?;
        let [etcd_port, peer_port, api_port] = free_ports()?;
        api.url = format!("https://127.0.0.1:{api_port}");
        api.etcd_url = format!("http://127.0.0.1:{etcd_port}");
        api.write_kubeconfig("kubeconfig", "admin", &pki.admin_crt, &pki.admin_key)?;
        api.write_kubeconfig("kcm.kubeconfig", "kcm", &pki.kcm_crt, &pki.kcm_key)?;
        let deadline = Instant::now() + READY_TIMEOUT;

        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data = api.dir.join("etcd-data");
        api.spawn(
            "etcd",
            &[
                "--name=weft-test".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={}", api.etcd_url),
                format!("--advertise-client-urls={}", api.etcd_url),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=weft-test={peer_url}"),
                // Test data only: no fsync keeps etcd from waiting on the disk.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        api.wait_ready("etcd", deadline, || {
            http_get_ok(
                SocketAddr::from((Ipv4Addr::LOCALHOST, etcd_port)),
                None,
                "/health",
            )
        })?;

        let p = |path: &Path| path.display().to_string();
        api.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={}", api.etcd_url),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", p(&pki.server_crt)),
                format!("--tls-private-key-file={}", p(&pki.server_key)),
                format!("--client-ca-file={}", p(&pki.ca_crt)),
                format!("--service-account-issuer={API_AUDIENCE}"),
                format!("--service-account-key-file={}", p(&pki.sa_pub)),
                format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
                format!("--api-audiences={API_AUDIENCE}"),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                // A webhook or aggregated API named by a Service is dialled at the
                // Service's endpoints, never by its DNS name: this machine has no Service
                // network, and the name `x.ns.svc` must not be resolved (and called) out
                // there. Without endpoints the call fails on loopback.
                "--enable-aggregator-routing=true".into(),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                format!("--cert-dir={}", p(&api.dir.join("certs"))),
            ],
        )?;
        let tls = Arc::new(pki.admin_tls()?);
        api.wait_ready("kube-apiserver", deadline, || {
            http_get_ok(
                SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)),
                Some(&tls),
                "/readyz",
            )
        })?;

        if controller_manager {
            let kcm = p(&api.dir.join("kcm.kubeconfig"));
            api.spawn(
                "kube-controller-manager",
                &[
                    format!("--kubeconfig={kcm}"),
                    format!("--authentication-kubeconfig={kcm}"),
                    format!("--authorization-kubeconfig={kcm}"),
                    "--bind-address=127.0.0.1".into(),
                    // No serving port: nothing scrapes it, and it cannot collide.
                    "--secure-port=0".into(),
                    format!("--service-account-private-key-file={}", p(&pki.sa_key)),
                    format!("--root-ca-file={}", p(&pki.ca_crt)),
                    format!("--cluster-signing-cert-file={}", p(&pki.ca_crt)),
                    format!("--cluster-signing-key-file={}", p(&pki.ca_key)),
                    "--use-service-account-credentials=true".into(),
                    "--leader-elect=false".into(),
                    // No kubelets: the node controllers would only mark nodes unreachable.
                    "--controllers=*,-nodeipam,-nodelifecycle,-persistentvolume-binder,\
                     -attachdetach,-persistentvolume-expander,-cloud-node-lifecycle,-ttl"
                        .into(),
                ],
            )?;
            let (kubectl, kubeconfig) = (api.bin.join("kubectl"), api.kubeconfig());
            api.wait_ready("kube-controller-manager", deadline, || {
                Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["-n", "default", "get", "serviceaccount", "default"])
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|out| out.status.success())
            })?;
        }
        Ok(api)
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// etcd's client URL, `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The fixture's directory: `pki/`, `logs/`, kubeconfigs, etcd's data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig for a cluster admin (client certificate, `O=system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The CA that signed the API server's and the clients' certificates (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// The CA's key (PEM), to sign more certificates (an admission webhook's, say).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("pki/ca.key")
    }

    /// The admin client certificate (PEM).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("pki/admin.crt")
    }

    /// The admin client key (PEM, PKCS#8).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("pki/admin.key")
    }

    /// A process's log: `etcd`, `kube-apiserver` or `kube-controller-manager`.
    pub fn log(&self, process: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{process}.log"))
    }

    /// The process ids, to check they are gone after a drop.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(_, child)| child.id()).collect()
    }

    /// `kubectl` with this server's admin kubeconfig.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl with `args`; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `args` and `input` on stdin (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        run_kubectl(self.kubectl_command(), args, input)
    }

    /// Applies `yaml` (`kubectl apply -f -`); panics with kubectl's error and the YAML.
    pub fn apply(&self, yaml: &str) {
        self.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("kubectl apply: {e:#}\n{yaml}"));
    }

    /// Waits until the API server serves the CustomResourceDefinition `name`
    /// (`kubectl wait --for=condition=Established crd/NAME`), for at most `timeout`;
    /// panics when it does not.
    pub fn wait_established(&self, name: &str, timeout: Duration) {
        let crd = format!("crd/{name}");
        let timeout = format!("--timeout={}s", timeout.as_secs());
        self.kubectl(&["wait", "--for=condition=Established", &timeout, &crd])
            .unwrap_or_else(|e| panic!("{crd} is not Established: {e:#}"));
    }

    /// A shell process that, when this process exits without dropping the fixture,
    /// sees its stdin close and then stops the pids it was told and removes the dir.
    fn start_reaper(&mut self) -> anyhow::Result<()> {
        const REAPER: &str = r#"
trap '' INT TERM HUP
pids=
while read -r pid; do pids="$pids $pid"; done
for p in $pids; do kill -9 "$p" 2>/dev/null; done
rm -rf "$1"
"#;
        let mut child = Command::new("sh")
            .args(["-c", REAPER, "weft-kube-reaper"])
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the reaper (sh)")?;
        let stdin = child.stdin.take().context("the reaper's stdin")?;
        self.reaper = Some((child, stdin));
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, args: &[String]) -> anyhow::Result<()> {
        let log_path = self.log(name);
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(self.bin.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.join(name).display()))?;
        let pid = child.id();
        self.procs.push((name, child));
        if let Some((_, stdin)) = &mut self.reaper {
            writeln!(stdin, "{pid}").context("telling the reaper a pid")?;
        }
        Ok(())
    }

    /// Waits until `ready` holds; fails early when the process exits.
    fn wait_ready(
        &mut self,
        name: &str,
        deadline: Instant,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), StartError> {
        let started = Instant::now();
        loop {
            if ready() {
                tracing::debug!(process = name, elapsed = ?started.elapsed(), "ready");
                return Ok(());
            }
            let exited = self
                .procs
                .iter_mut()
                .find(|(n, _)| *n == name)
                .and_then(|(_, child)| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let log = fs::read_to_string(self.log(name)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let what = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("not ready after {:?}", READY_TIMEOUT),
                };
                let err = anyhow!(
                    "{name} {what}; last lines of {}:\n{}",
                    self.log(name).display(),
                    tail.join("\n")
                );
                return Err(if log.contains("address already in use") {
                    StartError::PortTaken(err)
                } else {
                    StartError::Other(err)
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write_kubeconfig(
        &self,
        file: &str,
        user: &str,
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: weft-test\n  cluster:\n    \
             server: {url}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    \
             client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: weft-test\n  \
             context: {{cluster: weft-test, user: {user}}}\ncurrent-context: weft-test\n",
            url = self.url,
            ca = self.ca_cert().display(),
            cert = cert.display(),
            key = key.display(),
        );
        let path = self.dir.join(file);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        // The reaper first, so that it never signals a pid reused after we reaped ours.
        if let Some((mut reaper, stdin)) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
            drop(stdin);
        }
        while let Some((name, mut child)) = self.procs.pop() {
            stop(name, &mut child);
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the kube test directory");
        }
    }
}

/// SIGKILL: the state is thrown away, so nothing needs a graceful stop (kube-apiserver
/// takes about 4 s to drain after SIGTERM, which every test would wait for).
fn stop(name: &str, child: &mut Child) {
    if let Err(e) = child.kill() {
        tracing::debug!(process = name, error = %e, "kill");
    }
    let _ = child.wait();
}

enum StartError {
    /// Another process bound a port between our check and the server's bind.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

/// Three ports free on 127.0.0.1 now (bound together, so distinct).
fn free_ports() -> anyhow::Result<[u16; 3]> {
    let listeners = [(); 3].map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)));
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(listeners) {
        *port = listener
            .and_then(|l| l.local_addr())
            .context("binding 127.0.0.1:0 for a free port")?
            .port();
    }
    Ok(ports)
}

/// `GET path` answered with 200 (TLS when `tls` is given).
fn http_get_ok(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>, path: &str) -> bool {
    let Ok(tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    let ok = match tls {
        None => {
            let mut tcp = tcp;
            tcp.write_all(request.as_bytes()).is_ok() && tcp.read_to_end(&mut response).is_ok()
        }
        Some(tls) => {
            let Ok(conn) =
                ClientConnection::new(tls.clone(), ServerName::IpAddress(addr.ip().into()))
            else {
                return false;
            };
            let mut stream = StreamOwned::new(conn, tcp);
            // The server closes after the answer; a missing close_notify is no matter.
            stream.write_all(request.as_bytes()).is_ok() && {
                let _ = stream.read_to_end(&mut response);
                !response.is_empty()
            }
        }
    };
    ok && response.starts_with(b"HTTP/1.1 200")
}

/// The fixture's certificates, written as PEM files.
struct Pki {
    ca_crt: PathBuf,
    ca_key: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    admin_crt: PathBuf,
    admin_key: PathBuf,
    kcm_crt: PathBuf,
    kcm_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    ca_der: CertificateDer<'static>,
    admin_der: CertificateDer<'static>,
    admin_key_der: Vec<u8>,
}

impl Pki {
    fn write(dir: &Path) -> anyhow::Result<Pki> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, pem: String| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let mut ca = CertificateParams::default();
        ca.distinguished_name = dn(&[(DnType::CommonName, "weft-test-kube-ca")]);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let ca_crt = write("ca.crt", ca.pem())?;
        let ca_key = write("ca.key", ca.key().serialize_pem())?;

        let leaf =
            |name: &str,
             sans: &[&str],
             subject: &[(DnType, &str)],
             usage: ExtendedKeyUsagePurpose|
             -> anyhow::Result<(PathBuf, PathBuf, CertificateDer<'static>, Vec<u8>)> {
                let key = KeyPair::generate()?;
                let mut params =
                    CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
                params.distinguished_name = dn(subject);
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![usage];
                params.use_authority_key_identifier_extension = true;
                let cert = params.signed_by(&key, &ca)?;
                let crt = write(&format!("{name}.crt"), cert.pem())?;
                let key_path = write(&format!("{name}.key"), key.serialize_pem())?;
                Ok((crt, key_path, cert.der().clone(), key.serialize_der()))
            };
        let (server_crt, server_key, _, _) = leaf(
            "apiserver",
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[(DnType::CommonName, "kube-apiserver")],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        // O=system:masters: cluster-admin under RBAC.
        let (admin_crt, admin_key, admin_der, admin_key_der) = leaf(
            "admin",
            &[],
            &[
                (DnType::OrganizationName, "system:masters"),
                (DnType::CommonName, "weft-test-admin"),
            ],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let (kcm_crt, kcm_key, _, _) = leaf(
            "kcm",
            &[],
            &[(DnType::CommonName, "system:kube-controller-manager")],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let sa = KeyPair::generate()?;
        let sa_key = write("sa.key", sa.serialize_pem())?;
        let sa_pub = write("sa.pub", sa.public_key_pem())?;
        Ok(Pki {
            ca_der: ca.der().clone(),
            ca_crt,
            ca_key,
            server_crt,
            server_key,
            admin_crt,
            admin_key,
            kcm_crt,
            kcm_key,
            sa_key,
            sa_pub,
            admin_der,
            admin_key_der,
        })
    }

    /// TLS client settings trusting the CA and presenting the admin certificate.
    fn admin_tls(&self) -> anyhow::Result<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.admin_key_der.clone()));
        Ok(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![self.admin_der.clone()], key)?,
        )
    }
}

fn dn(parts: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (kind, value) in parts {
        dn.push(kind.clone(), *value);
    }
    dn
}

/// Runs `cmd` (kubectl with its kubeconfig) with `args` and `input` on stdin: its
/// stdout, or an error with its stderr.
pub(crate) fn run_kubectl(
    mut cmd: Command,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().context("running kubectl")?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().context("kubectl's stdin")?;
        stdin
            .write_all(input.as_bytes())
            .context("writing kubectl's stdin")?;
    }
    let out = child.wait_with_output().context("waiting for kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

//! The operator against a real kube-apiserver and kube-controller-manager
//! (`weft_test::kube::KubeApi`: skipped with a message when the binaries are not built,
//! failing under CI). The real `weft-operator` binary runs as its own ServiceAccount
//! (impersonated), so its ClusterRole is what is tested; the test plays the kubelet,
//! marking the pods the Deployments create Running and Ready, and runs the injector as
//! the API server's webhook on a loopback port.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, install_crds, Injector};
use rustls::pki_types::pem::PemObject as _;
use serde_json::Value;
use weft_k8s::crd;
use weft_k8s::inject::InjectConfig;
use weft_k8s::install::InstallOptions;
use weft_k8s::operator::manifests::{self, OPERATOR};
use weft_test::kube::KubeApi;

const WAIT: Duration = Duration::from_secs(60);
const REGISTRY: &str = "registry.test/weft";

/// The operator's process, killed (by its pid) when dropped.
struct Operator {
    child: Child,
    log: PathBuf,
    admin: u16,
}

impl Operator {
    /// Runs `weft-operator` as the operator's ServiceAccount, `name` in its Lease.
    fn start(api: &KubeApi, name: &str) -> Operator {
        let admin = kubeconfig_as(api, &format!("system:serviceaccount:{OPERATOR}:{OPERATOR}"));
        let log = api.dir().join(format!("logs/{name}.log"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_weft-operator"))
            .env("KUBECONFIG", &admin)
            .args([
                &format!("--admin-listen=127.0.0.1:{port}"),
                "--log=info,weft_k8s=debug",
                &format!("--lease-namespace={OPERATOR}"),
                &format!("--lease-identity={name}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Operator {
            child,
            log,
            admin: port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the exit.
    fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}\n{}", self.log());
    }

    /// `GET path` on the admin port: status code and body.
    fn admin(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        tcp.read_to_string(&mut out).ok()?;
        let code = out.split(' ').nth(1)?.parse().ok()?;
        Some((code, out.split_once("\r\n\r\n")?.1.to_owned()))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- weft-operator's log ---\n{}", self.log());
        }
    }
}

/// The operator Lease's holder.
fn lease_holder(api: &KubeApi) -> Option<String> {
    let lease = get(api, &["lease", "-n", OPERATOR, "weft-operator"])?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

/// A copy of the fixture's kubeconfig that impersonates `user`.
fn kubeconfig_as(api: &KubeApi, user: &str) -> PathBuf {
    let text = std::fs::read_to_string(api.kubeconfig()).unwrap();
    assert!(text.contains("  user:\n"), "{text}");
    let text = text.replacen("  user:\n", &format!("  user:\n    as: {user}\n"), 1);
    let path = api.dir().join("operator.kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

/// Plays the kubelet: every pod not yet Ready becomes Running and Ready, at an address
/// of 198.18.0.0/15, until dropped.
struct Node {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start(api: &KubeApi) -> Node {
        let stop = Arc::new(AtomicBool::new(false));
        let kubeconfig = api.kubeconfig();
        let kubectl = api.kubectl_command().get_program().to_owned();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new(&kubectl)
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .args(["get", "pods", "-A", "-o", "json"])
                        .output();
                    let pods: Value = out
                        .ok()
                        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
                        .unwrap_or(Value::Null);
                    for pod in pods["items"].as_array().into_iter().flatten() {
                        let ready = pod["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True");
                        if ready || !pod["metadata"]["deletionTimestamp"].is_null() {
                            continue;
                        }
                        n += 1;
                        let ip = format!("198.18.{}.{}", 10 + n / 250, 1 + n % 250);
                        let status = format!(
                            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}},{{"type":"ContainersReady","status":"True"}}]}}}}"#
                        );
                        let _ = Command::new(&kubectl)
                            .arg("--kubeconfig")
                            .arg(&kubeconfig)
                            .args([
                                "patch",
                                "pod",
                                "-n",
                                pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                                pod["metadata"]["name"].as_str().unwrap_or_default(),
                                "--subresource=status",
                                "--type=merge",
                                "-p",
                                &status,
                            ])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Node {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn get(api: &KubeApi, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    api.kubectl(&all)
        .ok()
        .and_then(|out| serde_json::from_str(&out).ok())
}

fn apply(api: &KubeApi, yaml: &str) {
    api.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(yaml))
        .unwrap_or_else(|e| panic!("{e:#}\n{yaml}"));
}

fn condition(object: &Value, type_: &str) -> Option<(String, String, String)> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// Waits until `ControlPlane weft` is Ready and runs `version`.
fn ready_at(api: &KubeApi, operator: &Operator, version: &str) -> Value {
    eventually(WAIT, || {
        let cp = get(api, &["controlplane", "weft"])?;
        let (status, ..) = condition(&cp, "Ready")?;
        (status == "True" && cp["status"]["currentVersion"] == version).then_some(cp)
    })
    .unwrap_or_else(|| {
        panic!(
            "ControlPlane weft not Ready at {version}: {}\n{}",
            api.kubectl(&["get", "controlplane", "weft", "-o", "yaml"])
                .unwrap_or_default(),
            operator.log()
        )
    })
}

fn data(secret: &Value, key: &str) -> Vec<u8> {
    use base64::Engine as _;
    let text = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {secret}"));
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Checks the identity Secrets: the issuer chains to the anchor, the injector's
/// certificate verifies for its Service name against the webhook's caBundle.
fn identity_checks(api: &KubeApi) -> Vec<u8> {
    let identity = get(api, &["secret", "-n", "weft-system", "weft-identity"]).unwrap();
    let anchors = data(&identity, "trust-anchors.pem");
    let anchor_secret = get(api, &["secret", "-n", "weft-system", "weft-trust-anchor"]).unwrap();
    assert_eq!(data(&anchor_secret, "tls.crt"), anchors);
    let parsed =
        weft_controller::identity::TrustAnchors::from_pem(&anchors, Path::new("anchors")).unwrap();
    weft_controller::identity::Issuer::from_pem(
        &data(&identity, "issuer.crt"),
        Path::new("issuer.crt"),
        &data(&identity, "issuer.key"),
        Path::new("issuer.key"),
        &parsed,
    )
    .unwrap();
    let webhook = get(api, &["mutatingwebhookconfiguration", "weft-injector"]).unwrap();
    let ca_bundle = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(
                webhook["webhooks"][0]["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap()
    };
    assert_eq!(
        ca_bundle, anchors,
        "the webhook's caBundle is the trust anchors"
    );
    let tls = get(api, &["secret", "-n", "weft-system", "weft-injector-tls"]).unwrap();
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&data(&tls, "tls.crt"))
        .collect::<Result<_, _>>()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&anchors) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    use rustls::client::danger::ServerCertVerifier as _;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &rustls::pki_types::ServerName::try_from("weft-injector.weft-system.svc").unwrap(),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .expect("the injector's certificate verifies for weft-injector.weft-system.svc");
    anchors
}

fn image_of(api: &KubeApi, ns: &str, deployment: &str) -> String {
    let d = get(api, &["deployment", "-n", ns, deployment]).unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn app(name: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: apps, labels: {{tier: web}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: app, image: registry.test/apps/{name}:1}}]
"#
    )
}

/// The proxy images of the pods of `apps/name` (not being deleted).
fn proxy_images(api: &KubeApi, name: &str) -> Vec<String> {
    let pods =
        get(api, &["pods", "-n", "apps", "-l", &format!("app={name}")]).unwrap_or(Value::Null);
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "weft-proxy")
                .and_then(|c| c["image"].as_str())
                .unwrap_or("none")
                .to_owned()
        })
        .collect()
}

#[test]
fn a_control_plane_resource_installs_upgrades_restarts_workloads_and_deletes_the_control_plane() {
    let Some(api) = KubeApi::start_with_controller_manager() else {
        return;
    };
    install_crds(&api);
    // The operator's own objects as `weft install --operator` prints them, but for its
    // Deployment: its process runs here instead, as its ServiceAccount.
    let opts = InstallOptions {
        version: "v1".into(),
        image_registry: REGISTRY.into(),
        ..InstallOptions::default()
    };
    let objects = manifests::operator(&opts, OPERATOR, false).unwrap();
    let rbac: Vec<String> = objects
        .iter()
        .filter(|m| m.kind != "Deployment")
        .map(|m| m.yaml.clone())
        .collect();
    apply(&api, &crd::documents(rbac));
    let operator = Operator::start(&api, "op-1");
    eventually(WAIT, || (operator.admin("/ready")?.0 == 200).then_some(()))
        .unwrap_or_else(|| panic!("the operator never became ready:\n{}", operator.log()));
    eventually(WAIT, || (lease_holder(&api)? == "op-1").then_some(()))
        .unwrap_or_else(|| panic!("op-1 never took the Lease:\n{}", operator.log()));
    // A second replica waits: it reconciles nothing while op-1 holds the Lease.
    let standby = Operator::start(&api, "op-2");
    eventually(WAIT, || {
        standby.log().contains("waiting to lead").then_some(())
    })
    .unwrap_or_else(|| panic!("op-2 did not wait:\n{}", standby.log()));

    // A ControlPlane with a bad trust anchor reference says so.
    apply(
        &api,
        "apiVersion: operator.weft.io/v1alpha1\nkind: ControlPlane\nmetadata: {name: weft}\nspec:\n  version: v1\n  values: {imageRegistry: registry.test/weft}\n  trustAnchor: {secret: {name: mesh-anchor}}\n",
    );
    let message = eventually(WAIT, || {
        let cp = get(&api, &["controlplane", "weft"])?;
        let (status, reason, message) = condition(&cp, "Ready")?;
        (status == "False" && reason == "TrustAnchorUnavailable").then_some(message)
    })
    .unwrap_or_else(|| panic!("no TrustAnchorUnavailable condition:\n{}", operator.log()));
    assert!(
        message.contains("spec.trustAnchor.secret: Secret weft-system/mesh-anchor does not exist"),
        "{message}"
    );

    // Without a trust anchor reference the operator makes one; the control plane's
    // objects appear and roll out once their pods are Ready.
    api.kubectl(&[
        "patch",
        "controlplane",
        "weft",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/trustAnchor"}]"#,
    ])
    .unwrap();
    let rolling = eventually(WAIT, || {
        let cp = get(&api, &["controlplane", "weft"])?;
        let (status, reason, message) = condition(&cp, "Progressing")?;
        (status == "True" && reason == "RollingOut").then_some(message)
    })
    .unwrap_or_else(|| panic!("never rolling out:\n{}", operator.log()));
    assert!(rolling.contains("rolling out v1"), "{rolling}");
    let anchors = identity_checks(&api);
    assert_eq!(
        image_of(&api, "weft-system", "weft-controller"),
        format!("{REGISTRY}/weft-controller:v1")
    );
    let injector_args = get(&api, &["deployment", "-n", "weft-system", "weft-injector"]).unwrap()
        ["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(
        injector_args.contains(&format!("--proxy-image={REGISTRY}/weft-proxy:v1")),
        "{injector_args}"
    );
    let node = Node::start(&api);
    ready_at(&api, &operator, "v1");

    // Meshed workloads, injected (by the test's injector, at v1) when created.
    let mut injector = Injector::start(
        &api,
        InjectConfig {
            proxy_image: format!("{REGISTRY}/weft-proxy:v1"),
            ..InjectConfig::default()
        },
    );
    injector.register(&api, "weft-test-injector", "Fail");
    apply(&api, "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps, labels: {weft.io/inject: enabled}}\n");
    eventually(WAIT, || {
        get(&api, &["serviceaccount", "-n", "apps", "default"])
    })
    .expect("no default ServiceAccount in apps");
    for name in ["alpha", "bravo", "charlie"] {
        apply(&api, &app(name));
    }
    apply(
        &api,
        "apiVersion: operator.weft.io/v1alpha1\nkind: DataPlane\nmetadata: {name: apps}\nspec:\n  workloadSelector: {namespace: apps, labelSelector: {matchLabels: {tier: web}}}\n  maxUnavailable: 1\n",
    );
    eventually(WAIT, || {
        let dp = get(&api, &["dataplane", "apps"])?;
        let (status, ..) = condition(&dp, "Ready")?;
        let all_injected = ["alpha", "bravo", "charlie"].iter().all(|n| {
            let images = proxy_images(&api, n);
            images.len() == 2 && images.iter().all(|i| i.ends_with(":v1"))
        });
        (status == "True" && all_injected && dp["status"]["workloadsPending"] == 0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the DataPlane is not Ready at v1: {}\n{}",
            api.kubectl(&["get", "dataplane", "apps", "-o", "yaml"])
                .unwrap_or_default(),
            operator.log()
        )
    });

    // The upgrade: the injector now gives v2 (as the new injector Deployment would),
    // and the ControlPlane's version changes.
    injector.stop();
    let injector = Injector::start(
        &api,
        InjectConfig {
            proxy_image: format!("{REGISTRY}/weft-proxy:v2"),
            ..InjectConfig::default()
        },
    );
    injector.register(&api, "weft-test-injector", "Fail");
    api.kubectl(&[
        "patch",
        "controlplane",
        "weft",
        "--type=merge",
        "-p",
        r#"{"spec":{"version":"v2"}}"#,
    ])
    .unwrap();
    ready_at(&api, &operator, "v2");
    assert_eq!(
        image_of(&api, "weft-system", "weft-controller"),
        format!("{REGISTRY}/weft-controller:v2")
    );
    // The same trust anchor: an upgrade is not a rotation.
    assert_eq!(identity_checks(&api), anchors);

    // The DataPlane restarts the three workloads, one at a time, onto v2.
    let mut most_at_once = 0;
    eventually(Duration::from_secs(120), || {
        let restarting = ["alpha", "bravo", "charlie"]
            .iter()
            .filter(|n| {
                let d = get(&api, &["deployment", "-n", "apps", n]).unwrap_or(Value::Null);
                let restarted = !d["spec"]["template"]["metadata"]["annotations"]
                    ["operator.weft.io/restarted-for"]
                    .is_null();
                let s = &d["status"];
                let settled = s["updatedReplicas"] == 2
                    && s["availableReplicas"] == 2
                    && s["replicas"] == 2
                    && s["observedGeneration"] == d["metadata"]["generation"];
                restarted && !settled
            })
            .count();
        most_at_once = most_at_once.max(restarting);
        let dp = get(&api, &["dataplane", "apps"])?;
        let (status, ..) = condition(&dp, "Ready")?;
        (status == "True" && dp["status"]["workloadsRestarted"] == 3).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the DataPlane did not finish: {}\n{}",
            api.kubectl(&["get", "dataplane", "apps", "-o", "yaml"])
                .unwrap_or_default(),
            operator.log()
        )
    });
    assert!(
        most_at_once <= 1,
        "{most_at_once} workloads restarted at once with maxUnavailable 1"
    );
    for name in ["alpha", "bravo", "charlie"] {
        let images = proxy_images(&api, name);
        assert!(
            !images.is_empty()
                && images
                    .iter()
                    .all(|i| *i == format!("{REGISTRY}/weft-proxy:v2")),
            "{name}: {images:?}"
        );
    }
    let (code, metrics) = operator.admin("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("operator_workload_restarts_total 3"),
        "{metrics}"
    );

    // op-1 stops (SIGTERM): it releases the Lease and op-2 takes over, and handles
    // what follows.
    assert!(
        !standby.log().contains("leading: reconciling"),
        "{}",
        standby.log()
    );
    operator.terminate();
    let operator = standby;
    eventually(WAIT, || (lease_holder(&api)? == "op-2").then_some(()))
        .unwrap_or_else(|| panic!("op-2 never took the Lease over:\n{}", operator.log()));

    // High availability adds a PodDisruptionBudget; turning it off removes it.
    api.kubectl(&[
        "patch",
        "controlplane",
        "weft",
        "--type=merge",
        "-p",
        r#"{"spec":{"highAvailability":{}}}"#,
    ])
    .unwrap();
    eventually(WAIT, || {
        get(&api, &["pdb", "-n", "weft-system", "weft-controller"])
    })
    .unwrap_or_else(|| panic!("no PodDisruptionBudget:\n{}", operator.log()));
    api.kubectl(&[
        "patch",
        "controlplane",
        "weft",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/highAvailability"}]"#,
    ])
    .unwrap();
    eventually(WAIT, || {
        get(&api, &["pdb", "-n", "weft-system", "weft-controller"])
            .is_none()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the PodDisruptionBudget stayed:\n{}", operator.log()));

    // A second ControlPlane is refused in its status.
    apply(&api, "apiVersion: operator.weft.io/v1alpha1\nkind: ControlPlane\nmetadata: {name: other}\nspec: {version: v2}\n");
    let message = eventually(WAIT, || {
        let cp = get(&api, &["controlplane", "other"])?;
        let (status, reason, message) = condition(&cp, "Ready")?;
        (status == "False" && reason == "Duplicate").then_some(message)
    })
    .unwrap_or_else(|| {
        panic!(
            "the second ControlPlane was not refused:\n{}",
            operator.log()
        )
    });
    assert!(
        message.contains("ControlPlane weft already manages"),
        "{message}"
    );
    api.kubectl(&["delete", "controlplane", "other"]).unwrap();

    // Deleting the ControlPlane deletes the control plane.
    api.kubectl(&["delete", "controlplane", "weft", "--wait=false"])
        .unwrap();
    eventually(Duration::from_secs(90), || {
        let gone = |args: &[&str]| get(&api, args).is_none();
        (gone(&["namespace", "weft-system"])
            && gone(&["clusterrole", "weft-controller"])
            && gone(&["clusterrolebinding", "weft-injector"])
            && gone(&["mutatingwebhookconfiguration", "weft-injector"]))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the control plane outlived its ControlPlane: {}",
            api.kubectl(&["get", "namespace", "weft-system", "-o", "yaml"])
                .unwrap_or_default()
        )
    });
    drop(node);
    drop(injector);
}

//! A weft-controller in-process: a fresh trust anchor and issuer, workload tokens, a
//! mesh directory and a pods file the test writes, and the controller serving identity
//! and destinations on loopback. Proxies built with [`TestController::meshed`] get
//! their certificate from it (Identity.Certify with a token) and resolve through it.
//!
//! ```ignore
//! let ctl = TestController::start(MESH_YAML, SERVICES_YAML).await;
//! ctl.set_pods(&[pod("books", 0, ip, true)]);
//! let proxy = ctl.meshed(proxy::inbound_to(app), "web").start().await;
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use weft_controller::destination::LocalSourceConfig;
use weft_controller::policy::PolicyConfig;
use weft_controller::{identity, Config, Controller, DestinationConfig};
use weft_core::identity::Identity;
use weft_core::pods::{PodEntry, PodsFile, ServiceAddress};
use weft_proxy::certify::{CertifyConfig, TokenSource};
use weft_proxy::config::IdentityConfig;
use weft_proxy::destination::DestinationConfig as ProxyDestinationConfig;
use weft_proxy::identity::{anchors_from_pem, LocalIdentity};

use crate::proxy::ProxyBuilder;

/// The controller's TLS server name (its identity in `cluster.local`).
pub const CONTROLLER_NAME: &str =
    "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";

/// A running controller and the files it reads. Stops and removes its files when
/// dropped.
pub struct TestController {
    dir: PathBuf,
    controller: Option<Controller>,
    grpc: SocketAddr,
    anchors_pem: Vec<u8>,
    services: Vec<ServiceAddress>,
    policy: PolicyConfig,
}

/// A pod for [`TestController::set_pods`] (namespace `default`).
pub fn pod(workload: &str, index: u32, ip: IpAddr, ready: bool) -> PodEntry {
    PodEntry {
        name: format!("{workload}-{index}"),
        namespace: "default".into(),
        workload: workload.into(),
        index,
        ip,
        zone: None,
        ready,
    }
}

impl TestController {
    /// A controller for the mesh `mesh_yaml` (mesh.yaml) with `services_yaml`
    /// (Kubernetes Services), no pods yet, and a token for every workload's service
    /// account.
    pub async fn start(mesh_yaml: &str, services_yaml: &str) -> TestController {
        Self::start_with_policy(mesh_yaml, services_yaml, PolicyConfig::default()).await
    }

    /// [`TestController::start`] with authorization settings (the default inbound
    /// policy, the cluster's networks).
    pub async fn start_with_policy(
        mesh_yaml: &str,
        services_yaml: &str,
        policy: PolicyConfig,
    ) -> TestController {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-test-controller-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mesh")).expect("test directory");
        std::fs::write(dir.join("mesh/mesh.yaml"), mesh_yaml).expect("mesh.yaml");
        std::fs::write(dir.join("mesh/services.yaml"), services_yaml).expect("services.yaml");
        let mesh = weft_core::mesh::Mesh::load(&dir.join("mesh")).expect("a valid test mesh");
        for w in &mesh.workloads {
            let path = identity::token_path(&dir.join("tokens"), &w.namespace, &w.service_account);
            if !path.exists() {
                identity::write_token(&dir.join("tokens"), &w.namespace, &w.service_account)
                    .expect("token");
            }
        }
        identity::init(&dir.join("identity"), "cluster.local", false).expect("identity");
        let anchors_pem =
            std::fs::read(dir.join("identity").join(identity::ANCHORS_FILE)).expect("anchors");
        let mut ctl = TestController {
            dir,
            controller: None,
            grpc: ([127, 0, 0, 1], 0).into(),
            anchors_pem,
            services: Vec::new(),
            policy,
        };
        ctl.restart().await;
        ctl
    }

    fn config(&self) -> Config {
        Config {
            identity_dir: self.dir.join("identity"),
            tokens_dir: self.dir.join("tokens"),
            trust_domain: "cluster.local".into(),
            cert_lifetime: Duration::from_secs(3600),
            listen: self.grpc,
            admin_listen: ([127, 0, 0, 1], 0).into(),
            destination: Some(DestinationConfig {
                source: LocalSourceConfig {
                    mesh_dir: self.dir.join("mesh"),
                    pods_file: self.pods_path(),
                    watch_interval: Duration::from_millis(20),
                }
                .into(),
                cluster_domain: "cluster.local".into(),
                opaque_ports: Vec::new(),
                policy: self.policy.clone(),
            }),
        }
    }

    /// Starts (again, on the same address) a controller that was stopped.
    pub async fn restart(&mut self) {
        assert!(self.controller.is_none(), "the controller is running");
        // The port may linger briefly after a stop.
        let mut last = None;
        for _ in 0..50 {
            match Controller::start(self.config()).await {
                Ok(c) => {
                    self.grpc = c.grpc_addr();
                    self.controller = Some(c);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the controller does not start: {:?}", last);
    }

    /// Stops the controller (its streams end, its port closes).
    pub async fn stop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.shutdown().await.expect("controller stops");
        }
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.controller
            .as_ref()
            .expect("the controller is running")
            .admin_addr()
    }

    pub fn anchors_pem(&self) -> &[u8] {
        &self.anchors_pem
    }

    pub fn pods_path(&self) -> PathBuf {
        self.dir.join("pods.yaml")
    }

    pub fn mesh_dir(&self) -> PathBuf {
        self.dir.join("mesh")
    }

    /// Gives Service `default/{name}` the virtual IP `ip` (written with the pods).
    pub fn set_service_ip(&mut self, name: &str, ip: IpAddr) {
        self.services.retain(|s| s.name != name);
        self.services.push(ServiceAddress {
            name: name.into(),
            namespace: "default".into(),
            ip,
        });
    }

    /// Replaces the pods file (atomically, as `weft up` does).
    pub fn set_pods(&self, pods: &[PodEntry]) {
        PodsFile {
            pods: pods.to_vec(),
            services: self.services.clone(),
        }
        .write(&self.pods_path())
        .expect("pods file");
    }

    /// The policy objects' statuses (Accepted, ResolvedRefs) as the controller has them.
    pub fn policy_reports(&self) -> Vec<weft_controller::policy::ObjectReport> {
        self.controller
            .as_ref()
            .expect("the controller is running")
            .policy_reports()
    }

    /// Writes (atomically) `name` in the mesh directory, e.g. a file of policy objects.
    pub fn write_mesh_file(&self, name: &str, yaml: &str) {
        write_atomically(&self.mesh_dir().join(name), yaml);
    }

    /// Replaces mesh.yaml.
    pub fn set_mesh(&self, mesh_yaml: &str) {
        write_atomically(&self.mesh_dir().join("mesh.yaml"), mesh_yaml);
    }

    /// Makes `proxy` a meshed proxy of service account `sa` (namespace `default`): it
    /// gets its certificate from this controller and resolves through it.
    pub fn meshed(&self, mut proxy: ProxyBuilder, sa: &str) -> ProxyBuilder {
        let name = Identity::new(sa, "default", "cluster.local").expect("test identity");
        let roots = anchors_from_pem(&self.anchors_pem).expect("anchors");
        let local = LocalIdentity::new(name, roots).expect("identity");
        let config = proxy.config_mut();
        config.identity = Some(IdentityConfig {
            local,
            certify: Some(CertifyConfig {
                controller: self.grpc.to_string(),
                controller_name: CONTROLLER_NAME.into(),
                token: TokenSource::File(identity::token_path(
                    &self.dir.join("tokens"),
                    "default",
                    sa,
                )),
                anchors_pem: self.anchors_pem.clone(),
            }),
        });
        config.destination = Some(ProxyDestinationConfig {
            controller: self.grpc.to_string(),
            controller_name: CONTROLLER_NAME.into(),
            anchors_pem: self.anchors_pem.clone(),
            first_update: Duration::from_secs(1),
            mesh_networks: weft_proxy::destination::DestinationConfig::default_mesh_networks(),
        });
        proxy
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

impl Drop for TestController {
    fn drop(&mut self) {
        drop(self.controller.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

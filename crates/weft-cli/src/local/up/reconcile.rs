//! Reconciliation: the foreground follows the mesh directory and applies a changed
//! mesh (Services' VIPs and hosts, pods replaced, added, and removed once proxies have
//! stopped sending to them); also how pods and the whole mesh are taken down.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use weft_core::mesh::{Mesh, Workload, MESH_FILE};

use super::Runner;
use crate::local::pod_name;
use crate::local::state::{stop_all, ProcRecord};
use crate::local::teardown::{remove_pod, teardown, STOP_GRACE};

/// How often the mesh directory is checked for changes (foreground).
pub(super) const WATCH_EVERY: Duration = Duration::from_millis(300);

/// How long a change of the pods file takes to reach every proxy (the controller polls
/// it every 20 ms and streams the change; bench/local-mesh measures the rest), with a
/// wide margin: pods leaving are stopped only after it.
const PROPAGATION: Duration = Duration::from_millis(300);

/// The same in loopback mode, where proxies poll their endpoints file every 200 ms.
const LOOPBACK_PROPAGATION: Duration = Duration::from_millis(450);

impl Runner {
    /// How long to wait, after pods left the endpoints, before they are stopped.
    pub(super) fn propagation(&self) -> Duration {
        match self.paths.loopback {
            Some(_) => LOOPBACK_PROPAGATION,
            None => PROPAGATION,
        }
    }

    /// Applies the mesh directory if it changed since `stamp` (a directory that does
    /// not load is an event; the running mesh stays).
    pub(super) async fn follow_dir(&mut self, stamp: &mut Vec<(PathBuf, u64, SystemTime)>) {
        let now = dir_stamp(&self.paths.mesh_dir);
        if now != *stamp {
            *stamp = now;
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

    /// Applies a changed mesh: Services' VIPs and hosts, pods added and removed.
    pub(super) async fn apply(&mut self, mesh: Mesh) -> anyhow::Result<()> {
        let mut mesh = mesh;
        if mesh.trust_domain != self.mesh.trust_domain {
            self.event(format!(
                "trustDomain changed to {:?}: certificates are issued for {:?} until weft up is restarted",
                mesh.trust_domain, self.mesh.trust_domain
            ));
            mesh.trust_domain = self.mesh.trust_domain.clone();
        }
        if mesh.default_inbound_policy != self.mesh.default_inbound_policy {
            let said = |p: &Option<String>| p.as_deref().unwrap_or("unset").to_owned();
            self.event(format!(
                "policy.default changed to {}: the controller keeps the default inbound policy it started with ({}) until weft up is restarted",
                said(&mesh.default_inbound_policy),
                self.paths
                    .default_inbound_policy
                    .clone()
                    .or_else(|| self.mesh.default_inbound_policy.clone())
                    .unwrap_or_else(|| "its own default, all-unauthenticated".to_owned()),
            ));
            mesh.default_inbound_policy = self.mesh.default_inbound_policy.clone();
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
        let changed = self.changed_pods(&old);
        if !changed.is_empty() {
            self.event(format!(
                "replacing {} pods whose workload changed",
                changed.len()
            ));
            self.remove_pods(&changed)?;
        }
        let services_changed = self.paths.loopback.is_none() && self.sync_vips()?;
        let created = self.scale_up();
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

    /// Pods whose workload is gone or changed other than in its replicas (by netns).
    fn changed_pods(&self, old: &Mesh) -> Vec<String> {
        self.state
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
            .collect()
    }

    /// Makes the pods the mesh wants that do not exist yet (scale up, replacements);
    /// returns them to start.
    fn scale_up(&mut self) -> Vec<(Workload, String)> {
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
        created
    }

    /// Stops a set of pods: processes, namespaces, files; then forgets them.
    pub(super) fn remove_pods(&mut self, netnses: &[String]) -> anyhow::Result<()> {
        let procs: Vec<ProcRecord> = self
            .state
            .pods
            .iter()
            .filter(|p| netnses.contains(&p.netns))
            .flat_map(|p| p.procs.clone())
            .collect();
        let children = &mut self.children;
        stop_all(&procs, STOP_GRACE, || {
            children.retain(|_, c| matches!(c.try_wait(), Ok(None)))
        });
        let mut result = Ok(());
        for netns in netnses {
            let Some(i) = self.state.pods.iter().position(|p| &p.netns == netns) else {
                continue;
            };
            self.state.pods[i].procs.clear();
            let pod = self.state.pods[i].clone();
            match remove_pod(&pod, self.state.loopback) {
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
    pub(super) fn teardown(&mut self) {
        let children = &mut self.children;
        let outcome = teardown(&mut self.state, &self.paths.state_path, || {
            children.retain(|_, c| matches!(c.try_wait(), Ok(None)))
        });
        if let Err(e) = outcome {
            eprintln!("{e:#}");
        }
    }
}

/// Names, sizes and modification times of the mesh directory's YAML files.
pub(super) fn dir_stamp(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
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

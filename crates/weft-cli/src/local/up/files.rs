//! The files `weft up` writes for others: the state file (for `weft down` and the
//! other commands), the pods file (for the controller's destination service), the
//! endpoints files (for loopback proxies) and the pods' hosts files.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use weft_core::mesh::Mesh;
use weft_core::pods::{PodEntry, PodsFile, ServiceAddress};

use super::Runner;
use crate::local::state::PodRecord;
use crate::local::sys::set_mode;
use crate::local::INBOUND_PORT;

impl Runner {
    pub(super) fn save(&self) -> anyhow::Result<()> {
        self.state.save(&self.paths.state_path)
    }

    /// `/etc/hosts` of a pod in `namespace`: every Service by its cluster names, and the
    /// short name for Services of the pod's own namespace.
    pub(super) fn hosts(&self, namespace: &str, pod: &str, ip: Ipv4Addr) -> String {
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
    pub(super) fn write_hosts(&self) -> anyhow::Result<()> {
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
    pub(super) fn pods_file(&self) -> PodsFile {
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
    pub(super) fn write_pods(&self) -> anyhow::Result<()> {
        if self.paths.loopback.is_some() {
            return self.write_endpoints();
        }
        self.pods_file().write(&self.paths.pods_file)?;
        set_mode(&self.paths.pods_file, 0o644)?;
        Ok(())
    }

    /// Loopback mode: the endpoints file of the proxies of `namespace`'s pods.
    pub(super) fn endpoints_path(&self, namespace: &str) -> PathBuf {
        self.paths.endpoints_dir.join(format!("{namespace}.yaml"))
    }

    /// Loopback mode: writes every namespace's endpoints file atomically (the proxies
    /// reload it within 200 ms of a change).
    pub(super) fn write_endpoints(&self) -> anyhow::Result<()> {
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
}

/// Loopback mode: the endpoints file of `namespace`'s proxies. Every Service port is
/// a service named by its authorities (`{svc}.{ns}.svc.cluster.local:{port}`,
/// `{svc}.{ns}.svc:{port}`, `{svc}.{ns}:{port}`, and `{svc}:{port}` for Services of
/// `namespace`) whose endpoints are its ready pods' inbound proxies (`IP:4143`, with
/// zone and identity): calls go proxy to proxy over mTLS, and the callee's proxy
/// hands them to its app. Service ports without a ready pod are left out.
pub(super) fn endpoints_yaml(
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
}

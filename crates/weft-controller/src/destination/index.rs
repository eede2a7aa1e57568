//! The index the destination service answers from: the mesh's Services and workloads
//! joined with the pods that run them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use weft_core::mesh::{Mesh, Workload};
use weft_core::pods::{PodEntry, PodsFile};

use super::{Target, DEFAULT_WEIGHT};

/// What the proxy is told about the protocol an endpoint's port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Meshed and not opaque: the endpoint's proxy detects HTTP (Linkerd's `H2` hint:
    /// it could also take HTTP/1 carried over HTTP/2).
    Http,
    /// An opaque port: forward as TCP, no protocol detection.
    Opaque,
    /// Unmeshed (the port skips the proxy): nothing is known.
    Unknown,
}

/// One endpoint, with what proxies need to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub pod: String,
    pub namespace: String,
    pub workload: String,
    pub service_account: String,
    pub zone: Option<String>,
    /// The identity the endpoint's proxy proves (its DNS-like name); `None` when the
    /// port is not served through the proxy.
    pub identity: Option<String>,
    pub protocol: Protocol,
}

/// What a target resolves to right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// No such Service, Service port or address: `NoEndpoints { exists: false }`.
    Unknown,
    /// A Service port and its ready endpoints (maybe none).
    Service {
        namespace: String,
        name: String,
        endpoints: BTreeMap<SocketAddr, Endpoint>,
    },
    /// A pod's own address: that one endpoint.
    Pod(Endpoint),
}

/// A Service's endpoints as its source lists them (Kubernetes: the EndpointSlices'
/// ready addresses), rather than the pods of the workloads its selector matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    /// (namespace, Service name) → Service port → its endpoints.
    pub endpoints: BTreeMap<(String, String), BTreeMap<u16, BTreeMap<SocketAddr, ListedEndpoint>>>,
    /// Namespace → workloads (pods) that run without a weft proxy: their endpoints
    /// carry no identity (the caller speaks plaintext to them) and no protocol hint.
    pub unmeshed: BTreeMap<String, BTreeSet<String>>,
}

/// One listed endpoint: what the list says beside its address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListedEndpoint {
    /// Its zone as the list gives it (else the pod's).
    pub zone: Option<String>,
    /// The pod the list names for it; an address of no known pod is an endpoint
    /// without identity.
    pub pod: Option<String>,
}

/// Services, workloads and pods at one moment. Cheap to compare: a source publishes a
/// new one only when something changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    mesh: Mesh,
    pods: PodsFile,
    trust_domain: String,
    /// Ports forwarded as opaque TCP for every workload (the proxies' default
    /// `--opaque-ports`).
    opaque_ports: Vec<u16>,
    vips: HashMap<IpAddr, (String, String)>,
    pods_by_ip: HashMap<IpAddr, usize>,
    /// Set by a source that lists endpoints ([`Index::listed`]): Services' endpoints
    /// are these, not their selectors' workloads.
    listed: Option<Listed>,
    /// The source has not loaded yet ([`Index::pending`]).
    pending: bool,
}

impl Index {
    /// Joins `mesh` and `pods`; identities are named in `trust_domain` (the one the
    /// controller issues certificates in).
    pub fn new(mesh: Mesh, pods: PodsFile, trust_domain: &str, opaque_ports: &[u16]) -> Index {
        let vips = pods
            .services
            .iter()
            .map(|s| (s.ip, (s.namespace.clone(), s.name.clone())))
            .collect();
        let pods_by_ip = pods
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.ip, i))
            .collect();
        Index {
            mesh,
            pods,
            trust_domain: trust_domain.to_owned(),
            opaque_ports: opaque_ports.to_vec(),
            vips,
            pods_by_ip,
            listed: None,
            pending: false,
        }
    }

    /// An index of nothing yet: its source has not listed everything once (the kube
    /// source before its first full list). The destination service answers nothing
    /// from it rather than "no such destination".
    pub fn pending(trust_domain: &str) -> Index {
        Index {
            pending: true,
            ..Index::empty(trust_domain)
        }
    }

    /// Whether this is a [`Index::pending`] index.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// An index whose Services' endpoints are `listed` (Kubernetes' EndpointSlices);
    /// `mesh` has one workload per pod (named as the pod) for the pods' service
    /// accounts, ports and labels, and `pods` their addresses, zones and readiness.
    pub fn listed(
        mesh: Mesh,
        pods: PodsFile,
        listed: Listed,
        trust_domain: &str,
        opaque_ports: &[u16],
    ) -> Index {
        Index {
            listed: Some(listed),
            ..Index::new(mesh, pods, trust_domain, opaque_ports)
        }
    }

    /// An index of nothing.
    pub fn empty(trust_domain: &str) -> Index {
        let mesh = Mesh {
            trust_domain: trust_domain.to_owned(),
            default_inbound_policy: None,
            workloads: Vec::new(),
            services: Vec::new(),
            warnings: Vec::new(),
            gateway: Vec::new(),
        };
        Index::new(mesh, PodsFile::default(), trust_domain, &[])
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    pub fn pods(&self) -> &PodsFile {
        &self.pods
    }

    /// What `target` resolves to.
    pub fn resolve(&self, target: &Target) -> Resolution {
        match target {
            Target::Service {
                namespace,
                name,
                port,
            } => self.service(namespace, name, *port),
            Target::Addr(addr) => {
                if let Some((namespace, name)) = self.vips.get(&addr.ip()) {
                    return self.service(namespace, name, addr.port());
                }
                match self.pods_by_ip.get(&addr.ip()) {
                    Some(&i) => self.pod(&self.pods.pods[i], addr.port()),
                    None => Resolution::Unknown,
                }
            }
        }
    }

    fn service(&self, namespace: &str, name: &str, port: u16) -> Resolution {
        let Some(svc) = self
            .mesh
            .services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
        else {
            return Resolution::Unknown;
        };
        let Some(svc_port) = svc.ports.iter().find(|p| p.port == port) else {
            return Resolution::Unknown;
        };
        let mut endpoints = BTreeMap::new();
        if let Some(listed) = &self.listed {
            let key = (namespace.to_owned(), name.to_owned());
            let addrs = listed
                .endpoints
                .get(&key)
                .and_then(|ports| ports.get(&port));
            for (addr, l) in addrs.into_iter().flatten() {
                if let Some(e) = self.listed_endpoint(namespace, *addr, l, svc_port.is_opaque()) {
                    endpoints.insert(e.addr, e);
                }
            }
            return Resolution::Service {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                endpoints,
            };
        }
        for w in self.mesh.backends(svc) {
            let Some(target) = w.resolve(&svc_port.target_port) else {
                continue;
            };
            let opaque = svc_port.is_opaque() || self.is_opaque(w, target);
            for pod in self.ready_pods(w) {
                let e = self.endpoint(w, pod, target, opaque);
                endpoints.insert(e.addr, e);
            }
        }
        Resolution::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            endpoints,
        }
    }

    /// A pod by its address: found whether or not it is ready (the caller connects to
    /// it anyway; what it needs is the pod's identity). Opaque as the workload's ports
    /// say (a Service's `appProtocol` describes the Service port, not the pod's).
    fn pod(&self, pod: &PodEntry, port: u16) -> Resolution {
        let Some(w) = self.mesh.workload(&pod.namespace, &pod.workload) else {
            return Resolution::Unknown;
        };
        let opaque = self.is_opaque(w, port);
        Resolution::Pod(self.endpoint(w, pod, port, opaque))
    }

    /// A listed address: the pod at it (when it is the pod the list names) as any pod's
    /// endpoint, with the list's zone; an address the list names no pod for is an
    /// endpoint of no identity. `None` when the list names a pod not known here (yet):
    /// sent without its identity, callers would speak plaintext to a meshed pod.
    fn listed_endpoint(
        &self,
        namespace: &str,
        addr: SocketAddr,
        listed: &ListedEndpoint,
        opaque_port: bool,
    ) -> Option<Endpoint> {
        let pod = self
            .pods_by_ip
            .get(&addr.ip())
            .map(|&i| &self.pods.pods[i])
            .filter(|p| p.namespace == namespace)
            .filter(|p| listed.pod.as_ref().is_none_or(|name| *name == p.name));
        let known = pod.and_then(|p| Some((self.mesh.workload(&p.namespace, &p.workload)?, p)));
        match known {
            Some((w, pod)) => {
                let opaque = opaque_port || self.is_opaque(w, addr.port());
                let mut e = self.endpoint(w, pod, addr.port(), opaque);
                if listed.zone.is_some() {
                    e.zone = listed.zone.clone();
                }
                Some(e)
            }
            None if listed.pod.is_some() => None,
            None => Some(Endpoint {
                addr,
                weight: DEFAULT_WEIGHT,
                pod: listed.pod.clone().unwrap_or_default(),
                namespace: namespace.to_owned(),
                workload: String::new(),
                service_account: String::new(),
                zone: listed.zone.clone(),
                identity: None,
                protocol: Protocol::Unknown,
            }),
        }
    }

    fn is_opaque(&self, w: &Workload, port: u16) -> bool {
        w.opaque_ports.contains(&port) || self.opaque_ports.contains(&port)
    }

    /// The workload's pods that take traffic: ready, and not beyond its replicas (a
    /// scale-down takes them out of the endpoints before `weft up` stops them).
    fn ready_pods<'a>(&'a self, w: &'a Workload) -> impl Iterator<Item = &'a PodEntry> {
        self.pods.pods.iter().filter(move |p| {
            p.ready && p.namespace == w.namespace && p.workload == w.name && p.index < w.replicas
        })
    }

    fn endpoint(&self, w: &Workload, pod: &PodEntry, port: u16, opaque: bool) -> Endpoint {
        // A skipped port bypasses the pod's proxy: no identity, nothing known; so does
        // every port of a pod without one.
        let unmeshed = self.listed.as_ref().is_some_and(|l| {
            l.unmeshed
                .get(&w.namespace)
                .is_some_and(|pods| pods.contains(&w.name))
        });
        let meshed = !unmeshed && !w.skip_ports.contains(&port);
        let identity = meshed
            .then(|| {
                weft_core::identity::Identity::new(
                    &w.service_account,
                    &w.namespace,
                    &self.trust_domain,
                )
                .ok()
            })
            .flatten()
            .map(|id| id.dns_name());
        Endpoint {
            addr: SocketAddr::new(pod.ip, port),
            weight: DEFAULT_WEIGHT,
            pod: pod.name.clone(),
            namespace: w.namespace.clone(),
            workload: w.name.clone(),
            service_account: w.service_account.clone(),
            zone: pod.zone.clone().or_else(|| w.zone.clone()),
            identity,
            protocol: match (meshed, opaque) {
                (false, _) => Protocol::Unknown,
                (true, true) => Protocol::Opaque,
                (true, false) => Protocol::Http,
            },
        }
    }

    /// Counts for logs: Services, pods, ready pods.
    pub fn counts(&self) -> (usize, usize, usize) {
        let ready = self.pods.pods.iter().filter(|p| p.ready).count();
        (self.mesh.services.len(), self.pods.pods.len(), ready)
    }

    /// Workloads in the pods file that the mesh directory does not define (pods of a
    /// removed workload, until `weft up` stops them).
    pub fn orphans(&self) -> Vec<String> {
        let known: HashSet<(&str, &str)> = self
            .mesh
            .workloads
            .iter()
            .map(|w| (w.namespace.as_str(), w.name.as_str()))
            .collect();
        self.pods
            .pods
            .iter()
            .filter(|p| !known.contains(&(p.namespace.as_str(), p.workload.as_str())))
            .map(|p| p.name.clone())
            .collect()
    }
}

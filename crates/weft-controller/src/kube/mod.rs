//! The `kube` source: the destination index from the Kubernetes API. kube-runtime
//! reflectors keep Services, EndpointSlices (`discovery.k8s.io/v1`), Pods and Nodes
//! in memory; after a change the index is rebuilt from them ([`build`]: the same
//! [`Index`] the local source publishes, so Destination serving is shared code), at
//! most once per debounce interval (50 ms by default), and published on the same
//! watch channel.
//!
//! - Endpoints are the EndpointSlices' ready addresses; a Service port is the slice's
//!   port of the same name (whose number is the target port, resolved on the pods by
//!   the EndpointSlice controller also when the targetPort is a name).
//! - An endpoint's zone is the slice's `zone`, else its Node's
//!   `topology.kubernetes.io/zone`.
//! - Its identity is its pod's service account and namespace, for pods that run weft's
//!   proxy (annotated [`INJECTED_ANNOTATION`]); other endpoints have none (callers
//!   speak plaintext to them).
//! - Gateway API HTTPRoutes, GRPCRoutes (`gateway.networking.k8s.io/v1`) and
//!   ReferenceGrants (`v1beta1`) are reflected too, into the mesh's gateway objects the
//!   routes index reads as it reads the local mesh directory's ([`crate::routes`]).
//!   Their CRDs may not be installed: a kind the API server does not serve (404), or
//!   does not let the controller read (403, logged), is none of that kind, and is
//!   picked up when it is served (the watcher retries with backoff, 30 s at most).
//! - The policy objects (`policy.weft.io/v1alpha1` Servers, AuthorizationPolicies,
//!   MeshTLSAuthentications, NetworkAuthentications) are reflected the same way, into
//!   the same gateway objects, where the policy index reads them as it reads the mesh
//!   directory's ([`crate::policy`]): their metadata cut to what a file's would hold
//!   (name, namespace, generation, labels, annotations), their status left out.
//! - Status is written back by the leader: routes' `status.parents[]` ([`status`]) and
//!   the policy objects' `status.conditions` ([`policy_status`]).
//! - Until every reflector has listed its objects once, nothing is published and the
//!   controller's `/ready` stays false. Errors (RBAC denied, API server down) are
//!   logged once per change of state (per kind of object); the watchers retry with
//!   backoff and the last index keeps serving.

mod build;
mod metrics;
pub mod policy_status;
pub mod status;
#[cfg(test)]
mod tests;

pub use build::{index, Objects, GATEWAY_FILE};
pub use metrics::{KindLabels, KubeMetrics, StatusLabels};

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{watcher, WatchStreamExt as _};
use ::kube::{Client, Resource};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::destination::Index;
use crate::metrics::DestinationMetrics;

/// The annotation the sidecar injector puts on the pods it adds weft's proxy to: their
/// endpoints carry the pod's identity (any value but `false`).
pub const INJECTED_ANNOTATION: &str = "weft.io/injected";

/// The Node label naming its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long after a change the index is rebuilt at the earliest: changes that come
/// together (a rollout, a node's pods) are one rebuild.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Where the Kubernetes API is and how often the index may be rebuilt.
#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    /// A kubeconfig file; `None`: in-cluster (the pod's service account), else
    /// `$KUBECONFIG` or `~/.kube/config` (`kube::Config::infer`).
    pub kubeconfig: Option<PathBuf>,
    /// The index is rebuilt at most once per this interval after a change.
    pub debounce: Duration,
    /// Whether this replica leads ([`crate::lease::Elector::is_leader`]): route and
    /// policy statuses are written only then ([`status`], [`policy_status`]); `None`:
    /// always.
    pub leader: Option<watch::Receiver<bool>>,
}

impl Default for KubeSourceConfig {
    fn default() -> Self {
        KubeSourceConfig {
            kubeconfig: None,
            debounce: DEFAULT_DEBOUNCE,
            leader: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("cannot use the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: ::kube::config::KubeconfigError,
    },
    #[error("cannot find the Kubernetes API (no --kubeconfig given; tried the in-cluster service account, then $KUBECONFIG and ~/.kube/config): {0}")]
    Infer(#[from] ::kube::config::InferConfigError),
    #[error("cannot make a Kubernetes API client: {0}")]
    Client(#[from] ::kube::Error),
}

/// A client of the Kubernetes API from `kubeconfig`, or when `None` from the in-cluster
/// service account, then $KUBECONFIG and ~/.kube/config: the one set-up of the kube
/// source, the token reviews and leader election.
pub async fn api_client(kubeconfig: Option<&Path>) -> Result<Client, KubeSourceError> {
    let settings = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| KubeSourceError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = ::kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            ::kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => ::kube::Config::infer().await?,
    };
    tracing::info!(api = %settings.cluster_url, "Kubernetes API");
    Ok(Client::try_from(settings)?)
}

/// A client of the Kubernetes API, ready to reflect its objects.
pub struct KubeSource {
    client: Client,
    trust_domain: String,
    opaque_ports: Vec<u16>,
    debounce: Duration,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("trust_domain", &self.trust_domain)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// Reads the API's settings (nothing is asked of the API server yet: one that is
    /// down is retried by the watchers, not an error here).
    pub async fn connect(
        config: &KubeSourceConfig,
        trust_domain: &str,
        opaque_ports: &[u16],
    ) -> Result<KubeSource, KubeSourceError> {
        let client = api_client(config.kubeconfig.as_deref()).await?;
        Ok(KubeSource {
            client,
            trust_domain: trust_domain.to_owned(),
            opaque_ports: opaque_ports.to_vec(),
            debounce: config.debounce,
        })
    }

    /// The client of the Kubernetes API (also the status writer's).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reflects the objects forever (until the task is dropped): publishes the first
    /// index when every kind is listed, then sets `ready`; then a new index after
    /// changes, at most once per debounce interval.
    pub async fn run(
        self,
        publish: watch::Sender<Arc<Index>>,
        ready: Arc<AtomicBool>,
        metrics: KubeMetrics,
        destination: DestinationMetrics,
    ) {
        let started = Instant::now();
        let changed = Arc::new(Notify::new());
        let reflect = Reflect {
            client: &self.client,
            changed: &changed,
            metrics: &metrics,
        };
        let mut tasks = AbortOnDrop(Vec::new());
        let services = reflect.all::<Service>("service", (), false, &mut tasks);
        let slices = reflect.all::<EndpointSlice>("endpointslice", (), false, &mut tasks);
        let pods = reflect.all::<Pod>("pod", (), false, &mut tasks);
        let nodes = reflect.all::<Node>("node", (), false, &mut tasks);
        let gateway: Vec<_> = GATEWAY_KINDS
            .iter()
            .chain(&POLICY_KINDS)
            .map(|&(group, version, kind, plural)| {
                let gvk = GroupVersionKind::gvk(group, version, kind);
                let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
                let store =
                    reflect.all::<DynamicObject>(plural, resource.clone(), true, &mut tasks);
                (resource, store)
            })
            .collect();

        let mut settled: Vec<_> = [&services.1, &slices.1, &pods.1, &nodes.1]
            .into_iter()
            .chain(gateway.iter().map(|(_, (_, s))| s))
            .cloned()
            .collect();
        for s in &mut settled {
            if s.wait_for(|listed| *listed).await.is_err() {
                tracing::error!("kube source: a reflector stopped before its first list");
                return;
            }
        }
        let took = started.elapsed();
        metrics.sync_seconds.set(took.as_secs_f64());
        let objects = || Objects {
            services: services.0.state(),
            slices: slices.0.state(),
            pods: pods.0.state(),
            nodes: nodes.0.state(),
            gateway: gateway
                .iter()
                .map(|(resource, (store, _))| (resource.kind.clone(), store.state()))
                .collect(),
        };
        self.publish(&publish, &objects(), &metrics, &destination);
        ready.store(true, Ordering::Release);
        tracing::info!(took = ?took, "kube source: Services, EndpointSlices, Pods, Nodes, Gateway API routes and policy objects listed; ready");

        let mut last = Instant::now();
        loop {
            changed.notified().await;
            // At most one rebuild per interval: what changes meanwhile is in this one.
            tokio::time::sleep_until((last + self.debounce).into()).await;
            last = Instant::now();
            self.publish(&publish, &objects(), &metrics, &destination);
        }
    }

    /// Builds the index of `objects` and publishes it if it differs from the current one.
    fn publish(
        &self,
        publish: &watch::Sender<Arc<Index>>,
        objects: &Objects,
        metrics: &KubeMetrics,
        destination: &DestinationMetrics,
    ) {
        let index = build::index(objects, &self.trust_domain, &self.opaque_ports);
        metrics.builds.inc();
        // Taken before streams can see the index: updates count from here.
        let now = crate::destination::local::unix_now();
        let changed = publish.send_if_modified(|current| {
            if **current == index {
                return false;
            }
            *current = Arc::new(index);
            true
        });
        if changed {
            destination.index_timestamp.set(now);
            let (services, pods, ready) = publish.borrow().counts();
            tracing::info!(services, pods, ready, "destination index updated");
        }
    }
}

/// The Gateway API kinds reflected: group, version, kind and plural.
const GATEWAY_KINDS: [(&str, &str, &str, &str); 3] = [
    (
        crate::routes::GATEWAY_GROUP,
        "v1",
        "HTTPRoute",
        "httproutes",
    ),
    (
        crate::routes::GATEWAY_GROUP,
        "v1",
        "GRPCRoute",
        "grpcroutes",
    ),
    (
        crate::routes::GATEWAY_GROUP,
        "v1beta1",
        "ReferenceGrant",
        "referencegrants",
    ),
];

/// The policy kinds reflected (`policy.weft.io/v1alpha1`), as the Gateway API kinds are.
const POLICY_KINDS: [(&str, &str, &str, &str); 4] = [
    (crate::policy::POLICY_GROUP, "v1alpha1", "Server", "servers"),
    (
        crate::policy::POLICY_GROUP,
        "v1alpha1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        crate::policy::POLICY_GROUP,
        "v1alpha1",
        "MeshTLSAuthentication",
        "meshtlsauthentications",
    ),
    (
        crate::policy::POLICY_GROUP,
        "v1alpha1",
        "NetworkAuthentication",
        "networkauthentications",
    ),
];

/// A reflector's store, and whether it has listed its objects once (or its kind is
/// not served: a CRD not installed).
type Reflected<K> = (Store<K>, watch::Receiver<bool>);

/// Starts reflectors; each wakes `changed` on every change after its first list.
struct Reflect<'a> {
    client: &'a Client,
    changed: &'a Arc<Notify>,
    metrics: &'a KubeMetrics,
}

impl Reflect<'_> {
    /// A reflector over every namespace's objects of kind `K` (`kind`: its name in logs
    /// and metrics), driven by a task of its own (added to `tasks`). An `optional` kind
    /// that the API server does not serve (404: no CRD) or lets us read (403) counts as
    /// listed with no objects, so that it does not hold the controller's readiness;
    /// the error is logged all the same.
    fn all<K>(
        &self,
        kind: &'static str,
        resource: K::DynamicType,
        optional: bool,
        tasks: &mut AbortOnDrop,
    ) -> Reflected<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
    {
        let api: Api<K> = Api::all_with(self.client.clone(), &resource);
        let writer = reflector::store::Writer::new(resource);
        let reader = writer.as_reader();
        // What the index never reads is not kept: managed fields are most of an
        // object's size.
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut K| o.meta_mut().managed_fields = None);
        let stream = reflector::reflector(writer, stream);
        let changed = self.changed.clone();
        let metrics = self.metrics.clone();
        let (settle, settled) = watch::channel(false);
        let task = tokio::spawn(async move {
            let labels = KindLabels { kind };
            let mut failing: Option<(String, String)> = None;
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        metrics.events.get_or_create(&labels).inc();
                        // Init starts every attempt, also those that fail.
                        if !matches!(event, watcher::Event::Init) {
                            if let Some((_, error)) = failing.take() {
                                tracing::info!(kind, %error, "kube source: watching again after an error");
                            }
                        }
                        // A (re)list is applied to the store as a whole at InitDone.
                        if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                            changed.notify_one();
                        }
                        if matches!(event, watcher::Event::InitDone) {
                            settle.send_replace(true);
                        }
                    }
                    Err(error) => {
                        metrics.errors.get_or_create(&labels).inc();
                        let (state, message) = describe(kind, &error);
                        // Not served (its CRD is not installed) or not allowed: none
                        // of that kind, until it is.
                        if optional && (state == "404" || state == "403") && !*settle.borrow() {
                            settle.send_replace(true);
                            changed.notify_one();
                        }
                        // Said when the state changes (refused with another status,
                        // unreachable), not at every retry nor at every way the
                        // connection fails.
                        if failing.as_ref().map(|(s, _)| s) != Some(&state) {
                            tracing::warn!(kind, error = %message, "kube source: cannot watch; retrying with backoff, the last index keeps serving");
                        } else {
                            tracing::debug!(kind, error = %message, "kube source: cannot watch; retrying with backoff");
                        }
                        failing = Some((state, message));
                    }
                }
            }
        });
        tasks.0.push(task);
        (reader, settled)
    }
}

/// The error's state (the status code the API server refused with, or `unreachable`)
/// and the error in a line, with what to do when the API refused us.
fn describe(kind: &str, error: &watcher::Error) -> (String, String) {
    let (what, status) = match error {
        watcher::Error::InitialListFailed(::kube::Error::Api(s)) => ("list", s.as_ref()),
        watcher::Error::WatchStartFailed(::kube::Error::Api(s))
        | watcher::Error::WatchFailed(::kube::Error::Api(s)) => ("watch", s.as_ref()),
        watcher::Error::WatchError(s) => ("watch", s.as_ref()),
        _ => return ("unreachable".to_owned(), error.to_string()),
    };
    let refused = format!(
        "the API server refused to {what} {kind}s: {} ({} {})",
        status.message, status.code, status.reason
    );
    let message = match status.code {
        403 => format!("{refused}: the controller's service account needs get, list and watch on {kind}s (a ClusterRole bound to it)"),
        401 => format!("{refused}: the API server does not accept the controller's credentials"),
        _ => refused,
    };
    (status.code.to_string(), message)
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

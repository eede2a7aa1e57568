//! The lifecycle operator (`weft-operator`): it reconciles the cluster's one
//! [`ControlPlane`] into the control plane's objects (the same ones `weft install`
//! prints, plus the identity Secrets it keeps: trust anchor, issuer, the injector's
//! serving certificate) and reports what it sees in the resource's status; it restarts
//! the workloads each [`DataPlane`] selects onto the current proxy version after an
//! upgrade, a few at a time.
//!
//! Everything the operator makes carries an owner reference to the `ControlPlane`:
//! deleting the resource lets Kubernetes' garbage collector delete the control plane
//! (namespace, RBAC, webhook configuration, Secrets included). Objects are written with
//! server-side apply under the field manager [`FIELD_MANAGER`], so the operator owns
//! exactly the fields it sets; a field someone else sets on them is left alone until the
//! operator sets that field itself.

mod apply;
mod conditions;
pub mod control_plane;
pub mod data_plane;
mod identity;
pub mod manifests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt as _;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::crd::operator::{ControlPlane, DataPlane};

pub use conditions::{condition, merge_conditions};

/// The field manager the operator writes with (server-side apply).
pub const FIELD_MANAGER: &str = "weft-operator";

/// What can stop a reconcile; each becomes a status condition's message.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// An object the resource names is missing or unusable; the user fixes it.
    #[error("{0}")]
    Input(String),
    /// The identity material could not be made or checked.
    #[error("{0}")]
    Identity(String),
    /// The objects could not be rendered.
    #[error(transparent)]
    Install(#[from] crate::install::InstallError),
}

impl OperatorError {
    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> OperatorError {
        let action = action.into();
        move |source| OperatorError::Kube {
            action,
            source: Box::new(source),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    result: &'static str,
}

/// The operator's counters, for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    reconciles: Family<ReconcileLabels, Counter>,
    restarts: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "operator_reconciles",
            "Reconciles of ControlPlane and DataPlane resources, by result",
            self.reconciles.clone(),
        );
        registry.register(
            "operator_workload_restarts",
            "Workloads the operator restarted onto the current proxy version",
            self.restarts.clone(),
        );
    }

    fn reconciled(&self, kind: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { kind, result })
            .inc();
    }
}

/// What the reconcilers share.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Set once both controllers' watches have listed their resources.
    pub ready: Arc<AtomicBool>,
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        ready: ready.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let control_planes = Controller::new(
        Api::<ControlPlane>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<k8s_openapi::api::apps::v1::Deployment>::all(client.clone()),
        watcher::Config::default().labels(&part_of_selector()),
    )
    .graceful_shutdown_on(stopped(stop_rx.clone()))
    .run(
        control_plane::reconcile,
        |_, error, ctx: Arc<Context>| {
            ctx.metrics.reconciled("ControlPlane", false);
            tracing::warn!(%error, "ControlPlane reconcile failed; retrying in 10s");
            Action::requeue(std::time::Duration::from_secs(10))
        },
        ctx.clone(),
    )
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "ControlPlane controller");
        }
    });
    let data_planes = Controller::new(
        Api::<DataPlane>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stopped(stop_rx.clone()))
    .run(
        data_plane::reconcile,
        |_, error, ctx: Arc<Context>| {
            ctx.metrics.reconciled("DataPlane", false);
            tracing::warn!(%error, "DataPlane reconcile failed; retrying in 10s");
            Action::requeue(std::time::Duration::from_secs(10))
        },
        ctx.clone(),
    )
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "DataPlane controller");
        }
    });
    // Ready once the API answers a list of each resource (the CRDs are installed and
    // the operator may read them).
    let probe = {
        let client = client.clone();
        async move {
            loop {
                let lp = kube::api::ListParams::default().limit(1);
                let cps = Api::<ControlPlane>::all(client.clone()).list(&lp).await;
                let dps = Api::<DataPlane>::all(client.clone()).list(&lp).await;
                match (cps, dps) {
                    (Ok(_), Ok(_)) => {
                        ready.store(true, Ordering::Relaxed);
                        return;
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(error = %e, "cannot list ControlPlanes and DataPlanes (are the CRDs installed?); retrying in 5s");
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                }
            }
        }
    };
    tokio::spawn(probe);
    tokio::join!(control_planes, data_planes);
}

/// Writes `status` as the status of the cluster-scoped resource `name` (a merge patch:
/// the operator owns its resources' status whole).
pub(crate) async fn patch_status<K>(
    ctx: &Context,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), OperatorError>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::all(ctx.client.clone())
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map_err(OperatorError::kube(format!(
            "writing {} {name}'s status",
            K::kind(&())
        )))?;
    Ok(())
}

/// `app.kubernetes.io/part-of=weft`: every object weft makes.
pub(crate) fn part_of_selector() -> String {
    format!("{}={}", crate::crd::PART_OF.0, crate::crd::PART_OF.1)
}

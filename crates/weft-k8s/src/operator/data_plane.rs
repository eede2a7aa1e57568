//! Reconciling a `DataPlane`: after the control plane rolled out a new version, the
//! selected meshed workloads whose pods still run another proxy image are restarted
//! (a template annotation, as `kubectl rollout restart` does), at most
//! `maxUnavailable` at a time; the injector gives the new pods the current proxy.
//!
//! A workload is restarted once per proxy image: the annotation
//! [`RESTARTED_FOR`] records the image it was restarted for, so a workload whose new
//! pods still run the old proxy (the injector is not on the new version, or the pods
//! skip injection) is reported, not restarted again and again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::ResourceExt as _;
use serde_json::json;

use super::conditions::{condition, merge_conditions, now};
use super::control_plane::{managing, options, rollout, Rollout};
use super::{Context, OperatorError};
use crate::crd::common::Condition;
use crate::crd::operator::{ControlPlane, DataPlane, DataPlaneStatus, WorkloadSelector};
use crate::inject::PROXY_CONTAINER;

/// The pod-template annotation naming the proxy image a workload was restarted for.
pub const RESTARTED_FOR: &str = "operator.weft.io/restarted-for";
/// The pod-template annotation with the restart's time (it changes the template, which
/// is what makes the workload's controller replace its pods).
pub const RESTARTED_AT: &str = "operator.weft.io/restarted-at";

/// How often a DataPlane with work left is looked at again.
const BUSY_INTERVAL: Duration = Duration::from_secs(3);
/// How often a settled one is.
const SETTLED_INTERVAL: Duration = Duration::from_secs(60);

/// One workload as the DataPlane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `Deployment ns/name`.
    pub id: String,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The proxy image it was last restarted for.
    pub restarted_for: Option<String>,
    /// Whether its controller has finished replacing its pods.
    pub settled: bool,
    /// Meshed pods, and those of them on another proxy image.
    pub meshed: usize,
    pub stale: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// What to do with the selected workloads for `target`, at most `max_unavailable`
/// restarting at once: the workloads to restart now, and the status.
pub fn plan(workloads: &[Workload], target: &str, max_unavailable: usize) -> Plan {
    let meshed: Vec<&Workload> = workloads.iter().filter(|w| w.meshed > 0).collect();
    let for_target = |w: &&Workload| w.restarted_for.as_deref() == Some(target);
    let restarting: Vec<&Workload> = meshed
        .iter()
        .copied()
        .filter(|w| for_target(w) && !w.settled)
        .collect();
    let stuck: Vec<String> = meshed
        .iter()
        .filter(|w| for_target(w) && w.settled && w.stale > 0)
        .map(|w| w.id.clone())
        .collect();
    let mut candidates: Vec<&Workload> = meshed
        .iter()
        .copied()
        .filter(|w| w.stale > 0 && !for_target(w))
        .collect();
    candidates
        .sort_by(|a, b| (&a.namespace, &a.name, a.kind).cmp(&(&b.namespace, &b.name, b.kind)));
    let budget = max_unavailable.saturating_sub(restarting.len());
    let restart: Vec<Workload> = candidates
        .iter()
        .take(budget)
        .map(|w| (*w).clone())
        .collect();
    Plan {
        restarted: meshed.iter().filter(|w| for_target(w)).count() + restart.len(),
        pending: meshed.iter().filter(|w| w.stale > 0).count(),
        restarting: restarting.iter().map(|w| w.id.clone()).collect(),
        waiting: candidates.len() - restart.len(),
        stuck,
        restart,
    }
}

/// What [`plan`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub restart: Vec<Workload>,
    /// Workloads restarted for the target (those restarted now included).
    pub restarted: usize,
    /// Workloads with pods on another proxy image.
    pub pending: usize,
    /// Restarts under way.
    pub restarting: Vec<String>,
    /// Workloads waiting for a slot.
    pub waiting: usize,
    /// Restarted for the target, settled, and still on another image.
    pub stuck: Vec<String>,
}

fn proxy_image(spec: Option<&PodSpec>) -> Option<&str> {
    let spec = spec?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == PROXY_CONTAINER)
        .and_then(|c| c.image.as_deref())
}

fn selector(selector: Option<&LabelSelector>, what: &str) -> Result<Selector, OperatorError> {
    Selector::try_from(selector.cloned().unwrap_or_default()).map_err(|e| {
        OperatorError::Input(format!("{what}: the label selector does not parse: {e}"))
    })
}

fn list_params(workloads: &WorkloadSelector) -> Result<ListParams, OperatorError> {
    let Some(labels) = &workloads.label_selector else {
        return Ok(ListParams::default());
    };
    // The CRD's label selector has metav1.LabelSelector's shape.
    let k8s: LabelSelector = serde_json::to_value(labels)
        .and_then(serde_json::from_value)
        .map_err(|e| OperatorError::Input(format!("spec.workloadSelector.labelSelector: {e}")))?;
    Ok(ListParams::default().labels_from(&selector(
        Some(&k8s),
        "spec.workloadSelector.labelSelector",
    )?))
}

fn api<K>(ctx: &Context, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// The pods of a workload: those its selector matches in its namespace.
async fn pods(
    ctx: &Context,
    namespace: &str,
    label_selector: Option<&LabelSelector>,
    id: &str,
) -> Result<Vec<Pod>, OperatorError> {
    let lp = ListParams::default().labels_from(&selector(label_selector, id)?);
    Ok(Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&lp)
        .await
        .map_err(OperatorError::kube(format!("listing the pods of {id}")))?
        .items)
}

async fn workload<K: WorkloadKind>(
    ctx: &Context,
    w: &K,
    target: &str,
) -> Result<Workload, OperatorError> {
    let kind = K::KIND;
    let meta = w.meta();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let id = format!("{kind:?} {namespace}/{name}");
    let pods = pods(ctx, &namespace, w.selector(), &id).await?;
    let images: Vec<&str> = pods
        .iter()
        .filter_map(|p| proxy_image(p.spec.as_ref()))
        .collect();
    Ok(Workload {
        restarted_for: w
            .template_annotations()
            .and_then(|a| a.get(RESTARTED_FOR))
            .cloned(),
        settled: w.settled(),
        meshed: images.len(),
        stale: images.iter().filter(|i| **i != target).count(),
        id,
        kind,
        namespace,
        name,
    })
}

/// What the DataPlane needs of a workload kind.
trait WorkloadKind:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    const KIND: Kind;
    fn selector(&self) -> Option<&LabelSelector>;
    fn template_annotations(&self) -> Option<&std::collections::BTreeMap<String, String>>;
    /// Its controller has finished replacing its pods.
    fn settled(&self) -> bool;
}

/// The parts of [`WorkloadKind`] the three kinds share: their specs have the same
/// `selector` and `template`.
macro_rules! workload_spec {
    ($kind:ident) => {
        const KIND: Kind = Kind::$kind;
        fn selector(&self) -> Option<&LabelSelector> {
            self.spec.as_ref().map(|s| &s.selector)
        }
        fn template_annotations(&self) -> Option<&std::collections::BTreeMap<String, String>> {
            self.spec
                .as_ref()?
                .template
                .metadata
                .as_ref()?
                .annotations
                .as_ref()
        }
    };
}

impl WorkloadKind for Deployment {
    workload_spec!(Deployment);
    fn settled(&self) -> bool {
        rollout(Some(self)) == Rollout::Done
    }
}

impl WorkloadKind for StatefulSet {
    workload_spec!(StatefulSet);
    fn settled(&self) -> bool {
        let status = self.status.clone().unwrap_or_default();
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        status.observed_generation.unwrap_or(0) >= self.metadata.generation.unwrap_or(0)
            && status.update_revision.is_some()
            && status.update_revision == status.current_revision
            && status.ready_replicas.unwrap_or(0) >= want
    }
}

impl WorkloadKind for DaemonSet {
    workload_spec!(DaemonSet);
    fn settled(&self) -> bool {
        let status = self.status.clone().unwrap_or_default();
        status.observed_generation.unwrap_or(0) >= self.metadata.generation.unwrap_or(0)
            && status.updated_number_scheduled.unwrap_or(0) >= status.desired_number_scheduled
            && status.number_available.unwrap_or(0) >= status.desired_number_scheduled
    }
}

/// The workloads of kind `K` that `lp` picks in `ns` (or everywhere).
async fn of_kind<K: WorkloadKind>(
    ctx: &Context,
    ns: Option<&str>,
    lp: &ListParams,
    target: &str,
    out: &mut Vec<Workload>,
) -> Result<(), OperatorError> {
    let list = api::<K>(ctx, ns)
        .list(lp)
        .await
        .map_err(OperatorError::kube(format!("listing {:?}s", K::KIND)))?;
    for w in list {
        out.push(workload(ctx, &w, target).await?);
    }
    Ok(())
}

/// The workloads `selector` picks, with their pods' proxy images against `target`.
async fn workloads(
    ctx: &Context,
    selector: &WorkloadSelector,
    target: &str,
) -> Result<Vec<Workload>, OperatorError> {
    let lp = list_params(selector)?;
    let ns = selector.namespace.as_deref();
    let mut out = Vec::new();
    of_kind::<Deployment>(ctx, ns, &lp, target, &mut out).await?;
    of_kind::<StatefulSet>(ctx, ns, &lp, target, &mut out).await?;
    of_kind::<DaemonSet>(ctx, ns, &lp, target, &mut out).await?;
    Ok(out)
}

async fn patch_template<K: WorkloadKind>(
    ctx: &Context,
    w: &Workload,
    patch: &serde_json::Value,
) -> Result<(), kube::Error> {
    Api::<K>::namespaced(ctx.client.clone(), &w.namespace)
        .patch(&w.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

async fn restart(ctx: &Context, w: &Workload, target: &str) -> Result<(), OperatorError> {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_FOR: target,
        RESTARTED_AT: now(),
    }}}}});
    let result = match w.kind {
        Kind::Deployment => patch_template::<Deployment>(ctx, w, &patch).await,
        Kind::StatefulSet => patch_template::<StatefulSet>(ctx, w, &patch).await,
        Kind::DaemonSet => patch_template::<DaemonSet>(ctx, w, &patch).await,
    };
    result.map_err(OperatorError::kube(format!("restarting {}", w.id)))
}

async fn write_status(
    ctx: &Context,
    dp: &DataPlane,
    conditions: Vec<Condition>,
    restarted: Option<i32>,
    pending: Option<i32>,
) -> Result<(), OperatorError> {
    let old = dp.status.clone().unwrap_or_default();
    let status = DataPlaneStatus {
        conditions: merge_conditions(&old.conditions, conditions),
        observed_generation: dp.metadata.generation,
        workloads_restarted: restarted.or(old.workloads_restarted),
        workloads_pending: pending.or(old.workloads_pending),
    };
    if status == old {
        return Ok(());
    }
    super::patch_status::<DataPlane>(ctx, &dp.name_any(), &status).await
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}

pub async fn reconcile(dp: Arc<DataPlane>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let result = reconcile_inner(&dp, &ctx).await;
    ctx.metrics.reconciled("DataPlane", result.is_ok());
    result
}

async fn reconcile_inner(dp: &DataPlane, ctx: &Context) -> Result<Action, OperatorError> {
    let generation = dp.metadata.generation;
    let waiting = |reason: &str, message: String| {
        vec![
            condition("Ready", false, reason, message.clone(), generation),
            condition("Progressing", false, reason, message, generation),
        ]
    };
    let cps = Api::<ControlPlane>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(OperatorError::kube("listing ControlPlanes"))?;
    let Some(cp) = managing(&cps.items) else {
        let message = "no ControlPlane: nothing to follow".to_owned();
        write_status(ctx, dp, waiting("NoControlPlane", message), None, None).await?;
        return Ok(Action::requeue(SETTLED_INTERVAL));
    };
    let version = &cp.spec.version;
    let current = cp
        .status
        .as_ref()
        .and_then(|s| s.current_version.as_deref());
    if current != Some(version.as_str()) {
        let message = format!(
            "waiting for ControlPlane {} to finish rolling out {version} before restarting workloads onto its proxy",
            cp.name_any()
        );
        write_status(
            ctx,
            dp,
            waiting("ControlPlaneRollingOut", message),
            None,
            None,
        )
        .await?;
        return Ok(Action::requeue(BUSY_INTERVAL));
    }
    let target = options(&cp.spec).proxy_image();
    let max_unavailable = dp.spec.max_unavailable.unwrap_or(1).max(1) as usize;
    let workloads = match workloads(ctx, &dp.spec.workload_selector, &target).await {
        Ok(w) => w,
        Err(e @ OperatorError::Input(_)) => {
            write_status(
                ctx,
                dp,
                waiting("InvalidSelector", e.to_string()),
                None,
                None,
            )
            .await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let plan = plan(&workloads, &target, max_unavailable);
    for w in &plan.restart {
        restart(ctx, w, &target).await?;
        ctx.metrics.restarts.inc();
        tracing::info!(data_plane = %dp.name_any(), workload = %w.id, proxy = %target, stale_pods = w.stale, "restarting onto the current proxy");
    }
    let mut restarting = plan.restarting.clone();
    restarting.extend(plan.restart.iter().map(|w| w.id.clone()));
    let conditions = if plan.pending == 0 {
        vec![
            condition(
                "Ready",
                true,
                "UpToDate",
                format!("every selected meshed workload runs {target}"),
                generation,
            ),
            condition("Progressing", false, "UpToDate", "", generation),
        ]
    } else if restarting.is_empty() && plan.waiting == 0 {
        let message = format!(
            "restarted, but their pods still run another proxy than {target}: {} (is the injector on {version}, and are their pods injected?)",
            list(&plan.stuck)
        );
        vec![
            condition("Ready", false, "StillOutdated", message.clone(), generation),
            condition("Progressing", false, "StillOutdated", message, generation),
        ]
    } else {
        let message = format!(
            "restarting onto {target}: {}{}",
            list(&restarting),
            if plan.waiting > 0 {
                format!(
                    "; {} more waiting (maxUnavailable {max_unavailable})",
                    plan.waiting
                )
            } else {
                String::new()
            }
        );
        vec![
            condition("Ready", false, "Restarting", message.clone(), generation),
            condition("Progressing", true, "Restarting", message, generation),
        ]
    };
    let count = |n: usize| Some(i32::try_from(n).unwrap_or(i32::MAX));
    write_status(
        ctx,
        dp,
        conditions,
        count(plan.restarted),
        count(plan.pending),
    )
    .await?;
    Ok(Action::requeue(if plan.pending == 0 {
        SETTLED_INTERVAL
    } else {
        BUSY_INTERVAL
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(
        name: &str,
        restarted_for: Option<&str>,
        settled: bool,
        meshed: usize,
        stale: usize,
    ) -> Workload {
        Workload {
            id: format!("Deployment apps/{name}"),
            kind: Kind::Deployment,
            namespace: "apps".into(),
            name: name.into(),
            restarted_for: restarted_for.map(str::to_owned),
            settled,
            meshed,
            stale,
        }
    }

    const NEW: &str = "r/weft-proxy:v2";

    #[test]
    fn stale_workloads_restart_a_few_at_a_time() {
        let all = [
            w("c", None, true, 2, 2),
            w("a", None, true, 1, 1),
            w("b", None, true, 1, 1),
            w("unmeshed", None, true, 0, 0),
            w("current", None, true, 3, 0),
        ];
        let p = plan(&all, NEW, 2);
        let names: Vec<_> = p.restart.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!((p.restarted, p.pending, p.waiting), (2, 3, 1));

        // a is still rolling, b is done: one slot.
        let all = [
            w("a", Some(NEW), false, 1, 1),
            w("b", Some(NEW), true, 1, 0),
            w("c", None, true, 2, 2),
        ];
        let p = plan(&all, NEW, 2);
        assert_eq!(p.restart.len(), 1);
        assert_eq!(p.restart[0].name, "c");
        assert_eq!(p.restarting, ["Deployment apps/a"]);
        // No slot with maxUnavailable 1.
        let p = plan(&all, NEW, 1);
        assert!(p.restart.is_empty());
        assert_eq!(p.waiting, 1);
    }

    #[test]
    fn a_workload_restarted_for_the_target_is_not_restarted_again() {
        let all = [w("a", Some(NEW), true, 1, 1)];
        let p = plan(&all, NEW, 1);
        assert!(p.restart.is_empty());
        assert_eq!(p.stuck, ["Deployment apps/a"]);
        // A newer target restarts it again.
        let p = plan(&all, "r/weft-proxy:v3", 1);
        assert_eq!(p.restart.len(), 1);
    }
}

//! Reconciling a `ControlPlane`: the options it gives, the identity Secrets, the control
//! plane's objects (server-side apply), pruning, and the status read back from the
//! controller's and the injector's Deployments.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};

use super::conditions::{condition, merge_conditions};
use super::{apply, identity, Context, OperatorError};
use crate::crd::common::Condition;
use crate::crd::operator::{ControlPlane, ControlPlaneSpec, ControlPlaneStatus};
use crate::install::{
    self, InstallOptions, CONTROLLER, DEFAULT_IMAGE_REGISTRY, DEFAULT_NAMESPACE, HA_REPLICAS,
    INJECTOR,
};

/// How often a control plane that is rolling out is looked at again (besides the
/// watch on its Deployments).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How often a settled control plane is looked at again (certificate renewals, drift).
const SETTLED_INTERVAL: Duration = Duration::from_secs(300);

/// The install options a `ControlPlane` gives.
pub fn options(spec: &ControlPlaneSpec) -> InstallOptions {
    let values = spec.values.clone().unwrap_or_default();
    InstallOptions {
        version: spec.version.clone(),
        namespace: spec
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        image_registry: values
            .image_registry
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE_REGISTRY.to_owned()),
        controller_replicas: match &spec.high_availability {
            Some(ha) => ha.replicas.unwrap_or(HA_REPLICAS),
            None => 1,
        },
        webhook_ca_bundle: None,
        fail_closed: false,
        values,
    }
}

/// A Deployment's rollout, as the status reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum Rollout {
    Missing,
    /// Progressing: the message says how far.
    Progressing(String),
    Done,
}

/// Whether `deployment` runs its current template on all its replicas, available.
pub fn rollout(deployment: Option<&Deployment>) -> Rollout {
    let Some(d) = deployment else {
        return Rollout::Missing;
    };
    let name = d.name_any();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Progressing(format!(
            "{name}: the new spec is not yet seen by its controller"
        ));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated >= want && available >= want && total <= want {
        Rollout::Done
    } else {
        Rollout::Progressing(format!(
            "{name}: {updated} of {want} replicas updated, {available} available{}",
            if total > want {
                format!(", {} old ones still running", total - want)
            } else {
                String::new()
            }
        ))
    }
}

/// The `ControlPlane` that manages the mesh: the oldest (then by name). Others are
/// refused in their status.
pub(crate) fn managing(all: &[ControlPlane]) -> Option<&ControlPlane> {
    all.iter().min_by_key(|cp| {
        (
            cp.metadata.creation_timestamp.clone().map(|t| t.0),
            cp.name_any(),
        )
    })
}

/// The name of the `ControlPlane` that manages the mesh when it is not `me`.
fn is_first(me: &ControlPlane, all: &[ControlPlane]) -> Option<String> {
    let first = managing(all)?;
    (first.name_any() != me.name_any()).then(|| first.name_any())
}

async fn write_status(
    ctx: &Context,
    cp: &ControlPlane,
    conditions: Vec<Condition>,
    current_version: Option<String>,
) -> Result<(), OperatorError> {
    let old = cp.status.clone().unwrap_or_default();
    let status = ControlPlaneStatus {
        conditions: merge_conditions(&old.conditions, conditions),
        observed_generation: cp.metadata.generation,
        current_version: current_version.or(old.current_version.clone()),
    };
    if status == old {
        return Ok(());
    }
    super::patch_status::<ControlPlane>(ctx, &cp.name_any(), &status).await
}

/// Ready=False and Degraded=True with `reason` and the error's message.
async fn failed(
    ctx: &Context,
    cp: &ControlPlane,
    reason: &str,
    error: &OperatorError,
) -> Result<(), OperatorError> {
    let generation = cp.metadata.generation;
    let message = error.to_string();
    tracing::warn!(control_plane = %cp.name_any(), reason, error = %message, "control plane not reconciled");
    write_status(
        ctx,
        cp,
        vec![
            condition("Ready", false, reason, message.clone(), generation),
            condition("Progressing", false, reason, message.clone(), generation),
            condition("Degraded", true, reason, message, generation),
        ],
        None,
    )
    .await
}

pub async fn reconcile(cp: Arc<ControlPlane>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let result = reconcile_inner(&cp, &ctx).await;
    ctx.metrics.reconciled("ControlPlane", result.is_ok());
    result
}

async fn reconcile_inner(cp: &ControlPlane, ctx: &Context) -> Result<Action, OperatorError> {
    if cp.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes what the resource owns.
        return Ok(Action::await_change());
    }
    let name = cp.name_any();
    let generation = cp.metadata.generation;
    let api = Api::<ControlPlane>::all(ctx.client.clone());
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(OperatorError::kube("listing ControlPlanes"))?;
    if let Some(first) = is_first(cp, &all.items) {
        let error = OperatorError::Input(format!(
            "ControlPlane {first} already manages this cluster's mesh (one per cluster); delete this one or that one"
        ));
        failed(ctx, cp, "Duplicate", &error).await?;
        return Ok(Action::await_change());
    }

    let mut opts = options(&cp.spec);
    if let Err(e) = install::control_plane(&opts) {
        failed(ctx, cp, "InvalidSpec", &e.into()).await?;
        return Ok(Action::await_change());
    }
    let Some(owner) = cp.controller_owner_ref(&()) else {
        return Err(OperatorError::Input(format!(
            "ControlPlane {name} has no uid yet"
        )));
    };
    let ns = opts.namespace.clone();

    // The namespace first: the identity Secrets live in it.
    let manifests = install::control_plane(&opts)?;
    if let Some(namespace) = manifests.iter().find(|m| m.kind == "Namespace") {
        if let Err(e) = apply::apply(&ctx.client, namespace, &owner).await {
            failed(ctx, cp, "ApplyFailed", &e).await?;
            return Err(e);
        }
    }
    let identity = match identity::identity(
        &ctx.client,
        cp.spec.trust_anchor.as_ref(),
        &ns,
        weft_core::identity::DEFAULT_TRUST_DOMAIN,
    )
    .await
    {
        Ok(identity) => identity,
        Err(e @ (OperatorError::Input(_) | OperatorError::Identity(_))) => {
            failed(ctx, cp, "TrustAnchorUnavailable", &e).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Err(e) => return Err(e),
    };
    for change in &identity.changes {
        tracing::info!(control_plane = %name, namespace = %ns, "{change}");
    }
    opts.webhook_ca_bundle = Some(identity.anchors_pem.clone());
    let mut manifests = install::control_plane(&opts)?;
    // Secrets before the Deployments that mount them.
    let at = manifests
        .iter()
        .position(|m| m.kind == "Deployment")
        .unwrap_or(manifests.len());
    manifests.splice(at..at, identity.secrets);
    for manifest in &manifests {
        if let Err(e) = apply::apply(&ctx.client, manifest, &owner).await {
            failed(ctx, cp, "ApplyFailed", &e).await?;
            return Err(e);
        }
    }
    let pruned = apply::prune(
        &ctx.client,
        &manifests,
        &[("policy/v1", "PodDisruptionBudget"), ("v1", "Namespace")],
        &owner.uid,
    )
    .await?;
    for what in pruned {
        tracing::info!(control_plane = %name, object = %what, "deleted what the control plane no longer needs");
    }

    // What runs.
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    let mut progress = Vec::new();
    for component in [CONTROLLER, INJECTOR] {
        let d = deployments
            .get_opt(component)
            .await
            .map_err(OperatorError::kube(format!(
                "reading Deployment {ns}/{component}"
            )))?;
        match rollout(d.as_ref()) {
            Rollout::Done => {}
            Rollout::Missing => progress.push(format!("{component}: no Deployment yet")),
            Rollout::Progressing(message) => progress.push(message),
        }
    }
    let version = &cp.spec.version;
    if progress.is_empty() {
        write_status(
            ctx,
            cp,
            vec![
                condition(
                    "Ready",
                    true,
                    "RolledOut",
                    format!("{CONTROLLER} and {INJECTOR} run {version} in {ns}"),
                    generation,
                ),
                condition("Progressing", false, "RolledOut", "", generation),
                condition("Degraded", false, "RolledOut", "", generation),
            ],
            Some(version.clone()),
        )
        .await?;
        Ok(Action::requeue(SETTLED_INTERVAL))
    } else {
        let message = format!("rolling out {version}: {}", progress.join("; "));
        write_status(
            ctx,
            cp,
            vec![
                condition("Ready", false, "RollingOut", message.clone(), generation),
                condition("Progressing", true, "RollingOut", message, generation),
                condition("Degraded", false, "RollingOut", "", generation),
            ],
            None,
        )
        .await?;
        Ok(Action::requeue(PROGRESS_INTERVAL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::operator::{ComponentValues, ControlPlaneValues, HighAvailability, Image};

    fn spec(yaml: &str) -> ControlPlaneSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_minimal_spec_is_weft_installs_defaults_at_its_version() {
        let opts = options(&spec("version: v9.9.9"));
        assert_eq!(
            opts,
            InstallOptions {
                version: "v9.9.9".into(),
                ..InstallOptions::default()
            }
        );
    }

    #[test]
    fn values_reach_the_objects() {
        let s = ControlPlaneSpec {
            version: "v2".into(),
            namespace: Some("mesh".into()),
            trust_anchor: None,
            high_availability: Some(HighAvailability { replicas: None }),
            values: Some(ControlPlaneValues {
                image_registry: Some("registry.local:5000/weft".into()),
                proxy: Some(ComponentValues {
                    image: Some(Image {
                        tag: Some("v2-debug".into()),
                        ..Default::default()
                    }),
                    log_level: Some("debug".into()),
                    ..Default::default()
                }),
                controller: None,
            }),
        };
        let opts = options(&s);
        assert_eq!(opts.controller_replicas, HA_REPLICAS);
        assert_eq!(
            opts.proxy_image(),
            "registry.local:5000/weft/weft-proxy:v2-debug"
        );
        let args = install::injector_args(&opts);
        assert!(
            args.contains(&"--proxy-image=registry.local:5000/weft/weft-proxy:v2-debug".to_owned()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--proxy-log-level=debug".to_owned()),
            "{args:?}"
        );
        let yaml = install::render(&opts, false).unwrap();
        assert!(
            yaml.contains("image: registry.local:5000/weft/weft-controller:v2"),
            "{yaml}"
        );
        assert!(yaml.contains("kind: PodDisruptionBudget"));
    }

    fn deployment(yaml: &str) -> Deployment {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_rollout_is_done_when_every_replica_is_updated_and_available() {
        assert_eq!(rollout(None), Rollout::Missing);
        let fresh = deployment(
            "metadata: {name: weft-controller, generation: 2}\nspec: {replicas: 3, selector: {}, template: {}}\nstatus: {observedGeneration: 1}",
        );
        assert!(
            matches!(rollout(Some(&fresh)), Rollout::Progressing(m) if m.contains("not yet seen"))
        );
        let half = deployment(
            "metadata: {name: weft-controller, generation: 2}\nspec: {replicas: 3, selector: {}, template: {}}\nstatus: {observedGeneration: 2, replicas: 4, updatedReplicas: 2, availableReplicas: 3}",
        );
        assert_eq!(
            rollout(Some(&half)),
            Rollout::Progressing(
                "weft-controller: 2 of 3 replicas updated, 3 available, 1 old ones still running"
                    .into()
            )
        );
        let done = deployment(
            "metadata: {name: weft-controller, generation: 2}\nspec: {replicas: 3, selector: {}, template: {}}\nstatus: {observedGeneration: 2, replicas: 3, updatedReplicas: 3, availableReplicas: 3}",
        );
        assert_eq!(rollout(Some(&done)), Rollout::Done);
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_field() {
        let mut s = spec("version: v1");
        s.values = Some(ControlPlaneValues {
            controller: Some(ComponentValues {
                log_level: Some("debug; rm -rf".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = install::control_plane(&options(&s))
            .unwrap_err()
            .to_string();
        assert!(err.contains("values.controller.logLevel"), "{err}");
    }
}

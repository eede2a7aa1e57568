//! Server-side apply of rendered manifests, each owned by the `ControlPlane`, and the
//! pruning of what the operator made earlier and no longer wants.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::Client;

use super::{part_of_selector, OperatorError, FIELD_MANAGER};
use crate::install::Manifest;

/// The API resource of a manifest's `apiVersion` and `kind`.
fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn api(client: &Client, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// `kind namespace/name` or `kind name`, for messages.
pub(crate) fn describe(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Applies `manifest` with `owner` as its controlling owner.
pub(crate) async fn apply(
    client: &Client,
    manifest: &Manifest,
    owner: &OwnerReference,
) -> Result<(), OperatorError> {
    let what = describe(
        &manifest.kind,
        manifest.namespace.as_deref(),
        &manifest.name,
    );
    let mut object: DynamicObject = serde_yaml_ng::from_str(&manifest.yaml).map_err(|e| {
        OperatorError::Input(format!("{what}: the rendered object does not parse: {e}"))
    })?;
    object.metadata.owner_references = Some(vec![owner.clone()]);
    object.metadata.managed_fields = None;
    let resource = resource(&manifest.api_version, &manifest.kind);
    api(client, &resource, manifest.namespace.as_deref())
        .patch(
            &manifest.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(OperatorError::kube(format!("applying {what}")))?;
    Ok(())
}

/// Deletes the objects of the kinds in `manifests` (plus `extra_kinds`) that are
/// labelled as weft's, controlled by the owner with `owner_uid`, and not in
/// `manifests`: a PodDisruptionBudget after high availability is turned off, the old
/// namespace after `spec.namespace` changed. Returns what was deleted.
pub(crate) async fn prune(
    client: &Client,
    manifests: &[Manifest],
    extra_kinds: &[(&str, &str)],
    owner_uid: &str,
) -> Result<Vec<String>, OperatorError> {
    let wanted: BTreeSet<(String, Option<String>, String)> = manifests
        .iter()
        .map(|m| (m.kind.clone(), m.namespace.clone(), m.name.clone()))
        .collect();
    let mut kinds: BTreeSet<(String, String)> = manifests
        .iter()
        .map(|m| (m.api_version.clone(), m.kind.clone()))
        .collect();
    kinds.extend(
        extra_kinds
            .iter()
            .map(|(v, k)| ((*v).to_owned(), (*k).to_owned())),
    );
    let mut deleted = Vec::new();
    let lp = ListParams::default().labels(&part_of_selector());
    for (api_version, kind) in kinds {
        let resource = resource(&api_version, &kind);
        let list = api(client, &resource, None)
            .list(&lp)
            .await
            .map_err(OperatorError::kube(format!("listing {kind}s to prune")))?;
        for object in list.items {
            let owned = object
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == owner_uid && o.controller == Some(true));
            let name = object.metadata.name.clone().unwrap_or_default();
            let ns = object.metadata.namespace.clone();
            if !owned || wanted.contains(&(kind.clone(), ns.clone(), name.clone())) {
                continue;
            }
            let what = describe(&kind, ns.as_deref(), &name);
            match api(client, &resource, ns.as_deref())
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => deleted.push(what),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(OperatorError::kube(format!("deleting {what}"))(e)),
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_of_the_kinds_weft_installs() {
        let r = resource("apps/v1", "Deployment");
        assert_eq!(
            (r.group.as_str(), r.plural.as_str()),
            ("apps", "deployments")
        );
        let r = resource("v1", "ServiceAccount");
        assert_eq!(
            (r.group.as_str(), r.plural.as_str()),
            ("", "serviceaccounts")
        );
        let r = resource("policy/v1", "PodDisruptionBudget");
        assert_eq!(r.plural, "poddisruptionbudgets");
        let r = resource(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
        );
        assert_eq!(r.plural, "mutatingwebhookconfigurations");
        let r = resource("rbac.authorization.k8s.io/v1", "ClusterRoleBinding");
        assert_eq!(r.plural, "clusterrolebindings");
    }
}

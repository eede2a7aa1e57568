//! The kube source's policy status writer: each policy object's (`policy.weft.io`
//! Server, AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication)
//! `status.conditions`, as the policy index computes them for `weft get policies` and
//! the controller's log ([`crate::policy::index`]): `Accepted` (`Accepted` or `Invalid`),
//! and for an AuthorizationPolicy `ResolvedRefs` (`ResolvedRefs`, `TargetNotFound`,
//! `AuthenticationNotFound`, `InvalidKind`), each with `observedGeneration` (the
//! generation the index read) and the message naming what is wrong.
//!
//! - The CRDs declare `status.conditions` a map list keyed by `type`, so weft's
//!   conditions are written with a server-side apply of the `status` subresource, field
//!   manager `weft.io/controller`: conditions of other types, owned by others, stay. The
//!   apply carries the `resourceVersion` read, so a change in between (409) reads again.
//! - A condition whose `status` is the object's already keeps the object's
//!   `lastTransitionTime` ([`super::status::keep_transition_times`]); otherwise it is
//!   the time of the write.
//! - An object is read and written only when its conditions differ from those this
//!   writer last saw on it (not at every new index), written only when they differ from
//!   the object's, and only while this replica leads (the [`crate::lease::Elector`]'s
//!   receiver; without one, always). A leader that steps down forgets what it wrote.
//! - An object gone, or of a newer generation than the index's, is left to the next
//!   index. Writes that fail (API server down, RBAC) are logged and tried again 5 s
//!   later.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use ::kube::Client;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::metrics::{KubeMetrics, StatusLabels};
use super::status::{keep_transition_times, Written, FIELD_MANAGER};
use crate::policy::serve::Snapshot;
use crate::policy::{Condition, ObjectKey, ObjectReport, API_VERSION};

/// How often an object that keeps changing under a write is read again.
const ATTEMPTS: usize = 5;

/// The longest `message` the CRDs take (`metav1.Condition`'s limit).
const MAX_MESSAGE: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PolicyStatusError {
    #[error("cannot read {object}: {source}")]
    Read {
        object: ObjectKey,
        source: ::kube::Error,
    },
    #[error("cannot write the status of {object}: {source}")]
    Write {
        object: ObjectKey,
        source: ::kube::Error,
    },
    #[error("{object} changed under {ATTEMPTS} status writes in a row; tried again later")]
    Conflict { object: ObjectKey },
}

/// The conditions weft writes on one object, without their times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conditions {
    /// The generation they were computed from (`observedGeneration`).
    pub generation: Option<i64>,
    /// `Accepted`, then `ResolvedRefs` for AuthorizationPolicies whose references were
    /// looked at.
    pub conditions: Vec<(&'static str, Condition)>,
}

impl Conditions {
    /// What `report` says of its object: its conditions; a false one says too when the
    /// last valid version keeps serving. `None` for an object without a name.
    pub fn of(report: &ObjectReport) -> Option<(ObjectKey, Conditions)> {
        let key = report.key.clone()?;
        let mut conditions = vec![("Accepted", report.accepted.clone())];
        if let Some(resolved) = &report.resolved_refs {
            conditions.push(("ResolvedRefs", resolved.clone()));
        }
        if report.kept {
            for (_, c) in &mut conditions {
                if !c.ok {
                    c.message
                        .push_str("; the last valid version of the object keeps serving");
                }
            }
        }
        Some((
            key,
            Conditions {
                generation: report.generation,
                conditions,
            },
        ))
    }

    /// The `status.conditions` entries, stamped `now`.
    pub fn entries(&self, now: &Value) -> Vec<Value> {
        self.conditions
            .iter()
            .map(|(kind, c)| {
                let mut entry = json!({
                    "type": kind,
                    "status": if c.ok { "True" } else { "False" },
                    "reason": c.reason,
                    "message": truncate(&c.message, MAX_MESSAGE),
                    "lastTransitionTime": now,
                });
                if let Some(g) = self.generation {
                    entry["observedGeneration"] = g.into();
                }
                entry
            })
            .collect()
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The API resource of a policy kind.
fn resource(kind: &str) -> ApiResource {
    let (group, version, kind, plural) = super::POLICY_KINDS
        .iter()
        .copied()
        .find(|(_, _, k, _)| *k == kind)
        .unwrap_or((crate::policy::POLICY_GROUP, "v1alpha1", kind, ""));
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The time now, as the API server writes it (RFC 3339, seconds).
fn now() -> Value {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null)
}

/// Writes `want` as weft's conditions of `object`, keeping other conditions and the
/// times of conditions whose status is the object's already.
pub async fn write(
    client: &Client,
    object: &ObjectKey,
    want: &Conditions,
) -> Result<Written, PolicyStatusError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &object.namespace, &resource(object.kind));
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for _ in 0..ATTEMPTS {
        let found = api
            .get_opt(&object.name)
            .await
            .map_err(|source| PolicyStatusError::Read {
                object: object.clone(),
                source,
            })?;
        let Some(found) = found else {
            return Ok(Written::Stale);
        };
        if let (Some(have), Some(want)) = (found.metadata.generation, want.generation) {
            if have != want {
                return Ok(Written::Stale);
            }
        }
        let current: Vec<Value> = found
            .data
            .get("status")
            .and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut entries = want.entries(&now());
        keep_transition_times(&mut entries, &current);
        // Unchanged: each of weft's conditions is there as it would write it, and no
        // condition of a type weft writes is there that it would not write now (an
        // AuthorizationPolicy's ResolvedRefs once it no longer parses).
        let unchanged = entries.iter().all(|e| current.contains(e))
            && current
                .iter()
                .filter(|c| {
                    matches!(
                        c.get("type").and_then(Value::as_str),
                        Some("Accepted" | "ResolvedRefs")
                    )
                })
                .all(|c| entries.iter().any(|e| e.get("type") == c.get("type")));
        if unchanged {
            return Ok(Written::Unchanged);
        }
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": object.kind,
            "metadata": {
                "name": object.name,
                "namespace": object.namespace,
                "resourceVersion": found.metadata.resource_version,
            },
            "status": {"conditions": entries},
        });
        match api
            .patch_status(&object.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => return Ok(Written::Written),
            Err(::kube::Error::Api(s)) if s.code == 409 => continue,
            Err(::kube::Error::Api(s)) if s.code == 404 => return Ok(Written::Stale),
            Err(source) => {
                return Err(PolicyStatusError::Write {
                    object: object.clone(),
                    source,
                })
            }
        }
    }
    Err(PolicyStatusError::Conflict {
        object: object.clone(),
    })
}

/// Writes the policy objects' conditions forever (until the task is dropped, or the
/// elector stops): at each new policy index, and when this replica becomes the leader.
pub async fn run(
    client: Client,
    mut policies: watch::Receiver<Arc<Snapshot>>,
    mut leader: Option<watch::Receiver<bool>>,
    metrics: KubeMetrics,
) {
    // weft's conditions as the API server has them, by object.
    let mut known: BTreeMap<ObjectKey, Conditions> = BTreeMap::new();
    tracing::debug!("policy status writer started");
    loop {
        let leads = leader.as_mut().is_none_or(|l| *l.borrow_and_update());
        let mut failed = false;
        if leads {
            let snapshot = policies.borrow_and_update().clone();
            let objects: Vec<(ObjectKey, Conditions)> = snapshot
                .policy
                .reports()
                .iter()
                .filter_map(Conditions::of)
                .collect();
            tracing::debug!(objects = objects.len(), "policy statuses");
            known.retain(|key, _| objects.iter().any(|(k, _)| k == key));
            for (key, want) in objects {
                if known.get(&key) == Some(&want) {
                    continue;
                }
                let result = write(&client, &key, &want).await;
                let labels = StatusLabels {
                    kind: key.kind,
                    result: result.as_ref().map_or("failed", |w| w.as_str()),
                };
                metrics.status_writes.get_or_create(&labels).inc();
                match result {
                    Ok(Written::Written) => {
                        tracing::info!(object = %key, generation = want.generation, "policy status written");
                        known.insert(key, want);
                    }
                    Ok(Written::Unchanged) => {
                        tracing::debug!(object = %key, "policy status unchanged");
                        known.insert(key, want);
                    }
                    Ok(Written::Stale) => {
                        tracing::debug!(object = %key, "policy object gone or changed since the index");
                        known.remove(&key);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "policy status not written; trying again in 5 s");
                        known.remove(&key);
                        failed = true;
                    }
                }
            }
        } else {
            known.clear();
        }
        if !super::status::next_round(&mut policies, &mut leader, failed, "policy").await {
            return;
        }
    }
}

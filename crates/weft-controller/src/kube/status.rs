//! The kube source's status writer: each HTTPRoute's and GRPCRoute's `status.parents[]`
//! entries for the Service parents weft checked (`controllerName: weft.io/controller`,
//! the `Accepted` and `ResolvedRefs` conditions with `observedGeneration`), as
//! [`crate::routes::status`] computes them for `weft get routes`.
//!
//! - The Gateway API CRDs declare `status.parents` without a list type, so it is an
//!   atomic list: a server-side apply of weft's entries alone would replace the other
//!   controllers' (a gateway's). The route is read, the other controllers' entries
//!   kept, weft's replaced, and the status written with the `resourceVersion` read (a
//!   JSON merge patch of the `status` subresource, field manager `weft.io/controller`);
//!   a write that meets a newer version (409) reads again.
//! - A route is written only when weft's entries differ from the route's (not at every
//!   new table), and only while this replica leads (the [`crate::lease::Elector`]'s
//!   receiver; without one, always). A leader that steps down forgets what it wrote:
//!   when it leads again it reads every route once.
//! - A condition whose `status` is the route's already keeps the route's
//!   `lastTransitionTime` (Kubernetes' rule: when the status last changed), so a
//!   restarted controller, to which every condition is new, does not rewrite them.
//! - A route whose generation is no longer the table's is left to the next table.
//!   Writes that fail (API server down, RBAC) are logged and tried again 5 s later.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use ::kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::metrics::{KubeMetrics, StatusLabels};
use crate::routes::serve::Snapshot;
use crate::routes::table::RouteReport;
use crate::routes::{RouteKey, RouteKind, CONTROLLER_NAME, GATEWAY_GROUP};

/// The field manager of weft's status writes.
pub const FIELD_MANAGER: &str = "weft.io/controller";

/// How often a route that keeps changing under a write is read again.
const ATTEMPTS: usize = 5;

/// How long after a failed write it is tried again.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read {route}: {source}")]
    Read {
        route: RouteKey,
        source: ::kube::Error,
    },
    #[error("cannot write the status of {route}: {source}")]
    Write {
        route: RouteKey,
        source: ::kube::Error,
    },
    #[error("{route} has no status.parents list but {found}")]
    Parents { route: RouteKey, found: String },
    #[error("{route} changed under {ATTEMPTS} status writes in a row; tried again later")]
    Conflict { route: RouteKey },
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The route's status was written.
    Written,
    /// The route already had weft's entries.
    Unchanged,
    /// The route is gone, or has a newer generation than the table's.
    Stale,
}

fn resource(kind: RouteKind) -> ApiResource {
    let (kind, plural) = match kind {
        RouteKind::Http => ("HTTPRoute", "httproutes"),
        RouteKind::Grpc => ("GRPCRoute", "grpcroutes"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GATEWAY_GROUP, "v1", kind), plural)
}

/// weft's `status.parents[]` entries of `report`.
pub fn parents(report: &RouteReport) -> Vec<Value> {
    match crate::routes::status::object(report)["status"]["parents"].take() {
        Value::Array(parents) => parents,
        _ => Vec::new(),
    }
}

fn is_ours(entry: &Value) -> bool {
    entry.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
}

impl Written {
    /// Its `result` label of `weft_controller_kube_status_writes_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Written::Written => "written",
            Written::Unchanged => "unchanged",
            Written::Stale => "stale",
        }
    }
}

/// Gives `want`'s conditions the `lastTransitionTime` of `have`'s condition of the same
/// `type` when that one has the same `status`: the time is when the status last
/// changed, whatever the controller's own record says (it starts afresh at a restart).
pub fn keep_transition_times(want: &mut [Value], have: &[Value]) {
    for c in want {
        let kept = have
            .iter()
            .find(|h| h.get("type") == c.get("type") && h.get("status") == c.get("status"))
            .and_then(|h| h.get("lastTransitionTime"))
            .filter(|t| t.is_string());
        if let (Some(t), Some(fields)) = (kept, c.as_object_mut()) {
            fields.insert("lastTransitionTime".into(), t.clone());
        }
    }
}

/// `ours` with each parent's conditions keeping the times of `mine`'s (the route's
/// entries of weft) for the same parentRef ([`keep_transition_times`]).
fn with_kept_times(ours: &[Value], mine: &[Value]) -> Vec<Value> {
    let mut ours = ours.to_vec();
    for entry in &mut ours {
        let Some(have) = mine
            .iter()
            .find(|m| m.get("parentRef") == entry.get("parentRef"))
            .and_then(|m| m.get("conditions"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        if let Some(Value::Array(want)) = entry.get_mut("conditions") {
            keep_transition_times(want, have);
        }
    }
    ours
}

/// Writes `ours` as weft's entries of `report`'s route, keeping the other controllers'
/// (and the route's `lastTransitionTime`s of conditions whose status is the same).
pub async fn write(
    client: &Client,
    report: &RouteReport,
    ours: &[Value],
) -> Result<Written, StatusError> {
    let key = &report.key;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &key.namespace, &resource(key.kind));
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    for _ in 0..ATTEMPTS {
        let route = api
            .get_opt(&key.name)
            .await
            .map_err(|source| StatusError::Read {
                route: key.clone(),
                source,
            })?;
        let Some(route) = route else {
            return Ok(Written::Stale);
        };
        if route
            .metadata
            .generation
            .is_some_and(|g| g != report.generation)
        {
            return Ok(Written::Stale);
        }
        let current = match route.data.get("status").and_then(|s| s.get("parents")) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(parents)) => parents.clone(),
            Some(other) => {
                return Err(StatusError::Parents {
                    route: key.clone(),
                    found: other.to_string(),
                })
            }
        };
        let (theirs, mine): (Vec<Value>, Vec<Value>) =
            current.into_iter().partition(|p| !is_ours(p));
        let ours = with_kept_times(ours, &mine);
        if mine == ours {
            return Ok(Written::Unchanged);
        }
        let mut parents = theirs;
        parents.extend(ours);
        let patch = json!({
            "metadata": {"resourceVersion": route.metadata.resource_version},
            "status": {"parents": parents},
        });
        match api
            .patch_status(&key.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(Written::Written),
            Err(::kube::Error::Api(s)) if s.code == 409 => continue,
            Err(::kube::Error::Api(s)) if s.code == 404 => return Ok(Written::Stale),
            Err(source) => {
                return Err(StatusError::Write {
                    route: key.clone(),
                    source,
                })
            }
        }
    }
    Err(StatusError::Conflict { route: key.clone() })
}

/// Writes the routes' statuses forever (until the task is dropped, or the elector
/// stops): at each new route table, and when this replica becomes the leader.
pub async fn run(
    client: Client,
    mut routes: watch::Receiver<Arc<Snapshot>>,
    mut leader: Option<watch::Receiver<bool>>,
    metrics: KubeMetrics,
) {
    // weft's entries as the API server has them, by route.
    let mut known: BTreeMap<RouteKey, Vec<Value>> = BTreeMap::new();
    tracing::debug!("route status writer started");
    loop {
        let leads = leader.as_mut().is_none_or(|l| *l.borrow_and_update());
        let mut failed = false;
        if leads {
            let table = routes.borrow_and_update().table.clone();
            tracing::debug!(routes = table.reports().count(), "route statuses");
            known.retain(|key, _| table.reports().any(|r| &r.key == key));
            for report in table.reports() {
                let ours = parents(report);
                if known.get(&report.key) == Some(&ours) {
                    continue;
                }
                let result = write(&client, report, &ours).await;
                let labels = StatusLabels {
                    kind: report.key.kind.as_str(),
                    result: result.as_ref().map_or("failed", |w| w.as_str()),
                };
                metrics.status_writes.get_or_create(&labels).inc();
                match result {
                    Ok(Written::Written) => {
                        tracing::info!(route = %report.key, generation = report.generation, "route status written");
                        known.insert(report.key.clone(), ours);
                    }
                    Ok(Written::Unchanged) => {
                        tracing::debug!(route = %report.key, "route status unchanged");
                        known.insert(report.key.clone(), ours);
                    }
                    Ok(Written::Stale) => {
                        tracing::debug!(route = %report.key, "route gone or changed since the table");
                        known.remove(&report.key);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "route status not written; trying again in 5 s");
                        known.remove(&report.key);
                        failed = true;
                    }
                }
            }
        } else {
            known.clear();
        }
        if !next_round(&mut routes, &mut leader, failed, "route").await {
            return;
        }
    }
}

/// Waits for a status writer's next round: its source changed, this replica's
/// leadership changed, or [`RETRY`] passed after a failed write. `false` when the
/// source or the elector is gone (the writer stops).
pub(super) async fn next_round<T>(
    source: &mut watch::Receiver<T>,
    leader: &mut Option<watch::Receiver<bool>>,
    failed: bool,
    what: &str,
) -> bool {
    let leader_changed = async {
        match leader.as_mut() {
            Some(l) => l.changed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        changed = source.changed() => changed.is_ok(),
        changed = leader_changed => {
            if changed.is_err() {
                tracing::info!("leader election stopped: {what} statuses no longer written");
            }
            changed.is_ok()
        },
        _ = tokio::time::sleep(RETRY), if failed => true,
    }
}

//! Route statuses as Kubernetes shows them: the `status.parents[]` stanza a Gateway
//! API controller writes (`parentRef`, `controllerName`, `conditions` with
//! `observedGeneration` and `lastTransitionTime`), for `weft get routes -o yaml|json`
//! and, later, for the Kubernetes source's status writer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::{json, Map, Value};

use super::parse::API_VERSION;
use super::table::{ParentReport, RouteReport, TimedCond};
use super::{ParentRef, CONTROLLER_NAME};

fn condition(kind: &str, t: &TimedCond, generation: i64) -> Condition {
    Condition {
        type_: kind.to_owned(),
        status: if t.cond.ok { "True" } else { "False" }.to_owned(),
        reason: t.cond.reason.to_owned(),
        message: t.cond.message.clone(),
        observed_generation: Some(generation),
        last_transition_time: t.since.clone(),
    }
}

/// A parentRef as written (what was omitted stays omitted).
pub fn parent_ref(p: &ParentRef) -> Value {
    let mut m = Map::new();
    if let Some(g) = &p.group {
        m.insert("group".into(), json!(g));
    }
    if let Some(k) = &p.kind {
        m.insert("kind".into(), json!(k));
    }
    m.insert("name".into(), json!(p.name));
    if let Some(ns) = &p.namespace {
        m.insert("namespace".into(), json!(ns));
    }
    if let Some(port) = p.port {
        m.insert("port".into(), json!(port));
    }
    if let Some(s) = &p.section_name {
        m.insert("sectionName".into(), json!(s));
    }
    Value::Object(m)
}

fn parent(p: &ParentReport, generation: i64) -> Value {
    json!({
        "parentRef": parent_ref(&p.parent),
        "controllerName": CONTROLLER_NAME,
        "conditions": [
            condition("Accepted", &p.accepted, generation),
            condition("ResolvedRefs", &p.resolved, generation),
        ],
    })
}

/// The route as `kubectl get -o yaml` would show its identity and status.
pub fn object(r: &RouteReport) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": r.key.kind.as_str(),
        "metadata": {
            "name": r.key.name,
            "namespace": r.key.namespace,
            "generation": r.generation,
        },
        "status": {
            "parents": r.parents.iter().map(|p| parent(p, r.generation)).collect::<Vec<_>>(),
        },
    })
}

/// Several routes as a Kubernetes `List`.
pub fn list<'a>(routes: impl Iterator<Item = &'a RouteReport>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": routes.map(object).collect::<Vec<_>>(),
    })
}

//! The kube source's route status writer against a real kube-apiserver
//! (`weft_test::kube::KubeApi`; skipped with a message when the binaries are not built,
//! failing under CI): HTTPRoutes to a Service get weft's `status.parents[]` entries,
//! another controller's entry stays, and a route is written again only when its status
//! changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use weft_controller::kube::KubeSourceConfig;
use weft_controller::{identity, Config, Controller, DestinationConfig};
use weft_test::kube::KubeApi;

/// How long a status may take to be written after the route is stored.
const PROMPT: Duration = Duration::from_secs(10);

/// A controller with the kube source, in-process, writing statuses (no elector).
struct Mesh {
    dir: PathBuf,
    controller: Option<Controller>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        drop(self.controller.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Mesh {
    /// With `leader`, statuses are written only while it holds true.
    async fn start(kubeconfig: &Path, test: &str, leader: Option<watch::Receiver<bool>>) -> Mesh {
        let dir =
            std::env::temp_dir().join(format!("weft-kube-status-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
        let config = Config {
            identity_dir: dir.join("identity"),
            tokens_dir: dir.join("tokens"),
            trust_domain: "cluster.local".into(),
            cert_lifetime: Duration::from_secs(3600),
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            destination: Some(DestinationConfig {
                source: KubeSourceConfig {
                    kubeconfig: Some(kubeconfig.to_owned()),
                    leader,
                    ..Default::default()
                }
                .into(),
                cluster_domain: "cluster.local".into(),
                opaque_ports: vec![],
                policy: Default::default(),
            }),
        };
        let controller = Controller::start(config).await.unwrap();
        Mesh {
            dir,
            controller: Some(controller),
        }
    }
}

fn kubectl(api: &KubeApi, args: &[&str]) -> String {
    tokio::task::block_in_place(|| api.kubectl(args))
        .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", args.join(" ")))
}

fn apply(api: &KubeApi, yaml: &str) {
    tokio::task::block_in_place(|| api.kubectl_stdin(&["apply", "-f", "-"], Some(yaml)))
        .unwrap_or_else(|e| panic!("kubectl apply: {e:#}\n{yaml}"));
}

/// HTTPRoute `name` of namespace shop, as the API server has it.
fn route(api: &KubeApi, name: &str) -> Value {
    let json = kubectl(
        api,
        &[
            "-n",
            "shop",
            "get",
            "httproute",
            name,
            "-o",
            "json",
            "--show-managed-fields",
        ],
    );
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {e}: {json}"))
}

/// The route's `status.parents[]` entries of `controller`.
fn entries(route: &Value, controller: &str) -> Vec<Value> {
    route["status"]["parents"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["controllerName"] == controller)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Condition `kind` of a parent entry: status, reason and observedGeneration.
fn condition(entry: &Value, kind: &str) -> Option<(String, String, i64)> {
    let c = entry["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["observedGeneration"].as_i64()?,
    ))
}

/// weft's one entry for Service web port 80, once it has both conditions at the route's
/// generation.
fn weft_entry(api: &KubeApi, name: &str) -> Option<(Value, Value)> {
    let r = route(api, name);
    let generation = r["metadata"]["generation"].as_i64()?;
    let ours = entries(&r, "weft.io/controller");
    let [entry] = ours.as_slice() else {
        return None;
    };
    let written = ["Accepted", "ResolvedRefs"]
        .iter()
        .all(|k| condition(entry, k).is_some_and(|(_, _, g)| g == generation));
    written.then(|| (entry.clone(), r))
}

async fn written(api: &KubeApi, name: &str) -> (Value, Value) {
    let deadline = std::time::Instant::now() + PROMPT;
    loop {
        if let Some(found) = weft_entry(api, name) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no weft status on HTTPRoute shop/{name} within {PROMPT:?}: {:#}",
            route(api, name)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const OTHER: &str = r#"{"status": {"parents": [{"parentRef": {"name": "gw"}, "controllerName": "example.com/gateway", "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_statuses_are_written_keeping_other_controllers_entries() {
    tracing_subscriber::fmt()
        .with_env_filter("weft_controller=info,weft_controller::kube::status=debug")
        .with_ansi(false)
        .with_test_writer()
        .init();
    let Some(api) = tokio::task::block_in_place(KubeApi::start) else {
        return;
    };
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
"#,
    );
    apply(&api, HTTPROUTE_CRD);
    kubectl(
        &api,
        &[
            "wait",
            "--for=condition=Established",
            "crd/httproutes.gateway.networking.k8s.io",
        ],
    );
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: good, namespace: shop}
  spec:
    parentRefs: [{group: "", kind: Service, name: web, port: 80}, {name: gw}]
    rules: [{backendRefs: [{name: web, port: 80}]}]
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: missing, namespace: shop}
  spec:
    parentRefs: [{group: "", kind: Service, name: web, port: 80}]
    rules: [{backendRefs: [{name: nosuch, port: 80}]}]
"#,
    );
    // A gateway's controller wrote its entry first.
    kubectl(
        &api,
        &[
            "-n",
            "shop",
            "patch",
            "httproute",
            "good",
            "--subresource=status",
            "--type=merge",
            "-p",
            OTHER,
        ],
    );

    let _mesh = Mesh::start(&api.kubeconfig(), "write", None).await;

    let (entry, good) = written(&api, "good").await;
    assert_eq!(
        entry["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "name": "web", "port": 80}),
        "{entry:#}"
    );
    assert_eq!(
        condition(&entry, "Accepted"),
        Some(("True".into(), "Accepted".into(), 1)),
        "{entry:#}"
    );
    assert_eq!(
        condition(&entry, "ResolvedRefs"),
        Some(("True".into(), "ResolvedRefs".into(), 1)),
        "{entry:#}"
    );
    let other = entries(&good, "example.com/gateway");
    assert_eq!(other.len(), 1, "the gateway's entry stays: {good:#}");
    assert_eq!(other[0]["parentRef"]["name"], "gw", "{good:#}");
    let fields = &good["metadata"]["managedFields"];
    assert!(
        fields.as_array().is_some_and(|fs| fs
            .iter()
            .any(|f| f["manager"] == "weft.io/controller" && f["subresource"] == "status")),
        "written by field manager weft.io/controller: {fields:#}"
    );

    let (entry, _) = written(&api, "missing").await;
    assert_eq!(
        condition(&entry, "ResolvedRefs"),
        Some(("False".into(), "BackendNotFound".into(), 1)),
        "{entry:#}"
    );
    assert_eq!(
        condition(&entry, "Accepted").map(|c| c.0),
        Some("True".into()),
        "{entry:#}"
    );

    // New tables (another Service, another route) do not write good again: its
    // resourceVersion stays once a later route's status is written.
    let version = good["metadata"]["resourceVersion"].clone();
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: shop}
  spec: {selector: {app: db}, ports: [{name: pg, port: 5432}]}
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: later, namespace: shop}
  spec:
    parentRefs: [{group: "", kind: Service, name: db, port: 5432}]
    rules: [{backendRefs: [{name: db, port: 5432}]}]
"#,
    );
    written(&api, "later").await;
    assert_eq!(
        route(&api, "good")["metadata"]["resourceVersion"],
        version,
        "good was written again though its status did not change"
    );

    // The missing backend created: ResolvedRefs turns True, the gateway's entry stays.
    apply(
        &api,
        r#"
apiVersion: v1
kind: Service
metadata: {name: nosuch, namespace: shop}
spec: {selector: {app: nosuch}, ports: [{name: http, port: 80}]}
"#,
    );
    let deadline = std::time::Instant::now() + PROMPT;
    loop {
        let resolved = weft_entry(&api, "missing").and_then(|(e, _)| condition(&e, "ResolvedRefs"));
        if resolved == Some(("True".into(), "ResolvedRefs".into(), 1)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "missing's ResolvedRefs did not turn True: {resolved:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new generation of good: observedGeneration follows, the gateway's entry stays.
    apply(
        &api,
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}, {name: gw}]
  rules: [{backendRefs: [{name: web, port: 80, weight: 2}]}]
"#,
    );
    let (entry, good) = written(&api, "good").await;
    assert_eq!(good["metadata"]["generation"], 2, "{good:#}");
    assert_eq!(
        condition(&entry, "Accepted"),
        Some(("True".into(), "Accepted".into(), 2)),
        "{entry:#}"
    );
    assert_eq!(
        entries(&good, "example.com/gateway").len(),
        1,
        "the gateway's entry stays: {good:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes() {
    let Some(api) = tokio::task::block_in_place(KubeApi::start) else {
        return;
    };
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
"#,
    );
    apply(&api, HTTPROUTE_CRD);
    kubectl(
        &api,
        &[
            "wait",
            "--for=condition=Established",
            "crd/httproutes.gateway.networking.k8s.io",
        ],
    );
    apply(
        &api,
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#,
    );
    let (lead, leader) = watch::channel(false);
    let mesh = Mesh::start(&api.kubeconfig(), "leader", Some(leader)).await;
    let controller = mesh.controller.as_ref().unwrap();
    assert!(
        weft_test::eventually(PROMPT, || async {
            controller
                .destination_index()
                .is_some_and(|i| !i.mesh().gateway.is_empty())
        })
        .await,
        "the route never reached the controller's index"
    );
    let good = route(&api, "good");
    assert!(
        entries(&good, "weft.io/controller").is_empty(),
        "written by a replica that does not lead: {good:#}"
    );
    // Leading: written without any change of the route.
    lead.send_replace(true);
    let (entry, _) = written(&api, "good").await;
    assert_eq!(
        condition(&entry, "ResolvedRefs"),
        Some(("True".into(), "ResolvedRefs".into(), 1)),
        "{entry:#}"
    );
}

/// The HTTPRoute CRD, its schema open (so `status.parents` is an atomic list, as in
/// the Gateway API's CRDs, which give it no list type).
const HTTPROUTE_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: httproutes.gateway.networking.k8s.io
  annotations: {api-approved.kubernetes.io: "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}
spec:
  group: gateway.networking.k8s.io
  names: {kind: HTTPRoute, listKind: HTTPRouteList, plural: httproutes, singular: httproute}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

//! The kube source's status writers against a real kube-apiserver
//! (`weft_test::kube::KubeApi`; skipped with a message when the binaries are not built,
//! failing under CI): HTTPRoutes to a Service get weft's `status.parents[]` entries,
//! another controller's entry stays, and a route is written again only when its status
//! changes (not at a restart of the controller); the policy objects get their
//! `Accepted`/`ResolvedRefs` conditions, which follow fixes and new generations, keep
//! their `lastTransitionTime` while their status stays, leave other writers'
//! conditions alone and are written by the leader only.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use weft_controller::kube::{KubeSourceConfig, StatusLabels};
use weft_controller::{identity, Config, Controller, DestinationConfig};
use weft_test::kube::KubeApi;

use common::{apply, established, kubectl, policy_crds};

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

    fn controller(&self) -> &Controller {
        self.controller.as_ref().unwrap()
    }

    /// `weft_controller_kube_status_writes_total{kind,result}` of this controller.
    fn writes(&self, kind: &'static str, result: &'static str) -> u64 {
        self.controller()
            .metrics()
            .kube
            .status_writes
            .get_or_create(&StatusLabels { kind, result })
            .get()
    }
}

/// A `lastTransitionTime` long before the test: kept by a writer whose condition has
/// the same status, replaced by one that rewrites it.
const LONG_AGO: &str = "2026-01-01T00:00:00Z";

/// Route `kind` (`httproute`, `grpcroute`) `name` of namespace shop, as the API server
/// has it.
fn route_of(api: &KubeApi, kind: &str, name: &str) -> Value {
    let json = kubectl(
        api,
        &[
            "-n",
            "shop",
            "get",
            kind,
            name,
            "-o",
            "json",
            "--show-managed-fields",
        ],
    );
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {e}: {json}"))
}

/// HTTPRoute `name` of namespace shop.
fn route(api: &KubeApi, name: &str) -> Value {
    route_of(api, "httproute", name)
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
fn weft_entry(api: &KubeApi, kind: &str, name: &str) -> Option<(Value, Value)> {
    let r = route_of(api, kind, name);
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
    written_of(api, "httproute", name).await
}

async fn written_of(api: &KubeApi, kind: &str, name: &str) -> (Value, Value) {
    let deadline = std::time::Instant::now() + PROMPT;
    loop {
        if let Some(found) = weft_entry(api, kind, name) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no weft status on {kind} shop/{name} within {PROMPT:?}: {:#}",
            route_of(api, kind, name)
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
    established(&api, "httproutes.gateway.networking.k8s.io");
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

    let mesh = Mesh::start(&api.kubeconfig(), "write", None).await;

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
        let resolved = weft_entry(&api, "httproute", "missing")
            .and_then(|(e, _)| condition(&e, "ResolvedRefs"));
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

    // A restarted controller, to which every condition is new, leaves the routes as
    // they are: good's times (set long ago here) stay, since no status changed.
    drop(mesh);
    let parents: Vec<Value> = good["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .map(|mut p| {
            if p["controllerName"] == "weft.io/controller" {
                for c in p["conditions"].as_array_mut().unwrap() {
                    c["lastTransitionTime"] = json!(LONG_AGO);
                }
            }
            p
        })
        .collect();
    let patch = json!({"status": {"parents": parents}}).to_string();
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
            &patch,
        ],
    );
    let versions: Vec<Value> = ["good", "missing", "later"]
        .iter()
        .map(|r| route(&api, r)["metadata"]["resourceVersion"].clone())
        .collect();
    let mesh = Mesh::start(&api.kubeconfig(), "write", None).await;
    assert!(
        weft_test::eventually(PROMPT, || async {
            mesh.writes("HTTPRoute", "unchanged") >= 3
        })
        .await,
        "the restarted controller did not find the 3 routes' statuses as it would write them: {} written, {} unchanged",
        mesh.writes("HTTPRoute", "written"),
        mesh.writes("HTTPRoute", "unchanged"),
    );
    let after: Vec<Value> = ["good", "missing", "later"]
        .iter()
        .map(|r| route(&api, r)["metadata"]["resourceVersion"].clone())
        .collect();
    assert_eq!(after, versions, "routes rewritten at a restart");
    let (entry, _) = written(&api, "good").await;
    for c in entry["conditions"].as_array().unwrap() {
        assert_eq!(c["lastTransitionTime"], LONG_AGO, "{entry:#}");
    }
}

/// Policy object `kind` (`authorizationpolicy`, `server`, ...) `name` of namespace shop,
/// as the API server has it.
fn policy(api: &KubeApi, kind: &str, name: &str) -> Value {
    let json = kubectl(
        api,
        &[
            "-n",
            "shop",
            "get",
            &format!("{kind}.policy.weft.io"),
            name,
            "-o",
            "json",
            "--show-managed-fields",
        ],
    );
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{kind} {name}: {e}: {json}"))
}

/// The object's condition of type `kind`.
fn policy_condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Waits until the object has each of `want`'s conditions (type, status, reason) with
/// `observedGeneration` its generation; returns it.
async fn conditions(api: &KubeApi, kind: &str, name: &str, want: &[(&str, &str, &str)]) -> Value {
    let deadline = std::time::Instant::now() + PROMPT;
    loop {
        let object = policy(api, kind, name);
        let generation = &object["metadata"]["generation"];
        let done = want.iter().all(|(t, status, reason)| {
            policy_condition(&object, t).is_some_and(|c| {
                c["status"] == *status
                    && c["reason"] == *reason
                    && c["observedGeneration"] == *generation
            })
        });
        if done {
            return object;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind} shop/{name}: not {want:?} within {PROMPT:?}: {:#}",
            object["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(object: &Value, kind: &str) -> String {
    policy_condition(object, kind)
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn patch_status(api: &KubeApi, kind: &str, name: &str, status: Value) {
    let patch = json!({ "status": status }).to_string();
    kubectl(
        api,
        &[
            "-n",
            "shop",
            "patch",
            kind,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
    );
}

const ACCEPTED: (&str, &str, &str) = ("Accepted", "True", "Accepted");
const RESOLVED: (&str, &str, &str) = ("ResolvedRefs", "True", "ResolvedRefs");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_statuses_are_written_and_follow_fixes() {
    tracing_subscriber::fmt()
        .with_env_filter("weft_controller=info,weft_controller::kube=debug")
        .with_ansi(false)
        .with_test_writer()
        .init();
    let Some(api) = tokio::task::block_in_place(KubeApi::start) else {
        return;
    };
    policy_crds(&api);
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- apiVersion: policy.weft.io/v1alpha1
  kind: Server
  metadata: {name: web-http, namespace: shop}
  spec: {podSelector: {matchLabels: {app: web}}, port: http}
- apiVersion: policy.weft.io/v1alpha1
  kind: MeshTLSAuthentication
  metadata: {name: meshed, namespace: shop}
  spec: {identities: ["*"]}
- apiVersion: policy.weft.io/v1alpha1
  kind: AuthorizationPolicy
  metadata: {name: good, namespace: shop}
  spec:
    targetRef: {group: policy.weft.io, kind: Server, name: web-http}
    requiredAuthenticationRefs:
    - {group: policy.weft.io, kind: MeshTLSAuthentication, name: meshed}
- apiVersion: policy.weft.io/v1alpha1
  kind: AuthorizationPolicy
  metadata: {name: no-server, namespace: shop}
  spec:
    targetRef: {group: policy.weft.io, kind: Server, name: api-http}
- apiVersion: policy.weft.io/v1alpha1
  kind: AuthorizationPolicy
  metadata: {name: no-authn, namespace: shop}
  spec:
    targetRef: {group: policy.weft.io, kind: Server, name: web-http}
    requiredAuthenticationRefs:
    - {group: policy.weft.io, kind: MeshTLSAuthentication, name: admins}
"#,
    );
    // Another writer's condition on good; no-server Accepted long ago (as by an
    // earlier controller).
    patch_status(
        &api,
        "authorizationpolicy.policy.weft.io",
        "good",
        json!({"conditions": [{"type": "example.com/Audited", "status": "True", "reason": "Audited", "message": "", "lastTransitionTime": LONG_AGO}]}),
    );
    patch_status(
        &api,
        "authorizationpolicy.policy.weft.io",
        "no-server",
        json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": LONG_AGO, "observedGeneration": 1}]}),
    );

    let mesh = Mesh::start(&api.kubeconfig(), "policy", None).await;

    let good = conditions(&api, "authorizationpolicy", "good", &[ACCEPTED, RESOLVED]).await;
    assert!(
        policy_condition(&good, "example.com/Audited").is_some(),
        "the other writer's condition stays: {:#}",
        good["status"]
    );
    let fields = &good["metadata"]["managedFields"];
    assert!(
        fields.as_array().is_some_and(|fs| fs.iter().any(|f| {
            f["manager"] == "weft.io/controller"
                && f["operation"] == "Apply"
                && f["subresource"] == "status"
        })),
        "applied by field manager weft.io/controller: {fields:#}"
    );
    for (kind, name) in [("server", "web-http"), ("meshtlsauthentication", "meshed")] {
        let o = conditions(&api, kind, name, &[ACCEPTED]).await;
        assert!(
            policy_condition(&o, "ResolvedRefs").is_none(),
            "{kind} {name}: {:#}",
            o["status"]
        );
    }
    let no_server = conditions(
        &api,
        "authorizationpolicy",
        "no-server",
        &[ACCEPTED, ("ResolvedRefs", "False", "TargetNotFound")],
    )
    .await;
    let m = message(&no_server, "ResolvedRefs");
    assert!(
        m.contains("no valid Server shop/api-http in the cluster"),
        "{m}"
    );
    assert_eq!(
        policy_condition(&no_server, "Accepted").unwrap()["lastTransitionTime"],
        LONG_AGO,
        "Accepted stayed True: its time is kept"
    );
    let no_authn = conditions(
        &api,
        "authorizationpolicy",
        "no-authn",
        &[
            ACCEPTED,
            ("ResolvedRefs", "False", "AuthenticationNotFound"),
        ],
    )
    .await;
    let m = message(&no_authn, "ResolvedRefs");
    assert!(
        m.contains("no valid MeshTLSAuthentication shop/admins in the cluster"),
        "{m}"
    );
    let good_version = good["metadata"]["resourceVersion"].clone();

    // The missing objects created: both flip to ResolvedRefs True; good, whose
    // conditions did not change, is not written again.
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: policy.weft.io/v1alpha1
  kind: Server
  metadata: {name: api-http, namespace: shop}
  spec: {podSelector: {matchLabels: {app: api}}, port: 8080}
- apiVersion: policy.weft.io/v1alpha1
  kind: MeshTLSAuthentication
  metadata: {name: admins, namespace: shop}
  spec: {identityRefs: [{kind: ServiceAccount, name: admin}]}
"#,
    );
    let fixed = conditions(
        &api,
        "authorizationpolicy",
        "no-server",
        &[ACCEPTED, RESOLVED],
    )
    .await;
    assert_eq!(message(&fixed, "ResolvedRefs"), "", "{:#}", fixed["status"]);
    conditions(
        &api,
        "authorizationpolicy",
        "no-authn",
        &[ACCEPTED, RESOLVED],
    )
    .await;
    conditions(&api, "server", "api-http", &[ACCEPTED]).await;
    assert_eq!(
        policy(&api, "authorizationpolicy", "good")["metadata"]["resourceVersion"],
        good_version,
        "good was written again though its conditions did not change"
    );

    // A new generation naming a missing NetworkAuthentication: observedGeneration 2,
    // ResolvedRefs False again.
    apply(
        &api,
        r#"
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-authn, namespace: shop}
spec:
  targetRef: {group: policy.weft.io, kind: Server, name: web-http}
  requiredAuthenticationRefs:
  - {group: policy.weft.io, kind: MeshTLSAuthentication, name: admins}
  - {group: policy.weft.io, kind: NetworkAuthentication, name: office}
"#,
    );
    let no_authn = conditions(
        &api,
        "authorizationpolicy",
        "no-authn",
        &[
            ACCEPTED,
            ("ResolvedRefs", "False", "AuthenticationNotFound"),
        ],
    )
    .await;
    assert_eq!(no_authn["metadata"]["generation"], 2, "{no_authn:#}");
    let m = message(&no_authn, "ResolvedRefs");
    assert!(
        m.contains("no valid NetworkAuthentication shop/office in the cluster"),
        "{m}"
    );
    // Generation 1 resolved: it keeps serving, and the condition says so.
    assert!(
        m.ends_with("; the last valid version of the object keeps serving"),
        "{m}"
    );

    // A replica that does not lead writes nothing (a new policy stays without status);
    // made leader, it writes that one, and no-authn, whose generation 1 no longer
    // serves after the restart (a restarted controller has no last valid version),
    // and finds the others as it would write them, restarted though it is.
    drop(mesh);
    let objects = [
        ("authorizationpolicy", "good"),
        ("authorizationpolicy", "no-server"),
        ("server", "web-http"),
        ("server", "api-http"),
        ("meshtlsauthentication", "meshed"),
        ("meshtlsauthentication", "admins"),
    ];
    let versions: Vec<Value> = objects
        .iter()
        .map(|(k, n)| policy(&api, k, n)["metadata"]["resourceVersion"].clone())
        .collect();
    let (lead, leader) = watch::channel(false);
    let mesh = Mesh::start(&api.kubeconfig(), "policy", Some(leader)).await;
    apply(
        &api,
        r#"
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: later, namespace: shop}
spec:
  targetRef: {group: policy.weft.io, kind: Server, name: web-http}
"#,
    );
    assert!(
        weft_test::eventually(PROMPT, || async {
            mesh.controller()
                .policy_reports()
                .iter()
                .any(|r| r.key.as_ref().is_some_and(|k| k.name == "later"))
        })
        .await,
        "AuthorizationPolicy later never reached the controller's index"
    );
    let later = policy(&api, "authorizationpolicy", "later");
    assert!(
        later["status"]["conditions"].is_null(),
        "written by a replica that does not lead: {:#}",
        later["status"]
    );
    lead.send_replace(true);
    conditions(&api, "authorizationpolicy", "later", &[ACCEPTED, RESOLVED]).await;
    assert!(
        weft_test::eventually(PROMPT, || async {
            mesh.writes("AuthorizationPolicy", "unchanged") >= 2
                && mesh.writes("AuthorizationPolicy", "written") >= 2
                && mesh.writes("Server", "unchanged") >= 2
                && mesh.writes("MeshTLSAuthentication", "unchanged") >= 2
        })
        .await,
        "the new leader did not find every object's status as it would write it: {:?}",
        ["AuthorizationPolicy", "Server", "MeshTLSAuthentication"].map(|k| (
            k,
            ["written", "unchanged", "stale", "failed"].map(|r| (r, mesh.writes(k, r)))
        ))
    );
    let after: Vec<Value> = objects
        .iter()
        .map(|(k, n)| policy(&api, k, n)["metadata"]["resourceVersion"].clone())
        .collect();
    assert_eq!(
        after, versions,
        "policy objects rewritten by the new leader"
    );
    assert_eq!(
        mesh.writes("AuthorizationPolicy", "written"),
        2,
        "only later and no-authn are written"
    );
    let no_authn = conditions(
        &api,
        "authorizationpolicy",
        "no-authn",
        &[
            ACCEPTED,
            ("ResolvedRefs", "False", "AuthenticationNotFound"),
        ],
    )
    .await;
    let m = message(&no_authn, "ResolvedRefs");
    assert!(!m.contains("keeps serving"), "{m}");
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
    established(&api, "httproutes.gateway.networking.k8s.io");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_statuses_are_written() {
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
  metadata: {name: stock, namespace: shop}
  spec: {selector: {app: stock}, ports: [{name: grpc, port: 8080, appProtocol: kubernetes.io/h2c}]}
"#,
    );
    apply(
        &api,
        &HTTPROUTE_CRD
            .replace("httproute", "grpcroute")
            .replace("HTTPRoute", "GRPCRoute"),
    );
    established(&api, "grpcroutes.gateway.networking.k8s.io");
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: gateway.networking.k8s.io/v1
  kind: GRPCRoute
  metadata: {name: good, namespace: shop}
  spec:
    parentRefs: [{group: "", kind: Service, name: stock, port: 8080}]
    rules:
    - matches: [{method: {service: shop.Stock, method: Get}}]
      backendRefs: [{name: stock, port: 8080}]
- apiVersion: gateway.networking.k8s.io/v1
  kind: GRPCRoute
  metadata: {name: missing, namespace: shop}
  spec:
    parentRefs: [{group: "", kind: Service, name: stock, port: 8080}]
    rules: [{backendRefs: [{name: nosuch, port: 8080}]}]
"#,
    );
    let _mesh = Mesh::start(&api.kubeconfig(), "grpc", None).await;
    let (entry, _) = written_of(&api, "grpcroute", "good").await;
    assert_eq!(
        entry["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "name": "stock", "port": 8080}),
        "{entry:#}"
    );
    for kind in ["Accepted", "ResolvedRefs"] {
        assert_eq!(
            condition(&entry, kind),
            Some(("True".into(), kind.into(), 1)),
            "{entry:#}"
        );
    }
    let (entry, _) = written_of(&api, "grpcroute", "missing").await;
    assert_eq!(
        condition(&entry, "ResolvedRefs"),
        Some(("False".into(), "BackendNotFound".into(), 1)),
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

//! The injector against a real kube-apiserver (`weft_test::kube::KubeApi`, skipped with
//! a message when its binaries are not built, failing under CI): the API server calls
//! the webhook over HTTPS for each new pod, and the stored pods show what it did.

mod common;

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use common::{eventually, Injector};
use serde_json::{json, Value};
use weft_test::kube::KubeApi;

fn pod(name: &str, namespace: &str, annotations: Value, spec_extra: Value) -> String {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
        "spec": { "containers": [{ "name": "app", "image": "books:1" }] },
    });
    if let Value::Object(extra) = spec_extra {
        for (k, v) in extra {
            pod["spec"][k] = v;
        }
    }
    pod.to_string()
}

/// `kubectl create -f -`: stdout and stderr (warnings), or the error.
fn create(api: &KubeApi, object: &str, dry_run: bool) -> Result<(String, String), String> {
    let mut cmd = api.kubectl_command();
    cmd.args(["create", "-o", "json", "-f", "-"]);
    if dry_run {
        cmd.arg("--dry-run=server");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    if out.status.success() {
        Ok((stdout, stderr))
    } else {
        Err(stderr)
    }
}

fn stored(api: &KubeApi, namespace: &str, name: &str) -> Value {
    serde_json::from_str(
        &api.kubectl(&["-n", namespace, "get", "pod", name, "-o", "json"])
            .unwrap(),
    )
    .unwrap()
}

fn init_names(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn injected(pod: &Value) -> bool {
    init_names(pod) == ["weft-init", "weft-proxy"]
}

/// Namespaces `meshed` (annotated `weft.io/inject: enabled`) and `plain`, each with its
/// `default` ServiceAccount (no controller manager makes them here).
fn namespaces(api: &KubeApi) {
    for ns in ["meshed", "plain"] {
        api.kubectl(&["create", "namespace", ns]).unwrap();
        api.kubectl(&["-n", ns, "create", "serviceaccount", "default"])
            .unwrap();
    }
    api.kubectl(&["annotate", "namespace", "meshed", "weft.io/inject=enabled"])
        .unwrap();
}

/// Waits until the API server calls the injector (its webhook configuration is read
/// asynchronously): a dry-run pod in `namespace` (annotated) comes back injected.
fn wait_until_called(api: &KubeApi, namespace: &str) {
    let probe = pod("probe", namespace, json!({}), Value::Null);
    let called = eventually(Duration::from_secs(30), || {
        let (out, _) = create(api, &probe, true).ok()?;
        injected(&serde_json::from_str(&out).ok()?).then_some(())
    });
    assert!(called.is_some(), "the API server never called the injector");
}

#[test]
fn the_api_server_injects_pods_through_the_webhook() {
    let Some(api) = KubeApi::start() else { return };
    let injector = Injector::start(&api, Default::default());
    namespaces(&api);
    injector.register(&api, "weft-injector", "Fail");
    wait_until_called(&api, "meshed");

    // A pod in the annotated namespace: weft-init, then the proxy as a native sidecar.
    create(&api, &pod("web", "meshed", json!({}), Value::Null), false).unwrap();
    let web = stored(&api, "meshed", "web");
    assert!(injected(&web), "{web:#}");
    let proxy = &web["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["ports"][0]["containerPort"], 4143);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(
        web["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let identity = web["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "weft-identity")
        .unwrap();
    assert_eq!(
        identity["projected"]["sources"],
        json!([{ "serviceAccountToken": {
            "audience": "identity.weft.io", "expirationSeconds": 3600, "path": "token",
        } }]),
        "the token only: the trust anchors come inline, from no ConfigMap"
    );
    let anchors = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WEFT_TRUST_ANCHORS_PEM")
        .unwrap();
    assert_eq!(anchors["value"], injector.anchors_pem.as_str());
    assert_eq!(
        web["metadata"]["annotations"]["weft.io/injected"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        web["spec"]["containers"].as_array().unwrap().len(),
        1,
        "the app's containers are untouched"
    );

    // A pod created injected already (what `weft inject` prints): stored as given.
    let mut again = web.clone();
    again["metadata"] = json!({
        "name": "again",
        "namespace": "meshed",
        "annotations": web["metadata"]["annotations"],
    });
    again.as_object_mut().unwrap().remove("status");
    create(&api, &again.to_string(), false).unwrap();
    let stored_again = stored(&api, "meshed", "again");
    assert!(injected(&stored_again), "{stored_again:#}");
    assert_eq!(
        stored_again["spec"]["volumes"].as_array().unwrap().len(),
        web["spec"]["volumes"].as_array().unwrap().len()
    );

    // Host network: created as it is, with a warning for whoever created it.
    let host = pod("host", "meshed", json!({}), json!({ "hostNetwork": true }));
    let (_, warnings) = create(&api, &host, false).unwrap();
    assert!(
        warnings.contains("weft.io/inject: not injected: the pod uses the host's network"),
        "{warnings}"
    );
    assert!(init_names(&stored(&api, "meshed", "host")).is_empty());

    // The pod's own word: disabled in an enabled namespace, enabled in a plain one.
    let off = pod(
        "off",
        "meshed",
        json!({ "weft.io/inject": "disabled" }),
        Value::Null,
    );
    create(&api, &off, false).unwrap();
    assert!(init_names(&stored(&api, "meshed", "off")).is_empty());
    create(&api, &pod("bare", "plain", json!({}), Value::Null), false).unwrap();
    assert!(init_names(&stored(&api, "plain", "bare")).is_empty());
    let on = pod(
        "on",
        "plain",
        json!({ "weft.io/inject": "enabled" }),
        Value::Null,
    );
    create(&api, &on, false).unwrap();
    assert!(injected(&stored(&api, "plain", "on")));

    // A bad annotation refuses the pod, naming it.
    let bad = pod(
        "bad",
        "meshed",
        json!({ "weft.io/skip-inbound-ports": "abc" }),
        Value::Null,
    );
    let refused = create(&api, &bad, false).unwrap_err();
    assert!(
        refused.contains(
            r#"denied the request: weft injector: annotation weft.io/skip-inbound-ports: "abc""#
        ),
        "{refused}"
    );

    // Straight to the injector: a malformed AdmissionReview is a 400, not a crash.
    let (status, body) = injector.request("POST /inject HTTP/1.1", b"{\"kind\": ");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.starts_with("not an admission.k8s.io/v1 AdmissionReview"),
        "{body}"
    );
    let (status, metrics) = injector.request("GET /metrics HTTP/1.1", b"");
    assert_eq!(status, 200);
    for line in [
        r#"weft_injector_admissions_total{result="skipped",reason="already_injected"} 1"#,
        r#"weft_injector_admissions_total{result="skipped",reason="host_network"} 1"#,
        r#"weft_injector_admissions_total{result="refused",reason="invalid_annotation"} 1"#,
        r#"weft_injector_admissions_total{result="error",reason="malformed"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }
}

#[test]
fn with_the_injector_down_ignore_admits_pods_as_they_are_and_fail_refuses_them() {
    let Some(api) = KubeApi::start() else { return };
    let mut injector = Injector::start(&api, Default::default());
    namespaces(&api);
    injector.register(&api, "weft-injector", "Ignore");
    wait_until_called(&api, "meshed");
    injector.stop();

    // failurePolicy: Ignore: the pod is created, without the proxy.
    create(
        &api,
        &pod("unmeshed", "meshed", json!({}), Value::Null),
        false,
    )
    .unwrap();
    assert!(init_names(&stored(&api, "meshed", "unmeshed")).is_empty());

    // failurePolicy: Fail: creation is refused, saying the webhook could not be called.
    injector.register(&api, "weft-injector", "Fail");
    let probe = pod("probe", "meshed", json!({}), Value::Null);
    let refused = eventually(Duration::from_secs(30), || create(&api, &probe, true).err());
    let refused = refused.expect("pods were still admitted with failurePolicy Fail");
    assert!(
        refused.contains(r#"failed calling webhook "inject.weft.io""#),
        "{refused}"
    );
    let err = create(
        &api,
        &pod("refused", "meshed", json!({}), Value::Null),
        false,
    )
    .unwrap_err();
    assert!(
        err.contains(r#"failed calling webhook "inject.weft.io""#),
        "{err}"
    );
    assert!(api
        .kubectl(&["-n", "meshed", "get", "pod", "refused"])
        .is_err());
}

#[test]
fn a_deployments_pods_are_injected_when_the_replicaset_creates_them() {
    let Some(api) = KubeApi::start_with_controller_manager() else {
        return;
    };
    let injector = Injector::start(&api, Default::default());
    api.kubectl(&["create", "namespace", "shop"]).unwrap();
    api.kubectl(&["annotate", "namespace", "shop", "weft.io/inject=enabled"])
        .unwrap();
    // The controller manager makes the namespace's default ServiceAccount.
    let account = eventually(Duration::from_secs(30), || {
        api.kubectl(&["-n", "shop", "get", "serviceaccount", "default"])
            .ok()
    });
    assert!(account.is_some(), "no default ServiceAccount in shop");
    injector.register(&api, "weft-injector", "Fail");
    wait_until_called(&api, "shop");

    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "books", "namespace": "shop" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "books" } },
            "template": {
                "metadata": { "labels": { "app": "books" } },
                "spec": { "containers": [{ "name": "app", "image": "books:1" }] },
            },
        },
    });
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&deployment.to_string()))
        .unwrap();
    let pods = eventually(Duration::from_secs(30), || {
        let list: Value = serde_json::from_str(
            &api.kubectl(&["-n", "shop", "get", "pods", "-l", "app=books", "-o", "json"])
                .ok()?,
        )
        .ok()?;
        let items = list["items"].as_array()?.clone();
        (items.len() == 2).then_some(items)
    })
    .expect("the ReplicaSet did not create two pods");
    for pod in &pods {
        assert!(injected(pod), "{pod:#}");
        let env = pod["spec"]["initContainers"][1]["env"].as_array().unwrap();
        let deployment = env.iter().find(|e| e["name"] == "WEFT_DEPLOYMENT");
        assert_eq!(
            deployment.map(|e| &e["value"]),
            Some(&json!("books")),
            "{env:?}"
        );
    }
}

/// The proxy's zone: the injector asks the downward API for the pod's
/// `topology.kubernetes.io/zone` label, which the API server's PodTopologyLabels
/// admission copies from the Node when the pod is bound to it.
#[test]
fn a_bound_pod_carries_its_nodes_zone_for_the_proxy() {
    let Some(api) = KubeApi::start() else { return };
    let injector = Injector::start(&api, Default::default());
    namespaces(&api);
    injector.register(&api, "weft-injector", "Fail");
    wait_until_called(&api, "meshed");
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a","labels":{"topology.kubernetes.io/zone":"zone-a","topology.kubernetes.io/region":"region-1"}}}"#),
    )
    .unwrap();
    // The admission reads Nodes from its informer: wait until it knows node-a (a
    // dry-run pod naming the node comes back labelled).
    let probe = pod(
        "zone-probe",
        "plain",
        json!({}),
        json!({"nodeName": "node-a"}),
    );
    eventually(Duration::from_secs(30), || {
        let (out, _) = create(&api, &probe, true).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        (v["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-a").then_some(())
    })
    .expect("the API server never labelled a pod on node-a with its zone");
    create(&api, &pod("web", "meshed", json!({}), Value::Null), false).unwrap();
    let web = stored(&api, "meshed", "web");
    let proxy = &web["spec"]["initContainers"][1];
    let zone = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WEFT_ZONE")
        .unwrap_or_else(|| panic!("no WEFT_ZONE: {proxy:#}"));
    assert_eq!(
        zone["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['topology.kubernetes.io/zone']"
    );
    // Bound as the scheduler binds it (the pods/binding subresource).
    api.kubectl_stdin(
        &["create", "--raw", "/api/v1/namespaces/meshed/pods/web/binding", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"web","namespace":"meshed"},"target":{"apiVersion":"v1","kind":"Node","name":"node-a"}}"#),
    )
    .unwrap();
    let web = stored(&api, "meshed", "web");
    assert_eq!(web["spec"]["nodeName"], "node-a");
    assert_eq!(
        web["metadata"]["labels"]["topology.kubernetes.io/zone"], "zone-a",
        "the API server did not copy the Node's zone onto the pod: {:#}",
        web["metadata"]
    );
}

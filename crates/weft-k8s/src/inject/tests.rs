use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use super::*;

fn pod_json(annotations: Value, spec_extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "web-1", "namespace": "books" },
        "spec": { "containers": [{ "name": "app", "image": "books:1" }] },
    });
    if !annotations.is_null() {
        pod["metadata"]["annotations"] = annotations;
    }
    if let Value::Object(extra) = spec_extra {
        for (k, v) in extra {
            pod["spec"][k] = v;
        }
    }
    pod
}

fn enabled() -> Value {
    json!({ INJECT_ANNOTATION: "enabled" })
}

fn typed(pod: &Value) -> Pod {
    serde_json::from_value(pod.clone()).unwrap()
}

/// A trust anchor (its bytes are not checked by the injection itself).
const ANCHORS_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBeTCCAR6gAwIBAgIU\n-----END CERTIFICATE-----\n";

fn config() -> InjectConfig {
    InjectConfig {
        trust_anchors_pem: ANCHORS_PEM.into(),
        ..InjectConfig::default()
    }
}

fn decide(pod: &Value) -> Result<Decision, InvalidAnnotation> {
    inject(&typed(pod), None, &config())
}

/// The pod with its patch applied.
fn injected(pod: &Value) -> Value {
    let Decision::Inject(injection) = decide(pod).unwrap() else {
        panic!("not injected: {pod}")
    };
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &injection.patch).unwrap();
    patched
}

fn skipped(pod: &Value) -> Skip {
    match decide(pod).unwrap() {
        Decision::Skip(skip) => skip,
        Decision::Inject(i) => panic!("injected: {:?}", i.patch),
    }
}

fn init_containers(pod: &Value) -> Vec<Container> {
    typed(pod).spec.unwrap().init_containers.unwrap()
}

fn proxy(pod: &Value) -> Container {
    init_containers(pod)
        .into_iter()
        .find(|c| c.name == PROXY_CONTAINER)
        .unwrap()
}

fn env<'a>(container: &'a Container, name: &str) -> &'a EnvVar {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", container.env))
}

fn env_value(container: &Container, name: &str) -> String {
    env(container, name).value.clone().unwrap()
}

fn invalid(annotations: Value) -> String {
    decide(&pod_json(annotations, Value::Null))
        .unwrap_err()
        .to_string()
}

#[test]
fn an_enabled_pod_gets_the_init_container_the_native_sidecar_and_the_annotation() {
    let pod = injected(&pod_json(enabled(), Value::Null));
    let inits = init_containers(&pod);
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER]);

    let init = &inits[0];
    assert_eq!(
        init.args.as_ref().unwrap(),
        &["init", "--proxy-uid", "2102"]
    );
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_ref().unwrap(), &["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_ref().unwrap(), &["ALL"]);
    assert_eq!(init.restart_policy, None, "weft-init runs once");

    let proxy = &inits[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(proxy.image.as_deref(), Some(DEFAULT_PROXY_IMAGE));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.run_as_user, sc.run_as_non_root),
        (Some(2102), Some(true))
    );
    let ports: Vec<i32> = proxy
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [4143, 4191]);
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
        (get.path.clone().unwrap(), get.port.clone())
    };
    let admin = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(4191);
    assert_eq!(
        probe_path(&proxy.readiness_probe),
        ("/ready".into(), admin.clone())
    );
    assert_eq!(
        probe_path(&proxy.liveness_probe),
        ("/live".into(), admin.clone())
    );
    assert_eq!(probe_path(&proxy.startup_probe), ("/ready".into(), admin));
    for (name, field) in [
        ("WEFT_POD", "metadata.name"),
        ("WEFT_NAMESPACE", "metadata.namespace"),
        ("WEFT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ] {
        let from = env(proxy, name).value_from.as_ref().unwrap();
        assert_eq!(from.field_ref.as_ref().unwrap().field_path, field);
    }
    assert_eq!(
        env_value(proxy, "WEFT_CONTROLLER"),
        "weft-controller.weft-system.svc:8090"
    );
    assert_eq!(
        env_value(proxy, "WEFT_DESTINATION"),
        "weft-controller.weft-system.svc:8090"
    );
    assert_eq!(
        env_value(proxy, "WEFT_IDENTITY_TOKEN"),
        "/var/run/weft/identity/token"
    );
    assert_eq!(env_value(proxy, "WEFT_TRUST_ANCHORS_PEM"), ANCHORS_PEM);
    assert_eq!(env_value(proxy, "WEFT_LOG"), "info");
    let mounts = proxy.volume_mounts.as_ref().unwrap();
    assert_eq!(
        (mounts[0].name.as_str(), mounts[0].mount_path.as_str()),
        (IDENTITY_VOLUME, IDENTITY_DIR)
    );

    let spec = typed(&pod).spec.unwrap();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == IDENTITY_VOLUME)
        .unwrap();
    let sources = volume.projected.as_ref().unwrap().sources.as_ref().unwrap();
    let token = sources[0].service_account_token.as_ref().unwrap();
    assert_eq!(token.audience.as_deref(), Some("identity.weft.io"));
    assert_eq!(token.path, "token");
    assert_eq!(
        sources.len(),
        1,
        "the token only: the trust anchors come inline, from no ConfigMap"
    );
    assert_eq!(spec.containers[0].name, "app", "the app is untouched");

    assert_eq!(
        pod["metadata"]["annotations"][INJECTED_ANNOTATION],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(pod["metadata"]["annotations"][INJECT_ANNOTATION], "enabled");
}

#[test]
fn injecting_twice_changes_nothing_and_existing_lists_are_extended() {
    let pod = pod_json(
        json!({ INJECT_ANNOTATION: "enabled", "team": "books" }),
        json!({
            "initContainers": [{ "name": "migrate", "image": "books:1" }],
            "volumes": [{ "name": "data", "emptyDir": {} }],
        }),
    );
    let once = injected(&pod);
    let names: Vec<String> = init_containers(&once).into_iter().map(|c| c.name).collect();
    // The proxy starts before the pod's own init containers, which it then carries.
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
    let volumes: Vec<String> = typed(&once)
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(volumes, ["data", IDENTITY_VOLUME, INIT_RUN_VOLUME]);
    assert_eq!(once["metadata"]["annotations"]["team"], "books");
    assert_eq!(
        skipped(&once),
        Skip::AlreadyInjected {
            version: env!("CARGO_PKG_VERSION").into()
        }
    );
}

#[test]
fn the_namespace_enables_by_annotation_or_label_and_the_pod_has_the_last_word() {
    let config = InjectConfig::default();
    let ns = |annotations: Option<&str>, labels: Option<&str>| {
        let map = |v: Option<&str>| {
            v.map(|v| BTreeMap::from([(INJECT_ANNOTATION.to_owned(), v.to_owned())]))
        };
        ObjectMeta {
            name: Some("books".into()),
            annotations: map(annotations),
            labels: map(labels),
            ..ObjectMeta::default()
        }
    };
    let plain = typed(&pod_json(Value::Null, Value::Null));
    let decide = |pod: &Pod, ns: Option<&ObjectMeta>| inject(pod, ns, &config).unwrap();
    assert!(matches!(
        decide(&plain, Some(&ns(Some("enabled"), None))),
        Decision::Inject(_)
    ));
    assert!(matches!(
        decide(&plain, Some(&ns(None, Some("enabled")))),
        Decision::Inject(_)
    ));
    for namespace in [None, Some(ns(None, None)), Some(ns(Some("disabled"), None))] {
        assert!(matches!(
            decide(&plain, namespace.as_ref()),
            Decision::Skip(Skip::NotEnabled)
        ));
    }
    let disabled = typed(&pod_json(
        json!({ INJECT_ANNOTATION: "disabled" }),
        Value::Null,
    ));
    assert!(matches!(
        decide(&disabled, Some(&ns(Some("enabled"), Some("enabled")))),
        Decision::Skip(Skip::Disabled)
    ));
    // Quiet skips: nothing asked for the proxy, or the pod turned it off.
    assert_eq!(Skip::NotEnabled.warning(), None);
    assert_eq!(Skip::Disabled.warning(), None);
}

#[test]
fn host_network_pods_and_pods_with_our_names_are_skipped_with_a_warning() {
    let host = pod_json(enabled(), json!({ "hostNetwork": true }));
    assert_eq!(skipped(&host), Skip::HostNetwork);
    assert_eq!(
        Skip::HostNetwork.warning().unwrap(),
        "weft.io/inject: not injected: the pod uses the host's network (hostNetwork: true)"
    );
    let own_proxy = pod_json(
        enabled(),
        json!({ "containers": [{ "name": "app" }, { "name": "weft-proxy" }] }),
    );
    let skip = skipped(&own_proxy);
    assert_eq!(
        skip,
        Skip::NameTaken {
            name: "weft-proxy".into()
        }
    );
    assert!(skip.warning().unwrap().contains("named weft-proxy"));
    let volume = pod_json(
        enabled(),
        json!({ "volumes": [{ "name": IDENTITY_VOLUME, "emptyDir": {} }] }),
    );
    assert_eq!(
        skipped(&volume),
        Skip::NameTaken {
            name: IDENTITY_VOLUME.into()
        }
    );
    // Not asking for injection: no warning, however odd the pod.
    let quiet = pod_json(Value::Null, json!({ "hostNetwork": true }));
    assert_eq!(skipped(&quiet), Skip::NotEnabled);
}

#[test]
fn each_annotation_reaches_the_container_it_tunes() {
    let pod = injected(&pod_json(
        json!({
            INJECT_ANNOTATION: "enabled",
            SKIP_INBOUND_PORTS: "22, 4000-4010",
            SKIP_OUTBOUND_PORTS: "5432",
            OPAQUE_PORTS: "8086,9000-9002",
            PROXY_CPU_REQUEST: "200m",
            PROXY_CPU_LIMIT: "1",
            PROXY_MEMORY_REQUEST: "64Mi",
            PROXY_MEMORY_LIMIT: "128Mi",
            PROXY_LOG_LEVEL: "warn,weft_proxy=debug",
        }),
        Value::Null,
    ));
    let init = &init_containers(&pod)[0];
    assert_eq!(
        init.args.as_ref().unwrap(),
        &[
            "init",
            "--skip-inbound-ports",
            "22,4000-4010",
            "--skip-outbound-ports",
            "5432",
            "--proxy-uid",
            "2102"
        ]
    );
    let proxy = proxy(&pod);
    assert_eq!(
        env_value(&proxy, "WEFT_OPAQUE_PORTS"),
        "25,587,3306,4444,5432,6379,8086,9000,9001,9002,9300,11211"
    );
    assert_eq!(env_value(&proxy, "WEFT_LOG"), "warn,weft_proxy=debug");
    let resources = proxy.resources.unwrap();
    let q =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| m.as_ref().unwrap()[k].0.clone();
    assert_eq!(q(&resources.requests, "cpu"), "200m");
    assert_eq!(q(&resources.limits, "cpu"), "1");
    assert_eq!(q(&resources.requests, "memory"), "64Mi");
    assert_eq!(q(&resources.limits, "memory"), "128Mi");

    // Without annotations: the injector's defaults (no CPU limit).
    let plain = proxy_of_default();
    let resources = plain.resources.clone().unwrap();
    assert_eq!(q(&resources.requests, "cpu"), "100m");
    assert!(!resources.limits.as_ref().unwrap().contains_key("cpu"));
    assert_eq!(
        env_value(&plain, "WEFT_OPAQUE_PORTS"),
        "25,587,3306,4444,5432,6379,9300,11211"
    );
}

fn proxy_of_default() -> Container {
    proxy(&injected(&pod_json(enabled(), Value::Null)))
}

#[test]
fn bad_annotation_values_are_refused_naming_the_annotation() {
    let with = |k: &str, v: &str| json!({ INJECT_ANNOTATION: "enabled", k: v });
    assert_eq!(
        invalid(with(SKIP_INBOUND_PORTS, "abc")),
        r#"annotation weft.io/skip-inbound-ports: "abc": "abc" is not a port (1-65535) or a port range (4000-4010)"#
    );
    assert_eq!(
        invalid(with(SKIP_OUTBOUND_PORTS, "5432,70000")),
        r#"annotation weft.io/skip-outbound-ports: "5432,70000": "70000" is not a port (1-65535) or a port range (4000-4010)"#
    );
    assert!(invalid(with(OPAQUE_PORTS, "1-65535")).starts_with(
        r#"annotation weft.io/opaque-ports: "1-65535": names 65535 ports, more than 1024"#
    ));
    assert_eq!(
        invalid(with(PROXY_MEMORY_LIMIT, "lots")),
        r#"annotation weft.io/proxy-memory-limit: "lots": not a quantity (such as 100m, 0.5 or 64Mi)"#
    );
    assert_eq!(
        invalid(json!({
            INJECT_ANNOTATION: "enabled",
            PROXY_CPU_REQUEST: "2",
            PROXY_CPU_LIMIT: "500m",
        })),
        r#"annotation weft.io/proxy-cpu-request: "2": more than weft.io/proxy-cpu-limit (500m); a request must not exceed its limit"#
    );
    assert_eq!(
        invalid(with(PROXY_LOG_LEVEL, "verbose")),
        r#"annotation weft.io/proxy-log-level: "verbose": "verbose" is not a level (trace, debug, info, warn, error, off) or target=level"#
    );
    assert_eq!(
        invalid(json!({ INJECT_ANNOTATION: "yes" })),
        r#"annotation weft.io/inject: "yes": expected enabled or disabled"#
    );
    // A pod that is not injected is not judged on its tuning annotations.
    let not_enabled = pod_json(json!({ SKIP_INBOUND_PORTS: "abc" }), Value::Null);
    assert_eq!(skipped(&not_enabled), Skip::NotEnabled);
}

#[test]
fn quantities_parse_as_kubernetes_writes_them() {
    for (q, v) in [
        ("100m", 0.1),
        ("0.5", 0.5),
        ("2", 2.0),
        ("64Mi", 64.0 * 1024.0 * 1024.0),
        ("1G", 1e9),
        ("1e3", 1e3),
        ("+1", 1.0),
    ] {
        assert_eq!(quantity_value(q), Some(v), "{q}");
    }
    for bad in ["", "m", "-1", "1.2.3", "1x", "Mi", "1e", "ten"] {
        assert_eq!(quantity_value(bad), None, "{bad:?}");
    }
}

#[test]
fn a_replicaset_pod_carries_its_deployments_name() {
    let mut pod = pod_json(enabled(), Value::Null);
    pod["metadata"]["labels"] = json!({ "pod-template-hash": "5d8f9c" });
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "books-5d8f9c",
        "uid": "1", "controller": true,
    }]);
    assert_eq!(
        env_value(&proxy(&injected(&pod)), "WEFT_DEPLOYMENT"),
        "books"
    );
    let plain = proxy_of_default();
    assert!(plain
        .env
        .unwrap()
        .iter()
        .all(|e| e.name != "WEFT_DEPLOYMENT"));
}

fn real_anchor_pem() -> String {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn the_injectors_trust_anchors_are_read_and_checked_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("weft-inject-anchors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("trust-anchors.pem");
    let pem = real_anchor_pem();
    std::fs::write(&good, &pem).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let garbled = dir.join("garbled.pem");
    std::fs::write(&garbled, &pem[..pem.len() / 2]).unwrap();
    let missing = dir.join("missing.pem");
    let results = [&good, &empty, &garbled, &missing].map(|p| read_trust_anchors(p));
    std::fs::remove_dir_all(&dir).unwrap();

    let [good_r, empty_r, garbled_r, missing_r] = results;
    assert_eq!(good_r.unwrap(), pem);
    assert_eq!(
        empty_r.unwrap_err().to_string(),
        format!(
            "trust anchors {}: no certificate in the bundle",
            empty.display()
        )
    );
    let err = garbled_r.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "trust anchors {}: not a PEM certificate bundle",
            garbled.display()
        )),
        "{err}"
    );
    let err = missing_r.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "cannot read trust anchors {}: ",
            missing.display()
        )),
        "{err}"
    );
}

/// Every environment variable the injector gives the proxy is one weft-proxy reads, and
/// its value parses; the init container's arguments are `weft-proxy init`'s.
#[test]
fn the_proxy_accepts_the_injected_environment_and_arguments() {
    use clap::{CommandFactory as _, Parser as _};
    let anchors_pem = real_anchor_pem();
    let config = InjectConfig {
        trust_anchors_pem: anchors_pem.clone(),
        ..InjectConfig::default()
    };
    let pod = pod_json(
        json!({
            INJECT_ANNOTATION: "enabled",
            SKIP_INBOUND_PORTS: "22,4000-4010",
            SKIP_OUTBOUND_PORTS: "5432",
            PROXY_LOG_LEVEL: "debug",
        }),
        Value::Null,
    );
    let Decision::Inject(injection) = inject(&typed(&pod), None, &config).unwrap() else {
        panic!("not injected")
    };
    let mut pod = pod;
    json_patch::patch(&mut pod, &injection.patch).unwrap();
    let command = weft_proxy::Args::command();
    let mut argv = vec!["weft-proxy".to_owned()];
    for var in proxy(&pod).env.unwrap() {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var.name.as_str()))
            .unwrap_or_else(|| panic!("weft-proxy reads no {}", var.name));
        // Downward API fields: a value of the kind the kubelet gives.
        let value = var.value.unwrap_or_else(|| "books".into());
        argv.push(format!("--{}={value}", arg.get_long().unwrap()));
    }
    let args = weft_proxy::Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    // The inline anchors turn on mTLS and verify the destination service.
    let proxy_config = args.into_config().unwrap();
    assert!(proxy_config.identity.is_some());
    let destination = proxy_config.destination.unwrap();
    assert_eq!(destination.anchors_pem, anchors_pem.as_bytes());

    let init = &init_containers(&pod)[0];
    let args = weft_proxy::init::InitArgs::try_parse_from(init.args.as_ref().unwrap()).unwrap();
    assert_eq!(args.skip_inbound_ports.len(), 2);
    assert_eq!(args.proxy_uid, 2102);
    // The proxy's own default opaque ports are the ones the injector keeps.
    let opaque = command
        .get_arguments()
        .find(|a| a.get_long() == Some("opaque-ports"))
        .unwrap();
    let defaults: Vec<String> = opaque
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let ours: Vec<String> = PROXY_DEFAULT_OPAQUE_PORTS
        .iter()
        .map(u16::to_string)
        .collect();
    assert_eq!(defaults.join(","), ours.join(","));
}

#[test]
fn http_probes_go_to_the_proxys_admin_port_and_the_proxy_gets_the_originals() {
    let pod = pod_json(
        enabled(),
        json!({"containers": [{
            "name": "app",
            "image": "books:1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 3},
            "livenessProbe": {"httpGet": {"path": "/live", "port": 9000, "httpHeaders": [{"name": "x-probe", "value": "1"}]}},
            "startupProbe": {"httpGet": {"path": "/start", "port": 8443, "scheme": "HTTPS"}},
        }, {
            "name": "sidecar",
            "image": "s:1",
            "readinessProbe": {"tcpSocket": {"port": 7000}},
        }]}),
    );
    let pod = injected(&pod);
    let app = &pod["spec"]["containers"][0];
    assert_eq!(
        app["readinessProbe"],
        json!({"httpGet": {"path": "/app-probe/app/readiness", "port": 4191, "scheme": "HTTP"}, "periodSeconds": 3})
    );
    assert_eq!(
        app["livenessProbe"]["httpGet"],
        json!({"path": "/app-probe/app/liveness", "port": 4191, "scheme": "HTTP"})
    );
    // HTTPS and TCP probes stay as they are.
    assert_eq!(app["startupProbe"]["httpGet"]["port"], 8443);
    assert_eq!(
        pod["spec"]["containers"][1]["readinessProbe"],
        json!({"tcpSocket": {"port": 7000}})
    );
    let probes = weft_proxy::app_probe::parse(&env_value(&proxy(&pod), "WEFT_APP_PROBES")).unwrap();
    assert_eq!(probes.len(), 2, "{probes:?}");
    assert_eq!(probes["app/readiness"].port, 8080);
    assert_eq!(probes["app/readiness"].path, "/ready");
    assert_eq!(probes["app/liveness"].port, 9000);
    assert_eq!(
        probes["app/liveness"].headers,
        [("x-probe".to_owned(), "1".to_owned())]
    );
    // A pod without HTTP probes gets no WEFT_APP_PROBES.
    let plain = injected(&pod_json(enabled(), Value::Null));
    assert!(proxy(&plain)
        .env
        .unwrap()
        .iter()
        .all(|e| e.name != "WEFT_APP_PROBES"));
}

mod webhook {
    use super::*;
    use kube::core::admission::AdmissionReview;
    use kube::core::DynamicObject;

    fn review(object: Value, kind: &str, operation: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "3f1c",
                "kind": { "group": "", "version": "v1", "kind": kind },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "books",
                "operation": operation,
                "userInfo": { "username": "admin" },
                "object": object,
            }
        }))
        .unwrap()
    }

    fn answer(webhook: &Webhook, body: &[u8]) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answer = rt.block_on(webhook.review(body));
        let status = answer.status.as_u16();
        let body = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.body).into()));
        (status, body)
    }

    #[test]
    fn answers_inject_skip_refuse_ignore_and_malformed_bodies() {
        let webhook = Webhook::new(InjectConfig::default(), None);

        let (status, body) = answer(
            &webhook,
            &review(pod_json(enabled(), Value::Null), "Pod", "CREATE"),
        );
        assert_eq!(status, 200);
        let response = &body["response"];
        assert_eq!(response["uid"], "3f1c");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        // kube serializes the patch as bytes (base64 in JSON).
        let parsed: AdmissionReview<DynamicObject> = serde_json::from_value(body.clone()).unwrap();
        let patch: json_patch::Patch =
            serde_json::from_slice(parsed.response.unwrap().patch.as_ref().unwrap()).unwrap();
        let mut pod = pod_json(enabled(), Value::Null);
        json_patch::patch(&mut pod, &patch).unwrap();
        assert_eq!(init_containers(&pod)[1].name, PROXY_CONTAINER);

        let host = pod_json(enabled(), json!({ "hostNetwork": true }));
        let (status, body) = answer(&webhook, &review(host, "Pod", "CREATE"));
        assert_eq!(status, 200);
        assert_eq!(body["response"]["allowed"], true);
        assert!(body["response"].get("patch").is_none(), "{body}");
        assert_eq!(
            body["response"]["warnings"][0],
            "weft.io/inject: not injected: the pod uses the host's network (hostNetwork: true)"
        );

        let bad = pod_json(
            json!({ INJECT_ANNOTATION: "enabled", SKIP_INBOUND_PORTS: "abc" }),
            Value::Null,
        );
        let (status, body) = answer(&webhook, &review(bad, "Pod", "CREATE"));
        assert_eq!(status, 200);
        assert_eq!(body["response"]["allowed"], false);
        let message = body["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("weft injector: annotation weft.io/skip-inbound-ports: \"abc\""),
            "{message}"
        );

        let (_, body) = answer(
            &webhook,
            &review(pod_json(enabled(), Value::Null), "Pod", "UPDATE"),
        );
        assert_eq!(body["response"]["allowed"], true);
        assert!(body["response"].get("patch").is_none(), "{body}");

        for (malformed, reason) in [
            (b"{not json".as_slice(), "not an admission.k8s.io/v1 AdmissionReview"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.as_slice(), "the AdmissionReview has no request"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#.as_slice(), "not an admission.k8s.io/v1 AdmissionReview"),
        ] {
            let (status, body) = answer(&webhook, malformed);
            assert_eq!(status, 400, "{body}");
            assert!(body.as_str().unwrap().starts_with(reason), "{body}");
        }
        // A pod whose fields have the wrong types is refused, not a crash.
        let odd = json!({ "metadata": { "name": "odd" }, "spec": { "containers": "app" } });
        let (status, body) = answer(&webhook, &review(odd, "Pod", "CREATE"));
        assert_eq!((status, &body["response"]["allowed"]), (200, &json!(false)));

        let metrics = webhook.metrics.render();
        for line in [
            r#"weft_injector_admissions_total{result="injected",reason=""} 1"#,
            r#"weft_injector_admissions_total{result="skipped",reason="host_network"} 1"#,
            r#"weft_injector_admissions_total{result="refused",reason="invalid_annotation"} 1"#,
            r#"weft_injector_admissions_total{result="refused",reason="unreadable_pod"} 1"#,
            r#"weft_injector_admissions_total{result="ignored",reason="not_a_pod_create"} 1"#,
            r#"weft_injector_admissions_total{result="error",reason="malformed"} 3"#,
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "no {line} in:\n{metrics}"
            );
        }
    }
}

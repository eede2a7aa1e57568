//! The index built from Kubernetes objects (as JSON the API server gives), resolved
//! as the destination service resolves it.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;

use super::{index, Objects};
use crate::destination::{Protocol, Resolution, Target};

fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<K> {
    Arc::new(serde_json::from_value(value).unwrap())
}

/// Service `web` of `shop` (port 80 → targetPort `http`, VIP 10.0.0.20), node-1 in
/// zone-a, and pods web-1 (injected, service account `web`) and web-2 (not injected)
/// listed ready in one EndpointSlice whose port `http` is 8080; web-3 is listed not
/// ready.
fn objects() -> Objects {
    let pod = |name: &str, ip: &str, injected: bool| {
        let annotations = if injected {
            json!({"weft.io/injected": "true"})
        } else {
            json!({})
        };
        object(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}, "annotations": annotations},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web",
                     "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
    };
    let endpoint = |name: &str, ip: &str, ready: bool, zone: Option<&str>| {
        let mut e = json!({
            "addresses": [ip],
            "conditions": {"ready": ready},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": name}
        });
        if let Some(zone) = zone {
            e["zone"] = json!(zone);
        }
        e
    };
    Objects {
        services: vec![object(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.0.0.20", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        }))],
        slices: vec![object(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                endpoint("web-1", "198.18.0.11", true, Some("zone-b")),
                endpoint("web-2", "198.18.0.12", true, None),
                endpoint("web-3", "198.18.0.13", false, None),
            ]
        }))],
        pods: vec![
            pod("web-1", "198.18.0.11", true),
            pod("web-2", "198.18.0.12", false),
            pod("web-3", "198.18.0.13", true),
        ],
        nodes: vec![object(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}
        }))],
        gateway: Vec::new(),
    }
}

fn web(port: u16) -> Target {
    Target::Service {
        namespace: "shop".into(),
        name: "web".into(),
        port,
    }
}

#[test]
fn a_service_port_resolves_to_the_slices_ready_addresses() {
    let index = index(&objects(), "cluster.local", &[]);
    let Resolution::Service { endpoints, .. } = index.resolve(&web(80)) else {
        panic!("web:80 did not resolve to a Service");
    };
    let addrs: Vec<SocketAddr> = endpoints.keys().copied().collect();
    assert_eq!(
        addrs,
        ["198.18.0.11:8080", "198.18.0.12:8080"].map(|a| a.parse().unwrap()),
        "the named targetPort is the slice's port number; the not-ready web-3 is left out"
    );
    let injected = &endpoints[&"198.18.0.11:8080".parse().unwrap()];
    assert_eq!(injected.pod, "web-1");
    assert_eq!(
        injected.identity.as_deref(),
        Some("web.shop.serviceaccount.identity.weft.cluster.local")
    );
    assert_eq!(injected.protocol, Protocol::Http);
    assert_eq!(
        injected.zone.as_deref(),
        Some("zone-b"),
        "the slice's zone first"
    );
    let plain = &endpoints[&"198.18.0.12:8080".parse().unwrap()];
    assert_eq!(
        plain.identity, None,
        "a pod without the proxy has no identity"
    );
    assert_eq!(plain.protocol, Protocol::Unknown);
    assert_eq!(
        plain.zone.as_deref(),
        Some("zone-a"),
        "else the node's zone label"
    );
}

#[test]
fn addresses_resolve_to_the_service_or_the_pod() {
    let index = index(&objects(), "cluster.local", &[]);
    let vip = index.resolve(&Target::Addr("10.0.0.20:80".parse().unwrap()));
    assert!(
        matches!(&vip, Resolution::Service { name, endpoints, .. } if name == "web" && endpoints.len() == 2),
        "{vip:?}"
    );
    let pod = index.resolve(&Target::Addr("198.18.0.12:8080".parse().unwrap()));
    let Resolution::Pod(pod) = pod else {
        panic!("web-2's address did not resolve to the pod: {pod:?}");
    };
    assert_eq!((pod.pod.as_str(), pod.identity.as_deref()), ("web-2", None));
    assert_eq!(
        index.resolve(&web(81)),
        Resolution::Unknown,
        "no such Service port"
    );
}

#[test]
fn the_index_does_not_depend_on_the_stores_order_and_follows_deletions() {
    let mut reversed = objects();
    reversed.pods.reverse();
    assert_eq!(
        index(&objects(), "cluster.local", &[]),
        index(&reversed, "cluster.local", &[])
    );
    let mut gone = objects();
    gone.services.clear();
    let index = index(&gone, "cluster.local", &[]);
    assert_eq!(index.resolve(&web(80)), Resolution::Unknown);
}

#[test]
fn objects_the_mesh_cannot_serve_are_left_out() {
    let mut objects = objects();
    // A pod on the node's network, one not started, a finished one and an
    // ExternalName Service: none of them resolves, nothing panics.
    objects.pods.push(object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "host", "namespace": "shop"},
        "spec": {"hostNetwork": true, "containers": []},
        "status": {"phase": "Running", "podIP": "198.18.0.30"}
    })));
    objects.pods.push(object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pending", "namespace": "shop"},
        "spec": {"containers": []}
    })));
    objects.pods.push(object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "done", "namespace": "shop"},
        "spec": {"containers": []},
        "status": {"phase": "Succeeded", "podIP": "198.18.0.31"}
    })));
    objects.services.push(object(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "external", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "example.org"}
    })));
    let index = index(&objects, "cluster.local", &[]);
    for addr in ["198.18.0.30:80", "198.18.0.31:80"] {
        assert_eq!(
            index.resolve(&Target::Addr(addr.parse().unwrap())),
            Resolution::Unknown,
            "{addr}"
        );
    }
    let external = Target::Service {
        namespace: "shop".into(),
        name: "external".into(),
        port: 80,
    };
    assert_eq!(index.resolve(&external), Resolution::Unknown);
    assert_eq!(index.counts(), (1, 3, 3));
}

#[test]
fn a_pod_not_reflected_yet_is_withheld_and_an_address_of_no_pod_is_plaintext() {
    let mut objects = objects();
    // The slice's watch can be ahead of the pods': web-4 is listed before its pod is
    // known. Sent without its identity, callers would speak plaintext to it.
    objects.slices.push(object(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-fghij", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["198.18.0.14"], "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-4"}},
            {"addresses": ["198.18.0.15"]}
        ]
    })));
    let index = index(&objects, "cluster.local", &[]);
    let Resolution::Service { endpoints, .. } = index.resolve(&web(80)) else {
        panic!("web:80 did not resolve to a Service");
    };
    assert!(!endpoints.contains_key(&"198.18.0.14:8080".parse().unwrap()));
    let external = &endpoints[&"198.18.0.15:8080".parse().unwrap()];
    assert_eq!(
        (external.identity.as_deref(), external.protocol),
        (None, Protocol::Unknown)
    );
}

#[tokio::test]
async fn the_api_client_refuses_a_bad_kubeconfig_naming_it() {
    let dir = std::env::temp_dir().join(format!("weft-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing");
    let garbled = dir.join("garbled");
    std::fs::write(&garbled, "clusters: [").unwrap();
    let missing_result = super::api_client(Some(&missing)).await;
    let garbled_result = super::api_client(Some(&garbled)).await;
    std::fs::remove_dir_all(&dir).unwrap();
    for (result, path) in [(missing_result, &missing), (garbled_result, &garbled)] {
        let Err(err) = result else {
            panic!("a client from {}", path.display())
        };
        let err = err.to_string();
        assert!(
            err.starts_with(&format!("cannot use the kubeconfig {}: ", path.display())),
            "{err}"
        );
    }
}

/// A condition keeps the object's `lastTransitionTime` while its status is the same
/// (also when its reason changed: Kubernetes' rule), and takes the new one otherwise.
#[test]
fn transition_times_are_kept_while_the_status_stays() {
    let have = vec![
        json!({"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": "2026-01-01T00:00:00Z"}),
        json!({"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "lastTransitionTime": "2026-01-01T00:00:00Z"}),
        json!({"type": "Other", "status": "False", "reason": "X", "lastTransitionTime": "2026-01-01T00:00:00Z"}),
    ];
    let mut want = vec![
        json!({"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": "2026-12-02T12:00:00Z"}),
        json!({"type": "ResolvedRefs", "status": "False", "reason": "TargetNotFound", "lastTransitionTime": "2026-12-02T12:00:00Z"}),
        json!({"type": "Other", "status": "False", "reason": "Y", "lastTransitionTime": "2026-12-02T12:00:00Z"}),
        json!({"type": "New", "status": "True", "reason": "Z", "lastTransitionTime": "2026-12-02T12:00:00Z"}),
    ];
    super::status::keep_transition_times(&mut want, &have);
    let times: Vec<&str> = want
        .iter()
        .map(|c| c["lastTransitionTime"].as_str().unwrap())
        .collect();
    assert_eq!(
        times,
        [
            "2026-01-01T00:00:00Z",
            "2026-12-02T12:00:00Z",
            "2026-01-01T00:00:00Z",
            "2026-12-02T12:00:00Z"
        ]
    );
}

/// A policy object's report as the status writer writes it: `Accepted`, and
/// `ResolvedRefs` when the index resolved its references, with `observedGeneration`;
/// a false condition of an object whose last valid version serves says so.
#[test]
fn policy_conditions_are_the_reports() {
    use super::policy_status::Conditions;
    use crate::policy::{Condition, ObjectKey, ObjectReport};
    let report = ObjectReport {
        key: Some(ObjectKey {
            kind: "AuthorizationPolicy",
            namespace: "shop".into(),
            name: "p".into(),
        }),
        file: super::GATEWAY_FILE.into(),
        generation: Some(3),
        accepted: Condition {
            ok: true,
            reason: "Accepted",
            message: String::new(),
        },
        resolved_refs: Some(Condition {
            ok: false,
            reason: "TargetNotFound",
            message:
                "AuthorizationPolicy shop/p: spec.targetRef: no valid Server shop/s in the cluster"
                    .into(),
        }),
        serving: true,
        kept: true,
    };
    let (key, conditions) = Conditions::of(&report).unwrap();
    assert_eq!(key.to_string(), "AuthorizationPolicy shop/p");
    let now = json!("2026-12-02T12:00:00Z");
    assert_eq!(
        conditions.entries(&now),
        vec![
            json!({"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 3, "lastTransitionTime": "2026-12-02T12:00:00Z"}),
            json!({"type": "ResolvedRefs", "status": "False", "reason": "TargetNotFound", "message": "AuthorizationPolicy shop/p: spec.targetRef: no valid Server shop/s in the cluster; the last valid version of the object keeps serving", "observedGeneration": 3, "lastTransitionTime": "2026-12-02T12:00:00Z"}),
        ]
    );
    let nameless = ObjectReport {
        key: None,
        ..report
    };
    assert!(Conditions::of(&nameless).is_none());
}

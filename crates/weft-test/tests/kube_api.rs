//! The Kubernetes test fixture against a real kube-apiserver (built by
//! `scripts/setup --kube`; skipped with a message when it is not, failing under CI).

use std::time::{Duration, Instant};

use weft_test::kube::{self, KubeApi};

/// Polls `check` every 100 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_namespace_created_with_kubectl_reads_back_and_tokens_are_reviewed() {
    let Some(api) = KubeApi::shared() else { return };
    let version = api.kubectl(&["get", "--raw", "/version"]).unwrap();
    assert!(
        version.contains(&format!("\"gitVersion\": \"{}\"", kube::k8s_version())),
        "server version is not {}: {version}",
        kube::k8s_version()
    );

    api.kubectl(&["create", "namespace", "books"]).unwrap();
    let phase = api
        .kubectl(&[
            "get",
            "namespace",
            "books",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .unwrap();
    assert_eq!(phase, "Active");

    // A ServiceAccount's token (TokenRequest), checked by the API server (TokenReview):
    // what the controller's identity endpoint will do.
    api.kubectl(&["-n", "books", "create", "serviceaccount", "reader"])
        .unwrap();
    let token = api
        .kubectl(&[
            "-n",
            "books",
            "create",
            "token",
            "reader",
            "--audience=weft",
        ])
        .unwrap();
    let review = |audience: &str| {
        let body = format!(
            r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}","audiences":["{audience}"]}}}}"#,
            token.trim()
        );
        api.kubectl_stdin(&["create", "-o", "json", "-f", "-"], Some(&body))
            .unwrap()
    };
    let accepted = review("weft");
    assert!(
        accepted.contains("\"authenticated\": true")
            && accepted.contains("system:serviceaccount:books:reader"),
        "{accepted}"
    );
    let refused = review("someone-else");
    assert!(!refused.contains("\"authenticated\": true"), "{refused}");
}

#[test]
fn two_api_servers_in_one_binary_do_not_collide_and_leave_nothing_behind() {
    let Some(one) = KubeApi::start() else { return };
    let Some(two) = KubeApi::start() else { return };
    assert_ne!(one.url(), two.url());
    assert_ne!(one.etcd_url(), two.etcd_url());
    assert_ne!(one.dir(), two.dir());

    one.kubectl(&["create", "namespace", "only-in-one"])
        .unwrap();
    let err = two
        .kubectl(&["get", "namespace", "only-in-one"])
        .unwrap_err();
    assert!(format!("{err:#}").contains("NotFound"), "{err:#}");

    let (pids, dir) = (one.pids(), one.dir().to_path_buf());
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    drop(one);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still runs after the fixture was dropped"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    // The other one is untouched.
    two.kubectl(&["get", "namespace", "default"]).unwrap();
}

#[test]
fn the_controller_manager_fills_endpoint_slices_for_ready_pods() {
    let Some(api) = KubeApi::start_with_controller_manager() else {
        return;
    };
    let objects = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop}
- apiVersion: v1
  kind: Node
  metadata: {name: node-1, labels: {topology.kubernetes.io/zone: zone-a}}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-1, namespace: shop, labels: {app: web}}
  spec: {nodeName: node-1, containers: [{name: app, image: web, ports: [{containerPort: 8080}]}]}
"#;
    api.kubectl_stdin(&["apply", "-f", "-"], Some(objects))
        .unwrap();
    // Play the kubelet: the pod runs at a test address and is Ready.
    api.kubectl(&[
        "-n",
        "shop",
        "patch",
        "pod",
        "web-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"198.18.0.10","podIPs":[{"ip":"198.18.0.10"}],
            "conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]}}"#,
    ])
    .unwrap();
    let addresses = || {
        api.kubectl(&[
            "-n",
            "shop",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[*]}",
        ])
        .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(30), || addresses() == "198.18.0.10"),
        "the EndpointSlice for web never listed 198.18.0.10: {:?}",
        addresses()
    );
}

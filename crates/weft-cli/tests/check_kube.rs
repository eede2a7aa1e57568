//! `weft check --kube` against a real kube-apiserver (`weft_test::kube::KubeApi`:
//! skipped with a message when the binaries are not built, failing under CI).

use std::process::{Command, Output};

use weft_k8s::crd;
use weft_k8s::install::{self, InstallOptions};
use weft_test::kube::KubeApi;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn check(api: &KubeApi) -> Output {
    Command::new(WEFT)
        .args(["check", "--kube", "--kubeconfig"])
        .arg(api.kubeconfig())
        .env_remove("KUBECONFIG")
        .output()
        .expect("run weft")
}

/// The line of `stdout` starting (after its status) with `what`, and the line after it.
fn line<'a>(stdout: &'a str, what: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| {
            l.trim_start()
                .split_once("  ")
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(what))
        })
        .unwrap_or_else(|| panic!("no line {what:?} in:\n{stdout}"));
    (lines[i], lines.get(i + 1).copied().unwrap_or(""))
}

#[test]
fn check_kube_fails_on_an_empty_cluster_and_passes_the_crds_once_applied() {
    let Some(api) = KubeApi::shared() else { return };

    // An empty cluster: the API server passes, every CRD fails with its fix, exit 1.
    let out = check(api);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let (api_line, _) = line(&stdout, "Kubernetes API server reachable");
    assert!(api_line.trim_start().starts_with("ok"), "{stdout}");
    assert!(api_line.contains("version v1."), "{stdout}");
    let crds = crd::all();
    for c in &crds {
        let name = c.metadata.name.as_deref().unwrap();
        let (fail, fix) = line(&stdout, &format!("CRD {name} installed"));
        assert!(fail.trim_start().starts_with("FAIL"), "{stdout}");
        assert!(
            fix.contains("fix: weft install --crds | kubectl apply -f -"),
            "{stdout}"
        );
    }
    let (webhook, _) = line(
        &stdout,
        "MutatingWebhookConfiguration weft-injector present",
    );
    assert!(webhook.trim_start().starts_with("FAIL"), "{stdout}");
    let (controller, _) = line(&stdout, "Deployment weft-system/weft-controller present");
    assert!(controller.trim_start().starts_with("FAIL"), "{stdout}");

    // The CRDs applied and Established: their lines pass; the control plane still fails.
    let rendered = crd::render().unwrap();
    api.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&rendered))
        .unwrap();
    for c in &crds {
        api.wait_established(
            c.metadata.name.as_deref().unwrap(),
            std::time::Duration::from_secs(60),
        );
    }
    let out = check(api);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for c in &crds {
        let name = c.metadata.name.as_deref().unwrap();
        let (ok, _) = line(
            &stdout,
            &format!("CRD {name} installed, Established, this weft's schema (v1alpha1)"),
        );
        assert!(ok.trim_start().starts_with("ok"), "{stdout}");
    }
    assert!(!stdout.contains("fix: weft install --crds"), "{stdout}");

    // A CRD of another weft (a schema changed by hand) fails as not this weft's.
    let name = crds[0].metadata.name.as_deref().unwrap();
    api.kubectl(&[
        "patch",
        "crd",
        name,
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/description","value":"another weft"}]"#,
    ])
    .unwrap();
    let out = check(api);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (fail, fix) = line(&stdout, &format!("CRD {name} matches this weft's schema"));
    assert!(fail.trim_start().starts_with("FAIL"), "{stdout}");
    assert!(fail.contains("v1alpha1's schema differs"), "{stdout}");
    assert!(
        fix.contains("weft install --crds | kubectl apply -f -"),
        "{stdout}"
    );

    // The control plane applied without a caBundle: the webhook fails for it; the
    // Deployments are there but not available (no kubelet runs their pods), so /ready
    // is skipped with a note.
    let opts = InstallOptions::default();
    api.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&install::render(&opts, false).unwrap()),
    )
    .unwrap();
    let out = check(api);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let (fail, fix) = line(
        &stdout,
        "MutatingWebhookConfiguration weft-injector has a caBundle (missing in inject.weft.io)",
    );
    assert!(fail.trim_start().starts_with("FAIL"), "{stdout}");
    assert!(fix.contains("--webhook-ca-bundle"), "{stdout}");
    for name in ["weft-controller", "weft-injector"] {
        let (fail, fix) = line(
            &stdout,
            &format!("Deployment weft-system/{name} available (0 of 1 ready)"),
        );
        assert!(fail.trim_start().starts_with("FAIL"), "{stdout}");
        assert!(
            fix.contains(&format!(
                "kubectl -n weft-system describe deployment {name}"
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("note  the controller's /ready: skipped (its Deployment is not available)"),
        "{stdout}"
    );

    // With the caBundle, the webhook's line passes.
    let ca = std::fs::read_to_string(api.ca_cert()).unwrap();
    let with_ca = InstallOptions {
        webhook_ca_bundle: Some(ca),
        ..InstallOptions::default()
    };
    api.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&install::render(&with_ca, false).unwrap()),
    )
    .unwrap();
    let out = check(api);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (ok, _) = line(
        &stdout,
        "MutatingWebhookConfiguration weft-injector present with a caBundle",
    );
    assert!(ok.trim_start().starts_with("ok"), "{stdout}");
    // No identity Secret yet: its line fails, naming the Secret.
    let (fail, _) = line(&stdout, "Secret weft-system/weft-identity present");
    assert!(fail.trim_start().starts_with("FAIL"), "{stdout}");
    assert!(
        stdout.contains("note  no ControlPlane resource"),
        "{stdout}"
    );

    // The identity Secrets, as `weft identity init` and a serving certificate make
    // them, and two meshed pods: one trusting these anchors, one another anchor.
    let dir = api.dir().join("check-identity");
    weft_controller::identity::init(&dir, "cluster.local", true).unwrap();
    let anchors = std::fs::read_to_string(dir.join("trust-anchors.pem")).unwrap();
    let server = weft_controller::identity::sign_server(
        &std::fs::read_to_string(dir.join("issuer.crt")).unwrap(),
        &std::fs::read_to_string(dir.join("issuer.key")).unwrap(),
        &dir,
        &["weft-injector.weft-system.svc".to_owned()],
        std::time::Duration::from_secs(3 * 24 * 3600),
    )
    .unwrap();
    std::fs::write(dir.join("tls.crt"), &server.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &server.key_pem).unwrap();
    let path = |f: &str| dir.join(f).display().to_string();
    api.kubectl(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "generic",
        "weft-identity",
        &format!("--from-file={}", path("trust-anchors.pem")),
        &format!("--from-file={}", path("issuer.crt")),
        &format!("--from-file={}", path("issuer.key")),
    ])
    .unwrap();
    api.kubectl(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "tls",
        "weft-injector-tls",
        &format!("--cert={}", path("tls.crt")),
        &format!("--key={}", path("tls.key")),
    ])
    .unwrap();
    let other = weft_controller::identity::make_trust_anchor(
        "cluster.local",
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    // No controller manager here makes the default ServiceAccount pods need.
    let _ = api.kubectl(&["-n", "default", "create", "serviceaccount", "default"]);
    for (name, trusted) in [
        ("current", anchors.as_str()),
        ("stale", other.cert_pem.as_str()),
    ] {
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": {"weft.io/injected": "v0.1.0"}},
            "spec": {"containers": [
                {"name": "app", "image": "app"},
                {"name": "weft-proxy", "image": "weft-proxy", "env": [{"name": "WEFT_TRUST_ANCHORS_PEM", "value": trusted}]}
            ]}
        });
        api.kubectl_stdin(&["apply", "-f", "-"], Some(&pod.to_string()))
            .unwrap();
    }
    let out = check(api);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (ok, _) = line(
        &stdout,
        "the issuer CN=identity.weft.cluster.local chains to the trust anchors",
    );
    assert!(ok.trim_start().starts_with("ok"), "{stdout}");
    // The injector's certificate has 3 days left: under the week asked for.
    let (fail, fix) = line(&stdout, "the injector's certificate valid until");
    assert!(
        fail.trim_start().starts_with("FAIL") && fail.contains("2 days left"),
        "{stdout}"
    );
    assert!(fix.contains("renews it"), "{stdout}");
    let (fail, fix) = line(
        &stdout,
        "1 of 2 meshed pods' proxies trust other anchors: default/stale",
    );
    assert!(fail.trim_start().starts_with("FAIL"), "{stdout}");
    assert!(fix.contains("restart them"), "{stdout}");
    api.kubectl(&["delete", "pod", "stale", "--wait=false"])
        .unwrap();
    let out = check(api);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (ok, _) = line(
        &stdout,
        "1 meshed pods' proxies trust the control plane's anchors",
    );
    assert!(ok.trim_start().starts_with("ok"), "{stdout}");
    api.kubectl(&["delete", "pod", "current", "--wait=false"])
        .unwrap();

    // Clean up what the test made (the shared API server is the process's own).
    api.kubectl_stdin(
        &["delete", "--wait=false", "-f", "-"],
        Some(&install::uninstall(&opts, true).unwrap()),
    )
    .unwrap();
}

use super::*;

fn kinds(manifests: &[Manifest]) -> Vec<(&str, &str)> {
    manifests
        .iter()
        .map(|m| (m.kind.as_str(), m.name.as_str()))
        .collect()
}

#[test]
fn the_default_control_plane_is_these_objects_in_this_order() {
    let m = control_plane(&InstallOptions::default()).unwrap();
    assert_eq!(
        kinds(&m),
        [
            ("Namespace", "weft-system"),
            ("ServiceAccount", "weft-controller"),
            ("ServiceAccount", "weft-injector"),
            ("ClusterRole", "weft-controller"),
            ("ClusterRoleBinding", "weft-controller"),
            ("ClusterRole", "weft-injector"),
            ("ClusterRoleBinding", "weft-injector"),
            ("Role", "weft-controller-lease"),
            ("RoleBinding", "weft-controller-lease"),
            ("Deployment", "weft-controller"),
            ("Service", "weft-controller"),
            ("Deployment", "weft-injector"),
            ("Service", "weft-injector"),
            ("MutatingWebhookConfiguration", "weft-injector"),
        ]
    );
    for manifest in &m {
        let cluster_scoped = matches!(
            manifest.kind.as_str(),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "MutatingWebhookConfiguration"
        );
        assert_eq!(
            manifest.namespace.is_none(),
            cluster_scoped,
            "{} {}",
            manifest.kind,
            manifest.name
        );
        assert!(
            manifest.yaml.contains("app.kubernetes.io/part-of: weft"),
            "{}",
            manifest.yaml
        );
    }
}

#[test]
fn the_webhook_calls_the_injector_service_and_ignores_failures_by_default() {
    let hook = webhook(&InstallOptions::default());
    let w = &hook.webhooks.as_ref().unwrap()[0];
    let service = w.client_config.service.as_ref().unwrap();
    assert_eq!(
        (
            service.name.as_str(),
            service.namespace.as_str(),
            service.path.as_deref(),
            service.port
        ),
        ("weft-injector", "weft-system", Some("/inject"), Some(443))
    );
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(w.side_effects, "None");
    let ns = w
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    assert!(ns
        .iter()
        .any(|e| e.key == INJECT_KEY && e.values.as_deref() == Some(&["disabled".to_owned()][..])));
    assert!(ns.iter().any(|e| e
        .values
        .as_ref()
        .unwrap()
        .contains(&"weft-system".to_owned())));
    let service = injector_service("weft-system");
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (443, Some(IntOrString::Int(8443)))
    );

    let closed = InstallOptions {
        fail_closed: true,
        webhook_ca_bundle: Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ),
        ..Default::default()
    };
    let hook = webhook(&closed);
    let w = &hook.webhooks.as_ref().unwrap()[0];
    assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
    assert!(w
        .client_config
        .ca_bundle
        .as_ref()
        .unwrap()
        .0
        .starts_with(b"-----BEGIN"));
}

#[test]
fn options_change_namespace_images_and_replicas() {
    let opts = InstallOptions {
        version: "1.2.3".into(),
        namespace: "mesh".into(),
        image_registry: "registry.local:5000/weft".into(),
        controller_replicas: HA_REPLICAS,
        ..Default::default()
    };
    let m = control_plane(&opts).unwrap();
    assert!(kinds(&m).contains(&("PodDisruptionBudget", "weft-controller")));
    let d = controller_deployment(&opts);
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.local:5000/weft/weft-controller:1.2.3")
    );
    assert!(pod.affinity.is_some());
    assert!(m
        .iter()
        .all(|m| m.namespace.as_deref().is_none_or(|ns| ns == "mesh")));
}

#[test]
fn bad_options_are_refused_naming_the_value() {
    let bad = |f: fn(&mut InstallOptions)| {
        let mut o = InstallOptions::default();
        f(&mut o);
        control_plane(&o).unwrap_err().to_string()
    };
    assert!(
        bad(|o| o.namespace = "Weft_System".into()).contains("\"Weft_System\" is not a DNS label")
    );
    assert!(bad(|o| o.version = "-1".into()).contains("version \"-1\""));
    assert!(bad(|o| o.image_registry = "ghcr.io/Weft".into()).contains("\"ghcr.io/Weft\""));
    assert!(bad(|o| o.controller_replicas = 0).contains("replicas 0"));
    assert!(bad(|o| o.webhook_ca_bundle = Some("nope".into())).contains("not PEM"));
}

#[test]
fn uninstall_lists_the_webhook_first_and_the_crds_last_by_reference_only() {
    let text = uninstall(&InstallOptions::default(), true).unwrap();
    let docs: Vec<&str> = text.split("---\n").filter(|d| !d.is_empty()).collect();
    assert_eq!(docs.len(), 14 + crd::all().len());
    assert_eq!(
        docs[0],
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: weft-injector\n"
    );
    assert!(docs[13].contains("kind: Namespace"), "{}", docs[13]);
    assert!(docs.last().unwrap().contains("dataplanes.operator.weft.io"));
    assert!(!text.contains("spec"));
    let without = uninstall(&InstallOptions::default(), false).unwrap();
    assert!(!without.contains("CustomResourceDefinition"));
}

#[test]
fn the_injector_reads_the_trust_anchors_alone_from_the_identity_secret() {
    let deployment = injector_deployment(&InstallOptions::default());
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let arg = "--trust-anchors=/var/run/weft/trust-anchors/trust-anchors.pem";
    assert!(container.args.as_ref().unwrap().iter().any(|a| a == arg));
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/var/run/weft/trust-anchors")
        .unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some(IDENTITY_SECRET));
    let keys: Vec<&str> = secret
        .items
        .iter()
        .flatten()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(keys, ["trust-anchors.pem"], "never the issuer's key");
}

#[test]
fn the_injector_restarts_when_the_trust_anchors_change() {
    let annotation = |pem: Option<&str>| {
        let opts = InstallOptions {
            webhook_ca_bundle: pem.map(str::to_owned),
            ..Default::default()
        };
        let d = injector_deployment(&opts);
        d.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .and_then(|a| a.get(TRUST_ANCHORS_CHECKSUM).cloned())
    };
    assert_eq!(annotation(None), None);
    let a = annotation(Some("-----BEGIN CERTIFICATE-----\nA\n")).unwrap();
    let b = annotation(Some("-----BEGIN CERTIFICATE-----\nB\n")).unwrap();
    assert_eq!(a.len(), 16);
    assert_ne!(a, b);
    assert_eq!(
        annotation(Some("-----BEGIN CERTIFICATE-----\nA\n")).unwrap(),
        a
    );
}

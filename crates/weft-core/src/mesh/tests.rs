use std::collections::BTreeMap;
use std::path::Path;

use super::*;

const MESH: &str = r#"
kind: Mesh
workloads:
  - name: web
    zone: zone-a
    ports: [8080]
    command: [app, serve]
  - name: books
    replicas: 2
    zone: zone-b
    ports: [8080, {name: admin, port: 9090}]
    command: [app]
    env: {PORT: 8080, NAME: books}
    labels: {app: books, version: v1}
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: books}
spec:
  selector: {app: books}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {x: y}}
spec:
  type: ClusterIP
  selector: {app: web}
  ports:
    - {name: http, port: 8080, appProtocol: http}
"#;

fn parse(mesh: &str, services: &str) -> Result<Mesh, MeshError> {
    Mesh::parse(&[
        (MESH_FILE.into(), mesh.into()),
        ("services.yaml".into(), services.into()),
    ])
}

fn error(mesh: &str, services: &str) -> String {
    let err = parse(mesh, services).expect_err("should be refused");
    err.to_string()
}

#[test]
fn parses_workloads_with_defaults_and_services() {
    let mesh = parse(MESH, SERVICES).unwrap();
    assert_eq!(mesh.trust_domain, "cluster.local");
    let web = &mesh.workloads[0];
    assert_eq!(web.namespace, "default");
    assert_eq!(web.service_account, "web");
    assert_eq!(web.replicas, 1);
    assert_eq!(web.labels, BTreeMap::from([("app".into(), "web".into())]));
    let books = &mesh.workloads[1];
    assert_eq!(books.env["PORT"], "8080");
    assert_eq!(books.ports[1].name.as_deref(), Some("admin"));
    assert_eq!(mesh.services.len(), 2);
    let svc = &mesh.services[0];
    assert_eq!(svc.ports[0].target_port, TargetPort::Number(8080));
    assert_eq!(
        mesh.backends(svc).map(|w| &w.name).collect::<Vec<_>>(),
        ["books"]
    );
    assert_eq!(
        mesh.services[1].ports[0].target_port,
        TargetPort::Number(8080)
    );
    assert!(mesh.warnings.is_empty(), "{:?}", mesh.warnings);
    assert_eq!(
        books.identity(&mesh.trust_domain).dns_name(),
        "books.default.serviceaccount.identity.weft.cluster.local"
    );
}

#[test]
fn malformed_yaml_names_the_file_and_position() {
    let msg = error("kind: Mesh\nworkloads:\n  - name: [web\n", "");
    assert!(msg.starts_with("mesh.yaml: "), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn unknown_workload_field_names_the_workload() {
    let mesh = MESH.replace("replicas: 2", "replica: 2");
    let msg = error(&mesh, SERVICES);
    assert!(
        msg.contains("mesh.yaml: workloads[1] (books): unknown field `replica`"),
        "{msg}"
    );
}

#[test]
fn unknown_top_level_field_and_wrong_kind() {
    let msg = error("kind: Mesh\nworkload: []\n", "");
    assert!(msg.contains("unknown field `workload`"), "{msg}");
    let msg = error(
        "kind: Deployment\nworkloads: [{name: a, command: [x]}]\n",
        "",
    );
    assert!(msg.contains("mesh.yaml: kind: is \"Deployment\""), "{msg}");
}

#[test]
fn duplicate_workload_in_a_namespace() {
    let mesh = format!("{MESH}  - name: web\n    command: [other]\n");
    let msg = error(&mesh, SERVICES);
    assert!(
        msg.contains("mesh.yaml: workloads[2] (web): duplicate workload: default/web"),
        "{msg}"
    );
    // The same name in another namespace is another workload.
    let mesh = format!("{MESH}  - name: web\n    namespace: shop\n    command: [other]\n");
    parse(&mesh, SERVICES).unwrap();
}

#[test]
fn port_conflicts() {
    let msg = error(
        &MESH.replace("ports: [8080]", "ports: [8080, 4143]"),
        SERVICES,
    );
    assert!(
        msg.contains(
            "workloads[0] (web): ports[1]: port 4143 conflicts with the proxy's inbound port"
        ),
        "{msg}"
    );
    let msg = error(
        &MESH.replace("ports: [8080]", "ports: [8080, 8080]"),
        SERVICES,
    );
    assert!(
        msg.contains("workloads[0] (web): ports[1]: port 8080 is listed twice"),
        "{msg}"
    );
    let msg = error(&MESH.replace("ports: [8080]", "ports: [70000]"), SERVICES);
    assert!(
        msg.contains("ports[0]: 70000 is not a port number"),
        "{msg}"
    );
    let svc = SERVICES.replace("targetPort: 8080", "targetPort: 4191");
    let msg = error(MESH, &svc);
    assert!(
        msg.contains(
            "services.yaml: Service default/books: spec.ports[0].targetPort: port 4191 conflicts"
        ),
        "{msg}"
    );
}

#[test]
fn bad_names_and_empty_command() {
    let msg = error(
        "kind: Mesh\nworkloads:\n  - name: Web_1\n    command: []\n",
        "",
    );
    assert!(
        msg.contains("workloads[0] (Web_1): name: \"Web_1\" is not a DNS label"),
        "{msg}"
    );
    assert!(
        msg.contains("workloads[0] (Web_1): command: is empty"),
        "{msg}"
    );
    let msg = error("kind: Mesh\nworkloads: []\n", "");
    assert!(msg.contains("no workloads"), "{msg}");
    let msg = error(
        "kind: Mesh\ntrustDomain: Bad Domain\nworkloads: [{name: a, command: [x]}]\n",
        "",
    );
    assert!(
        msg.contains("trustDomain: \"Bad Domain\" is not a DNS name"),
        "{msg}"
    );
}

#[test]
fn wrong_types_name_the_field() {
    let msg = error(&MESH.replace("replicas: 2", "replicas: many"), SERVICES);
    assert!(msg.contains("workloads[1] (books): "), "{msg}");
    assert!(msg.contains("replicas"), "{msg}");
    let msg = error(&MESH.replace("NAME: books", "NAME: [books]"), SERVICES);
    assert!(
        msg.contains("workloads[1] (books): env.NAME: expected a string"),
        "{msg}"
    );
}

#[test]
fn service_errors_name_the_object_and_field() {
    let svc = SERVICES.replace("selector: {app: books}", "selecter: {app: books}");
    let msg = error(MESH, &svc);
    assert!(
        msg.contains("services.yaml: Service default/books: spec: unknown field `selecter`"),
        "{msg}"
    );
    let svc = SERVICES.replace("targetPort: 8080", "targetPort: metrics");
    let msg = error(MESH, &svc);
    assert!(
        msg.contains("spec.ports[0].targetPort: \"metrics\" names no port of workload books"),
        "{msg}"
    );
    let svc = format!("{SERVICES}---\nkind: Service\nmetadata: {{name: books}}\nspec: {{selector: {{app: books}}, ports: [{{port: 80}}]}}\n");
    let msg = error(MESH, &svc);
    assert!(
        msg.contains("Service default/books: duplicate Service"),
        "{msg}"
    );
    let svc = "kind: Service\nmetadata: {name: x}\nspec: {selector: {app: x}, ports: [{port: 80, protocol: UDP}]}\n";
    let msg = error(MESH, svc);
    assert!(
        msg.contains("spec.ports[0].protocol: UDP is not supported"),
        "{msg}"
    );
    let msg = error(MESH, "metadata: {name: x}\n");
    assert!(msg.contains("no `kind`"), "{msg}");
}

#[test]
fn named_target_ports_resolve() {
    let svc = "kind: Service\nmetadata: {name: books-admin}\nspec: {selector: {app: books}, ports: [{port: 9090, targetPort: admin}]}\n";
    let mesh = parse(MESH, svc).unwrap();
    let s = &mesh.services[0];
    let w = mesh.backends(s).next().unwrap();
    assert_eq!(w.resolve(&s.ports[0].target_port), Some(9090));
}

#[test]
fn selectors_matching_nothing_and_other_kinds_are_warnings() {
    let svc = "kind: Service\nmetadata: {name: ghost}\nspec: {selector: {app: ghost}, ports: [{port: 80}]}\n---\nkind: ConfigMap\nmetadata: {name: r}\n---\nkind: HTTPRoute\nmetadata: {name: r}\n";
    let mesh = parse(MESH, svc).unwrap();
    let warnings: Vec<String> = mesh.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w
                .contains("Service default/ghost: spec.selector {app=ghost} matches no workload")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("ConfigMap default/r: kind ConfigMap is not used")),
        "{warnings:?}"
    );
    // Routes are handed over as written, for the controller's routes to check.
    assert!(
        !warnings.iter().any(|w| w.contains("HTTPRoute")),
        "{warnings:?}"
    );
    assert_eq!(mesh.gateway.len(), 1);
    assert_eq!(mesh.gateway[0].location, "HTTPRoute default/r");
}

#[test]
fn every_problem_is_reported() {
    // Syntax and type errors stop the parse; everything after it is collected.
    let mesh = MESH
        .replace("ports: [8080]", "ports: [4140]")
        .replace("command: [app]", "command: []");
    let err = parse(&mesh, SERVICES).unwrap_err();
    assert_eq!(err.problems().len(), 2, "{err}");
}

#[test]
fn proxy_settings_mesh_wide_and_per_workload() {
    let mesh = MESH.replace(
        "kind: Mesh\n",
        "kind: Mesh\nproxy: {zoneMode: unaware, args: [--zone-high, \"3\"]}\n",
    );
    let mesh = mesh.replace(
        "    labels: {app: books, version: v1}\n",
        "    labels: {app: books, version: v1}\n    proxy: {zoneMode: local-only}\n",
    );
    let mesh = parse(&mesh, SERVICES).unwrap();
    let web = &mesh.workloads[0].proxy;
    assert_eq!(web.zone_mode.as_deref(), Some("unaware"));
    assert_eq!(web.flags(), ["--zone-mode", "unaware", "--zone-high", "3"]);
    // The workload's zoneMode replaces the mesh's; the mesh's args stay.
    let books = &mesh.workloads[1].proxy;
    assert_eq!(
        books.flags(),
        ["--zone-mode", "local-only", "--zone-high", "3"]
    );
    // Without any: no flags.
    assert!(parse(MESH, SERVICES).unwrap().workloads[0]
        .proxy
        .flags()
        .is_empty());
}

#[test]
fn app_user_mesh_wide_and_per_workload() {
    let mesh = parse(MESH, SERVICES).unwrap();
    assert_eq!(mesh.workloads[0].user, None);
    let mesh = parse(
        &MESH
            .replace("kind: Mesh\n", "kind: Mesh\nuser: \"3000:3001\"\n")
            .replace(
                "    command: [app]\n",
                "    command: [app]\n    user: nobody\n",
            ),
        SERVICES,
    )
    .unwrap();
    assert_eq!(
        mesh.workloads[0].user,
        Some(AppUser::Id {
            uid: 3000,
            gid: 3001
        })
    );
    assert_eq!(mesh.workloads[1].user, Some(AppUser::Name("nobody".into())));
    let mesh = parse(
        &MESH.replace(
            "    command: [app]\n",
            "    command: [app]\n    user: 4000\n",
        ),
        SERVICES,
    )
    .unwrap();
    assert_eq!(
        mesh.workloads[1].user,
        Some(AppUser::Id {
            uid: 4000,
            gid: 4000
        })
    );
}

#[test]
fn bad_app_users_name_the_field() {
    let msg = error(
        &MESH.replace("kind: Mesh\n", "kind: Mesh\nuser: 0\n"),
        SERVICES,
    );
    assert!(
        msg.contains("mesh.yaml: user: 0:0 is root (UID or GID 0): apps run unprivileged"),
        "{msg}"
    );
    for (user, expected) in [
        ("root", "user: root: apps run unprivileged"),
        ("\"1000:0\"", "user: 1000:0 is root"),
        ("2102", "user: 2102:2102: UID/GID 2102 is the proxies'"),
        (
            "\"2103:2102\"",
            "user: 2103:2102: UID/GID 2102 is the proxies'",
        ),
        ("Bad!", "user: \"Bad!\" is not a user name; expected a UID"),
        ("\"12x\"", "user: \"12x\" is not a UID or GID"),
        ("4294967295", "user: \"4294967295\" is not a UID or GID"),
        ("-5", "user: \"-5\" is not a UID or GID"),
        ("[1]", "user: expected a UID (2103)"),
    ] {
        let msg = error(
            &MESH.replace(
                "    command: [app]\n",
                &format!("    command: [app]\n    user: {user}\n"),
            ),
            SERVICES,
        );
        assert!(
            msg.contains(&format!("mesh.yaml: workloads[1] (books): {expected}")),
            "{user}: {msg}"
        );
    }
}

#[test]
fn bad_proxy_settings_name_the_field() {
    let msg = error(
        &MESH.replace("kind: Mesh\n", "kind: Mesh\nproxy: {zoneMode: nearby}\n"),
        SERVICES,
    );
    assert!(
        msg.contains("mesh.yaml: proxy.zoneMode: \"nearby\" is not a zone mode (one of aware, unaware, local-only)"),
        "{msg}"
    );
    let msg = error(
        &MESH.replace(
            "    command: [app]\n",
            "    command: [app]\n    proxy: {args: [--zone-low, \"0.5\", --zone=x, --mode]}\n",
        ),
        SERVICES,
    );
    assert!(
        msg.contains(
            "mesh.yaml: workloads[1] (books): proxy.args[2]: --zone is managed by weft up"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("proxy.args[3]: --mode is managed by weft up"),
        "{msg}"
    );
    assert!(
        !msg.contains("args[0]") && !msg.contains("args[1]"),
        "{msg}"
    );
    let msg = error(
        &MESH.replace(
            "kind: Mesh\n",
            "kind: Mesh\nproxy: {args: [--zone-mode, aware]}\n",
        ),
        SERVICES,
    );
    assert!(
        msg.contains("proxy.args[0]: --zone-mode: use proxy.zoneMode"),
        "{msg}"
    );
    let msg = error(
        &MESH.replace(
            "    command: [app]\n",
            "    command: [app]\n    proxy: {zone_mode: aware}\n",
        ),
        SERVICES,
    );
    assert!(
        msg.contains("workloads[1] (books): proxy: unknown field `zone_mode`"),
        "{msg}"
    );
}

#[test]
fn loads_a_directory() {
    let dir = std::env::temp_dir().join(format!("weft-mesh-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.join("services.yaml"), SERVICES).unwrap();
    std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
    let mesh = Mesh::load(&dir).unwrap();
    assert_eq!(mesh.services.len(), 2);
    std::fs::remove_file(dir.join("mesh.yaml")).unwrap();
    let err = Mesh::load(&dir).unwrap_err();
    assert!(err.to_string().contains("no mesh.yaml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn services_are_read_as_kubernetes_services_and_refused_at_their_field() {
    // A field Kubernetes knows but the local mesh does not apply.
    let svc = SERVICES.replace(
        "type: ClusterIP",
        "type: ClusterIP\n  sessionAffinity: ClientIP",
    );
    let msg = error(MESH, &svc);
    assert!(
        msg.contains("services.yaml: Service default/web: spec: `sessionAffinity` is not supported by the local mesh (it reads `selector`, `ports`, `type`, `clusterIP`)"),
        "{msg}"
    );
    let svc = SERVICES.replace(
        "{port: 80, targetPort: 8080}",
        "{port: 80, targetPort: 8080, nodePort: 30080}",
    );
    let msg = error(MESH, &svc);
    assert!(
        msg.contains("Service default/books: spec.ports[0]: `nodePort` is not supported"),
        "{msg}"
    );
    let svc = SERVICES.replace(
        "{port: 80, targetPort: 8080}",
        "{port: 70000, targetPort: 8080}",
    );
    let msg = error(MESH, &svc);
    assert!(
        msg.contains(
            "Service default/books: spec.ports[0].port: 70000 is not a port number (1-65535)"
        ),
        "{msg}"
    );
    let svc = SERVICES.replace(
        "{port: 80, targetPort: 8080}",
        "{port: 80, targetPort: [8080]}",
    );
    let msg = error(MESH, &svc);
    assert!(
        msg.contains("Service default/books: spec.ports[0].targetPort: "),
        "{msg}"
    );
    let svc = SERVICES.replacen("apiVersion: v1", "apiVersion: apps/v1", 1);
    let msg = error(MESH, &svc);
    assert!(
        msg.contains("Service default/books: apiVersion: is apps/v1; a Service is read as v1"),
        "{msg}"
    );
    let msg = error(
        MESH,
        "kind: Service\nmetadata: {namespace: default}\nspec: {ports: [{port: 80}]}\n",
    );
    assert!(
        msg.contains("document 1: metadata: missing field `name`"),
        "{msg}"
    );
    let msg = error(MESH, "kind: Service\nmetadata: {name: x}\n");
    assert!(
        msg.contains("Service default/x: missing field `spec`"),
        "{msg}"
    );
}

#[test]
fn a_service_from_an_api_server_converts_with_its_defaulted_fields() {
    // What an API server answers has fields the mesh directory may not hold (uid,
    // sessionAffinity, clusterIPs...): the mesh's view keeps what it uses.
    let object: k8s_openapi::api::core::v1::Service = serde_yaml_ng::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: books, namespace: shop, uid: 5f0c}\nspec:\n  selector: {app: books}\n  sessionAffinity: None\n  clusterIPs: [10.96.0.10]\n  ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]\n",
    )
    .unwrap();
    let service = Service::from_object("(api)", &object).unwrap();
    assert_eq!(service.namespace, "shop");
    assert_eq!(
        service.ports[0].target_port,
        TargetPort::Name("http".into())
    );
    assert_eq!(
        service.selector,
        BTreeMap::from([("app".into(), "books".into())])
    );
    let mut object = object;
    object.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    let problems = Service::from_object("(api)", &object).unwrap_err();
    assert_eq!(
        problems,
        [(
            "spec.type".to_owned(),
            "NodePort is not supported by the local mesh (only ClusterIP)".to_owned()
        )]
    );
}

#[test]
fn the_demo_mesh_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let mesh = Mesh::load(&dir).unwrap();
    assert!(!mesh.services.is_empty());
}

#[test]
fn the_mesh_wide_default_inbound_policy_is_one_of_the_four() {
    assert_eq!(parse(MESH, SERVICES).unwrap().default_inbound_policy, None);
    for value in DEFAULT_INBOUND_POLICIES {
        let mesh = MESH.replace(
            "kind: Mesh\n",
            &format!("kind: Mesh\npolicy: {{default: {value}}}\n"),
        );
        assert_eq!(
            parse(&mesh, SERVICES)
                .unwrap()
                .default_inbound_policy
                .as_deref(),
            Some(value)
        );
    }
    let typo = MESH.replace(
        "kind: Mesh\n",
        "kind: Mesh\npolicy: {default: all-authenticaed}\n",
    );
    let msg = error(&typo, SERVICES);
    assert_eq!(
        msg,
        "mesh.yaml: policy.default: \"all-authenticaed\" is not a default inbound policy; expected one of all-unauthenticated, all-authenticated, cluster-authenticated, deny"
    );
    let unknown = MESH.replace("kind: Mesh\n", "kind: Mesh\npolicy: {defaults: deny}\n");
    let msg = error(&unknown, SERVICES);
    assert!(
        msg.starts_with("mesh.yaml: policy: unknown field `defaults`, expected `default`"),
        "{msg}"
    );
    let number = MESH.replace("kind: Mesh\n", "kind: Mesh\npolicy: {default: [deny]}\n");
    let msg = error(&number, SERVICES);
    assert!(
        msg.starts_with("mesh.yaml: policy.default: invalid type"),
        "{msg}"
    );
}

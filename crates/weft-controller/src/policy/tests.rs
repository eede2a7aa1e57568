//! Policy objects checked and served from mesh directories written inline: parsing
//! (located errors), reference resolution (status reasons, the last valid version
//! kept), Server selection and the default policies.

use linkerd2_proxy_api::inbound::{self, authn};
use linkerd2_proxy_api::meta;
use weft_core::mesh::Mesh;

use super::{DefaultPolicy, PolicyConfig, PolicyIndex};

const MESH: &str = r#"
kind: Mesh
workloads:
  - {name: books, ports: [{name: http, port: 8080}, 9090], command: [app], labels: {app: books}}
  - {name: web, ports: [8080], command: [app]}
  - {name: vault, ports: [8200], command: [app], labels: {app: vault, "config.weft.io/default-inbound-policy": deny}}
  - {name: typo, ports: [8300], command: [app], labels: {app: typo, "config.weft.io/default-inbound-policy": all-unauthenticaed}}
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: books}
spec:
  selector: {app: books}
  ports: [{port: 8080}]
"#;

const POLICY: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Server
metadata: {name: books-http, namespace: default}
spec:
  podSelector: {matchLabels: {app: books}}
  port: http
  proxyProtocol: HTTP/1
---
apiVersion: policy.weft.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web-only}
spec:
  identityRefs: [{kind: ServiceAccount, name: web}]
---
apiVersion: policy.weft.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: pods}
spec:
  networks: [{cidr: 198.18.0.0/15, except: [198.18.0.1]}]
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: books-from-web}
spec:
  targetRef: {group: policy.weft.io, kind: Server, name: books-http}
  requiredAuthenticationRefs:
    - {group: policy.weft.io, kind: MeshTLSAuthentication, name: web-only}
    - {group: policy.weft.io, kind: NetworkAuthentication, name: pods}
"#;

fn mesh(policy: &str) -> Mesh {
    Mesh::parse(&[
        ("mesh.yaml".into(), MESH.into()),
        ("services.yaml".into(), SERVICES.into()),
        ("policy.yaml".into(), policy.into()),
    ])
    .unwrap_or_else(|e| panic!("the test mesh does not load: {e}"))
}

fn build(previous: &PolicyIndex, policy: &str) -> (PolicyIndex, Mesh) {
    let mesh = mesh(policy);
    (PolicyIndex::build(previous, &mesh), mesh)
}

fn empty() -> PolicyIndex {
    PolicyIndex::empty(PolicyConfig::default(), "cluster.local")
}

fn server(index: &PolicyIndex, mesh: &Mesh, workload: &str, port: u16) -> inbound::Server {
    index.server(mesh.workload("default", workload).unwrap(), port)
}

fn names(s: &inbound::Server) -> Vec<String> {
    s.authorizations
        .iter()
        .map(|a| a.labels.get("name").cloned().unwrap_or_default())
        .collect()
}

#[test]
fn a_server_gets_the_authorizations_of_the_policies_targeting_it() {
    let (index, mesh) = build(&empty(), POLICY);
    assert!(
        index.reports().iter().all(|r| r.ok()),
        "{:?}",
        index.reports()
    );
    let s = server(&index, &mesh, "books", 8080);
    assert_eq!(s.labels["kind"], "server");
    assert_eq!(s.labels["name"], "books-http");
    assert!(matches!(
        s.protocol.clone().and_then(|p| p.kind),
        Some(inbound::proxy_protocol::Kind::Http1(_))
    ));
    assert_eq!(names(&s), ["books-from-web"]);
    let authz = &s.authorizations[0];
    assert_eq!(
        authz.metadata,
        Some(meta::Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: "policy.weft.io".into(),
                kind: "AuthorizationPolicy".into(),
                name: "books-from-web".into(),
                namespace: "default".into(),
                section: String::new(),
                port: 0,
            })),
        })
    );
    // The ServiceAccount reference is the identity's name.
    let Some(authn::Permit::MeshTls(tls)) = authz.authentication.clone().and_then(|a| a.permit)
    else {
        panic!("mesh TLS required: {authz:?}");
    };
    let Some(authn::permit_mesh_tls::Clients::Identities(ids)) = tls.clients else {
        panic!("identities: {tls:?}");
    };
    assert_eq!(
        ids.identities,
        [inbound::Identity {
            name: "web.default.serviceaccount.identity.weft.cluster.local".into()
        }]
    );
    // The network with its exception.
    assert_eq!(authz.networks.len(), 1);
    assert_eq!(
        ipnet::IpNet::try_from(authz.networks[0].net.unwrap()).unwrap(),
        "198.18.0.0/15".parse::<ipnet::IpNet>().unwrap()
    );
    assert_eq!(authz.networks[0].except.len(), 1);
}

#[test]
fn a_port_no_server_selects_gets_the_default_policy() {
    let (index, mesh) = build(&empty(), POLICY);
    // books:9090 is not the Server's port (http = 8080).
    let s = server(&index, &mesh, "books", 9090);
    assert_eq!(s.labels["kind"], "default");
    assert_eq!(s.labels["name"], "all-unauthenticated");
    assert_eq!(names(&s), ["all-unauthenticated"]);
    assert!(matches!(
        s.authorizations[0]
            .authentication
            .clone()
            .and_then(|a| a.permit),
        Some(authn::Permit::Unauthenticated(_))
    ));
    // The workload's label wins over the controller's default.
    let s = server(&index, &mesh, "vault", 8200);
    assert_eq!(s.labels["name"], "deny");
    assert!(s.authorizations.is_empty());
    // A label that names no policy fails closed: a typo must not open the workload.
    let s = server(&index, &mesh, "typo", 8300);
    assert_eq!(s.labels["name"], "deny");
    assert!(s.authorizations.is_empty());
}

#[test]
fn the_controllers_default_policy_applies_to_unlabelled_workloads() {
    for policy in DefaultPolicy::ALL {
        let config = PolicyConfig {
            default_policy: policy,
            ..PolicyConfig::default()
        };
        let (index, mesh) = build(&PolicyIndex::empty(config, "cluster.local"), POLICY);
        let s = server(&index, &mesh, "web", 8080);
        assert_eq!(s.labels["name"], policy.as_str());
        match policy {
            DefaultPolicy::Deny => assert!(s.authorizations.is_empty()),
            DefaultPolicy::ClusterAuthenticated => {
                assert!(
                    s.authorizations[0].networks.len() > 2,
                    "the cluster's networks"
                );
            }
            _ => assert_eq!(s.authorizations[0].networks.len(), 2, "0.0.0.0/0 and ::/0"),
        }
    }
}

#[test]
fn a_server_without_policies_denies_everyone() {
    let only_server = POLICY.split("---").next().unwrap();
    let (index, mesh) = build(&empty(), only_server);
    let s = server(&index, &mesh, "books", 8080);
    assert_eq!(s.labels["name"], "books-http");
    assert!(s.authorizations.is_empty());
}

#[test]
fn a_namespace_target_covers_every_server_of_the_namespace() {
    let policy = format!(
        "{}---\n{}",
        POLICY.split("---").next().unwrap(),
        r#"
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: everyone}
spec:
  targetRef: {kind: Namespace, name: default}
"#
    );
    let (index, mesh) = build(&empty(), &policy);
    assert_eq!(names(&server(&index, &mesh, "books", 8080)), ["everyone"]);
}

#[test]
fn unknown_fields_and_bad_values_are_refused_with_file_object_and_field() {
    let (index, _) = build(
        &empty(),
        r#"
apiVersion: policy.weft.io/v1alpha1
kind: Server
metadata: {name: books-http}
spec:
  podSelector: {matchLabels: {app: books}}
  port: 8080
  prot: HTTP/1
---
apiVersion: policy.weft.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: pods}
spec:
  networks: [{cidr: 198.18.0.0/33}]
---
apiVersion: policy.weft.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web}
spec:
  identities: ["web.default.serviceaccount.identity.weft.cluster.local"]
  identityRefs: [{kind: ServiceAccount, name: web}]
---
apiVersion: policy.weft.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: p}
spec:
  targetRef: {kind: Namespace, name: default}
"#,
    );
    let messages: Vec<_> = index
        .reports()
        .iter()
        .map(|r| (r.accepted.reason, r.accepted.message.as_str()))
        .collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(messages.iter().all(|(reason, _)| *reason == "Invalid"));
    let joined = format!("{messages:?}");
    for expected in [
        "Server default/books-http: spec: unknown field `prot`",
        "NetworkAuthentication default/pods: spec.networks[0].cidr: \\\"198.18.0.0/33\\\" is not a CIDR",
        "MeshTLSAuthentication default/web: spec: give identities or identityRefs, not both",
        "AuthorizationPolicy default/p: apiVersion: is \\\"policy.weft.io/v1beta1\\\"",
    ] {
        assert!(joined.contains(expected), "{expected} in {joined}");
    }
}

#[test]
fn a_policy_naming_an_unknown_server_is_reported_and_its_last_valid_version_serves() {
    let (first, mesh) = build(&empty(), POLICY);
    assert_eq!(
        names(&server(&first, &mesh, "books", 8080)),
        ["books-from-web"]
    );

    // The target renamed to a Server that does not exist.
    let edited = POLICY.replace("kind: Server, name: books-http", "kind: Server, name: nope");
    let (second, mesh) = build(&first, &edited);
    let report = second
        .reports()
        .iter()
        .find(|r| r.key.as_ref().is_some_and(|k| k.name == "books-from-web"))
        .unwrap();
    let cond = report.resolved_refs.as_ref().unwrap();
    assert!(!cond.ok);
    assert_eq!(cond.reason, "TargetNotFound");
    assert!(
        cond.message.contains("no valid Server default/nope"),
        "{}",
        cond.message
    );
    assert!(report.serving && report.kept);
    assert_eq!(second.changes(&first).len(), 1, "one status changed");
    // The last valid version still authorizes web on books-http.
    assert_eq!(
        names(&server(&second, &mesh, "books", 8080)),
        ["books-from-web"]
    );

    // Without a valid version before, nothing serves.
    let (fresh, mesh) = build(&empty(), &edited);
    assert!(server(&fresh, &mesh, "books", 8080)
        .authorizations
        .is_empty());

    // An unknown authentication.
    let edited = POLICY.replace(
        "kind: MeshTLSAuthentication, name: web-only}",
        "kind: MeshTLSAuthentication, name: nobody}",
    );
    let (third, _) = build(&first, &edited);
    let report = third
        .reports()
        .iter()
        .find(|r| r.key.as_ref().is_some_and(|k| k.name == "books-from-web"))
        .unwrap();
    assert_eq!(
        report.resolved_refs.as_ref().unwrap().reason,
        "AuthenticationNotFound"
    );
}

#[test]
fn an_object_that_turns_invalid_keeps_its_last_valid_version() {
    let (first, _) = build(&empty(), POLICY);
    let edited = POLICY.replace("cidr: 198.18.0.0/15", "cidr: not-a-network");
    let (second, mesh) = build(&first, &edited);
    let report = second
        .reports()
        .iter()
        .find(|r| r.key.as_ref().is_some_and(|k| k.name == "pods"))
        .unwrap();
    assert!(!report.accepted.ok && report.kept);
    let s = server(&second, &mesh, "books", 8080);
    assert_eq!(names(&s), ["books-from-web"]);
    assert_eq!(
        ipnet::IpNet::try_from(s.authorizations[0].networks[0].net.unwrap()).unwrap(),
        "198.18.0.0/15".parse::<ipnet::IpNet>().unwrap()
    );
}

#[test]
fn identities_and_suffixes() {
    let (index, mesh) = build(
        &empty(),
        &POLICY.replace(
            "identityRefs: [{kind: ServiceAccount, name: web}]",
            r#"identities: ["*", "*.default.serviceaccount.identity.weft.cluster.local", "web.default.serviceaccount.identity.weft.cluster.local"]"#,
        ),
    );
    let s = server(&index, &mesh, "books", 8080);
    let Some(authn::Permit::MeshTls(tls)) = s.authorizations[0]
        .authentication
        .clone()
        .and_then(|a| a.permit)
    else {
        panic!("mesh TLS");
    };
    let Some(authn::permit_mesh_tls::Clients::Identities(ids)) = tls.clients else {
        panic!("identities");
    };
    assert_eq!(ids.identities.len(), 1);
    assert_eq!(ids.suffixes.len(), 2);
    assert!(ids.suffixes[0].parts.is_empty());
    assert_eq!(ids.suffixes[1].parts[0], "default");
}

#[test]
fn default_policies_parse_from_their_names() {
    for p in DefaultPolicy::ALL {
        assert_eq!(p.as_str().parse::<DefaultPolicy>(), Ok(p));
    }
    let err = "allow".parse::<DefaultPolicy>().unwrap_err();
    assert!(err.contains("all-unauthenticated"), "{err}");
}

#[test]
fn the_examples_are_accepted_on_the_demo_mesh() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    for example in [
        "books-callers.yaml",
        "authors-grpc.yaml",
        "namespace-authenticated.yaml",
    ] {
        let mesh = Mesh::parse(&[
            ("mesh.yaml".into(), read("examples/demo/mesh.yaml")),
            ("services.yaml".into(), read("examples/demo/services.yaml")),
            (example.into(), read(&format!("examples/policy/{example}"))),
        ])
        .unwrap_or_else(|e| panic!("{example}: {e}"));
        let index = PolicyIndex::build(&empty(), &mesh);
        assert!(!index.reports().is_empty(), "{example}");
        assert!(
            index.reports().iter().all(|r| r.ok() && r.serving),
            "{example}: {:?}",
            index.reports()
        );
    }
    // books-callers: web allowed on books-v1:8080, by name.
    let mesh = Mesh::parse(&[
        ("mesh.yaml".into(), read("examples/demo/mesh.yaml")),
        ("services.yaml".into(), read("examples/demo/services.yaml")),
        ("p.yaml".into(), read("examples/policy/books-callers.yaml")),
    ])
    .unwrap();
    let index = PolicyIndex::build(&empty(), &mesh);
    let s = server(&index, &mesh, "books-v1", 8080);
    assert_eq!(names(&s), ["books-from-frontends"]);
    // authors' HTTP port is not the Server's: the default policy.
    assert_eq!(
        server(&index, &mesh, "authors", 8080).labels["kind"],
        "default"
    );
}

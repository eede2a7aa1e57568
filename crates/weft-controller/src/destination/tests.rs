use std::collections::BTreeMap;
use std::net::SocketAddr;

use linkerd2_proxy_api::destination::update::Update as Kind;
use linkerd2_proxy_api::destination::{self as api};
use weft_core::mesh::Mesh;
use weft_core::pods::{PodEntry, PodsFile, ServiceAddress};

use super::service::Sent;
use super::*;

const MESH: &str = r#"
kind: Mesh
workloads:
  - name: web
    zone: zone-a
    ports: [8080]
    command: [app]
  - name: books
    replicas: 2
    serviceAccount: library
    zone: zone-b
    ports: [{name: http, port: 8080}, 9000, 7000]
    opaquePorts: [9000]
    skipPorts: [7000]
    command: [app]
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: books}
spec:
  selector: {app: books}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: raw, port: 9000, targetPort: 9000}
    - {name: db, port: 5432, targetPort: 8080, appProtocol: linkerd.io/opaque}
    - {name: skipped, port: 7000, targetPort: 7000}
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
"#;

fn mesh(mesh: &str) -> Mesh {
    Mesh::parse(&[
        ("mesh.yaml".into(), mesh.into()),
        ("services.yaml".into(), SERVICES.into()),
    ])
    .expect("valid test mesh")
}

fn pod(workload: &str, index: u32, ip: &str, ready: bool) -> PodEntry {
    PodEntry {
        name: format!("{workload}-{index}"),
        namespace: "default".into(),
        workload: workload.into(),
        index,
        ip: ip.parse().unwrap(),
        zone: None,
        ready,
    }
}

fn pods() -> PodsFile {
    PodsFile {
        pods: vec![
            pod("web", 0, "198.18.0.2", true),
            pod("books", 0, "198.18.0.3", true),
            pod("books", 1, "198.18.0.4", false),
        ],
        services: vec![
            ServiceAddress {
                name: "books".into(),
                namespace: "default".into(),
                ip: "198.19.0.1".parse().unwrap(),
            },
            ServiceAddress {
                name: "empty".into(),
                namespace: "default".into(),
                ip: "198.19.0.2".parse().unwrap(),
            },
        ],
    }
}

fn index(pods: PodsFile) -> Index {
    Index::new(mesh(MESH), pods, "cluster.local", &[3306])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn service(name: &str, port: u16) -> Target {
    Target::Service {
        namespace: "default".into(),
        name: name.into(),
        port,
    }
}

fn endpoints(r: Resolution) -> BTreeMap<SocketAddr, Endpoint> {
    match r {
        Resolution::Service { endpoints, .. } => endpoints,
        other => panic!("not a Service: {other:?}"),
    }
}

const LIBRARY: &str = "library.default.serviceaccount.identity.weft.cluster.local";

#[test]
fn paths_name_services_in_every_accepted_form() {
    let cd = "cluster.local";
    for path in [
        "books.default.svc.cluster.local:8080",
        "books.default.svc.cluster.local.:8080",
        "Books.Default.svc:8080",
        "books.default:8080",
    ] {
        assert_eq!(
            Target::parse(path, cd),
            Ok(service("books", 8080)),
            "{path}"
        );
    }
    assert_eq!(Target::parse("books.default", cd), Ok(service("books", 80)));
    assert_eq!(
        Target::parse("198.19.0.1:80", cd),
        Ok(Target::Addr(addr("198.19.0.1:80")))
    );
    assert_eq!(
        Target::parse("[fd00::1]:80", cd),
        Ok(Target::Addr(addr("[fd00::1]:80")))
    );
    assert_eq!(
        Target::parse("198.19.0.1", cd),
        Ok(Target::Addr(addr("198.19.0.1:80")))
    );
}

#[test]
fn bad_paths_say_what_is_wrong() {
    let cd = "cluster.local";
    let err = |p: &str| Target::parse(p, cd).unwrap_err().to_string();
    assert!(err("").starts_with("the path is empty"), "{}", err(""));
    assert_eq!(
        err("books.default:http"),
        "\"books.default:http\": \"http\" is not a port number (1-65535)"
    );
    assert_eq!(
        err("books.default:0"),
        "\"books.default:0\": \"0\" is not a port number (1-65535)"
    );
    assert_eq!(
        err("books:8080"),
        "\"books:8080\": \"books\" is not a Service name of this cluster: expected NAME.NAMESPACE, NAME.NAMESPACE.svc or NAME.NAMESPACE.svc.cluster.local"
    );
    assert!(err("books.default.svc.example.org:80").contains("not a Service name of this cluster"));
    assert_eq!(
        err("bo_oks.default:80"),
        "\"bo_oks.default:80\": Service name \"bo_oks\" is not a DNS label (lowercase letters, digits and '-', at most 63)"
    );
}

#[test]
fn a_service_port_resolves_to_its_ready_pods_with_identity_zone_and_hint() {
    let idx = index(pods());
    let eps = endpoints(idx.resolve(&service("books", 80)));
    // books-1 is not ready: not an endpoint.
    assert_eq!(
        eps.keys().copied().collect::<Vec<_>>(),
        [addr("198.18.0.3:8080")]
    );
    let e = &eps[&addr("198.18.0.3:8080")];
    assert_eq!(e.identity.as_deref(), Some(LIBRARY));
    assert_eq!(e.zone.as_deref(), Some("zone-b"));
    assert_eq!(e.protocol, Protocol::Http);
    assert_eq!((e.pod.as_str(), e.workload.as_str()), ("books-0", "books"));
    assert_eq!(e.weight, DEFAULT_WEIGHT);

    // The VIP resolves the same way.
    assert_eq!(
        idx.resolve(&Target::Addr(addr("198.19.0.1:80"))),
        idx.resolve(&service("books", 80))
    );
}

#[test]
fn opaque_and_skipped_ports_are_hinted_as_such() {
    let idx = index(pods());
    let raw = endpoints(idx.resolve(&service("books", 9000)));
    assert_eq!(raw[&addr("198.18.0.3:9000")].protocol, Protocol::Opaque);
    let db = endpoints(idx.resolve(&service("books", 5432)));
    assert_eq!(db[&addr("198.18.0.3:8080")].protocol, Protocol::Opaque);
    let skipped = endpoints(idx.resolve(&service("books", 7000)));
    let e = &skipped[&addr("198.18.0.3:7000")];
    assert_eq!(
        (e.protocol, e.identity.as_deref()),
        (Protocol::Unknown, None)
    );
}

#[test]
fn a_pod_ip_resolves_to_that_pod_ready_or_not() {
    let idx = index(pods());
    match idx.resolve(&Target::Addr(addr("198.18.0.4:8080"))) {
        Resolution::Pod(e) => {
            assert_eq!(e.addr, addr("198.18.0.4:8080"));
            assert_eq!(e.identity.as_deref(), Some(LIBRARY));
            assert_eq!(e.protocol, Protocol::Http);
        }
        other => panic!("{other:?}"),
    }
    // The controller's default opaque ports count for pods too.
    match idx.resolve(&Target::Addr(addr("198.18.0.2:3306"))) {
        Resolution::Pod(e) => assert_eq!(e.protocol, Protocol::Opaque),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_targets_and_empty_services() {
    let idx = index(pods());
    assert_eq!(idx.resolve(&service("nope", 80)), Resolution::Unknown);
    // A port the Service does not have.
    assert_eq!(idx.resolve(&service("books", 81)), Resolution::Unknown);
    assert_eq!(
        idx.resolve(&Target::Addr(addr("203.0.113.9:80"))),
        Resolution::Unknown
    );
    assert!(endpoints(idx.resolve(&service("empty", 80))).is_empty());
}

#[test]
fn pods_beyond_the_replicas_take_no_traffic() {
    let mut p = pods();
    p.pods[2].ready = true;
    p.pods.push(pod("books", 2, "198.18.0.5", true));
    let eps = endpoints(index(p).resolve(&service("books", 80)));
    // replicas: 2 — books-2 is on its way out.
    assert_eq!(
        eps.keys().copied().collect::<Vec<_>>(),
        [addr("198.18.0.3:8080"), addr("198.18.0.4:8080")]
    );
}

fn kinds(updates: &[api::Update]) -> Vec<String> {
    updates
        .iter()
        .map(|u| match &u.update {
            Some(Kind::Add(set)) => {
                let mut addrs: Vec<String> = set
                    .addrs
                    .iter()
                    .map(|a| SocketAddr::try_from(a.addr.unwrap()).unwrap().to_string())
                    .collect();
                addrs.sort();
                format!("add {}", addrs.join(","))
            }
            Some(Kind::Remove(set)) => {
                let addrs: Vec<String> = set
                    .addrs
                    .iter()
                    .map(|a| SocketAddr::try_from(*a).unwrap().to_string())
                    .collect();
                format!("remove {}", addrs.join(","))
            }
            Some(Kind::NoEndpoints(n)) => format!("no_endpoints exists={}", n.exists),
            None => "none".into(),
        })
        .collect()
}

#[test]
fn streams_send_only_what_changed() {
    let target = service("books", 80);
    let mut sent = Sent::default();
    let mut p = pods();
    // First: everything there is.
    let first = sent.advance(index(p.clone()).resolve(&target));
    assert_eq!(kinds(&first), ["add 198.18.0.3:8080"]);
    let Some(Kind::Add(set)) = &first[0].update else {
        unreachable!()
    };
    assert_eq!(set.metric_labels["service"], "books");
    assert_eq!(set.metric_labels["namespace"], "default");
    let wa = &set.addrs[0];
    assert_eq!(wa.metric_labels["zone"], "zone-b");
    assert_eq!(wa.metric_labels["pod"], "books-0");
    assert_eq!(wa.weight, DEFAULT_WEIGHT);
    let id = wa.tls_identity.as_ref().unwrap();
    assert_eq!(
        id.strategy,
        Some(api::tls_identity::Strategy::DnsLikeIdentity(
            api::tls_identity::DnsLikeIdentity {
                name: LIBRARY.into()
            }
        ))
    );
    assert_eq!(id.server_name.as_ref().unwrap().name, LIBRARY);
    assert!(matches!(
        wa.protocol_hint.as_ref().unwrap().protocol,
        Some(api::protocol_hint::Protocol::H2(_))
    ));

    // Nothing changed: nothing sent.
    assert!(sent.advance(index(p.clone()).resolve(&target)).is_empty());

    // books-1 becomes ready: only it is added.
    p.pods[2].ready = true;
    assert_eq!(
        kinds(&sent.advance(index(p.clone()).resolve(&target))),
        ["add 198.18.0.4:8080"]
    );
    // books-0 leaves, books-2 arrives (within replicas after a scale-up): added first.
    p.pods.remove(1);
    p.pods.push(pod("books", 0, "198.18.0.6", true));
    assert_eq!(
        kinds(&sent.advance(index(p.clone()).resolve(&target))),
        ["add 198.18.0.6:8080", "remove 198.18.0.3:8080"]
    );
    // None ready: the Service exists without endpoints.
    for pod in &mut p.pods {
        pod.ready = false;
    }
    assert_eq!(
        kinds(&sent.advance(index(p.clone()).resolve(&target))),
        ["no_endpoints exists=true"]
    );
    assert!(sent.advance(index(p.clone()).resolve(&target)).is_empty());
    // The Service goes away.
    let gone = Index::new(
        Mesh::parse(&[("mesh.yaml".into(), MESH.into())]).unwrap(),
        p.clone(),
        "cluster.local",
        &[],
    );
    assert_eq!(
        kinds(&sent.advance(gone.resolve(&target))),
        ["no_endpoints exists=false"]
    );
    // And comes back with a ready pod: all of it again.
    p.pods[1].ready = true;
    p.pods[2].ready = true;
    assert_eq!(
        kinds(&sent.advance(index(p).resolve(&target))),
        ["add 198.18.0.4:8080,198.18.0.6:8080"]
    );
}

#[test]
fn a_changed_endpoint_is_added_again() {
    let target = service("books", 80);
    let mut sent = Sent::default();
    let mut p = pods();
    sent.advance(index(p.clone()).resolve(&target));
    p.pods[1].zone = Some("zone-c".into());
    let updates = sent.advance(index(p).resolve(&target));
    assert_eq!(kinds(&updates), ["add 198.18.0.3:8080"]);
    let Some(Kind::Add(set)) = &updates[0].update else {
        unreachable!()
    };
    assert_eq!(set.addrs[0].metric_labels["zone"], "zone-c");
}

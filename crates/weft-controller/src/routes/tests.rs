//! Routes checked and served from mesh directories written inline: the shapes of the
//! Gateway API's mesh conformance manifests (Services echo, echo-v1 and echo-v2 in
//! namespace gateway-conformance-mesh), one test per status reason, and the policies
//! proxies get.

use std::time::{Duration, SystemTime};

use linkerd2_proxy_api::http_route as api_http;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound::{self, proxy_protocol};
use weft_core::mesh::Mesh;

use super::table::{RouteReport, RouteTable, TableUpdate};

const NS: &str = "gateway-conformance-mesh";

const MESH: &str = r#"
kind: Mesh
workloads:
  - {name: echo-v1, namespace: gateway-conformance-mesh, ports: [8080, 7070], command: [app], labels: {app: echo, version: v1}}
  - {name: echo-v2, namespace: gateway-conformance-mesh, ports: [8080, 7070], command: [app], labels: {app: echo, version: v2}}
  - {name: client, namespace: gateway-conformance-mesh-consumer, ports: [8080], command: [app]}
"#;

/// The conformance suite's Services (mesh base manifests): echo selects both
/// versions; echo-v1 and echo-v2 one each.
const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: gateway-conformance-mesh}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: http-alt, port: 8080, appProtocol: http}
  - {name: grpc, port: 7070, appProtocol: grpc}
  - {name: tcp, port: 9090, appProtocol: tcp}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: gateway-conformance-mesh}
spec:
  selector: {app: echo, version: v1}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: http-alt, port: 8080}
  - {name: grpc, port: 7070}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: gateway-conformance-mesh}
spec:
  selector: {app: echo, version: v2}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: http-alt, port: 8080}
  - {name: grpc, port: 7070}
"#;

fn mesh(routes: &str) -> Mesh {
    Mesh::parse(&[
        ("mesh.yaml".into(), MESH.into()),
        ("services.yaml".into(), SERVICES.into()),
        ("routes.yaml".into(), routes.into()),
    ])
    .unwrap_or_else(|e| panic!("the test mesh does not load: {e}"))
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn table(routes: &str) -> RouteTable {
    next(&RouteTable::empty("cluster.local"), routes, at(0)).0
}

fn next(previous: &RouteTable, routes: &str, now: SystemTime) -> (RouteTable, Vec<TableUpdate>) {
    RouteTable::build(previous, &mesh(routes), "cluster.local", now)
}

fn report<'a>(t: &'a RouteTable, name: &str) -> &'a RouteReport {
    t.reports().find(|r| r.key.name == name).unwrap_or_else(|| {
        panic!(
            "no route {name}: {:?}",
            t.reports().map(|r| &r.key).collect::<Vec<_>>()
        )
    })
}

/// `(Accepted reason, ResolvedRefs reason)` of a route's first parent.
fn reasons(t: &RouteTable, name: &str) -> (&'static str, &'static str) {
    let r = report(t, name);
    let p = r
        .parents
        .first()
        .unwrap_or_else(|| panic!("{name} has no Service parent"));
    (p.accepted.cond.reason, p.resolved.cond.reason)
}

fn accepted_message(t: &RouteTable, name: &str) -> String {
    report(t, name).parents[0].accepted.cond.message.clone()
}

fn resolved_message(t: &RouteTable, name: &str) -> String {
    report(t, name).parents[0].resolved.cond.message.clone()
}

/// The HTTP routes a caller in `caller` gets for echo:`port` (the HTTP/1 list; HTTP/2's
/// is the same).
fn http_routes(t: &RouteTable, port: u16, caller: &str) -> Vec<outbound::HttpRoute> {
    let policy = t
        .policy(NS, "echo", port, caller)
        .expect("echo has a policy");
    match policy.protocol.and_then(|p| p.kind) {
        Some(proxy_protocol::Kind::Detect(d)) => {
            let h1 = d.http1.expect("http1").routes;
            assert_eq!(h1, d.http2.expect("http2").routes);
            h1
        }
        other => panic!("not an HTTP policy: {other:?}"),
    }
}

fn route_name(r: &outbound::HttpRoute) -> String {
    match r.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(meta::metadata::Kind::Resource(res)) => format!("{}/{}", res.namespace, res.name),
        Some(meta::metadata::Kind::Default(d)) => format!("default:{d}"),
        None => "?".into(),
    }
}

/// `(path of the backend's Destination.Get, weight, failure message)` of a rule.
fn backends(rule: &outbound::http_route::Rule) -> Vec<(String, u32, Option<String>)> {
    use outbound::backend::{endpoint_discovery, Kind};
    use outbound::http_route::distribution;
    match rule.backends.as_ref().and_then(|d| d.kind.as_ref()) {
        Some(distribution::Kind::RandomAvailable(r)) => r
            .backends
            .iter()
            .map(|wb| {
                let rb = wb.backend.as_ref().unwrap();
                let b = rb.backend.as_ref().unwrap();
                let path = match &b.kind {
                    Some(Kind::Balancer(p2c)) => {
                        match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
                            Some(endpoint_discovery::Kind::Dst(d)) => d.path.clone(),
                            None => "?".into(),
                        }
                    }
                    _ => "invalid".into(),
                };
                let failure = rb.filters.iter().find_map(|f| match &f.kind {
                    Some(outbound::http_route::filter::Kind::FailureInjector(fi)) => {
                        Some(format!("{} {}", fi.status, fi.message))
                    }
                    _ => None,
                });
                (path, wb.weight, failure)
            })
            .collect(),
        Some(distribution::Kind::Empty(_)) => Vec::new(),
        other => panic!("unexpected distribution {other:?}"),
    }
}

fn svc(name: &str, port: u16) -> String {
    format!("{name}.{NS}.svc.cluster.local:{port}")
}

// ----- the conformance suite's shapes -----

/// MeshHTTPRouteMatching: path, header matches, each rule to its own backend.
#[test]
fn mesh_httproute_matching() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-matching
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - headers:
      - name: version
        value: two
    - path:
        type: Exact
        value: /v2
    backendRefs:
    - name: echo-v2
      port: 8080
"#,
    );
    assert_eq!(reasons(&t, "mesh-matching"), ("Accepted", "ResolvedRefs"));
    let routes = http_routes(&t, 80, NS);
    assert_eq!(routes.len(), 1);
    let rules = &routes[0].rules;
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].matches[0].path.as_ref().unwrap().kind,
        Some(api_http::path_match::Kind::Prefix("/".into()))
    );
    assert_eq!(backends(&rules[0]), vec![(svc("echo-v1", 8080), 1, None)]);
    // A match without a path matches every path (PathPrefix /), with its header.
    let header_match = &rules[1].matches[0];
    assert_eq!(
        header_match.path.as_ref().unwrap().kind,
        Some(api_http::path_match::Kind::Prefix("/".into()))
    );
    assert_eq!(header_match.headers[0].name, "version");
    assert_eq!(
        header_match.headers[0].value,
        Some(api_http::header_match::Value::Exact(b"two".to_vec()))
    );
    assert_eq!(
        rules[1].matches[1].path.as_ref().unwrap().kind,
        Some(api_http::path_match::Kind::Exact("/v2".into()))
    );
    assert_eq!(backends(&rules[1]), vec![(svc("echo-v2", 8080), 1, None)]);
    // The other port of echo has no route: its default route goes to echo itself.
    let other = http_routes(&t, 8080, NS);
    assert_eq!(route_name(&other[0]), "default:http");
    assert_eq!(
        backends(&other[0].rules[0]),
        vec![(svc("echo", 8080), 1, None)]
    );
}

/// MeshHTTPRouteWeight: 70/30 between two backends.
#[test]
fn mesh_httproute_weight() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-weighted
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - backendRefs:
    - name: echo-v1
      port: 80
      weight: 70
    - name: echo-v2
      port: 80
      weight: 30
"#,
    );
    assert_eq!(reasons(&t, "mesh-weighted"), ("Accepted", "ResolvedRefs"));
    let routes = http_routes(&t, 80, NS);
    assert_eq!(
        backends(&routes[0].rules[0]),
        vec![
            (svc("echo-v1", 80), 70, None),
            (svc("echo-v2", 80), 30, None)
        ]
    );
}

/// MeshHTTPRouteQueryParamMatching and MeshHTTPRouteRequestHeaderModifier shapes,
/// with a method match.
#[test]
fn query_params_methods_and_header_modifiers() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-query-param-matching
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  rules:
  - matches:
    - queryParams:
      - {name: animal, value: whale}
      method: POST
    - queryParams:
      - {name: color, type: RegularExpression, value: "^bl(ue|ack)$"}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: add-appends-values}]
        remove: [X-Header-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Response, value: "1"}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          add: [{name: X-Backend, value: v1}]
"#,
    );
    assert_eq!(
        reasons(&t, "mesh-query-param-matching"),
        ("Accepted", "ResolvedRefs")
    );
    let routes = http_routes(&t, 80, NS);
    let rule = &routes[0].rules[0];
    assert_eq!(
        rule.matches[0].query_params[0].value,
        Some(api_http::query_param_match::Value::Exact("whale".into()))
    );
    assert_eq!(
        rule.matches[0].method,
        Some(linkerd2_proxy_api::http_types::HttpMethod::from(
            http::Method::POST
        ))
    );
    assert_eq!(
        rule.matches[1].query_params[0].value,
        Some(api_http::query_param_match::Value::Regex(
            "^bl(ue|ack)$".into()
        ))
    );
    use outbound::http_route::filter::Kind;
    match &rule.filters[0].kind {
        Some(Kind::RequestHeaderModifier(m)) => {
            assert_eq!(m.set.as_ref().unwrap().headers[0].name, "X-Header-Set");
            assert_eq!(
                m.add.as_ref().unwrap().headers[0].value,
                b"add-appends-values"
            );
            assert_eq!(m.remove, vec!["X-Header-Remove".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rule.filters[1].kind,
        Some(Kind::ResponseHeaderModifier(_))
    ));
    let backend = rule.backends.as_ref().and_then(|d| d.kind.as_ref());
    let Some(outbound::http_route::distribution::Kind::RandomAvailable(r)) = backend else {
        panic!("{backend:?}");
    };
    let filters = &r.backends[0].backend.as_ref().unwrap().filters;
    assert!(
        matches!(filters[0].kind, Some(Kind::RequestHeaderModifier(_))),
        "{filters:?}"
    );
}

/// MeshHTTPRouteRedirectPath: prefix and full path replacements; no backendRefs (the
/// parent Service is the backend).
#[test]
fn mesh_httproute_redirect_path() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-redirect-path
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /original-prefix
    filters:
    - type: RequestRedirect
      requestRedirect:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /replacement-prefix
  - matches:
    - path:
        type: PathPrefix
        value: /full
    filters:
    - type: RequestRedirect
      requestRedirect:
        path:
          type: ReplaceFullPath
          replaceFullPath: /full-path-replacement
        statusCode: 301
        hostname: example.org
"#,
    );
    assert_eq!(
        reasons(&t, "mesh-redirect-path"),
        ("Accepted", "ResolvedRefs")
    );
    let routes = http_routes(&t, 80, NS);
    use outbound::http_route::filter::Kind;
    let redirect = |i: usize| match &routes[0].rules[i].filters[0].kind {
        Some(Kind::Redirect(r)) => r.clone(),
        other => panic!("{other:?}"),
    };
    let prefix = redirect(0);
    assert_eq!(
        prefix.path.unwrap().replace,
        Some(api_http::path_modifier::Replace::Prefix(
            "/replacement-prefix".into()
        ))
    );
    assert_eq!(prefix.status, 302, "the default status");
    let full = redirect(1);
    assert_eq!(
        full.path.unwrap().replace,
        Some(api_http::path_modifier::Replace::Full(
            "/full-path-replacement".into()
        ))
    );
    assert_eq!((full.status, full.host.as_str()), (301, "example.org"));
    assert_eq!(
        backends(&routes[0].rules[0]),
        vec![(svc("echo", 80), 1, None)]
    );
}

/// MeshConsumerRoute: a route in the caller's namespace for a Service of another
/// replaces the producer's routes for callers of that namespace only.
#[test]
fn mesh_consumer_route() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: consumer-rule
  namespace: gateway-conformance-mesh-consumer
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    namespace: gateway-conformance-mesh
    port: 80
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Header-Set
          value: set
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: producer-rule
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - backendRefs:
    - {name: echo-v2, port: 80}
"#,
    );
    assert_eq!(reasons(&t, "consumer-rule"), ("Accepted", "ResolvedRefs"));
    assert_eq!(reasons(&t, "producer-rule"), ("Accepted", "ResolvedRefs"));
    let consumer = http_routes(&t, 80, "gateway-conformance-mesh-consumer");
    assert_eq!(
        consumer.iter().map(route_name).collect::<Vec<_>>(),
        ["gateway-conformance-mesh-consumer/consumer-rule"]
    );
    // No backendRefs: to the parent Service.
    assert_eq!(
        backends(&consumer[0].rules[0]),
        vec![(svc("echo", 80), 1, None)]
    );
    for caller in [NS, "elsewhere"] {
        let producer = http_routes(&t, 80, caller);
        assert_eq!(
            producer.iter().map(route_name).collect::<Vec<_>>(),
            ["gateway-conformance-mesh/producer-rule"],
            "caller in {caller}"
        );
    }
}

/// MeshGRPCRouteWeight: a GRPCRoute makes the port's policy gRPC.
#[test]
fn mesh_grpcroute_weight() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: mesh-grpc-weighted
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 7070
  rules:
  - matches:
    - method: {service: grpc.testing.TestService, method: UnaryCall}
      headers: [{name: x-version, value: "2"}]
    backendRefs:
    - {name: echo-v1, port: 7070, weight: 70}
    - {name: echo-v2, port: 7070, weight: 30}
"#,
    );
    assert_eq!(
        reasons(&t, "mesh-grpc-weighted"),
        ("Accepted", "ResolvedRefs")
    );
    let policy = t.policy(NS, "echo", 7070, NS).unwrap();
    let Some(proxy_protocol::Kind::Grpc(grpc)) = policy.protocol.and_then(|p| p.kind) else {
        panic!("not a gRPC policy");
    };
    let rule = &grpc.routes[0].rules[0];
    let rpc = rule.matches[0].rpc.as_ref().unwrap();
    assert_eq!(
        (rpc.service.as_str(), rpc.method.as_str()),
        ("grpc.testing.TestService", "UnaryCall")
    );
    let Some(outbound::grpc_route::distribution::Kind::RandomAvailable(r)) =
        rule.backends.as_ref().and_then(|d| d.kind.clone())
    else {
        panic!("{:?}", rule.backends);
    };
    assert_eq!(
        r.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [70, 30]
    );
    // An opaque port's policy is opaque.
    let tcp = t.policy(NS, "echo", 9090, NS).unwrap();
    assert!(matches!(
        tcp.protocol.and_then(|p| p.kind),
        Some(proxy_protocol::Kind::Opaque(_))
    ));
    assert!(t.policy(NS, "echo", 1234, NS).is_none(), "no such port");
}

/// Timeouts and retries: request → `timeouts.request`, backendRequest →
/// `timeouts.response` and the retry's per-attempt timeout.
#[test]
fn timeouts_and_retries() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - timeouts: {request: 10s, backendRequest: 2s}
    retry: {attempts: 3, backoff: 100ms, codes: [503]}
    backendRefs: [{name: echo-v1, port: 80}]
"#,
    );
    assert_eq!(reasons(&t, "slow"), ("Accepted", "ResolvedRefs"));
    let rule = &http_routes(&t, 80, NS)[0].rules[0];
    let timeouts = rule.timeouts.as_ref().unwrap();
    assert_eq!(
        timeouts.request,
        Some(prost_types::Duration {
            seconds: 10,
            nanos: 0
        })
    );
    assert_eq!(
        timeouts.response,
        Some(prost_types::Duration {
            seconds: 2,
            nanos: 0
        })
    );
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.max_retries, 3);
    assert_eq!(
        retry.timeout,
        Some(prost_types::Duration {
            seconds: 2,
            nanos: 0
        })
    );
    let ranges = &retry.conditions.as_ref().unwrap().status_ranges;
    assert_eq!((ranges[0].start, ranges[0].end), (503, 503));
    assert_eq!(
        retry.backoff.as_ref().unwrap().min_backoff,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000
        })
    );
}

// ----- one test per reason -----

const ROUTE_HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: gateway-conformance-mesh}\n";

fn route(spec: &str) -> String {
    format!("{ROUTE_HEAD}spec:\n{spec}")
}

const PARENT: &str = "  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n";

#[test]
fn no_matching_parent_when_the_service_or_its_port_does_not_exist() {
    let t = table(&route(
        "  parentRefs: [{group: \"\", kind: Service, name: nope}]\n",
    ));
    assert_eq!(reasons(&t, "r").0, "NoMatchingParent");
    assert!(
        accepted_message(&t, "r").contains("Service gateway-conformance-mesh/nope does not exist")
    );
    let t = table(&route(
        "  parentRefs: [{group: \"\", kind: Service, name: echo, port: 81}]\n",
    ));
    assert_eq!(reasons(&t, "r").0, "NoMatchingParent");
    assert!(
        accepted_message(&t, "r").contains("has no port 81 (ports: 80 (http), 8080 (http-alt)"),
        "{}",
        accepted_message(&t, "r")
    );
    // A Gateway parent is not the mesh's: no status from weft.
    let t = table(&route("  parentRefs: [{name: some-gateway}]\n"));
    assert!(report(&t, "r").parents.is_empty());
}

#[test]
fn unsupported_values_name_the_field() {
    let cases = [
        (
            "  rules:\n  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]\n",
            "spec.rules[0].matches[0].path.value: invalid regular expression \"/(unclosed\"",
        ),
        (
            "  rules:\n  - backendRefs: [{name: echo-v1, port: 80, weight: 1000001}]\n",
            "spec.rules[0].backendRefs[0].weight: 1000001 is out of range (0 to 1000000)",
        ),
        (
            "  rules:\n  - backendRefs: [{name: echo-v1, port: 80, weight: -1}]\n",
            "spec.rules[0].backendRefs[0].weight: -1 is out of range",
        ),
        (
            "  rules:\n  - filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: Thing, name: t}}]\n",
            "spec.rules[0].filters[0]: filter ExtensionRef is not supported by weft",
        ),
        (
            "  rules:\n  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}]\n",
            "spec.rules[0].filters[0].urlRewrite.path: ReplacePrefixMatch needs the rule to have exactly one match, of type PathPrefix",
        ),
        (
            "  rules:\n  - filters: [{type: URLRewrite, urlRewrite: {hostname: \"echo:80\"}}]\n",
            "spec.rules[0].filters[0].urlRewrite.hostname: \"echo:80\" is not a valid hostname",
        ),
        (
            "  rules:\n  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]\n",
            "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: required by type ReplaceFullPath",
        ),
        (
            "  rules:\n  - filters: [{type: URLRewrite, urlRewrite: {hostname: a.example}}, {type: RequestRedirect, requestRedirect: {hostname: b.example}}]\n",
            "spec.rules[0].filters: RequestRedirect and URLRewrite cannot both be given",
        ),
        (
            "  rules:\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}, percent: 101}}]\n",
            "spec.rules[0].filters[0].requestMirror.percent: 101 is out of range (0 to 100)",
        ),
        (
            "  rules:\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}, fraction: {numerator: 3, denominator: 2}}}]\n",
            "spec.rules[0].filters[0].requestMirror.fraction.numerator: 3 is out of range",
        ),
        (
            "  rules:\n  - timeouts: {request: 1s, backendRequest: 2s}\n",
            "spec.rules[0].timeouts.backendRequest: 2s is longer than timeouts.request (1s)",
        ),
        (
            "  rules:\n  - timeouts: {request: 1.5s}\n",
            "spec.rules[0].timeouts.request: \"1.5s\" is not a Gateway API duration",
        ),
        (
            "  rules:\n  - matches: [{headers: [{name: x, type: RegularExpression, value: \"[\"}]}]\n",
            "spec.rules[0].matches[0].headers[0].value: invalid regular expression",
        ),
    ];
    for (rules, expected) in cases {
        let t = table(&route(&format!("{PARENT}{rules}")));
        assert_eq!(reasons(&t, "r").0, "UnsupportedValue", "{rules}");
        let message = accepted_message(&t, "r");
        assert!(message.contains(expected), "{rules}: {message}");
        // Never valid: nothing of it serves.
        assert_eq!(
            route_name(&http_routes(&t, 80, NS)[0]),
            "default:http",
            "{rules}"
        );
    }
}

#[test]
fn objects_that_do_not_parse_name_the_file_object_and_field() {
    let t = table(&route(&format!("{PARENT}  rules:\n  - matchs: []\n")));
    assert_eq!(reasons(&t, "r").0, "UnsupportedValue");
    assert_eq!(
        accepted_message(&t, "r"),
        "routes.yaml: HTTPRoute gateway-conformance-mesh/r: spec.rules[0].matchs: unknown field"
    );
    let t = table(&route(&format!(
        "{PARENT}  rules:\n  - backendRefs: [{{name: echo-v1, port: eighty}}]\n"
    )));
    let message = accepted_message(&t, "r");
    assert!(message.starts_with("routes.yaml: HTTPRoute gateway-conformance-mesh/r: spec.rules[0].backendRefs[0].port: invalid type"), "{message}");
    let t = table(&route(PARENT).replace("/v1\n", "/v1alpha2\n"));
    let message = accepted_message(&t, "r");
    assert!(message.ends_with("HTTPRoute gateway-conformance-mesh/r: apiVersion: is \"gateway.networking.k8s.io/v1alpha2\"; HTTPRoute is read as gateway.networking.k8s.io/v1"), "{message}");
}

#[test]
fn backend_not_found_invalid_kind_and_ref_not_permitted() {
    let cases = [
        (
            "[{name: nope, port: 80}]",
            "BackendNotFound",
            "backendRef Service gateway-conformance-mesh/nope does not exist",
        ),
        (
            "[{name: echo-v1, port: 81}]",
            "BackendNotFound",
            "backendRef Service gateway-conformance-mesh/echo-v1 has no port 81",
        ),
        (
            "[{name: echo-v1}]",
            "BackendNotFound",
            "has no port: a Service backend needs one",
        ),
        (
            "[{group: example.com, kind: Bucket, name: b}]",
            "InvalidKind",
            "backendRef b is a example.com/Bucket: only core Services are backends",
        ),
        (
            "[{name: echo, namespace: other, port: 80}]",
            "RefNotPermitted",
            "no ReferenceGrant in other allows HTTPRoutes of gateway-conformance-mesh",
        ),
    ];
    for (refs, reason, expected) in cases {
        let t = table(&route(&format!(
            "{PARENT}  rules:\n  - backendRefs: {refs}\n"
        )));
        assert_eq!(reasons(&t, "r"), ("Accepted", reason), "{refs}");
        let message = resolved_message(&t, "r");
        assert!(message.contains(expected), "{refs}: {message}");
        // Accepted (never valid before): it serves, and the unresolved backend's
        // share of requests fails with 500.
        let routes = http_routes(&t, 80, NS);
        let b = backends(&routes[0].rules[0]);
        assert_eq!(b[0].0, "invalid", "{refs}");
        assert!(
            b[0].2.as_deref().unwrap_or("").starts_with("500 "),
            "{refs}: {b:?}"
        );
    }
}

#[test]
fn a_reference_grant_permits_a_backend_in_another_namespace() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: gateway-conformance-mesh-consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: gateway-conformance-mesh, port: 80}]
  rules:
  - backendRefs: [{name: echo-v2, namespace: gateway-conformance-mesh, port: 80}]
"#;
    let t = table(routes);
    assert_eq!(reasons(&t, "r"), ("Accepted", "RefNotPermitted"));
    let grant = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: consumers, namespace: gateway-conformance-mesh}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-mesh-consumer}]
  to: [{group: "", kind: Service}]
"#;
    let t = table(&format!("{routes}{grant}"));
    assert_eq!(reasons(&t, "r"), ("Accepted", "ResolvedRefs"));
}

#[test]
fn an_httproute_sharing_a_parent_with_a_grpcroute_is_conflicted() {
    let t = table(&format!(
        "{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: gateway-conformance-mesh}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules: [{{backendRefs: [{{name: echo-v1, port: 7070}}]}}]\n",
        route(&format!("{PARENT}  rules: [{{backendRefs: [{{name: echo-v1, port: 80}}]}}]\n"))
    ));
    assert_eq!(reasons(&t, "r").0, "Conflicted");
    assert_eq!(reasons(&t, "g").0, "Accepted");
    let policy = t.policy(NS, "echo", 80, NS).unwrap();
    assert!(matches!(
        policy.protocol.and_then(|p| p.kind),
        Some(proxy_protocol::Kind::Grpc(_))
    ));
}

#[test]
fn weight_zero_backends_take_nothing_and_all_zero_fails_every_request() {
    let t = table(&route(&format!(
        "{PARENT}  rules:\n  - backendRefs: [{{name: echo-v1, port: 80, weight: 0}}, {{name: echo-v2, port: 80}}]\n  - matches: [{{path: {{value: /zero}}}}]\n    backendRefs: [{{name: echo-v1, port: 80, weight: 0}}]\n"
    )));
    assert_eq!(reasons(&t, "r"), ("Accepted", "ResolvedRefs"));
    let routes = http_routes(&t, 80, NS);
    assert_eq!(
        backends(&routes[0].rules[0]),
        vec![(svc("echo-v2", 80), 1, None)]
    );
    let zero = &routes[0].rules[1];
    assert!(backends(zero).is_empty());
    let failure = zero.filters.iter().find_map(|f| match &f.kind {
        Some(outbound::http_route::filter::Kind::FailureInjector(fi)) => Some(fi.status),
        _ => None,
    });
    assert_eq!(failure, Some(500));
}

// ----- over time -----

const WEIGHTED: &str = "  rules:\n  - backendRefs: [{name: echo-v1, port: 80, weight: W1}, {name: echo-v2, port: 80, weight: W2}]\n";

fn weighted(w1: &str, w2: &str) -> String {
    route(&format!(
        "{PARENT}{}",
        WEIGHTED.replace("W1", w1).replace("W2", w2)
    ))
}

fn weights(t: &RouteTable) -> Vec<u32> {
    backends(&http_routes(t, 80, NS)[0].rules[0])
        .iter()
        .map(|b| b.1)
        .collect()
}

#[test]
fn a_route_that_turns_invalid_keeps_its_last_valid_version_serving() {
    let (t1, _) = next(
        &RouteTable::empty("cluster.local"),
        &weighted("90", "10"),
        at(0),
    );
    assert_eq!(weights(&t1), [90, 10]);
    assert_eq!(report(&t1, "r").generation, 1);
    // The canary's weight, edited to a value out of range.
    let (t2, updates) = next(&t1, &weighted("90", "2000000"), at(5));
    assert_eq!(weights(&t2), [90, 10], "the last valid version serves");
    assert_eq!(reasons(&t2, "r").0, "UnsupportedValue");
    assert!(accepted_message(&t2, "r")
        .ends_with("; the last valid version (generation 1) keeps serving"));
    assert_eq!(report(&t2, "r").generation, 2);
    assert_eq!(report(&t2, "r").kept, Some(1));
    // One line for the log, for the condition that changed.
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(
        (
            updates[0].condition,
            updates[0].cond.reason,
            updates[0].kept
        ),
        ("Accepted", "UnsupportedValue", Some(1))
    );
    // A backend that does not exist: also kept.
    let (t3, _) = next(
        &t2,
        &route(&format!(
            "{PARENT}  rules:\n  - backendRefs: [{{name: echo-v3, port: 80}}]\n"
        )),
        at(6),
    );
    assert_eq!(reasons(&t3, "r"), ("Accepted", "BackendNotFound"));
    assert!(resolved_message(&t3, "r")
        .ends_with("echo-v3 does not exist; the last valid version (generation 1) keeps serving"));
    assert_eq!(weights(&t3), [90, 10]);
    // A file that does not parse: also kept.
    let (t4, _) = next(
        &t3,
        &route(&format!("{PARENT}  rules: [{{backendRef: []}}]\n")),
        at(7),
    );
    assert_eq!(weights(&t4), [90, 10]);
    assert!(accepted_message(&t4, "r").contains("spec.rules[0].backendRef: unknown field; the last valid version (generation 1) keeps serving"));
    // Fixed: the new version serves.
    let (t5, updates) = next(&t4, &weighted("50", "50"), at(10));
    assert_eq!(weights(&t5), [50, 50]);
    assert_eq!(reasons(&t5, "r"), ("Accepted", "ResolvedRefs"));
    assert!(updates.iter().all(|u| u.cond.ok), "{updates:?}");
    // Removed: gone, and its Service back to the default route.
    let (t6, _) = next(&t5, "", at(11));
    assert_eq!(t6.reports().count(), 0);
    assert_eq!(route_name(&http_routes(&t6, 80, NS)[0]), "default:http");
}

#[test]
fn transition_times_change_with_the_status_and_generations_with_the_spec() {
    let (t1, _) = next(
        &RouteTable::empty("cluster.local"),
        &weighted("90", "10"),
        at(0),
    );
    let since = |t: &RouteTable| report(t, "r").parents[0].accepted.since.clone();
    let first = since(&t1);
    // A new weight: a new generation; the condition stays true since the start.
    let (t2, updates) = next(&t1, &weighted("80", "20"), at(30));
    assert_eq!(report(&t2, "r").generation, 2);
    assert_eq!(since(&t2), first);
    assert!(updates.is_empty(), "{updates:?}");
    // Nothing changed: same generation.
    let (t3, _) = next(&t2, &weighted("80", "20"), at(40));
    assert_eq!(report(&t3, "r").generation, 2);
    // Invalid: the transition is stamped.
    let (t4, _) = next(&t3, &weighted("80", "-5"), at(50));
    assert_ne!(since(&t4), first);
    assert_eq!(since(&t4).0.as_second(), 1_800_000_050);
    // metadata.generation, when written, is the one observed.
    let with_generation = weighted("1", "1").replace(
        "namespace: gateway-conformance-mesh}",
        "namespace: gateway-conformance-mesh, generation: 7}",
    );
    let (t5, _) = next(&t4, &with_generation, at(60));
    assert_eq!(report(&t5, "r").generation, 7);
}

#[test]
fn older_routes_take_precedence_then_namespace_and_name() {
    let two = |a_created: &str, b_created: &str| {
        format!(
            "{}---\n{}",
            route(&format!(
                "{PARENT}  rules: [{{backendRefs: [{{name: echo-v1, port: 80}}]}}]\n"
            ))
            .replace(
                "name: r,",
                &format!("name: b-route, creationTimestamp: {b_created},")
            ),
            route(&format!(
                "{PARENT}  rules: [{{backendRefs: [{{name: echo-v2, port: 80}}]}}]\n"
            ))
            .replace(
                "name: r,",
                &format!("name: a-route, creationTimestamp: {a_created},")
            ),
        )
    };
    let names = |t: &RouteTable| {
        http_routes(t, 80, NS)
            .iter()
            .map(route_name)
            .collect::<Vec<_>>()
    };
    let t = table(&two("\"2026-01-02T00:00:00Z\"", "\"2026-01-01T00:00:00Z\""));
    assert_eq!(
        names(&t),
        [format!("{NS}/b-route"), format!("{NS}/a-route")]
    );
    let t = table(&two("\"2026-01-01T00:00:00Z\"", "\"2026-01-01T00:00:00Z\""));
    assert_eq!(
        names(&t),
        [format!("{NS}/a-route"), format!("{NS}/b-route")]
    );
}

/// MeshHTTPRouteRedirectHostAndStatus, MeshHTTPRouteRedirectPort and
/// MeshHTTPRouteSchemeRedirect shapes, and MeshHTTPRouteSimpleSameNamespace's plain
/// route, with hostnames.
#[test]
fn mesh_httproute_redirects_and_simple_same_namespace() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-redirect
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  hostnames: [echo, "*.example.com"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: example.org}
  - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: example.org, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {port: 8083}
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-simple
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 8080}
  rules:
  - backendRefs: [{name: echo-v1, port: 8080}]
"#,
    );
    assert_eq!(reasons(&t, "mesh-redirect"), ("Accepted", "ResolvedRefs"));
    assert_eq!(reasons(&t, "mesh-simple"), ("Accepted", "ResolvedRefs"));
    let routes = http_routes(&t, 80, NS);
    assert_eq!(
        routes[0].hosts,
        vec![
            api_http::HostMatch {
                r#match: Some(api_http::host_match::Match::Exact("echo".into())),
            },
            api_http::HostMatch {
                r#match: Some(api_http::host_match::Match::Suffix(
                    api_http::host_match::Suffix {
                        reverse_labels: vec!["com".into(), "example".into()],
                    }
                )),
            },
        ]
    );
    use outbound::http_route::filter::Kind;
    let redirects: Vec<(String, u32, u32, Option<String>)> = routes[0]
        .rules
        .iter()
        .map(|r| match &r.filters[0].kind {
            Some(Kind::Redirect(r)) => (
                r.host.clone(),
                r.port,
                r.status,
                r.scheme
                    .clone()
                    .and_then(|s| http::uri::Scheme::try_from(s).ok())
                    .map(|s| s.to_string()),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        redirects,
        [
            ("example.org".into(), 0, 302, None),
            ("example.org".into(), 0, 301, None),
            (String::new(), 8083, 302, None),
            (String::new(), 0, 302, Some("https".into())),
        ]
    );
    // The simple route is on port 8080 only.
    let simple = http_routes(&t, 8080, NS);
    assert_eq!(
        simple.iter().map(route_name).collect::<Vec<_>>(),
        [format!("{NS}/mesh-simple")]
    );
    assert_eq!(
        backends(&simple[0].rules[0]),
        vec![(svc("echo-v1", 8080), 1, None)]
    );
}

#[test]
fn a_route_defined_twice_counts_once_and_says_so() {
    let first = route(&format!(
        "{PARENT}  rules: [{{backendRefs: [{{name: echo-v1, port: 80}}]}}]\n"
    ));
    let second = route(&format!(
        "{PARENT}  rules: [{{backendRefs: [{{name: echo-v2, port: 80}}]}}]\n"
    ));
    let t = table(&format!("{first}---\n{second}"));
    assert_eq!(t.reports().count(), 1);
    assert_eq!(
        backends(&http_routes(&t, 80, NS)[0].rules[0]),
        vec![(svc("echo-v1", 80), 1, None)]
    );
    let problems: Vec<&String> = t.problems().collect();
    assert_eq!(
        problems,
        ["routes.yaml: HTTPRoute gateway-conformance-mesh/r is defined twice (first in routes.yaml); this one is ignored"]
    );
    // An object without a name cannot be a route.
    let t = table("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {namespace: x}\nspec: {}\n");
    assert_eq!(t.reports().count(), 0);
    let problems: Vec<&String> = t.problems().collect();
    assert_eq!(
        problems,
        ["routes.yaml: document 1: metadata.name is required"]
    );
}

#[test]
fn grpc_and_http_routes_on_different_ports_do_not_conflict() {
    let grpc = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: gateway-conformance-mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 7070}]\n  rules: [{backendRefs: [{name: echo-v1, port: 7070}]}]\n";
    let rules = "  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]\n";
    let t = table(&format!("{}{grpc}", route(&format!("{PARENT}{rules}"))));
    assert_eq!(reasons(&t, "r").0, "Accepted");
    assert_eq!(route_name(&http_routes(&t, 80, NS)[0]), format!("{NS}/r"));
    // On every port of echo, the HTTPRoute overlaps the GRPCRoute's port: conflicted,
    // and served on none (not even on port 80, where no GRPCRoute is).
    let every_port = "  parentRefs: [{group: \"\", kind: Service, name: echo}]\n";
    let t = table(&format!("{}{grpc}", route(&format!("{every_port}{rules}"))));
    assert_eq!(reasons(&t, "r").0, "Conflicted");
    assert_eq!(route_name(&http_routes(&t, 80, NS)[0]), "default:http");
}

/// MeshConsumerRoute as upstream writes it: the consumer route's backendRef is its
/// own parent Service, in the producer's namespace, with no ReferenceGrant.
#[test]
fn a_consumer_route_may_send_to_its_parent_service_without_a_grant() {
    let t = table(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-echo-add-header
  namespace: gateway-conformance-mesh-consumer
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo-v1
    namespace: gateway-conformance-mesh
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Header-Set
          value: set
    backendRefs:
    - name: echo-v1
      namespace: gateway-conformance-mesh
      port: 80
"#,
    );
    assert_eq!(
        reasons(&t, "mesh-echo-add-header"),
        ("Accepted", "ResolvedRefs")
    );
    let policy = t
        .policy(NS, "echo-v1", 80, "gateway-conformance-mesh-consumer")
        .unwrap();
    let Some(proxy_protocol::Kind::Detect(d)) = policy.protocol.and_then(|p| p.kind) else {
        panic!("not an HTTP policy");
    };
    let routes = d.http1.unwrap().routes;
    assert_eq!(
        route_name(&routes[0]),
        "gateway-conformance-mesh-consumer/mesh-echo-add-header"
    );
    assert_eq!(
        backends(&routes[0].rules[0]),
        vec![(svc("echo-v1", 80), 1, None)]
    );
}

// ----- weft's extension: URLRewrite and RequestMirror -----

/// The extensions a caller in `caller` gets for echo:`port`, and the policy without
/// them (what a Linkerd proxy reads).
fn extensions(
    t: &RouteTable,
    port: u16,
    caller: &str,
) -> Vec<weft_core::outbound_ext::RouteExtension> {
    let ext = t
        .policy_ext(NS, "echo", port, caller)
        .expect("echo has a policy");
    assert_eq!(
        ext.policy(),
        t.policy(NS, "echo", port, caller).unwrap(),
        "the extension leaves the policy as it is"
    );
    ext.extensions
}

fn rewrite(
    f: &weft_core::outbound_ext::FilterExtension,
) -> (String, Option<api_http::path_modifier::Replace>) {
    match &f.kind {
        Some(weft_core::outbound_ext::filter_extension::Kind::UrlRewrite(r)) => {
            (r.hostname.clone(), r.path.clone().and_then(|p| p.replace))
        }
        other => panic!("not a URLRewrite: {other:?}"),
    }
}

/// MeshHTTPRouteRewritePath's route (upstream's file): every rule's URLRewrite is
/// served as an extension of that rule; its header modifiers stay in the policy.
#[test]
fn mesh_httproute_rewrite_path_is_served_as_extensions() {
    use api_http::path_modifier::Replace;
    let file = include_str!("../../../../tests/conformance/routes/httproute-rewrite-path.yaml");
    let t = table(file);
    assert_eq!(
        reasons(&t, "mesh-rewrite-path"),
        ("Accepted", "ResolvedRefs")
    );
    let ext = extensions(&t, 80, NS);
    let got: Vec<(u32, String, Option<Replace>)> = ext
        .iter()
        .map(|e| {
            assert_eq!(e.filters.len(), 1, "{e:?}");
            assert!(e.backend_filters.is_empty());
            let meta = e.route.as_ref().unwrap();
            assert_eq!(
                route_name(&outbound::HttpRoute {
                    metadata: Some(meta.clone()),
                    ..Default::default()
                }),
                format!("{NS}/mesh-rewrite-path")
            );
            let (host, path) = rewrite(&e.filters[0]);
            (e.rule, host, path)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, String::new(), Some(Replace::Prefix("/one".into()))),
            (1, String::new(), Some(Replace::Prefix("/".into()))),
            (2, String::new(), Some(Replace::Full("/one".into()))),
            (3, String::new(), Some(Replace::Full("/test".into()))),
            (4, String::new(), Some(Replace::Prefix("/prefix".into()))),
        ]
    );
    // The header modifiers of rules 3 and 4 are in the policy's own filters.
    let routes = http_routes(&t, 80, NS);
    assert_eq!(routes[0].rules[3].filters.len(), 1);
    assert!(routes[0].rules[0].filters.is_empty());
}

#[test]
fn request_mirrors_and_backend_rewrites_are_served_as_extensions() {
    use weft_core::outbound_ext::filter_extension::Kind;
    let t = table(&route(&format!(
        "{PARENT}  rules:\n  - filters:\n    - {{type: RequestMirror, requestMirror: {{backendRef: {{name: echo-v2, port: 80}}, percent: 25}}}}\n    - {{type: URLRewrite, urlRewrite: {{hostname: echo.example}}}}\n    backendRefs:\n    - {{name: echo-v2, port: 80, weight: 0}}\n    - name: echo-v1\n      port: 80\n      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /v1}}}}}}]\n"
    )));
    assert_eq!(reasons(&t, "r"), ("Accepted", "ResolvedRefs"));
    let ext = extensions(&t, 80, NS);
    assert_eq!(ext.len(), 1);
    let e = &ext[0];
    assert_eq!(e.rule, 0);
    let Some(Kind::RequestMirror(m)) = &e.filters[0].kind else {
        panic!("not a mirror: {:?}", e.filters[0]);
    };
    let ratio = m.ratio.unwrap();
    assert_eq!((ratio.numerator, ratio.denominator), (25, 100));
    let mirror = outbound::http_route::Rule {
        backends: Some(outbound::http_route::Distribution {
            kind: Some(outbound::http_route::distribution::Kind::RandomAvailable(
                outbound::http_route::distribution::RandomAvailable {
                    backends: vec![outbound::http_route::WeightedRouteBackend {
                        weight: 1,
                        backend: Some(outbound::http_route::RouteBackend {
                            backend: m.backend.clone(),
                            ..Default::default()
                        }),
                    }],
                },
            )),
        }),
        ..Default::default()
    };
    assert_eq!(backends(&mirror)[0].0, svc("echo-v2", 80));
    assert_eq!(rewrite(&e.filters[1]).0, "echo.example");
    // echo-v1 is the first backend served (echo-v2 has weight 0 and is left out).
    assert_eq!(e.backend_filters.len(), 1);
    assert_eq!(e.backend_filters[0].backend, 0);
    assert_eq!(
        rewrite(&e.backend_filters[0].filters[0]).1,
        Some(api_http::path_modifier::Replace::Full("/v1".into()))
    );
    assert_eq!(
        backends(&http_routes(&t, 80, NS)[0].rules[0])[0].0,
        svc("echo-v1", 80)
    );
}

/// A mirror's backend is resolved as a backendRef is: one that does not exist is
/// `BackendNotFound`, the route still serves, and no copies are sent.
#[test]
fn a_mirror_backend_that_does_not_exist_is_backend_not_found() {
    let t = table(&route(&format!(
        "{PARENT}  rules:\n  - filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: nope, port: 80}}}}}}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n"
    )));
    assert_eq!(reasons(&t, "r"), ("Accepted", "BackendNotFound"));
    let message = resolved_message(&t, "r");
    assert!(
        message.contains(
            "requestMirror: backendRef Service gateway-conformance-mesh/nope does not exist"
        ),
        "{message}"
    );
    assert_eq!(route_name(&http_routes(&t, 80, NS)[0]), format!("{NS}/r"));
    assert!(extensions(&t, 80, NS).is_empty());
    let t = table(&route(&format!(
        "{PARENT}  rules:\n  - filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: echo-v2}}}}}}]\n"
    )));
    assert_eq!(reasons(&t, "r").1, "BackendNotFound");
    assert!(resolved_message(&t, "r").contains("has no port"));
}

//! Routes as the controller sends them (the protocol's messages), read, matched and
//! filtered as the Gateway API says.

use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound as api;

use super::convert::routes;
use super::filters;
use super::select::select;
use super::*;

fn resource(kind: &str, name: &str) -> Option<meta::Metadata> {
    Some(meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: "gateway.networking.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: "gateway-conformance-mesh".into(),
            section: String::new(),
            port: 0,
        })),
    })
}

fn backend(service: &str, weight: u32) -> api::http_route::WeightedRouteBackend {
    api::http_route::WeightedRouteBackend {
        weight,
        backend: Some(api::http_route::RouteBackend {
            backend: Some(api::Backend {
                metadata: resource("Service", service),
                queue: None,
                kind: Some(api::backend::Kind::Balancer(api::backend::BalanceP2c {
                    discovery: Some(api::backend::EndpointDiscovery {
                        kind: Some(api::backend::endpoint_discovery::Kind::Dst(
                            api::backend::endpoint_discovery::DestinationGet {
                                path: format!(
                                    "{service}.gateway-conformance-mesh.svc.cluster.local:80"
                                ),
                            },
                        )),
                    }),
                    load: None,
                })),
            }),
            filters: Vec::new(),
            ..Default::default()
        }),
    }
}

fn path(kind: route_api::path_match::Kind) -> route_api::HttpRouteMatch {
    route_api::HttpRouteMatch {
        path: Some(route_api::PathMatch { kind: Some(kind) }),
        ..Default::default()
    }
}

fn rule(
    matches: Vec<route_api::HttpRouteMatch>,
    backends: Vec<api::http_route::WeightedRouteBackend>,
) -> api::http_route::Rule {
    api::http_route::Rule {
        matches,
        backends: Some(api::http_route::Distribution {
            kind: Some(api::http_route::distribution::Kind::RandomAvailable(
                api::http_route::distribution::RandomAvailable { backends },
            )),
        }),
        ..Default::default()
    }
}

fn policy(rules: Vec<api::http_route::Rule>) -> api::OutboundPolicy {
    policy_of(vec![api::HttpRoute {
        metadata: resource("HTTPRoute", "mesh-split"),
        hosts: Vec::new(),
        rules,
    }])
}

fn policy_of(routes: Vec<api::HttpRoute>) -> api::OutboundPolicy {
    use api::proxy_protocol;
    api::OutboundPolicy {
        metadata: None,
        protocol: Some(api::ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: None,
                opaque: None,
                http1: Some(proxy_protocol::Http1 {
                    routes: routes.clone(),
                    failure_accrual: None,
                }),
                http2: Some(proxy_protocol::Http2 {
                    routes,
                    failure_accrual: None,
                }),
            })),
        }),
    }
}

fn get(uri: &str) -> http::Request<()> {
    http::Request::get(uri).body(()).unwrap()
}

/// The backend a request is routed to (with one backend per rule).
fn backend_of(routes: &Routes, req: &http::Request<()>) -> Option<String> {
    let s = select(routes, req, "echo:80")?;
    match &s.rule.backends {
        Backends::Weighted(b) => Some(b[0].name.to_string()),
        Backends::None => Some("none".into()),
    }
}

/// MeshHTTPRouteMatching: `/` prefix and an exact `/v2` path with a header, each to
/// its own backend; the more specific match wins whatever the rule order.
#[test]
fn mesh_httproute_matching() {
    use route_api::path_match::Kind;
    let r = routes(policy(vec![
        rule(
            vec![path(Kind::Prefix("/".into()))],
            vec![backend("echo-v1", 1)],
        ),
        rule(
            vec![route_api::HttpRouteMatch {
                headers: vec![route_api::HeaderMatch {
                    name: "version".into(),
                    value: Some(route_api::header_match::Value::Exact(b"two".to_vec())),
                }],
                ..path(Kind::Prefix("/v2".into()))
            }],
            vec![backend("echo-v2", 1)],
        ),
        rule(
            vec![path(Kind::Exact("/exact".into()))],
            vec![backend("echo-v2", 1)],
        ),
    ]))
    .unwrap();
    assert_eq!(backend_of(&r, &get("/")).as_deref(), Some("echo-v1"));
    assert_eq!(backend_of(&r, &get("/v2")).as_deref(), Some("echo-v1"));
    let mut with_header = get("/v2/x");
    with_header
        .headers_mut()
        .insert("version", "two".parse().unwrap());
    assert_eq!(backend_of(&r, &with_header).as_deref(), Some("echo-v2"));
    assert_eq!(backend_of(&r, &get("/exact")).as_deref(), Some("echo-v2"));
    // Element-wise prefixes: /v2 does not match /v2example.
    let mut prefix_only = get("/v2example");
    prefix_only
        .headers_mut()
        .insert("version", "two".parse().unwrap());
    assert_eq!(backend_of(&r, &prefix_only).as_deref(), Some("echo-v1"));
}

/// MeshHTTPRouteQueryParamMatching and method matches: the most query parameters
/// win; a method match outranks header matches.
#[test]
fn query_parameters_and_methods_rank_as_the_gateway_api_says() {
    use route_api::path_match::Kind;
    let q = |name: &str, value: &str| route_api::QueryParamMatch {
        name: name.into(),
        value: Some(route_api::query_param_match::Value::Exact(value.into())),
    };
    let r = routes(policy(vec![
        rule(
            vec![route_api::HttpRouteMatch {
                query_params: vec![q("animal", "whale")],
                ..Default::default()
            }],
            vec![backend("echo-v1", 1)],
        ),
        rule(
            vec![route_api::HttpRouteMatch {
                query_params: vec![q("animal", "whale"), q("color", "blue")],
                ..Default::default()
            }],
            vec![backend("echo-v2", 1)],
        ),
        rule(
            vec![route_api::HttpRouteMatch {
                method: Some(http::Method::POST.into()),
                ..path(Kind::Prefix("/".into()))
            }],
            vec![backend("echo-post", 1)],
        ),
    ]))
    .unwrap();
    assert_eq!(
        backend_of(&r, &get("/?animal=whale")).as_deref(),
        Some("echo-v1")
    );
    assert_eq!(
        backend_of(&r, &get("/?animal=whale&color=blue")).as_deref(),
        Some("echo-v2")
    );
    assert_eq!(backend_of(&r, &get("/?animal=dolphin")), None);
    let post = http::Request::post("/?animal=whale").body(()).unwrap();
    assert_eq!(backend_of(&r, &post).as_deref(), Some("echo-post"));
}

/// MeshHTTPRouteWeight: 70/30 by weight; weight 0 is never chosen.
#[test]
fn weights_share_requests_and_zero_is_never_chosen() {
    let r = routes(policy(vec![rule(
        Vec::new(),
        vec![
            backend("echo-v1", 70),
            backend("echo-v2", 30),
            backend("echo-never", 0),
        ],
    )]))
    .unwrap();
    let s = select(&r, &get("/"), "echo:80").unwrap();
    let Backends::Weighted(b) = &s.rule.backends else {
        panic!("weighted backends expected");
    };
    assert_eq!(b.len(), 3);
    // The choice itself is outbound::route's; its arithmetic is checked there.
    assert_eq!(b[2].weight, 0);
    assert_eq!(&*s.route.meta.name, "mesh-split");
    assert_eq!(s.route.meta.kind, RouteKind::Http);
}

#[test]
fn an_invalid_regex_refuses_the_policy_naming_the_route_and_field() {
    use route_api::path_match::Kind;
    let err = routes(policy(vec![rule(
        vec![path(Kind::Regex("/(unclosed".into()))],
        vec![backend("echo-v1", 1)],
    )]))
    .unwrap_err();
    assert_eq!(err.route, "HTTPRoute gateway-conformance-mesh/mesh-split");
    assert!(
        err.problem
            .starts_with("rules[0]: matches.path: invalid regular expression"),
        "{}",
        err.problem
    );
}

#[test]
fn regexes_match_whole_paths_and_rank_between_exact_and_prefix() {
    use route_api::path_match::Kind;
    let r = routes(policy(vec![
        rule(
            vec![path(Kind::Prefix("/api".into()))],
            vec![backend("prefix", 1)],
        ),
        rule(
            vec![path(Kind::Regex("/api/v[0-9]+".into()))],
            vec![backend("regex", 1)],
        ),
        rule(
            vec![path(Kind::Exact("/api/v1".into()))],
            vec![backend("exact", 1)],
        ),
    ]))
    .unwrap();
    assert_eq!(backend_of(&r, &get("/api/v1")).as_deref(), Some("exact"));
    assert_eq!(backend_of(&r, &get("/api/v2")).as_deref(), Some("regex"));
    // Anchored: a regex must match the whole path.
    assert_eq!(backend_of(&r, &get("/api/v2/x")).as_deref(), Some("prefix"));
}

#[test]
fn header_modifiers_set_add_and_remove() {
    let m = HeaderModifier {
        set: vec![("x-set".parse().unwrap(), "new".parse().unwrap())],
        add: vec![("x-add".parse().unwrap(), "two".parse().unwrap())],
        remove: vec!["x-gone".parse().unwrap()],
    };
    let mut h = http::HeaderMap::new();
    h.insert("x-set", "old".parse().unwrap());
    h.insert("x-add", "one".parse().unwrap());
    h.insert("x-gone", "bye".parse().unwrap());
    filters::modify_headers(&m, &mut h);
    assert_eq!(h["x-set"], "new");
    let added: Vec<_> = h.get_all("x-add").iter().collect();
    assert_eq!(added, ["one", "two"]);
    assert!(!h.contains_key("x-gone"));
}

/// MeshHTTPRouteRedirectHostAndStatus, -Path, -Port, -Scheme.
#[test]
fn redirects_build_the_location_from_the_request() {
    let redirect =
        |scheme: Option<&str>, host: Option<&str>, path: Option<PathModifier>, port| Redirect {
            scheme: scheme.map(|s| s.parse().unwrap()),
            host: host.map(str::to_owned),
            path,
            port,
            status: http::StatusCode::MOVED_PERMANENTLY,
        };
    let req = get("/original-prefix/lemon?x=1");
    let prefix = PathMatch::Prefix("/original-prefix".into());
    let loc = |r: &Redirect| filters::location(r, &req, "echo:80", Some(&prefix)).unwrap();
    assert_eq!(
        loc(&redirect(None, Some("example.org"), None, None)),
        "http://example.org/original-prefix/lemon?x=1"
    );
    assert_eq!(
        loc(&redirect(
            None,
            None,
            Some(PathModifier::Prefix("/replacement-prefix".into())),
            None
        )),
        "http://echo/replacement-prefix/lemon?x=1"
    );
    assert_eq!(
        loc(&redirect(
            None,
            None,
            Some(PathModifier::Full("/full".into())),
            None
        )),
        "http://echo/full?x=1"
    );
    assert_eq!(
        loc(&redirect(None, None, None, Some(8083))),
        "http://echo:8083/original-prefix/lemon?x=1"
    );
    assert_eq!(
        loc(&redirect(Some("https"), None, None, None)),
        "https://echo/original-prefix/lemon?x=1"
    );
    let on_8080 =
        filters::location(&redirect(None, None, None, None), &req, "echo:8080", None).unwrap();
    assert_eq!(on_8080, "http://echo:8080/original-prefix/lemon?x=1");
}

#[test]
fn hostnames_select_routes_exact_before_wildcard() {
    use route_api::host_match::{Match, Suffix};
    let host = |m| route_api::HostMatch { r#match: Some(m) };
    let mut wildcard = api::HttpRoute {
        metadata: resource("HTTPRoute", "wildcard"),
        hosts: vec![host(Match::Suffix(Suffix {
            reverse_labels: vec!["com".into(), "example".into()],
        }))],
        rules: vec![rule(Vec::new(), vec![backend("wild", 1)])],
    };
    let exact = api::HttpRoute {
        metadata: resource("HTTPRoute", "exact"),
        hosts: vec![host(Match::Exact("a.example.com".into()))],
        rules: vec![rule(Vec::new(), vec![backend("exact", 1)])],
    };
    wildcard.rules[0].matches = Vec::new();
    let r = routes(policy_of(vec![wildcard, exact])).unwrap();
    let name = |authority| select(&r, &get("/"), authority).map(|s| s.route.meta.name.to_string());
    assert_eq!(name("a.example.com:80").as_deref(), Some("exact"));
    assert_eq!(name("b.example.com").as_deref(), Some("wildcard"));
    assert_eq!(name("example.com"), None);
}

/// A backendRef the controller could not resolve comes as a backend of no kind whose
/// failure injector answers its share: the policy is still taken.
#[test]
fn an_unresolved_backend_is_kept_with_its_failure_injector() {
    let mut unresolved = backend("ghost", 1);
    let rb = unresolved.backend.as_mut().unwrap();
    rb.backend.as_mut().unwrap().kind = None;
    rb.filters = vec![api::http_route::Filter {
        kind: Some(api::http_route::filter::Kind::FailureInjector(
            route_api::HttpFailureInjector {
                status: 500,
                message: "backend ghost not found".into(),
                ratio: None,
            },
        )),
    }];
    let r = routes(policy(vec![rule(
        Vec::new(),
        vec![backend("echo-v1", 1), unresolved],
    )]))
    .unwrap();
    let s = select(&r, &get("/"), "echo:80").unwrap();
    let Backends::Weighted(b) = &s.rule.backends else {
        panic!("weighted backends expected");
    };
    assert_eq!(b[1].authority, "");
    assert!(
        matches!(&b[1].filters[..], [Filter::Fail(f)] if f.status == 500 && filters::inject(f))
    );
}

//! Selects a route for one request N times among R routes, for `bench/routes`
//! (instructions per selection under callgrind, against the proxy's per-request cost).
//!
//!   cargo run --release -p weft-proxy --example route_select -- ROUTES N [SHAPE]
//!
//! The request matches the last route. SHAPE is how the routes differ:
//! - `segment` (the default): in their second path segment (`/api/v{i}`), all sharing
//!   the first;
//! - `first`: in their first segment (`/team-{i}/books`), the usual case;
//! - `header`: only in a header (every route `/api` with its own `x-team`): the path
//!   index cannot tell them apart, so every route is tried (a scan's worst case).

use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound as api;
use weft_proxy::routes::{convert, select};

/// How the routes differ (see the top of the file).
#[derive(Clone, Copy)]
enum Shape {
    Segment,
    First,
    Header,
}

impl Shape {
    fn prefix(self, i: usize) -> String {
        match self {
            Shape::Segment => format!("/api/v{i}"),
            Shape::First => format!("/team-{i}/books"),
            Shape::Header => "/api".to_owned(),
        }
    }
}

fn route(i: usize, shape: Shape) -> api::HttpRoute {
    let backend = api::http_route::WeightedRouteBackend {
        weight: 1,
        backend: Some(api::http_route::RouteBackend {
            backend: Some(api::Backend {
                metadata: None,
                queue: None,
                kind: Some(api::backend::Kind::Balancer(api::backend::BalanceP2c {
                    discovery: Some(api::backend::EndpointDiscovery {
                        kind: Some(api::backend::endpoint_discovery::Kind::Dst(
                            api::backend::endpoint_discovery::DestinationGet {
                                path: format!("svc-{i}.default.svc.cluster.local:80"),
                            },
                        )),
                    }),
                    load: None,
                })),
            }),
            ..Default::default()
        }),
    };
    api::HttpRoute {
        metadata: Some(meta::Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
                name: format!("route-{i}"),
                namespace: "default".into(),
                ..Default::default()
            })),
        }),
        hosts: Vec::new(),
        rules: vec![api::http_route::Rule {
            matches: vec![route_api::HttpRouteMatch {
                path: Some(route_api::PathMatch {
                    kind: Some(route_api::path_match::Kind::Prefix(shape.prefix(i))),
                }),
                headers: vec![route_api::HeaderMatch {
                    name: "x-team".into(),
                    value: Some(route_api::header_match::Value::Exact(
                        format!("team-{i}").into_bytes(),
                    )),
                }],
                ..Default::default()
            }],
            backends: Some(api::http_route::Distribution {
                kind: Some(api::http_route::distribution::Kind::RandomAvailable(
                    api::http_route::distribution::RandomAvailable {
                        backends: vec![backend],
                    },
                )),
            }),
            ..Default::default()
        }],
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: route_select ROUTES N [segment|first|header]";
    let (routes, n, shape) = match &args[..] {
        [r, n] => (r, n, "segment"),
        [r, n, shape] => (r, n, shape.as_str()),
        _ => panic!("{usage}"),
    };
    let routes: usize = routes.parse().expect(usage);
    let n: usize = n.parse().expect(usage);
    let shape = match shape {
        "segment" => Shape::Segment,
        "first" => Shape::First,
        "header" => Shape::Header,
        _ => panic!("{usage}"),
    };
    use api::proxy_protocol;
    let policy = api::OutboundPolicy {
        metadata: None,
        protocol: Some(api::ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                routes: (0..routes).map(|i| route(i, shape)).collect(),
                failure_accrual: None,
            })),
        }),
    };
    let table = convert::routes(policy).expect("valid routes");
    // The last route is the one that matches: every other is tried first.
    let last = routes.saturating_sub(1);
    let req = http::Request::get(format!("{}/books?id=1", shape.prefix(last)))
        .header("x-team", format!("team-{last}"))
        .header("user-agent", "bench")
        .body(())
        .unwrap();
    let mut found = 0usize;
    for _ in 0..n {
        if select::select(&table, std::hint::black_box(&req), "books:80").is_some() {
            found += 1;
        }
    }
    assert!(routes == 0 || found == n, "the last route must match");
    println!("{found}");
}

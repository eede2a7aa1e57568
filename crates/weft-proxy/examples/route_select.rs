//! Selects a route for one request N times among R routes, for `bench/routes`
//! (instructions per selection under callgrind, against the proxy's per-request cost).
//!
//!   cargo run --release -p weft-proxy --example route_select -- ROUTES N

use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound as api;
use weft_proxy::routes::{convert, select};

fn route(i: usize) -> api::HttpRoute {
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
                    kind: Some(route_api::path_match::Kind::Prefix(format!("/api/v{i}"))),
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
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("ROUTES N: two numbers"))
        .collect();
    let [routes, n] = args[..] else {
        panic!("usage: route_select ROUTES N");
    };
    use api::proxy_protocol;
    let policy = api::OutboundPolicy {
        metadata: None,
        protocol: Some(api::ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                routes: (0..routes).map(route).collect(),
                failure_accrual: None,
            })),
        }),
    };
    let table = convert::routes(policy).expect("valid routes");
    // The last route is the one that matches: every other is tried first.
    let last = routes.saturating_sub(1);
    let req = http::Request::get(format!("/api/v{last}/books?id=1"))
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

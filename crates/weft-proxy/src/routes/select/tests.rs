//! Selection through the path index picks exactly what a scan of every candidate picks,
//! on many generated route sets and requests (a fixed seed: the same cases every run).

use std::sync::Arc;

use http::{HeaderName, Method, Request};
use proptest::prelude::*;
use proptest::sample::select as one_of;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed};

use super::{select, select_indexed, select_linear, Selected};
use crate::routes::*;

/// Few segments, so that routes and requests meet often.
const SEGMENTS: &[&str] = &["a", "b", "api", "v1", "ab"];

fn path() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(one_of(SEGMENTS), 0..4),
        any::<bool>(),
    )
        .prop_map(|(segments, trailing)| {
            let mut p: String = segments.iter().map(|s| format!("/{s}")).collect();
            if trailing || p.is_empty() {
                p.push('/');
            }
            p
        })
}

fn path_match() -> impl Strategy<Value = Option<PathMatch>> {
    prop_oneof![
        Just(None),
        path().prop_map(|p| Some(PathMatch::Exact(p))),
        // As convert stores them (no trailing slash, `/` as ""), and as they come.
        path().prop_map(|p| Some(PathMatch::Prefix(p.trim_end_matches('/').to_owned()))),
        path().prop_map(|p| Some(PathMatch::Prefix(p))),
        one_of(&["/a.*", "/(a|b)/[a-z0-9]+", "/api/v[0-9]+", "/ab?"][..]).prop_map(|r| Some(
            PathMatch::Regex(regex::Regex::new(&format!("^{r}$")).unwrap())
        )),
    ]
}

fn value<T: Clone + std::fmt::Debug + 'static>(
    exact: Vec<T>,
) -> impl Strategy<Value = ValueMatch<T>> {
    prop_oneof![
        one_of(exact).prop_map(ValueMatch::Exact),
        Just(ValueMatch::Regex(regex::Regex::new("^[12]$").unwrap())),
    ]
}

fn request_match() -> impl Strategy<Value = RequestMatch> {
    let header = (
        one_of(&["x-a", "x-b"][..]),
        value(vec![b"1".to_vec(), b"2".to_vec()]),
    )
        .prop_map(|(n, value)| HeaderMatch {
            name: HeaderName::from_static(n),
            value,
        });
    let query = (
        one_of(&["p", "q"][..]),
        value(vec!["1".to_owned(), "2".to_owned()]),
    )
        .prop_map(|(n, value)| QueryMatch {
            name: n.to_owned(),
            value,
        });
    (
        path_match(),
        proptest::collection::vec(header, 0..3),
        proptest::collection::vec(query, 0..3),
        one_of(&[None, Some(Method::GET), Some(Method::POST)][..]),
    )
        .prop_map(|(path, headers, query, method)| RequestMatch {
            path,
            headers,
            query,
            method,
        })
}

fn rule() -> impl Strategy<Value = Rule> {
    proptest::collection::vec(request_match(), 0..4).prop_map(|matches| Rule {
        matches,
        filters: Vec::new(),
        backends: Backends::None,
        policy: None,
    })
}

fn host() -> impl Strategy<Value = HostMatch> {
    one_of(vec![
        HostMatch::Exact("a.example.com".into()),
        HostMatch::Exact("b.example.com".into()),
        HostMatch::Suffix("example.com".into()),
    ])
}

fn routes() -> impl Strategy<Value = Routes> {
    let route = (
        proptest::collection::vec(host(), 0..3),
        proptest::collection::vec(rule(), 1..4),
    );
    proptest::collection::vec(route, 0..30).prop_map(|routes| {
        let routes = routes
            .into_iter()
            .enumerate()
            .map(|(i, (hosts, rules))| Route {
                meta: Arc::new(RouteMeta {
                    kind: RouteKind::Http,
                    name: format!("route-{i}").into(),
                    namespace: "default".into(),
                }),
                hosts,
                rules,
            })
            .collect();
        Routes::new(routes, None)
    })
}

/// A request and its authority.
fn request() -> impl Strategy<Value = (Request<()>, &'static str)> {
    let query = proptest::collection::vec(
        (one_of(&["p", "q", "r"][..]), one_of(&["1", "2", "3"][..])),
        0..3,
    );
    let headers = proptest::collection::vec(
        (one_of(&["x-a", "x-b"][..]), one_of(&["1", "2", "3"][..])),
        0..3,
    );
    (
        prop_oneof![
            path(),
            Just("/ab/v1x".to_owned()),
            Just("/api/v12".to_owned())
        ],
        query,
        headers,
        one_of(&[Method::GET, Method::POST, Method::PUT][..]),
        one_of(
            &[
                "a.example.com:80",
                "b.example.com",
                "c.example.com",
                "example.com",
                "[::1]:80",
            ][..],
        ),
    )
        .prop_map(|(path, query, headers, method, authority)| {
            let query: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let uri = if query.is_empty() {
                path
            } else {
                format!("{path}?{}", query.join("&"))
            };
            let mut req = Request::builder().method(method).uri(uri);
            for (n, v) in headers {
                req = req.header(n, v);
            }
            (req.body(()).unwrap(), authority)
        })
}

/// Where a selection points: route, rule and match, by position.
fn position(routes: &Routes, s: Option<Selected<'_>>) -> Option<(usize, usize, Option<usize>)> {
    let s = s?;
    let route = routes
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, s.route))?;
    let rule = s.route.rules.iter().position(|r| std::ptr::eq(r, s.rule))?;
    let matched = s
        .matched
        .map(|m| s.rule.matches.iter().position(|x| std::ptr::eq(x, m)));
    Some((route, rule, matched.flatten()))
}

proptest! {
    #![proptest_config(Config {
        cases: 1000,
        rng_seed: RngSeed::Fixed(11),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn the_index_selects_what_a_scan_of_every_candidate_selects(
        routes in routes(),
        requests in proptest::collection::vec(request(), 1..20),
    ) {
        for (req, authority) in &requests {
            let indexed = position(&routes, select_indexed(&routes, req, authority));
            let scanned = position(&routes, select_linear(&routes, req, authority));
            prop_assert_eq!(indexed, scanned, "{} {} (authority {})", req.method(), req.uri(), authority);
        }
    }
}

/// The generated cases do meet: most route sets select something for some request, so
/// the comparison above is not between two `None`s.
#[test]
fn the_generated_requests_often_take_a_rule() {
    let mut runner = proptest::test_runner::TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(11),
        ..Config::default()
    });
    let (mut taken, mut total) = (0, 0);
    for _ in 0..200 {
        let routes = routes().new_tree(&mut runner).unwrap().current();
        let (req, authority) = request().new_tree(&mut runner).unwrap().current();
        total += 1;
        if select(&routes, &req, authority).is_some() {
            taken += 1;
        }
    }
    assert!(taken * 4 > total, "{taken} of {total} requests took a rule");
}

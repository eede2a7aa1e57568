//! `weft stat route`: golden metrics per HTTPRoute/GRPCRoute and per backend under it,
//! from the outbound side of every caller's proxy (the proxies label each request with
//! the route that chose its backend, `route_kind`/`route_namespace`/`route_name`, and
//! the backend Service it went to, `dst_service`). `weft rollout` judges a canary by
//! the same figures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use weft_controller::routes::RouteTable;
use weft_core::mesh::Mesh;

use super::mesh::{Frame, MeshRow, Totals};
use crate::local::state::PodRecord;

/// A route as the proxies' labels name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteId {
    pub namespace: String,
    pub name: String,
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
}

/// Golden metrics of a route (`backend: None`) or of one of its backends over a window.
/// The JSON field names are stable (docs/local-mesh.md lists them).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RouteRow {
    pub namespace: String,
    pub name: String,
    pub kind: String,
    /// The backend Service; `None` on the row of the route as a whole.
    pub backend: Option<String>,
    /// Requests over the window (a count: an integer in JSON).
    pub requests: u64,
    pub rps: f64,
    /// Share of responses classified as success, 0..=1; `None` without responses.
    pub success: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
}

impl RouteRow {
    fn new(id: &RouteId, backend: Option<&str>, r: MeshRow) -> RouteRow {
        RouteRow {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            kind: id.kind.clone(),
            backend: backend.map(str::to_owned),
            requests: r.requests,
            rps: r.rps,
            success: r.success,
            latency_ms_p50: r.latency_ms_p50,
            latency_ms_p95: r.latency_ms_p95,
            latency_ms_p99: r.latency_ms_p99,
        }
    }
}

/// The routes of the mesh directory `dir` with their backends' names, so that routes
/// and backends without traffic get rows too. A directory that does not load gives
/// none (the metrics still name the routes that carried traffic).
pub fn known_routes(dir: &Path) -> BTreeMap<RouteId, BTreeSet<String>> {
    let Ok(mesh) = Mesh::load(dir) else {
        return BTreeMap::new();
    };
    // The cluster domain only names the hosts in the served messages, not used here.
    let domain = "cluster.local";
    let (table, _) =
        RouteTable::build(&RouteTable::empty(domain), &mesh, domain, SystemTime::now());
    table
        .reports()
        .map(|r| {
            let id = RouteId {
                namespace: r.key.namespace.clone(),
                name: r.key.name.clone(),
                kind: r.key.kind.as_str().to_owned(),
            };
            let backends = r.backends.iter().map(|b| b.name.clone()).collect();
            (id, backends)
        })
        .collect()
}

/// One row per route of `known` and of those the callers' proxies sent requests
/// through, each followed by one row per backend (sorted by name). The proxies'
/// default routes (a Service without routes of its own) are left out: `weft stat svc`
/// shows those Services.
pub fn route_rows(
    known: &BTreeMap<RouteId, BTreeSet<String>>,
    pods: &[PodRecord],
    frame: &Frame,
) -> Vec<RouteRow> {
    type Figures = (Totals, BTreeMap<String, Totals>);
    let mut totals: BTreeMap<RouteId, Figures> = known
        .iter()
        .map(|(id, backends)| {
            let per_backend = backends
                .iter()
                .map(|b| (b.clone(), Totals::default()))
                .collect();
            (id.clone(), (Totals::default(), per_backend))
        })
        .collect();
    for pod in pods {
        let Some((b, a, w)) = frame.get(pod) else {
            continue;
        };
        let mut seen: BTreeMap<RouteId, BTreeSet<String>> = BTreeMap::new();
        for s in a.matching("request_total", &[("direction", "outbound")]) {
            let kind = s.label("route_kind");
            if kind != "HTTPRoute" && kind != "GRPCRoute" {
                continue;
            }
            let id = RouteId {
                namespace: s.label("route_namespace").to_owned(),
                name: s.label("route_name").to_owned(),
                kind: kind.to_owned(),
            };
            let backends = seen.entry(id).or_default();
            let backend = s.label("dst_service");
            if !backend.is_empty() {
                backends.insert(backend.to_owned());
            }
        }
        for (id, backends) in seen {
            let labels = [
                ("direction", "outbound"),
                ("route_kind", id.kind.as_str()),
                ("route_namespace", id.namespace.as_str()),
                ("route_name", id.name.as_str()),
            ];
            let (route, per_backend) = totals.entry(id.clone()).or_default();
            route.add(b, a, w, &labels);
            for backend in backends {
                let mut l = labels.to_vec();
                l.push(("dst_service", backend.as_str()));
                per_backend
                    .entry(backend.clone())
                    .or_default()
                    .add(b, a, w, &l);
            }
        }
    }
    let mut rows = Vec::new();
    for (id, (route, per_backend)) in &totals {
        rows.push(RouteRow::new(id, None, route.row(&id.namespace, &id.name)));
        for (backend, t) in per_backend {
            rows.push(RouteRow::new(
                id,
                Some(backend),
                t.row(&id.namespace, &id.name),
            ));
        }
    }
    rows
}

/// The table of `weft stat route`: a route's row (BACKEND `*`) and its backends' rows
/// under it; with `namespaces` a NAMESPACE column first.
pub fn table(rows: &[RouteRow], namespaces: bool, scope: &str) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.2}%", v * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}ms"));
    let width =
        |f: &dyn Fn(&RouteRow) -> usize, min: usize| rows.iter().map(f).fold(min, usize::max);
    let name_w = width(&|r| r.name.len(), 4);
    let ns_w = width(&|r| r.namespace.len(), 9);
    let backend_w = width(&|r| r.backend.as_ref().map_or(1, String::len), 7);
    let mut out = String::new();
    let mut line = |ns: &str, cells: [&str; 8]| {
        if namespaces {
            out.push_str(&format!("{ns:<ns_w$}  "));
        }
        out.push_str(&format!(
            "{:<name_w$}  {:<9}  {:<backend_w$}  {:>8}  {:>8}  {:>11}  {:>11}  {:>11}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        ));
    };
    line(
        "NAMESPACE",
        [
            "NAME",
            "KIND",
            "BACKEND",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
        ],
    );
    for r in rows {
        let rps = if r.requests == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", r.rps)
        };
        line(
            &r.namespace,
            [
                &r.name,
                &r.kind,
                r.backend.as_deref().unwrap_or("*"),
                &pct(r.success),
                &rps,
                &ms(r.latency_ms_p50),
                &ms(r.latency_ms_p95),
                &ms(r.latency_ms_p99),
            ],
        );
    }
    if rows.is_empty() {
        out.push_str(&format!("(no routes {scope})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use weft_core::prom::Scrape;

    use super::*;
    use crate::observe::test_pod as pod;

    fn series(route: &str, backend: &str) -> String {
        format!("namespace=\"default\",deployment=\"web\",direction=\"outbound\",authority=\"books.default.svc:8080\",target_addr=\"\",tls=\"true\",dst_service=\"{backend}\",dst_zone=\"\",route_kind=\"HTTPRoute\",route_name=\"{route}\",route_namespace=\"default\"")
    }

    #[test]
    fn rows_per_route_and_backend_from_every_callers_outbound_side() {
        let (v1, v2) = (
            series("books-canary", "books-v1"),
            series("books-canary", "books-v2"),
        );
        // A Service without routes of its own: the default route, left out.
        let plain = "namespace=\"default\",deployment=\"web\",direction=\"outbound\",authority=\"authors:8080\",dst_service=\"authors\",route_kind=\"default\",route_name=\"http\",route_namespace=\"\"";
        // web-0: 90 to v1 (all ok, within 10 ms), 10 to v2 (8 ok, 2 failed, 10-100 ms).
        let web0 = format!(
            "request_total{{{v1}}} 90\nrequest_total{{{v2}}} 10\nrequest_total{{{plain}}} 7\n\
             response_total{{{v1},status_code=\"200\",classification=\"success\"}} 90\n\
             response_total{{{v2},status_code=\"200\",classification=\"success\"}} 8\n\
             response_total{{{v2},status_code=\"500\",classification=\"failure\"}} 2\n\
             response_latency_ms_bucket{{{v1},status_code=\"200\",le=\"10.0\"}} 90\n\
             response_latency_ms_bucket{{{v1},status_code=\"200\",le=\"100.0\"}} 90\n\
             response_latency_ms_bucket{{{v1},status_code=\"200\",le=\"+Inf\"}} 90\n\
             response_latency_ms_bucket{{{v2},status_code=\"200\",le=\"10.0\"}} 0\n\
             response_latency_ms_bucket{{{v2},status_code=\"200\",le=\"100.0\"}} 10\n\
             response_latency_ms_bucket{{{v2},status_code=\"200\",le=\"+Inf\"}} 10\n"
        );
        // reader-0: 10 more to v2, all ok; its proxy was scraped with 0 before.
        let reader0 = format!(
            "request_total{{{v2}}} 10\n\
             response_total{{{v2},status_code=\"200\",classification=\"success\"}} 10\n"
        );
        let pods = [
            pod("web-0", "web", "default", [127, 18, 0, 2]),
            pod("reader-0", "reader", "default", [127, 18, 0, 3]),
        ];
        let scrapes = |texts: &[(&str, &str)]| -> HashMap<String, Scrape> {
            texts
                .iter()
                .map(|(p, t)| (format!("t-{p}"), Scrape::parse(t)))
                .collect()
        };
        let before = scrapes(&[("web-0", ""), ("reader-0", "")]);
        let after = scrapes(&[("web-0", &web0), ("reader-0", &reader0)]);
        let frame = Frame::between(&before, &after, Duration::from_secs(10));
        // A route of the directory without traffic, and a backend of the canary route
        // that got none.
        let idle = RouteId {
            namespace: "shop".into(),
            name: "quiet".into(),
            kind: "GRPCRoute".into(),
        };
        let canary = RouteId {
            namespace: "default".into(),
            name: "books-canary".into(),
            kind: "HTTPRoute".into(),
        };
        let known = BTreeMap::from([
            (idle, BTreeSet::from(["authors".to_owned()])),
            (canary, BTreeSet::from(["books-v3".to_owned()])),
        ]);
        let rows = route_rows(&known, &pods, &frame);
        let keys: Vec<(&str, Option<&str>)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.backend.as_deref()))
            .collect();
        assert_eq!(
            keys,
            [
                ("books-canary", None),
                ("books-canary", Some("books-v1")),
                ("books-canary", Some("books-v2")),
                ("books-canary", Some("books-v3")),
                ("quiet", None),
                ("quiet", Some("authors")),
            ]
        );
        let route = &rows[0];
        assert_eq!((route.requests, route.rps), (110, 11.0));
        assert_eq!(route.success, Some(108.0 / 110.0));
        let v2 = &rows[2];
        assert_eq!((v2.requests, v2.rps), (20, 2.0));
        assert_eq!(v2.success, Some(0.9));
        // Only web-0's 10 are in the histogram: p50 = 10 + 90 × 5/10 = 55 ms.
        assert_eq!(v2.latency_ms_p50, Some(55.0));
        assert_eq!(rows[3].requests, 0);
        assert_eq!(rows[3].success, None);
        let table = table(&rows, false, "in namespace default");
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAME",
                "KIND",
                "BACKEND",
                "SUCCESS",
                "RPS",
                "LATENCY_P50",
                "LATENCY_P95",
                "LATENCY_P99"
            ]
        );
        assert_eq!(
            lines[1][..5],
            ["books-canary", "HTTPRoute", "*", "98.18%", "11.0"]
        );
        assert_eq!(
            lines[3],
            [
                "books-canary",
                "HTTPRoute",
                "books-v2",
                "90.00%",
                "2.0",
                "55.0ms",
                "95.5ms",
                "99.1ms"
            ]
        );
        assert_eq!(lines[4][2..], ["books-v3", "-", "-", "-", "-", "-"]);
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["backend"], serde_json::Value::Null);
        assert_eq!(json[2]["backend"], "books-v2");
        assert_eq!(json[2]["success"], 0.9);
        assert_eq!(json[2]["requests"], 20);
    }

    #[test]
    fn the_routes_of_a_mesh_directory_with_their_backends() {
        let dir = std::env::temp_dir().join(format!("weft-stat-route-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for (from, to) in [
            ("demo/mesh.yaml", "mesh.yaml"),
            ("demo/services.yaml", "services.yaml"),
            ("routes/books-canary.yaml", "books-canary.yaml"),
        ] {
            std::fs::copy(root.join(from), dir.join(to)).unwrap();
        }
        let known = known_routes(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let id = RouteId {
            namespace: "default".into(),
            name: "books-canary".into(),
            kind: "HTTPRoute".into(),
        };
        assert_eq!(
            known.get(&id),
            Some(&BTreeSet::from([
                "books-v1".to_owned(),
                "books-v2".to_owned()
            ])),
            "{known:?}"
        );
    }
}

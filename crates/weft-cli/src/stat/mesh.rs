//! `weft stat deploy|po|svc` on a local mesh: golden metrics per workload or pod (from
//! the inbound side of its pods' proxies) and per Service (from the outbound side of
//! every caller's proxy), over the window between two scrapes of every pod (or, for a
//! first frame, since each proxy started).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use weft_core::prom::{bucket_increase, histogram_quantile, increase, Scrape};

use super::{cross_zone_counts, rate};
use crate::local::state::{PodRecord, VipRecord};

/// Golden metrics of one workload or Service over a window. The JSON field names are
/// stable (docs/local-mesh.md lists them).
#[derive(Debug, Serialize, PartialEq)]
pub struct MeshRow {
    pub namespace: String,
    pub name: String,
    /// Requests over the window (a count: an integer in JSON).
    pub requests: u64,
    pub rps: f64,
    /// Share of responses classified as success, 0..=1; `None` without responses.
    pub success: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// Share of the requests carried over mTLS (`tls="true"`), 0..=1.
    pub meshed: Option<f64>,
    /// Share of the outbound requests sent to an endpoint in another zone than the
    /// sender's, among those whose endpoint zone is known, 0..=1.
    pub xzone: Option<f64>,
}

/// Two scrapes of every pod that answered both times, with the time between them.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// By pod key: (the earlier scrape, the later one, the time the growth covers).
    pub pods: HashMap<String, (Scrape, Scrape, Duration)>,
}

impl Frame {
    /// The growth between two rounds of scrapes `elapsed` apart.
    pub fn between(
        before: &HashMap<String, Scrape>,
        after: &HashMap<String, Scrape>,
        elapsed: Duration,
    ) -> Frame {
        let pods = after
            .iter()
            .filter_map(|(k, a)| Some((k.clone(), (before.get(k)?.clone(), a.clone(), elapsed))))
            .collect();
        Frame { pods }
    }

    /// Everything each proxy counted since it started (`process_start_time_seconds`),
    /// as of `now`: a first frame without waiting for a window.
    pub fn since_start(after: &HashMap<String, Scrape>, now: SystemTime) -> Frame {
        let pods = after
            .iter()
            .map(|(k, a)| (k.clone(), (Scrape::default(), a.clone(), uptime(a, now))))
            .collect();
        Frame { pods }
    }

    /// This pod's scrapes and the time between them, `None` unless it answered both
    /// times.
    pub fn get(&self, pod: &PodRecord) -> Option<(&Scrape, &Scrape, Duration)> {
        self.pods.get(&pod.netns).map(|(b, a, w)| (b, a, *w))
    }
}

/// How long the proxy that gave `scrape` had run at `now`, from its
/// `process_start_time_seconds` (whole seconds, so at least 1 s; 1 s without it).
pub fn uptime(scrape: &Scrape, now: SystemTime) -> Duration {
    let started = scrape.sum("process_start_time_seconds", &[]);
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    Duration::from_secs_f64((now - started).clamp(1.0, 1e9))
}

/// Counts summed over pods (each pod's increase over the window taken alone, so one
/// pod's restart does not cancel the others' growth).
#[derive(Default)]
pub(crate) struct Totals {
    requests: f64,
    /// Requests per second, each pod's over its own window.
    rps: f64,
    ok: f64,
    failed: f64,
    tls: f64,
    /// Per-window increase of the cumulative buckets, summed by bound.
    buckets: Vec<(f64, f64)>,
    xzone_known: f64,
    xzone_cross: f64,
}

impl Totals {
    /// Adds one pod's series with `labels` over its window.
    pub(crate) fn add(
        &mut self,
        before: &Scrape,
        after: &Scrape,
        window: Duration,
        labels: &[(&str, &str)],
    ) {
        let delta = |name: &str, extra: &[(&str, &str)]| {
            let mut l = labels.to_vec();
            l.extend_from_slice(extra);
            increase(before.sum(name, &l), after.sum(name, &l))
        };
        let requests = delta("request_total", &[]);
        self.requests += requests;
        self.rps += rate(requests, window);
        self.ok += delta("response_total", &[("classification", "success")]);
        self.failed += delta("response_total", &[("classification", "failure")]);
        self.tls += delta("request_total", &[("tls", "true")]);
        let buckets = bucket_increase(
            &before.buckets("response_latency_ms", labels),
            &after.buckets("response_latency_ms", labels),
        );
        for (le, n) in buckets {
            match self.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, total)) => *total += n,
                None => self.buckets.push((le, n)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    pub(crate) fn add_cross_zone(
        &mut self,
        before: &Scrape,
        after: &Scrape,
        labels: &[(&str, &str)],
    ) {
        let (known, cross) = cross_zone_counts(before, after, labels);
        self.xzone_known += known;
        self.xzone_cross += cross;
    }

    /// Adds one caller pod's outbound series with `labels` over its window, and their
    /// cross-zone share.
    pub(crate) fn add_outbound(
        &mut self,
        before: &Scrape,
        after: &Scrape,
        window: Duration,
        labels: &[(&str, &str)],
    ) {
        self.add(before, after, window, labels);
        self.add_cross_zone(before, after, labels);
    }

    pub(crate) fn row(&self, namespace: &str, name: &str) -> MeshRow {
        let responses = self.ok + self.failed;
        MeshRow {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            requests: self.requests.round().max(0.0) as u64,
            rps: self.rps,
            success: (responses > 0.0).then(|| self.ok / responses),
            latency_ms_p50: histogram_quantile(0.5, &self.buckets),
            latency_ms_p95: histogram_quantile(0.95, &self.buckets),
            latency_ms_p99: histogram_quantile(0.99, &self.buckets),
            meshed: (self.requests > 0.0).then(|| self.tls / self.requests),
            xzone: (self.xzone_known > 0.0).then(|| self.xzone_cross / self.xzone_known),
        }
    }
}

/// One row per `(namespace, name)` of `totals`.
pub(crate) fn rows_of(totals: &BTreeMap<(String, String), Totals>) -> Vec<MeshRow> {
    totals
        .iter()
        .map(|((ns, name), t)| t.row(ns, name))
        .collect()
}

/// One row per (namespace, workload) of `workloads` and of `pods`: what its pods'
/// inbound proxies served (requests, success, latency, meshed share) and the
/// cross-zone share of what they sent. Workloads without traffic get a row of `None`s.
pub fn deploy_rows(
    workloads: &BTreeSet<(String, String)>,
    pods: &[PodRecord],
    before: &HashMap<String, Scrape>,
    after: &HashMap<String, Scrape>,
    window: Duration,
) -> Vec<MeshRow> {
    deploy_frame_rows(workloads, pods, &Frame::between(before, after, window))
}

/// [`deploy_rows`] of a [`Frame`] (pods may have windows of their own).
pub fn deploy_frame_rows(
    workloads: &BTreeSet<(String, String)>,
    pods: &[PodRecord],
    frame: &Frame,
) -> Vec<MeshRow> {
    let mut totals: BTreeMap<(String, String), Totals> = workloads
        .iter()
        .map(|k| (k.clone(), Totals::default()))
        .collect();
    for pod in pods {
        let t = totals
            .entry((pod.namespace.clone(), pod.workload.clone()))
            .or_default();
        if let Some((b, a, w)) = frame.get(pod) {
            t.add(b, a, w, &[("direction", "inbound")]);
            t.add_cross_zone(b, a, &[("direction", "outbound")]);
        }
    }
    rows_of(&totals)
}

/// One row per pod (namespace, pod name), as [`deploy_rows`] per workload. Pods whose
/// proxy did not answer get a row of `None`s.
pub fn pod_rows(pods: &[PodRecord], frame: &Frame) -> Vec<MeshRow> {
    let mut rows: Vec<MeshRow> = pods
        .iter()
        .map(|pod| {
            let mut t = Totals::default();
            if let Some((b, a, w)) = frame.get(pod) {
                t.add(b, a, w, &[("direction", "inbound")]);
                t.add_cross_zone(b, a, &[("direction", "outbound")]);
            }
            t.row(&pod.namespace, &pod.name)
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// One row per Service (namespace, name) of `services` and of those the callers'
/// proxies sent requests to: what the callers saw (their outbound side, so retries'
/// effects and the proxies' own errors count), meshed and cross-zone shares.
/// Services without traffic get a row of `None`s.
pub fn svc_rows(
    services: &BTreeSet<(String, String)>,
    pods: &[PodRecord],
    vips: &[VipRecord],
    frame: &Frame,
) -> Vec<MeshRow> {
    let mut totals: BTreeMap<(String, String), Totals> = services
        .iter()
        .map(|k| (k.clone(), Totals::default()))
        .collect();
    for pod in pods {
        let Some((b, a, w)) = frame.get(pod) else {
            continue;
        };
        // The proxy's outbound routes to a Service: (dst_service, authority, target).
        let routes: BTreeSet<(&str, &str, &str)> = a
            .matching("request_total", &[("direction", "outbound")])
            .filter(|s| !s.label("dst_service").is_empty())
            .map(|s| {
                (
                    s.label("dst_service"),
                    s.label("authority"),
                    s.label("target_addr"),
                )
            })
            .collect();
        for (service, authority, target) in routes {
            let namespace =
                service_namespace(service, authority, target, &pod.namespace, pods, vips);
            let labels = [
                ("direction", "outbound"),
                ("dst_service", service),
                ("authority", authority),
                ("target_addr", target),
            ];
            totals
                .entry((namespace, service.to_owned()))
                .or_default()
                .add_outbound(b, a, w, &labels);
        }
    }
    rows_of(&totals)
}

/// The namespace of the Service named `service` that a request went to: the metrics
/// name the Service without its namespace, so it is that of the pod the request
/// reached (a Service selects pods of its own namespace), else that of the VIP or the
/// name (`books.shop...`) it was addressed by, else the caller's own (a short name).
pub(crate) fn service_namespace(
    service: &str,
    authority: &str,
    target: &str,
    caller_namespace: &str,
    pods: &[PodRecord],
    vips: &[VipRecord],
) -> String {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        if let Some(p) = pods.iter().find(|p| IpAddr::V4(p.ip) == addr.ip()) {
            return p.namespace.clone();
        }
    }
    let host = match authority.parse::<SocketAddr>() {
        Ok(addr) => {
            if let Some(v) = vips.iter().find(|v| IpAddr::V4(v.vip) == addr.ip()) {
                return v.namespace.clone();
            }
            return caller_namespace.to_owned();
        }
        Err(_) => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let mut labels = host.split('.');
    match (labels.next(), labels.next()) {
        (Some(name), Some(ns)) if name == service && ns != "svc" => ns.to_owned(),
        _ => caller_namespace.to_owned(),
    }
}

/// The widths of a table's NAME and NAMESPACE columns for rows `(namespace, name)`:
/// the longest value, at least the heading's.
pub(crate) fn name_widths<'a>(rows: impl Iterator<Item = (&'a str, &'a str)>) -> (usize, usize) {
    rows.fold((4, 9), |(name, ns), (row_ns, row_name)| {
        (name.max(row_name.len()), ns.max(row_ns.len()))
    })
}

/// Linkerd-style table; with `namespaces` a NAMESPACE column first. `what` names the
/// rows for the line printed when there are none ("deployments", "services"). `narrow`
/// heads the latencies P50/P95/P99 (`weft up`'s live frame, within 80 columns).
pub fn table(rows: &[MeshRow], namespaces: bool, narrow: bool, what: &str, scope: &str) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.2}%", v * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}ms"));
    let (name_width, ns_width) =
        name_widths(rows.iter().map(|r| (r.namespace.as_str(), r.name.as_str())));
    let (lat, p50, p95, p99) = if narrow {
        (8, "P50", "P95", "P99")
    } else {
        (11, "LATENCY_P50", "LATENCY_P95", "LATENCY_P99")
    };
    let mut out = String::new();
    let mut line = |ns: &str, cells: [&str; 8]| {
        if namespaces {
            out.push_str(&format!("{ns:<ns_width$}  "));
        }
        out.push_str(&format!(
            "{:<name_width$}  {:>7}  {:>8}  {:>8}  {:>lat$}  {:>lat$}  {:>lat$}  {:>7}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        ));
    };
    line(
        "NAMESPACE",
        ["NAME", "MESHED", "SUCCESS", "RPS", p50, p95, p99, "XZONE"],
    );
    for r in rows {
        let idle = r.requests == 0;
        let rps = if idle {
            "-".to_owned()
        } else {
            format!("{:.1}", r.rps)
        };
        line(
            &r.namespace,
            [
                &r.name,
                &pct(r.meshed),
                &pct(r.success),
                &rps,
                &ms(r.latency_ms_p50),
                &ms(r.latency_ms_p95),
                &ms(r.latency_ms_p99),
                &pct(r.xzone),
            ],
        );
    }
    if rows.is_empty() {
        out.push_str(&format!("(no {what} {scope})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::test_pod as pod;

    /// Proxy scrapes by pod key, in the proxy's label layout (trimmed to what matters).
    fn scrapes(texts: &[(&str, &str)]) -> HashMap<String, Scrape> {
        texts
            .iter()
            .map(|(pod, text)| (format!("t-{pod}"), Scrape::parse(text)))
            .collect()
    }

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn deploy_rows_sum_the_pods_inbound_side_over_the_window() {
        let inbound = |tls: &str| {
            format!("namespace=\"default\",deployment=\"books\",zone=\"zone-b\",direction=\"inbound\",authority=\"books:8080\",target_addr=\"127.18.0.3:8080\",tls=\"{tls}\",dst_service=\"\",dst_zone=\"\"")
        };
        let out = |dst_zone: &str| {
            format!("namespace=\"default\",deployment=\"books\",zone=\"zone-b\",direction=\"outbound\",authority=\"authors:8080\",target_addr=\"127.18.0.9:4143\",tls=\"true\",dst_service=\"authors\",dst_zone=\"{dst_zone}\"")
        };
        let (t, n) = (inbound("true"), inbound("no_identity"));
        let books0_before = format!(
            "request_total{{{t}}} 100\n\
             response_total{{{t},status_code=\"200\",classification=\"success\"}} 100\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"10.0\"}} 100\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"100.0\"}} 100\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"+Inf\"}} 100\n"
        );
        // +60 over mTLS and 20 plaintext; 70 successes and 10 failures; 50 answered
        // within 10 ms and 30 within 100 ms. Outbound: 30 requests to zone-c, 10 to
        // zone-b (its own).
        let books0_after = format!(
            "request_total{{{t}}} 160\nrequest_total{{{n}}} 20\n\
             response_total{{{t},status_code=\"200\",classification=\"success\"}} 170\n\
             response_total{{{n},status_code=\"500\",classification=\"failure\"}} 10\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"10.0\"}} 150\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"100.0\"}} 170\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"+Inf\"}} 170\n\
             response_latency_ms_bucket{{{n},status_code=\"500\",le=\"10.0\"}} 0\n\
             response_latency_ms_bucket{{{n},status_code=\"500\",le=\"100.0\"}} 10\n\
             response_latency_ms_bucket{{{n},status_code=\"500\",le=\"+Inf\"}} 10\n\
             request_total{{{}}} 30\nrequest_total{{{}}} 10\n",
            out("zone-c"),
            out("zone-b"),
        );
        // books-1 started inside the window: everything it counted is new (20 mTLS
        // successes between 10 and 100 ms).
        let books1_after = format!(
            "request_total{{{t}}} 20\n\
             response_total{{{t},status_code=\"200\",classification=\"success\"}} 20\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"10.0\"}} 0\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"100.0\"}} 20\n\
             response_latency_ms_bucket{{{t},status_code=\"200\",le=\"+Inf\"}} 20\n"
        );
        let pods = [
            pod("books-0", "books", "default", [127, 18, 0, 3]),
            pod("books-1", "books", "default", [127, 18, 0, 4]),
            // Answered only the second time: no window to measure, so not counted.
            pod("authors-0", "authors", "shop", [127, 18, 0, 9]),
        ];
        let before = scrapes(&[("books-0", &books0_before), ("books-1", "")]);
        let after = scrapes(&[
            ("books-0", &books0_after),
            ("books-1", &books1_after),
            ("authors-0", &books1_after),
        ]);
        let workloads = BTreeSet::from([("default".to_owned(), "idle".to_owned())]);
        let rows = deploy_rows(&workloads, &pods, &before, &after, WINDOW);
        let names: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.namespace.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("default", "books"),
                ("default", "idle"),
                ("shop", "authors")
            ]
        );
        let books = &rows[0];
        assert_eq!(books.requests, 100);
        assert_eq!(books.rps, 10.0);
        assert_eq!(books.success, Some(0.9));
        assert_eq!(books.meshed, Some(0.8));
        // 50 of 100 within 10 ms, the other 50 in (10, 100]: p50 = 10 ms,
        // p95 = 10 + 90 × 45/50 = 91 ms, p99 = 10 + 90 × 49/50 = 98.2 ms.
        assert_eq!(books.latency_ms_p50, Some(10.0));
        assert!((books.latency_ms_p95.unwrap() - 91.0).abs() < 1e-9);
        assert!((books.latency_ms_p99.unwrap() - 98.2).abs() < 1e-9);
        assert_eq!(books.xzone, Some(0.75));
        // Workloads without a window's traffic: a row of "-".
        for idle in &rows[1..] {
            assert_eq!(idle.requests, 0);
            assert_eq!(
                (idle.success, idle.meshed, idle.latency_ms_p50, idle.xzone),
                (None, None, None, None)
            );
        }
        let table = table(&rows, false, false, "deployments", "in namespace default");
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME "), "{table}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["books", "80.00%", "90.00%", "10.0", "10.0ms", "91.0ms", "98.2ms", "75.00%"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["idle", "-", "-", "-", "-", "-", "-", "-"]
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["success"], 0.9);
        assert_eq!(json[0]["meshed"], 0.8);
        assert_eq!(json[1]["success"], serde_json::Value::Null);
    }

    #[test]
    fn svc_rows_come_from_the_callers_outbound_side() {
        let out = |authority: &str, target: &str, tls: &str, service: &str, dst_zone: &str| {
            format!("namespace=\"default\",deployment=\"client\",zone=\"zone-a\",direction=\"outbound\",authority=\"{authority}\",target_addr=\"{target}\",tls=\"{tls}\",dst_service=\"{service}\",dst_zone=\"{dst_zone}\"")
        };
        // client-0 → books (Service in default): 40 to books-0 in zone-b (38 ok, 2
        // failed), 10 to books-1 in zone-a; 5 to a host that is no Service.
        let b0 = out(
            "books.default.svc:8080",
            "127.18.0.3:4143",
            "true",
            "books",
            "zone-b",
        );
        let b1 = out(
            "books.default.svc:8080",
            "127.18.0.4:4143",
            "true",
            "books",
            "zone-a",
        );
        let ext = out("example.com:80", "93.184.216.34:80", "no_identity", "", "");
        // client-0 → authors by its VIP, no endpoint reached (5 proxy errors).
        let vip = out("198.19.0.9:8080", "", "no_identity", "authors", "");
        let client_after = format!(
            "request_total{{{b0}}} 40\nrequest_total{{{b1}}} 10\nrequest_total{{{ext}}} 5\n\
             request_total{{{vip}}} 5\n\
             response_total{{{b0},status_code=\"200\",classification=\"success\"}} 38\n\
             response_total{{{b0},status_code=\"502\",classification=\"failure\"}} 2\n\
             response_total{{{b1},status_code=\"200\",classification=\"success\"}} 10\n\
             response_total{{{vip},status_code=\"503\",classification=\"failure\"}} 5\n\
             response_latency_ms_bucket{{{b0},status_code=\"200\",le=\"5.0\"}} 40\n\
             response_latency_ms_bucket{{{b0},status_code=\"200\",le=\"+Inf\"}} 40\n\
             response_latency_ms_bucket{{{b1},status_code=\"200\",le=\"5.0\"}} 0\n\
             response_latency_ms_bucket{{{b1},status_code=\"200\",le=\"+Inf\"}} 10\n"
        );
        // books-0 (namespace default) → authors by `authors.shop:8080`: 5 over mTLS
        // to authors-0 and 5 that reached no endpoint.
        let a = |target: &str, tls: &str| {
            format!("namespace=\"default\",deployment=\"books\",zone=\"zone-b\",direction=\"outbound\",authority=\"authors.shop:8080\",target_addr=\"{target}\",tls=\"{tls}\",dst_service=\"authors\",dst_zone=\"\"")
        };
        let (a0, none) = (a("127.18.0.9:4143", "true"), a("", "no_identity"));
        let books_after = format!(
            "request_total{{{a0}}} 5\nrequest_total{{{none}}} 5\n\
             response_total{{{a0},status_code=\"200\",classification=\"success\"}} 5\n\
             response_total{{{none},status_code=\"503\",classification=\"failure\"}} 5\n"
        );
        let pods = [
            pod("client-0", "client", "default", [127, 18, 0, 2]),
            pod("books-0", "books", "default", [127, 18, 0, 3]),
            pod("books-1", "books", "default", [127, 18, 0, 4]),
            pod("authors-0", "authors", "shop", [127, 18, 0, 9]),
        ];
        let vips = [VipRecord {
            namespace: "shop".into(),
            name: "authors".into(),
            vip: [198, 19, 0, 9].into(),
        }];
        let before = scrapes(&[("client-0", ""), ("books-0", "")]);
        let after = scrapes(&[("client-0", &client_after), ("books-0", &books_after)]);
        let services = BTreeSet::from([("default".to_owned(), "quiet".to_owned())]);
        let rows = svc_rows(
            &services,
            &pods,
            &vips,
            &Frame::between(&before, &after, WINDOW),
        );
        let names: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.namespace.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("default", "books"),
                ("default", "quiet"),
                ("shop", "authors")
            ]
        );
        let books = &rows[0];
        assert_eq!((books.requests, books.rps), (50, 5.0));
        assert_eq!(books.success, Some(48.0 / 50.0));
        assert_eq!(books.meshed, Some(1.0));
        // 40 within 5 ms, 10 above the highest finite bound (reported as 5 ms).
        assert_eq!(books.latency_ms_p50, Some(5.0 * 25.0 / 40.0));
        assert_eq!(books.latency_ms_p99, Some(5.0));
        // From zone-a: 40 to zone-b, 10 to zone-a.
        assert_eq!(books.xzone, Some(0.8));
        let quiet = &rows[1];
        assert_eq!(
            (quiet.requests, quiet.success, quiet.meshed),
            (0, None, None)
        );
        let authors = &rows[2];
        assert_eq!((authors.requests, authors.rps), (15, 1.5));
        assert_eq!(authors.success, Some(5.0 / 15.0));
        assert_eq!(authors.meshed, Some(5.0 / 15.0));
        assert_eq!(authors.xzone, None);
        assert_eq!(authors.latency_ms_p50, None);
    }

    #[test]
    fn a_services_namespace_from_the_pod_reached_its_vip_or_its_name() {
        let pods = [pod("authors-0", "authors", "shop", [198, 18, 0, 9])];
        let vips = [VipRecord {
            namespace: "shop".into(),
            name: "authors".into(),
            vip: [198, 19, 0, 9].into(),
        }];
        let ns = |authority: &str, target: &str| {
            service_namespace("authors", authority, target, "default", &pods, &vips)
        };
        // The pod reached decides, whatever the name said.
        assert_eq!(ns("authors:8080", "198.18.0.9:8080"), "shop");
        assert_eq!(ns("198.19.0.9:8080", ""), "shop");
        assert_eq!(ns("authors.shop.svc.cluster.local:8080", ""), "shop");
        assert_eq!(ns("authors.shop.svc:8080", ""), "shop");
        assert_eq!(ns("authors.shop:8080", ""), "shop");
        // A short name is the caller's namespace's Service.
        assert_eq!(ns("authors:8080", ""), "default");
        assert_eq!(ns("authors", ""), "default");
        // An address that is no VIP, or a name of something else: the caller's.
        assert_eq!(ns("198.19.0.77:8080", "203.0.113.5:80"), "default");
        assert_eq!(ns("example.com:80", ""), "default");
    }
}

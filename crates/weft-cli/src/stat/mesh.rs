//! `weft stat deploy|svc` on a local mesh: golden metrics per workload (from the
//! inbound side of its pods' proxies) and per Service (from the outbound side of every
//! caller's proxy), over the window between two scrapes of every pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use weft_core::prom::{bucket_increase, histogram_quantile, increase, Scrape};

use super::cross_zone_counts;
use crate::local::state::{PodRecord, VipRecord};

/// Golden metrics of one workload or Service over a window. The JSON field names are
/// stable (docs/local-mesh.md lists them).
#[derive(Debug, Serialize, PartialEq)]
pub struct MeshRow {
    pub namespace: String,
    pub name: String,
    /// Requests over the window.
    pub requests: f64,
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

/// Counts summed over pods (each pod's increase over the window taken alone, so one
/// pod's restart does not cancel the others' growth).
#[derive(Default)]
struct Totals {
    requests: f64,
    ok: f64,
    failed: f64,
    tls: f64,
    /// Per-window increase of the cumulative buckets, summed by bound.
    buckets: Vec<(f64, f64)>,
    xzone_known: f64,
    xzone_cross: f64,
}

impl Totals {
    /// Adds one pod's series with `labels` over the window.
    fn add(&mut self, before: &Scrape, after: &Scrape, labels: &[(&str, &str)]) {
        let delta = |name: &str, extra: &[(&str, &str)]| {
            let mut l = labels.to_vec();
            l.extend_from_slice(extra);
            increase(before.sum(name, &l), after.sum(name, &l))
        };
        self.requests += delta("request_total", &[]);
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

    fn add_cross_zone(&mut self, before: &Scrape, after: &Scrape, labels: &[(&str, &str)]) {
        let (known, cross) = cross_zone_counts(before, after, labels);
        self.xzone_known += known;
        self.xzone_cross += cross;
    }

    fn row(&self, namespace: &str, name: &str, window: Duration) -> MeshRow {
        let responses = self.ok + self.failed;
        MeshRow {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            requests: self.requests,
            rps: self.requests / window.as_secs_f64().max(1e-9),
            success: (responses > 0.0).then(|| self.ok / responses),
            latency_ms_p50: histogram_quantile(0.5, &self.buckets),
            latency_ms_p95: histogram_quantile(0.95, &self.buckets),
            latency_ms_p99: histogram_quantile(0.99, &self.buckets),
            meshed: (self.requests > 0.0).then(|| self.tls / self.requests),
            xzone: (self.xzone_known > 0.0).then(|| self.xzone_cross / self.xzone_known),
        }
    }
}

/// Two scrapes of one pod's proxy, `None` unless it answered both times.
fn pair<'a>(
    pod: &PodRecord,
    before: &'a HashMap<String, Scrape>,
    after: &'a HashMap<String, Scrape>,
) -> Option<(&'a Scrape, &'a Scrape)> {
    Some((before.get(&pod.netns)?, after.get(&pod.netns)?))
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
    let mut totals: BTreeMap<(String, String), Totals> = workloads
        .iter()
        .map(|k| (k.clone(), Totals::default()))
        .collect();
    for pod in pods {
        let t = totals
            .entry((pod.namespace.clone(), pod.workload.clone()))
            .or_default();
        if let Some((b, a)) = pair(pod, before, after) {
            t.add(b, a, &[("direction", "inbound")]);
            t.add_cross_zone(b, a, &[("direction", "outbound")]);
        }
    }
    totals
        .iter()
        .map(|((ns, name), t)| t.row(ns, name, window))
        .collect()
}

/// One row per Service (namespace, name) of `services` and of those the callers'
/// proxies sent requests to: what the callers saw (their outbound side, so retries'
/// effects and the proxies' own errors count), meshed and cross-zone shares.
/// Services without traffic get a row of `None`s.
pub fn svc_rows(
    services: &BTreeSet<(String, String)>,
    pods: &[PodRecord],
    vips: &[VipRecord],
    before: &HashMap<String, Scrape>,
    after: &HashMap<String, Scrape>,
    window: Duration,
) -> Vec<MeshRow> {
    let mut totals: BTreeMap<(String, String), Totals> = services
        .iter()
        .map(|k| (k.clone(), Totals::default()))
        .collect();
    for pod in pods {
        let Some((b, a)) = pair(pod, before, after) else {
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
            let t = totals.entry((namespace, service.to_owned())).or_default();
            t.add(b, a, &labels);
            t.add_cross_zone(b, a, &labels);
        }
    }
    totals
        .iter()
        .map(|((ns, name), t)| t.row(ns, name, window))
        .collect()
}

/// The namespace of the Service named `service` that a request went to: the metrics
/// name the Service without its namespace, so it is that of the pod the request
/// reached (a Service selects pods of its own namespace), else that of the VIP or the
/// name (`books.shop...`) it was addressed by, else the caller's own (a short name).
fn service_namespace(
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

/// Linkerd-style table; with `namespaces` a NAMESPACE column first. `what` names the
/// rows for the line printed when there are none ("deployments", "services").
pub fn table(rows: &[MeshRow], namespaces: bool, what: &str, scope: &str) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.2}%", v * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}ms"));
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let ns_width = rows
        .iter()
        .map(|r| r.namespace.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut out = String::new();
    let mut line = |ns: &str, cells: [&str; 8]| {
        if namespaces {
            out.push_str(&format!("{ns:<ns_width$}  "));
        }
        out.push_str(&format!(
            "{:<name_width$}  {:>7}  {:>8}  {:>8}  {:>11}  {:>11}  {:>11}  {:>7}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        ));
    };
    line(
        "NAMESPACE",
        [
            "NAME",
            "MESHED",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
            "XZONE",
        ],
    );
    for r in rows {
        let idle = r.requests <= 0.0;
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

//! `weft stat KIND --from RES` / `--to RES`: the traffic one resource sends, per
//! destination, or the traffic one resource receives, per source. Both come from the
//! callers' outbound side (as Linkerd's do): each request is counted once, by the proxy
//! that sent it, with the endpoint (`target_addr`) it reached, so the receiving pod is
//! known exactly.

use std::collections::{BTreeMap, BTreeSet};

use weft_core::prom::Scrape;

use super::mesh::{rows_of, service_namespace, Frame, MeshRow, Totals};
use crate::local::state::{PodRecord, VipRecord};
use crate::observe::{pod_by_target, ResKind, Resource};

/// Which side of the traffic is fixed.
#[derive(Clone, Debug)]
pub enum Filter {
    /// `--from RES` (its namespace for a name without one): rows are destinations.
    From(Resource, String),
    /// `--to RES`: rows are sources.
    To(Resource, String),
}

/// One outbound route of a caller: (target_addr, dst_service, authority).
type Route<'a> = (&'a str, &'a str, &'a str);

fn routes(after: &Scrape) -> BTreeSet<Route<'_>> {
    after
        .matching("request_total", &[("direction", "outbound")])
        .map(|s| {
            (
                s.label("target_addr"),
                s.label("dst_service"),
                s.label("authority"),
            )
        })
        .collect()
}

/// Rows of `kind` (`deploy`, `po` or `svc`; `svc` only with `--from`) for the traffic
/// `filter` selects, one per resource at the other end that was seen in the metrics
/// (also without traffic in the window: a row of `-`).
pub fn edge_rows(
    kind: ResKind,
    filter: &Filter,
    pods: &[PodRecord],
    vips: &[VipRecord],
    frame: &Frame,
) -> Vec<MeshRow> {
    let mut totals: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for src in pods {
        let Some((b, a, w)) = frame.get(src) else {
            continue;
        };
        if let Filter::From(from, ns) = filter {
            if !from.has_pod(src, ns) {
                continue;
            }
        }
        for (target, service, authority) in routes(a) {
            let dst = pod_by_target(pods, target);
            let svc_ns =
                || service_namespace(service, authority, target, &src.namespace, pods, vips);
            let key = match filter {
                Filter::From(..) => match (kind, dst) {
                    (ResKind::Deploy, Some(d)) => (d.namespace.clone(), d.workload.clone()),
                    (ResKind::Pod, Some(d)) => (d.namespace.clone(), d.name.clone()),
                    (ResKind::Svc, _) if !service.is_empty() => (svc_ns(), service.to_owned()),
                    _ => continue,
                },
                Filter::To(to, ns) => {
                    let reached = match (to.kind, dst) {
                        (ResKind::Svc, _) => {
                            !service.is_empty()
                                && to
                                    .name
                                    .as_ref()
                                    .is_none_or(|n| n == service && svc_ns() == *ns)
                        }
                        (_, Some(d)) => to.has_pod(d, ns),
                        (_, None) => false,
                    };
                    if !reached {
                        continue;
                    }
                    match kind {
                        ResKind::Deploy => (src.namespace.clone(), src.workload.clone()),
                        ResKind::Pod => (src.namespace.clone(), src.name.clone()),
                        ResKind::Svc => continue,
                    }
                }
            };
            let labels = [
                ("direction", "outbound"),
                ("target_addr", target),
                ("dst_service", service),
                ("authority", authority),
            ];
            totals
                .entry(key)
                .or_default()
                .add_outbound(b, a, w, &labels);
        }
    }
    rows_of(&totals)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::observe::parse_resource;

    fn pod(name: &str, workload: &str, ip: [u8; 4]) -> PodRecord {
        crate::observe::test_pod(name, workload, "default", ip)
    }

    fn out(target: &str, service: &str, n: u32, ok: u32) -> String {
        let l = format!("namespace=\"default\",direction=\"outbound\",authority=\"{service}:8080\",target_addr=\"{target}\",tls=\"true\",dst_service=\"{service}\",dst_zone=\"\",client_id=\"\",server_id=\"x\"");
        format!(
            "request_total{{{l}}} {n}\nresponse_total{{{l},status_code=\"200\",classification=\"success\"}} {ok}\n\
             response_total{{{l},status_code=\"500\",classification=\"failure\"}} {}\n",
            n - ok
        )
    }

    /// web-0 → books-0 (30, all fine) and books-1 (10, 5 failed); reader-0 → books-1
    /// (20); books-0 → authors-0 (30); web-0 → an address outside the mesh (7).
    fn mesh() -> (Vec<PodRecord>, Frame) {
        let pods = vec![
            pod("web-0", "web", [198, 18, 0, 2]),
            pod("reader-0", "reader", [198, 18, 0, 3]),
            pod("books-0", "books", [198, 18, 0, 4]),
            pod("books-1", "books", [198, 18, 0, 5]),
            pod("authors-0", "authors", [198, 18, 0, 6]),
        ];
        let after: HashMap<String, Scrape> = [
            (
                "web-0",
                format!(
                    "{}{}{}",
                    out("198.18.0.4:8080", "books", 30, 30),
                    out("198.18.0.5:8080", "books", 10, 5),
                    out("203.0.113.9:80", "", 7, 7)
                ),
            ),
            ("reader-0", out("198.18.0.5:8080", "books", 20, 20)),
            ("books-0", out("198.18.0.6:8080", "authors", 30, 30)),
            ("books-1", String::new()),
            ("authors-0", String::new()),
        ]
        .into_iter()
        .map(|(k, t)| (format!("t-{k}"), Scrape::parse(&t)))
        .collect();
        let before = after
            .keys()
            .map(|k| (k.clone(), Scrape::default()))
            .collect();
        (
            pods,
            Frame::between(&before, &after, Duration::from_secs(10)),
        )
    }

    fn names(rows: &[MeshRow]) -> Vec<(&str, u64)> {
        rows.iter().map(|r| (r.name.as_str(), r.requests)).collect()
    }

    #[test]
    fn from_a_workload_by_destination() {
        let (pods, frame) = mesh();
        let from = Filter::From(parse_resource("deploy/web").unwrap(), "default".into());
        let rows = edge_rows(ResKind::Deploy, &from, &pods, &[], &frame);
        assert_eq!(names(&rows), [("books", 40)]);
        assert_eq!(rows[0].success, Some(35.0 / 40.0));
        assert_eq!(rows[0].rps, 4.0);
        assert_eq!(rows[0].meshed, Some(1.0));
        let rows = edge_rows(ResKind::Pod, &from, &pods, &[], &frame);
        assert_eq!(names(&rows), [("books-0", 30), ("books-1", 10)]);
        let rows = edge_rows(ResKind::Svc, &from, &pods, &[], &frame);
        assert_eq!(names(&rows), [("books", 40)]);
        // From every pod of a kind.
        let from = Filter::From(parse_resource("deploy").unwrap(), "default".into());
        let rows = edge_rows(ResKind::Deploy, &from, &pods, &[], &frame);
        assert_eq!(names(&rows), [("authors", 30), ("books", 60)]);
    }

    #[test]
    fn to_a_workload_pod_or_service_by_source() {
        let (pods, frame) = mesh();
        let to = |r: &str| Filter::To(parse_resource(r).unwrap(), "default".into());
        let rows = edge_rows(ResKind::Deploy, &to("deploy/books"), &pods, &[], &frame);
        assert_eq!(names(&rows), [("reader", 20), ("web", 40)]);
        let rows = edge_rows(ResKind::Deploy, &to("po/books-1"), &pods, &[], &frame);
        assert_eq!(names(&rows), [("reader", 20), ("web", 10)]);
        let rows = edge_rows(ResKind::Pod, &to("svc/authors"), &pods, &[], &frame);
        assert_eq!(names(&rows), [("books-0", 30)]);
        assert!(edge_rows(ResKind::Deploy, &to("deploy/nobody"), &pods, &[], &frame).is_empty());
    }
}

//! `weft stat -t tcp`: TCP figures per workload or pod, from the inbound side of its
//! pods' proxies (`peer="src"`: the connections callers opened to it): connections
//! open now and opened over the window, bytes read from and written to the callers.
//! With `--from`/`--to`, the connections are told apart by the caller's identity
//! (`client_id`, on mTLS connections), which names a service account, not a pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;
use weft_core::prom::{increase, Scrape};

use super::edge::Filter;
use super::mesh::{name_widths, Frame};
use super::rate;
use crate::local::state::PodRecord;
use crate::observe::{holders_of, one_caller, ResKind};

/// TCP figures of one workload or pod. The JSON field names are stable.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct TcpRow {
    pub namespace: String,
    pub name: String,
    /// Connections open when last scraped (`tcp_open_connections`).
    pub tcp_open_connections: u64,
    /// Connections opened over the window (`tcp_open_total`).
    pub tcp_opened: u64,
    /// Of those, over mTLS.
    pub tcp_opened_mtls: u64,
    /// Bytes read from callers over the window (`tcp_read_bytes_total`).
    pub read_bytes: u64,
    /// Bytes written to callers over the window (`tcp_write_bytes_total`).
    pub write_bytes: u64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
    /// Whether any of its pods' proxies answered (else the figures are unknown: `-`).
    #[serde(skip)]
    pub seen: bool,
}

const SRC: [(&str, &str); 2] = [("direction", "inbound"), ("peer", "src")];

impl TcpRow {
    /// Adds one pod's inbound connections (those with `labels` too) over its window.
    fn add(&mut self, before: &Scrape, after: &Scrape, window: Duration, labels: &[(&str, &str)]) {
        let delta = |name: &str, extra: &[(&str, &str)]| {
            let mut l = SRC.to_vec();
            l.extend_from_slice(labels);
            l.extend_from_slice(extra);
            increase(before.sum(name, &l), after.sum(name, &l))
        };
        let count = |v: f64| v.round().max(0.0) as u64;
        self.seen = true;
        let mut open = SRC.to_vec();
        open.extend_from_slice(labels);
        self.tcp_open_connections += count(after.sum("tcp_open_connections", &open));
        self.tcp_opened += count(delta("tcp_open_total", &[]));
        self.tcp_opened_mtls += count(delta("tcp_open_total", &[("tls", "true")]));
        let (read, write) = (
            delta("tcp_read_bytes_total", &[]),
            delta("tcp_write_bytes_total", &[]),
        );
        self.read_bytes += count(read);
        self.write_bytes += count(write);
        self.read_bytes_per_sec += rate(read, window);
        self.write_bytes_per_sec += rate(write, window);
    }
}

/// One row per workload (`per_pod` false; also the `workloads` without pods) or per
/// pod.
pub fn tcp_rows(
    workloads: &BTreeSet<(String, String)>,
    pods: &[PodRecord],
    frame: &Frame,
    per_pod: bool,
) -> Vec<TcpRow> {
    let mut rows: BTreeMap<(String, String), TcpRow> = BTreeMap::new();
    if !per_pod {
        for k in workloads {
            rows.entry(k.clone()).or_default();
        }
    }
    for pod in pods {
        let name = if per_pod { &pod.name } else { &pod.workload };
        let row = rows
            .entry((pod.namespace.clone(), name.clone()))
            .or_default();
        if let Some((b, a, w)) = frame.get(pod) {
            row.add(b, a, w, &[]);
        }
    }
    named(rows)
}

fn named(rows: BTreeMap<(String, String), TcpRow>) -> Vec<TcpRow> {
    rows.into_iter()
        .map(|((namespace, name), row)| TcpRow {
            namespace,
            name,
            ..row
        })
        .collect()
}

/// `-t tcp --from deploy[/NAME]` (rows: the workloads or pods it connected to) or
/// `--to deploy|po[/NAME]` (rows: the workloads that connected to it, `kind` deploy),
/// from the callees' inbound mTLS connections by the caller's identity (`identities`:
/// each workload's). Plaintext connections name no caller and are left out.
pub fn tcp_edge_rows(
    kind: ResKind,
    filter: &Filter,
    pods: &[PodRecord],
    identities: &HashMap<(String, String), String>,
    frame: &Frame,
) -> Vec<TcpRow> {
    let mut rows: BTreeMap<(String, String), TcpRow> = BTreeMap::new();
    for dst in pods {
        let Some((b, a, w)) = frame.get(dst) else {
            continue;
        };
        if let Filter::To(to, ns) = filter {
            if !to.has_pod(dst, ns) {
                continue;
            }
        }
        let clients: BTreeSet<&str> = a
            .matching("tcp_open_total", &SRC)
            .map(|s| s.label("client_id"))
            .filter(|id| !id.is_empty())
            .collect();
        for id in clients {
            // The workloads that hold this identity.
            let callers = holders_of(id, identities);
            let key = match filter {
                Filter::From(from, ns) => {
                    let from_it = callers.iter().any(|(cns, cname)| {
                        cns == ns && from.name.as_ref().is_none_or(|n| n == cname)
                    });
                    if !from_it {
                        continue;
                    }
                    match kind {
                        ResKind::Pod => (dst.namespace.clone(), dst.name.clone()),
                        _ => (dst.namespace.clone(), dst.workload.clone()),
                    }
                }
                Filter::To(..) => {
                    one_caller(&callers).unwrap_or_else(|| (String::new(), id.to_owned()))
                }
            };
            rows.entry(key)
                .or_default()
                .add(b, a, w, &[("client_id", id)]);
        }
    }
    named(rows)
}

/// Human-sized bytes per second.
fn per_sec(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}MB/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}kB/s", v / 1e3)
    } else {
        format!("{v:.0}B/s")
    }
}

/// The table: NAME, TCP_CONN (open now), NEW_CONN (opened over the window), MTLS
/// (share of those over mTLS), READ_BYTES/SEC, WRITE_BYTES/SEC.
pub fn table(rows: &[TcpRow], namespaces: bool, scope: &str) -> String {
    let (name_width, ns_width) =
        name_widths(rows.iter().map(|r| (r.namespace.as_str(), r.name.as_str())));
    let mut out = String::new();
    let mut line = |ns: &str, c: [&str; 6]| {
        if namespaces {
            out.push_str(&format!("{ns:<ns_width$}  "));
        }
        out.push_str(&format!(
            "{:<name_width$}  {:>8}  {:>8}  {:>7}  {:>14}  {:>15}\n",
            c[0], c[1], c[2], c[3], c[4], c[5]
        ));
    };
    line(
        "NAMESPACE",
        [
            "NAME",
            "TCP_CONN",
            "NEW_CONN",
            "MTLS",
            "READ_BYTES/SEC",
            "WRITE_BYTES/SEC",
        ],
    );
    for r in rows {
        let dash = |s: String| if r.seen { s } else { "-".to_owned() };
        let mtls = if r.tcp_opened > 0 {
            format!(
                "{:.2}%",
                100.0 * r.tcp_opened_mtls as f64 / r.tcp_opened as f64
            )
        } else {
            "-".to_owned()
        };
        line(
            &r.namespace,
            [
                &r.name,
                &dash(r.tcp_open_connections.to_string()),
                &dash(r.tcp_opened.to_string()),
                &mtls,
                &dash(per_sec(r.read_bytes_per_sec)),
                &dash(per_sec(r.write_bytes_per_sec)),
            ],
        );
    }
    if rows.is_empty() {
        out.push_str(&format!("(nothing {scope})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn pod(name: &str, workload: &str) -> PodRecord {
        crate::observe::test_pod(name, workload, "default", [198, 18, 0, 2])
    }

    fn tcp(
        direction: &str,
        peer: &str,
        tls: &str,
        open: u32,
        opened: u32,
        read: u32,
        write: u32,
    ) -> String {
        tcp_from(direction, peer, tls, "", open, opened, read, write)
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp_from(
        direction: &str,
        peer: &str,
        tls: &str,
        client: &str,
        open: u32,
        opened: u32,
        read: u32,
        write: u32,
    ) -> String {
        let l = format!(
            "namespace=\"default\",direction=\"{direction}\",peer=\"{peer}\",tls=\"{tls}\",client_id=\"{client}\""
        );
        format!(
            "tcp_open_total{{{l}}} {opened}\ntcp_open_connections{{{l}}} {open}\n\
             tcp_read_bytes_total{{{l}}} {read}\ntcp_write_bytes_total{{{l}}} {write}\n"
        )
    }

    #[test]
    fn tcp_rows_from_the_inbound_source_side() {
        let pods = [
            pod("books-0", "books"),
            pod("books-1", "books"),
            pod("web-0", "web"),
        ];
        let before: HashMap<String, Scrape> = [
            (
                "t-books-0",
                tcp("inbound", "src", "true", 2, 10, 1000, 5000),
            ),
            ("t-books-1", String::new()),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), Scrape::parse(&t)))
        .collect();
        let after: HashMap<String, Scrape> = [
            (
                "t-books-0",
                // +5 mTLS connections, 2 plaintext; 3000 bytes read, 10000 written;
                // outbound and dst series do not count.
                format!(
                    "{}{}{}{}",
                    tcp("inbound", "src", "true", 3, 15, 3000, 13000),
                    tcp("inbound", "src", "no_identity", 0, 2, 1000, 2000),
                    tcp("inbound", "dst", "no_identity", 9, 99, 9999, 9999),
                    tcp("outbound", "dst", "true", 9, 99, 9999, 9999),
                ),
            ),
            ("t-books-1", tcp("inbound", "src", "true", 1, 3, 500, 500)),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), Scrape::parse(&t)))
        .collect();
        let frame = Frame::between(&before, &after, Duration::from_secs(10));
        let workloads = BTreeSet::from([("default".to_owned(), "idle".to_owned())]);
        let rows = tcp_rows(&workloads, &pods, &frame, false);
        let books = &rows[0];
        assert_eq!(books.name, "books");
        assert_eq!(
            (
                books.tcp_open_connections,
                books.tcp_opened,
                books.tcp_opened_mtls
            ),
            (4, 10, 8)
        );
        assert_eq!((books.read_bytes, books.write_bytes), (3500, 10500));
        assert_eq!(books.read_bytes_per_sec, 350.0);
        assert_eq!(books.write_bytes_per_sec, 1050.0);
        assert_eq!(rows[1].name, "idle");
        assert!(!rows[1].seen);
        assert_eq!(rows[2].name, "web");
        let per_pod = tcp_rows(&workloads, &pods, &frame, true);
        let names: Vec<&str> = per_pod.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["books-0", "books-1", "web-0"]);
        let t = table(&rows, false, "in namespace default");
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines[0],
            [
                "NAME",
                "TCP_CONN",
                "NEW_CONN",
                "MTLS",
                "READ_BYTES/SEC",
                "WRITE_BYTES/SEC"
            ]
        );
        assert_eq!(
            lines[1],
            ["books", "4", "10", "80.00%", "350B/s", "1.1kB/s"]
        );
        assert_eq!(lines[2], ["idle", "-", "-", "-", "-", "-"]);
    }

    #[test]
    fn tcp_from_and_to_by_the_callers_identity() {
        let web = "web.default.serviceaccount.identity.weft.cluster.local";
        let reader = "reader.default.serviceaccount.identity.weft.cluster.local";
        let pods = [
            pod("books-0", "books"),
            pod("books-1", "books"),
            pod("authors-0", "authors"),
        ];
        let after: HashMap<String, Scrape> = [
            (
                "t-books-0",
                format!(
                    "{}{}{}",
                    tcp_from("inbound", "src", "true", web, 1, 4, 400, 4000),
                    tcp_from("inbound", "src", "true", reader, 1, 2, 200, 2000),
                    tcp_from("inbound", "src", "no_identity", "", 1, 9, 900, 9000),
                ),
            ),
            (
                "t-books-1",
                tcp_from("inbound", "src", "true", web, 0, 1, 100, 1000),
            ),
            (
                "t-authors-0",
                tcp_from("inbound", "src", "true", reader, 1, 3, 300, 3000),
            ),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), Scrape::parse(&t)))
        .collect();
        let before = after
            .keys()
            .map(|k| (k.clone(), Scrape::default()))
            .collect();
        let frame = Frame::between(&before, &after, Duration::from_secs(10));
        let identities: HashMap<(String, String), String> = [("web", web), ("reader", reader)]
            .into_iter()
            .map(|(w, id)| (("default".to_owned(), w.to_owned()), id.to_owned()))
            .collect();
        let res = |s: &str| crate::observe::parse_resource(s).unwrap();
        let summary = |rows: Vec<TcpRow>| -> Vec<(String, u64, u64)> {
            rows.into_iter()
                .map(|r| (r.name, r.tcp_opened, r.read_bytes))
                .collect()
        };
        let from_web = Filter::From(res("deploy/web"), "default".into());
        assert_eq!(
            summary(tcp_edge_rows(
                ResKind::Deploy,
                &from_web,
                &pods,
                &identities,
                &frame
            )),
            [("books".to_owned(), 5, 500)]
        );
        assert_eq!(
            summary(tcp_edge_rows(
                ResKind::Pod,
                &from_web,
                &pods,
                &identities,
                &frame
            )),
            [
                ("books-0".to_owned(), 4, 400),
                ("books-1".to_owned(), 1, 100)
            ]
        );
        let to_books = Filter::To(res("deploy/books"), "default".into());
        assert_eq!(
            summary(tcp_edge_rows(
                ResKind::Deploy,
                &to_books,
                &pods,
                &identities,
                &frame
            )),
            [("reader".to_owned(), 2, 200), ("web".to_owned(), 5, 500)]
        );
        let to_authors = Filter::To(res("po/authors-0"), "default".into());
        assert_eq!(
            summary(tcp_edge_rows(
                ResKind::Deploy,
                &to_authors,
                &pods,
                &identities,
                &frame
            )),
            [("reader".to_owned(), 3, 300)]
        );
    }
}

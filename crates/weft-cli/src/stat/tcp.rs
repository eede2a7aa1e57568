//! `weft stat -t tcp`: TCP figures per workload or pod, from the inbound side of its
//! pods' proxies (`peer="src"`: the connections callers opened to it): connections
//! open now and opened over the window, bytes read from and written to the callers.
//! The proxies' `tcp_*` series carry `direction`, `peer` and `tls` only, so there is
//! no per-peer (`--from`/`--to`) TCP view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use weft_core::prom::{increase, Scrape};

use super::mesh::Frame;
use super::rate;
use crate::local::state::PodRecord;

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
    fn add(&mut self, before: &Scrape, after: &Scrape, window: Duration) {
        let delta = |name: &str, extra: &[(&str, &str)]| {
            let mut l = SRC.to_vec();
            l.extend_from_slice(extra);
            increase(before.sum(name, &l), after.sum(name, &l))
        };
        let count = |v: f64| v.round().max(0.0) as u64;
        self.seen = true;
        self.tcp_open_connections += count(after.sum("tcp_open_connections", &SRC));
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
            row.add(b, a, w);
        }
    }
    rows.into_iter()
        .map(|((namespace, name), row)| TcpRow {
            namespace,
            name,
            ..row
        })
        .collect()
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
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let ns_width = rows
        .iter()
        .map(|r| r.namespace.len())
        .max()
        .unwrap_or(0)
        .max(9);
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
        PodRecord {
            name: name.into(),
            workload: workload.into(),
            namespace: "default".into(),
            index: 0,
            zone: None,
            netns: format!("t-{name}"),
            ip: [198, 18, 0, 2].into(),
            link: String::new(),
            files: Vec::new(),
            procs: Vec::new(),
        }
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
        let l = format!(
            "namespace=\"default\",direction=\"{direction}\",peer=\"{peer}\",tls=\"{tls}\""
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
}

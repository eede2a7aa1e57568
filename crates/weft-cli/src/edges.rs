//! `weft edges [deploy|po]`: one row per caller → callee pair seen in the proxies'
//! metrics, with the identity each side proved and whether the calls were mTLS, as
//! `linkerd viz edges` shows them.
//!
//! Where each column comes from (cumulative counters, since each proxy started):
//! - SRC → DST: the caller's outbound `request_total` series: the caller is the pod
//!   whose proxy counted them, the callee the pod whose address is the series'
//!   `target_addr` (an endpoint outside the mesh's pods is named by its Service or
//!   address);
//! - DST_IDENTITY: the outbound series' `server_id`, the identity the caller's proxy
//!   verified in the callee's certificate;
//! - SRC_IDENTITY: the callee's inbound series' `client_id`, the identity the callee's
//!   proxy verified in the caller's certificate, when it is the caller workload's
//!   identity (its service account in `mesh.yaml`);
//! - SECURED (√): every request of the pair went over mTLS and both identities were
//!   seen; otherwise MSG says why not.
//!
//! Callers the callee saw whose own proxy did not count them as calls to it (plaintext
//! callers outside the mesh; retries, which the caller's proxy counts under the
//! endpoint of the first attempt; a caller whose proxy was not read) get rows from the
//! callee's inbound side alone: mTLS ones with the callee's own identity, as its
//! inbound proxy terminates only mTLS addressed to that identity. Opaque TCP
//! connections are not counted per peer by the proxies, so only HTTP and gRPC calls
//! make edges.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use weft_core::mesh::Mesh;
use weft_core::prom::Scrape;

use crate::local::state::PodRecord;
use crate::local::LocalArgs;
use crate::observe::{
    holders_of, one_caller, pod_by_target, res_kind, workload_identities, ResKind,
};
use crate::stat::{emit, emit_json, load_state, scope, scrape_mesh, silent_pods, Output};

fn parse_kind(s: &str) -> Result<ResKind, String> {
    match res_kind(s) {
        Some(k @ (ResKind::Deploy | ResKind::Pod)) => Ok(k),
        _ => Err(format!(
            "unknown kind {s:?}; valid kinds: deploy (deployment, deployments), po (pod, pods)"
        )),
    }
}

#[derive(clap::Args)]
pub struct EdgesArgs {
    /// One row per pair of workloads: deploy (default; deployment, deployments), or of
    /// pods: po (pod, pods).
    #[arg(value_parser = parse_kind)]
    kind: Option<ResKind>,
    /// Namespace whose edges are shown (edges with either end in it).
    #[arg(
        short = 'n',
        long,
        default_value = "default",
        conflicts_with = "all_namespaces"
    )]
    namespace: String,
    /// Edges of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output format (json: an array of edges).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    local: LocalArgs,
}

/// One caller → callee pair. The JSON field names are stable.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Edge {
    pub src_namespace: String,
    /// The caller (workload or pod); `-` when unknown (a plaintext caller).
    pub src: String,
    pub dst_namespace: String,
    /// The callee (workload or pod), or for an endpoint outside the mesh's pods its
    /// Service or address.
    pub dst: String,
    /// The caller's identity as the callee's proxy verified it.
    pub src_identity: Option<String>,
    /// The callee's identity as the caller's proxy verified it.
    pub dst_identity: Option<String>,
    /// Every request over mTLS, both identities known.
    pub secured: bool,
    /// Why the edge is not secured (empty when it is).
    pub msg: String,
    /// Requests counted since the proxies started.
    pub requests: u64,
    /// TCP connections the callee accepted from the caller's identity since its proxy
    /// started (`tcp_open_total{client_id}`): also opaque TCP, which makes no requests;
    /// filled on rows from the callee's side.
    pub connections: u64,
}

pub async fn run(args: EdgesArgs) -> anyhow::Result<()> {
    args.local.validate()?;
    let state = load_state(&args.local)?;
    let scrapes = scrape_mesh(&state).await?;
    let silent = silent_pods(&state, &scrapes);
    if silent > 0 {
        eprintln!(
            "warning: {silent} of {} pods' proxies did not answer; their edges are missing",
            state.pods.len()
        );
    }
    let mesh = match Mesh::load(&state.mesh_dir) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!(
                "warning: cannot read the mesh directory {} ({e}); callers' identities are not matched",
                state.mesh_dir.display()
            );
            None
        }
    };
    let identities = workload_identities(mesh.as_ref());
    let mut edges = pod_edges(&state.pods, &scrapes, &identities);
    if args.kind.unwrap_or(ResKind::Deploy) == ResKind::Deploy {
        edges = by_workload(&state.pods, edges);
    }
    edges.retain(|e| {
        args.all_namespaces
            || e.src_namespace == args.namespace
            || e.dst_namespace == args.namespace
    });
    match args.output {
        Output::Json => emit_json(&edges)?,
        Output::Table => {
            let scope = scope(args.all_namespaces, &args.namespace);
            emit(&table(&edges, args.all_namespaces, &scope));
        }
    }
    Ok(())
}

/// What a callee's proxy saw inbound: requests by verified client identity, and
/// plaintext ones.
#[derive(Default)]
struct Inbound {
    clients: BTreeMap<String, f64>,
    plaintext: f64,
}

fn inbound(scrape: &Scrape) -> Inbound {
    let mut seen = Inbound::default();
    for s in scrape.matching("request_total", &[("direction", "inbound")]) {
        match (s.label("tls"), s.label("client_id")) {
            ("true", id) if !id.is_empty() => {
                *seen.clients.entry(id.to_owned()).or_default() += s.value
            }
            _ => seen.plaintext += s.value,
        }
    }
    seen
}

/// A pod-level pair while it is summed up.
#[derive(Default)]
struct Pair {
    requests: f64,
    mtls: f64,
    server_ids: BTreeSet<String>,
    /// The callee is a pod of the mesh.
    dst_pod: bool,
}

/// One edge per (caller pod, callee pod or outside endpoint), and the callee-only rows.
pub fn pod_edges(
    pods: &[PodRecord],
    scrapes: &HashMap<String, Scrape>,
    identities: &HashMap<(String, String), String>,
) -> Vec<Edge> {
    let by_key: HashMap<&str, &PodRecord> = pods.iter().map(|p| (p.netns.as_str(), p)).collect();
    let identity_of = |p: &PodRecord| identities.get(&(p.namespace.clone(), p.workload.clone()));
    // (src pod key, (dst namespace, dst name)) → the pair.
    let mut pairs: BTreeMap<(String, (String, String)), Pair> = BTreeMap::new();
    for src in pods {
        let Some(scrape) = scrapes.get(&src.netns) else {
            continue;
        };
        for s in scrape.matching("request_total", &[("direction", "outbound")]) {
            let target = s.label("target_addr");
            if target.is_empty() {
                // No endpoint was reached: no callee.
                continue;
            }
            let (dst, dst_pod) = match pod_by_target(pods, target) {
                Some(d) => ((d.netns.clone(), String::new()), true),
                None => {
                    let name = match s.label("dst_service") {
                        "" => target.to_owned(),
                        svc => svc.to_owned(),
                    };
                    ((String::new(), name), false)
                }
            };
            let pair = pairs.entry((src.netns.clone(), dst)).or_default();
            pair.dst_pod = dst_pod;
            pair.requests += s.value;
            if s.label("tls") == "true" {
                pair.mtls += s.value;
            }
            if !s.label("server_id").is_empty() {
                pair.server_ids.insert(s.label("server_id").to_owned());
            }
        }
    }
    let tcp_from = |dst: &PodRecord, id: &str| -> u64 {
        scrapes.get(&dst.netns).map_or(0, |s| {
            s.sum(
                "tcp_open_total",
                &[TCP_SRC[0], TCP_SRC[1], TCP_SRC[2], ("client_id", id)],
            ) as u64
        })
    };
    // A row from the callee's side alone, for a caller it verified as `id`: the
    // inbound proxy terminates only mTLS addressed to its own identity (SNI) and
    // verified the client's certificate, so both sides proved theirs.
    let callee_side = |dst: &PodRecord, id: &str, requests: u64| {
        let (ns, name) = callers_of(id, identities);
        let dst_identity = identity_of(dst).cloned();
        Edge {
            src_namespace: ns,
            src: name,
            dst_namespace: dst.namespace.clone(),
            dst: dst.name.clone(),
            src_identity: Some(id.to_owned()),
            secured: dst_identity.is_some(),
            msg: if dst_identity.is_some() {
                String::new()
            } else {
                "the destination's identity is unknown (mesh directory not read)".to_owned()
            },
            dst_identity,
            requests,
            connections: tcp_from(dst, id),
        }
    };
    let inbounds: HashMap<&str, Inbound> = scrapes
        .iter()
        .map(|(k, s)| (k.as_str(), inbound(s)))
        .collect();
    let mut edges = Vec::new();
    // Client identities and plaintext the callers' side accounts for, per callee.
    let mut explained: HashMap<&str, (BTreeSet<String>, bool)> = HashMap::new();
    for ((src_key, (dst_key, outside)), pair) in &pairs {
        let src = by_key[src_key.as_str()];
        let dst = by_key.get(dst_key.as_str()).copied();
        let expected = identity_of(src);
        let seen = dst.and_then(|d| inbounds.get(d.netns.as_str()));
        let src_identity = expected
            .filter(|id| seen.is_some_and(|s| s.clients.contains_key(*id)))
            .cloned();
        let dst_identity = (!pair.server_ids.is_empty()).then(|| {
            pair.server_ids
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        });
        if let Some(d) = dst {
            let e = explained.entry(d.netns.as_str()).or_default();
            e.0.extend(expected.cloned());
            e.1 |= pair.mtls < pair.requests;
        }
        let msg = if !pair.dst_pod {
            "not meshed: the destination is outside the mesh's pods".to_owned()
        } else if pair.mtls == 0.0 {
            "no identity: plaintext (the destination had no identity for the caller's proxy)"
                .to_owned()
        } else if pair.mtls < pair.requests {
            format!(
                "partly plaintext: {} of {} requests without mTLS",
                pair.requests - pair.mtls,
                pair.requests
            )
        } else if dst_identity.is_none() {
            "no server identity in the caller's metrics".to_owned()
        } else if src_identity.is_none() {
            match seen {
                None => "the destination's proxy did not answer".to_owned(),
                Some(_) if expected.is_none() => {
                    "the caller's identity is unknown (mesh directory not read)".to_owned()
                }
                Some(_) => "the destination has not seen the caller's identity".to_owned(),
            }
        } else {
            String::new()
        };
        edges.push(Edge {
            src_namespace: src.namespace.clone(),
            src: src.name.clone(),
            dst_namespace: dst.map_or(String::new(), |d| d.namespace.clone()),
            dst: dst.map_or(outside.clone(), |d| d.name.clone()),
            secured: msg.is_empty(),
            src_identity,
            dst_identity,
            msg,
            requests: pair.requests.round() as u64,
            connections: 0,
        });
    }
    // What callees saw that no caller's metrics account for.
    for dst in pods {
        let Some(seen) = inbounds.get(dst.netns.as_str()) else {
            continue;
        };
        let (ids, plaintext) = explained
            .get(dst.netns.as_str())
            .cloned()
            .unwrap_or_default();
        for (id, n) in &seen.clients {
            if ids.contains(id) {
                continue;
            }
            // Calls its callers' proxies counted under another endpoint (a retry
            // landing here) or whose proxy was not read end up here.
            edges.push(callee_side(dst, id, n.round() as u64));
        }
        if seen.plaintext > 0.0 && !plaintext {
            edges.push(Edge {
                src_namespace: String::new(),
                src: "-".to_owned(),
                dst_namespace: dst.namespace.clone(),
                dst: dst.name.clone(),
                src_identity: None,
                dst_identity: None,
                secured: false,
                msg: "not meshed: plaintext callers without an identity".to_owned(),
                requests: seen.plaintext.round() as u64,
                connections: 0,
            });
        }
    }
    // Callers the callee accepted TCP connections from (by their verified identity)
    // that made no HTTP request it counted: opaque TCP.
    for dst in pods {
        let Some(scrape) = scrapes.get(&dst.netns) else {
            continue;
        };
        let http: BTreeSet<&String> = inbounds
            .get(dst.netns.as_str())
            .map(|s| s.clients.keys().collect())
            .unwrap_or_default();
        let tcp_ids: BTreeSet<&str> = scrape
            .matching("tcp_open_total", &TCP_SRC)
            .map(|s| s.label("client_id"))
            .filter(|id| !id.is_empty() && !http.iter().any(|h| h.as_str() == *id))
            .collect();
        for id in tcp_ids {
            edges.push(callee_side(dst, id, 0));
        }
    }
    edges
}

/// Inbound mTLS connections as the callee's proxy accepted them.
const TCP_SRC: [(&str, &str); 3] = [("direction", "inbound"), ("peer", "src"), ("tls", "true")];

/// The workloads (namespace, names) whose identity is `id`, else the service account
/// the identity names.
fn callers_of(id: &str, identities: &HashMap<(String, String), String>) -> (String, String) {
    one_caller(&holders_of(id, identities)).unwrap_or_else(|| {
        match id.parse::<weft_core::identity::Identity>() {
            Ok(i) => (
                i.namespace().to_owned(),
                format!("sa:{}", i.service_account()),
            ),
            Err(_) => (String::new(), id.to_owned()),
        }
    })
}

/// Pod edges summed per pair of workloads.
pub fn by_workload(pods: &[PodRecord], edges: Vec<Edge>) -> Vec<Edge> {
    let workload = |ns: &str, name: &str| {
        pods.iter()
            .find(|p| p.namespace == ns && p.name == name)
            .map_or(name.to_owned(), |p| p.workload.clone())
    };
    let mut out: BTreeMap<(String, String, String, String), Edge> = BTreeMap::new();
    for e in edges {
        let src = workload(&e.src_namespace, &e.src);
        let dst = workload(&e.dst_namespace, &e.dst);
        let key = (
            e.src_namespace.clone(),
            src.clone(),
            e.dst_namespace.clone(),
            dst.clone(),
        );
        match out.get_mut(&key) {
            None => {
                out.insert(key, Edge { src, dst, ..e });
            }
            Some(w) => {
                w.requests += e.requests;
                w.connections += e.connections;
                if w.src_identity != e.src_identity {
                    w.src_identity = w.src_identity.take().or(e.src_identity);
                }
                if w.dst_identity != e.dst_identity {
                    w.dst_identity = w.dst_identity.take().or(e.dst_identity);
                }
                if !e.secured {
                    w.secured = false;
                    if w.msg.is_empty() {
                        w.msg = e.msg;
                    }
                }
            }
        }
    }
    out.into_values().collect()
}

/// The table: SRC, DST, SRC_IDENTITY, DST_IDENTITY, SECURED (√), MSG; with
/// `namespaces` the names are `namespace/name`.
pub fn table(edges: &[Edge], namespaces: bool, scope: &str) -> String {
    let name = |ns: &str, n: &str| {
        if namespaces && !ns.is_empty() {
            format!("{ns}/{n}")
        } else {
            n.to_owned()
        }
    };
    let rows: Vec<[String; 6]> = edges
        .iter()
        .map(|e| {
            [
                name(&e.src_namespace, &e.src),
                name(&e.dst_namespace, &e.dst),
                e.src_identity.clone().unwrap_or_else(|| "-".into()),
                e.dst_identity.clone().unwrap_or_else(|| "-".into()),
                if e.secured { "√" } else { "-" }.to_owned(),
                e.msg.clone(),
            ]
        })
        .collect();
    let header = [
        "SRC",
        "DST",
        "SRC_IDENTITY",
        "DST_IDENTITY",
        "SECURED",
        "MSG",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for r in &rows {
        line(r);
    }
    if rows.is_empty() {
        out.push_str(&format!("(no traffic seen {scope})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "web.default.serviceaccount.identity.weft.cluster.local";
    const BOOKS: &str = "books.default.serviceaccount.identity.weft.cluster.local";

    fn pod(name: &str, workload: &str, ip: [u8; 4]) -> PodRecord {
        crate::observe::test_pod(name, workload, "default", ip)
    }

    fn out(target: &str, service: &str, tls: &str, server: &str, n: u32) -> String {
        format!("request_total{{namespace=\"default\",direction=\"outbound\",authority=\"{service}:8080\",target_addr=\"{target}\",tls=\"{tls}\",dst_service=\"{service}\",dst_zone=\"\",client_id=\"\",server_id=\"{server}\"}} {n}\n")
    }

    fn inb(tls: &str, client: &str, n: u32) -> String {
        format!("request_total{{namespace=\"default\",direction=\"inbound\",authority=\"books:8080\",target_addr=\"198.18.0.3:8080\",tls=\"{tls}\",dst_service=\"\",dst_zone=\"\",client_id=\"{client}\",server_id=\"\"}} {n}\n")
    }

    /// Pods, their scrapes by key, and the workloads' identities.
    type Fixture = (
        Vec<PodRecord>,
        HashMap<String, Scrape>,
        HashMap<(String, String), String>,
    );

    fn fixture() -> Fixture {
        let pods = vec![
            pod("web-0", "web", [198, 18, 0, 2]),
            pod("books-0", "books", [198, 18, 0, 3]),
            pod("books-1", "books", [198, 18, 0, 4]),
            pod("legacy-0", "legacy", [198, 18, 0, 5]),
        ];
        let scrapes = [
            (
                "web-0",
                // mTLS to both books pods; 4 requests that reached no endpoint; 3 to
                // a host outside the mesh.
                format!(
                    "{}{}{}{}",
                    out("198.18.0.3:8080", "books", "true", BOOKS, 10),
                    out("198.18.0.4:8080", "books", "true", BOOKS, 5),
                    out("", "books", "no_identity", "", 4),
                    out("93.184.216.34:80", "", "no_identity", "", 3),
                ),
            ),
            // books-0 saw web; and 2 plaintext requests from someone without a proxy.
            (
                "books-0",
                format!("{}{}", inb("true", WEB, 10), inb("no_identity", "", 2)),
            ),
            ("books-1", inb("true", WEB, 5)),
            // legacy-0's proxy answered but sent nothing.
            ("legacy-0", String::new()),
        ]
        .into_iter()
        .map(|(k, t)| (format!("t-{k}"), Scrape::parse(&t)))
        .collect();
        let identities = [("web", WEB), ("books", BOOKS)]
            .into_iter()
            .map(|(w, id)| (("default".to_owned(), w.to_owned()), id.to_owned()))
            .collect();
        (pods, scrapes, identities)
    }

    #[test]
    fn edges_per_pod_with_both_identities() {
        let (pods, scrapes, identities) = fixture();
        let edges = pod_edges(&pods, &scrapes, &identities);
        let find = |src: &str, dst: &str| {
            edges
                .iter()
                .find(|e| e.src == src && e.dst == dst)
                .unwrap_or_else(|| panic!("no edge {src} -> {dst}: {edges:#?}"))
        };
        let e = find("web-0", "books-0");
        assert_eq!(e.src_identity.as_deref(), Some(WEB));
        assert_eq!(e.dst_identity.as_deref(), Some(BOOKS));
        assert!(e.secured, "{e:?}");
        assert_eq!((e.requests, e.msg.as_str()), (10, ""));
        assert!(find("web-0", "books-1").secured);
        let e = find("web-0", "93.184.216.34:80");
        assert!(!e.secured);
        assert!(e.msg.starts_with("not meshed"), "{e:?}");
        let e = find("-", "books-0");
        assert_eq!(e.requests, 2);
        assert!(e.msg.starts_with("not meshed: plaintext"), "{e:?}");
        assert_eq!(edges.len(), 4, "{edges:#?}");
    }

    #[test]
    fn edges_per_workload_and_the_table() {
        let (pods, scrapes, identities) = fixture();
        let edges = by_workload(&pods, pod_edges(&pods, &scrapes, &identities));
        let pairs: Vec<(&str, &str, bool, u64)> = edges
            .iter()
            .map(|e| (e.src.as_str(), e.dst.as_str(), e.secured, e.requests))
            .collect();
        assert_eq!(
            pairs,
            [
                ("-", "books", false, 2),
                ("web", "93.184.216.34:80", false, 3),
                ("web", "books", true, 15),
            ]
        );
        let t = table(&edges, false, "in namespace default");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SRC  "), "{t}");
        let web: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(web, ["web", "books", WEB, BOOKS, "√"], "{t}");
        // -A: namespace/name.
        assert!(table(&edges, true, "").contains("default/web  default/books"));
        let json = serde_json::to_value(&edges).unwrap();
        assert_eq!(json[2]["secured"], true);
        assert_eq!(json[2]["src_identity"], WEB);
    }

    #[test]
    fn a_caller_whose_identity_the_callee_did_not_see_is_not_secured() {
        let (pods, mut scrapes, identities) = fixture();
        // books-1's proxy restarted: it has not counted web's calls yet.
        scrapes.insert("t-books-1".into(), Scrape::default());
        let edges = pod_edges(&pods, &scrapes, &identities);
        let e = edges.iter().find(|e| e.dst == "books-1").unwrap();
        assert!(!e.secured);
        assert_eq!(e.src_identity, None);
        assert_eq!(e.msg, "the destination has not seen the caller's identity");
        // An identity books-0 saw that no caller accounts for: from its side only.
        scrapes.insert(
            "t-books-0".into(),
            Scrape::parse(&inb(
                "true",
                "ghost.shop.serviceaccount.identity.weft.cluster.local",
                1,
            )),
        );
        let edges = pod_edges(&pods, &scrapes, &identities);
        let e = edges.iter().find(|e| e.src == "sa:ghost").unwrap();
        assert_eq!(
            (e.src_namespace.as_str(), e.dst.as_str()),
            ("shop", "books-0")
        );
        // mTLS to books-0's own identity (its inbound proxy terminates no other).
        assert_eq!(e.dst_identity.as_deref(), Some(BOOKS));
        assert!(e.secured, "{e:?}");
    }

    #[test]
    fn opaque_tcp_from_a_verified_caller_is_an_edge_too() {
        let (pods, mut scrapes, mut identities) = fixture();
        let legacy = "legacy.default.serviceaccount.identity.weft.cluster.local";
        identities.insert(("default".into(), "legacy".into()), legacy.into());
        // legacy-0 accepted 3 mTLS connections from web on an opaque port, and HTTP
        // connections (already an edge) are not counted again.
        scrapes.insert(
            "t-legacy-0".into(),
            Scrape::parse(&format!(
                "tcp_open_total{{direction=\"inbound\",peer=\"src\",tls=\"true\",client_id=\"{WEB}\"}} 3\n"
            )),
        );
        let edges = pod_edges(&pods, &scrapes, &identities);
        let e = edges.iter().find(|e| e.dst == "legacy-0").unwrap();
        assert_eq!((e.src.as_str(), e.requests, e.connections), ("web", 0, 3));
        assert_eq!(e.src_identity.as_deref(), Some(WEB));
        assert_eq!(e.dst_identity.as_deref(), Some(legacy));
        assert!(e.secured);
        assert_eq!(edges.iter().filter(|e| e.dst == "legacy-0").count(), 1);
        let by = by_workload(&pods, edges);
        assert!(by
            .iter()
            .any(|e| e.src == "web" && e.dst == "legacy" && e.connections == 3));
    }
}

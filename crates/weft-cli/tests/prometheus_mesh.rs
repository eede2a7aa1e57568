//! `weft up --prometheus` on the demo (root, network namespaces): a real Prometheus
//! (Debian's package) scrapes every proxy and the controller, and the AnalysisTemplates'
//! queries of docs/argo-rollouts.md, read from the page as it is written, return the
//! canary's figures: books-v2 failing 20 % behind the demo's canary route at 50/50
//! reads a success rate near 0.8 by route (the callers' outbound proxies) and by
//! workload (its inbound proxy, Linkerd's query). A pod added by `weft scale` becomes a
//! target; `weft down` stops Prometheus and leaves nothing. The same Prometheus beside a
//! loopback mesh (no root needed) scrapes every pod.

#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{eventually, require_binaries, require_root, stat, MeshEnv as _};

common::ns_env!(Env, "p");

/// The AnalysisTemplates' arguments for the demo's canary.
const ARGS: [(&str, &str); 4] = [
    ("namespace", "default"),
    ("deployment", "books-v2"),
    ("route", "books-canary"),
    ("canary-service", "books-v2"),
];

/// Responses of the canary counted before the rates are judged: with a failure rate
/// of 0.2, 200 requests put the measured success rate within ±0.12 of 0.8 at over
/// four standard deviations.
const ENOUGH: f64 = 200.0;

/// `GET path` on `addr` (HTTP/1.0: the answer is the body up to the close); the status
/// and the body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Percent-encodes a query parameter's value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result vector, `None` when Prometheus does not answer or
/// refuses it.
fn query(addr: SocketAddr, promql: &str) -> Option<Vec<Value>> {
    let (status, body) = http_get(addr, &format!("/api/v1/query?query={}", encode(promql)))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    assert_eq!(status, 200, "query {promql} refused: {body}");
    v["data"]["result"].as_array().cloned()
}

/// The single value of a query's result, if it has one.
fn scalar(addr: SocketAddr, promql: &str) -> Option<f64> {
    let result = query(addr, promql)?;
    let [one] = result.as_slice() else {
        return None;
    };
    one["value"][1].as_str()?.parse().ok()
}

/// The `metrics` of every AnalysisTemplate in docs/argo-rollouts.md: (name, query with
/// the arguments filled in).
fn doc_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/argo-rollouts.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = Vec::new();
    for block in text.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap();
        if !yaml.contains("kind: AnalysisTemplate") {
            continue;
        }
        let doc: Value = serde_yaml_ng::from_str(yaml).unwrap();
        if doc["kind"] != "AnalysisTemplate" {
            continue;
        }
        for m in doc["spec"]["metrics"].as_array().unwrap() {
            let mut q = m["provider"]["prometheus"]["query"]
                .as_str()
                .unwrap()
                .to_owned();
            for (k, v) in ARGS {
                q = q.replace(&format!("{{{{args.{k}}}}}"), v);
            }
            assert!(!q.contains("{{"), "an argument is left in {q}");
            out.push((m["name"].as_str().unwrap().to_owned(), q));
        }
    }
    out
}

impl Env {
    /// The demo with books-v2 failing 20 %, callers at 100 and 50 requests/s, and the
    /// canary route at 50/50.
    fn write_demo(&self) {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mesh = std::fs::read_to_string(demo.join("demo/mesh.yaml"))
            .unwrap()
            .replace(r#"--fail-rate, "0.05""#, r#"--fail-rate, "0.2""#)
            .replace(r#"--rps, "20"]"#, r#"--rps, "100", --call-delay, 0s]"#)
            .replace(r#"--rps, "10"]"#, r#"--rps, "50", --call-delay, 0s]"#);
        assert!(mesh.contains(r#""0.2""#) && mesh.contains(r#""100""#) && mesh.contains(r#""50""#));
        self.write("mesh.yaml", &mesh);
        let services = std::fs::read_to_string(demo.join("demo/services.yaml")).unwrap();
        self.write("services.yaml", &services);
        let route = std::fs::read_to_string(demo.join("routes/books-canary.yaml"))
            .unwrap()
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50");
        assert_eq!(route.matches("weight: 50").count(), 2);
        self.write("books-canary.yaml", &route);
        std::fs::create_dir_all(self.dir.join("faults")).unwrap();
    }

    /// The pods Prometheus scrapes successfully (`up == 1`), and whether the controller
    /// is among its healthy targets.
    fn healthy_targets(&self, addr: SocketAddr) -> Option<(BTreeSet<String>, bool)> {
        let (_, body) = http_get(addr, "/api/v1/targets")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let mut pods = BTreeSet::new();
        let mut controller = false;
        for t in v["data"]["activeTargets"].as_array()? {
            if t["health"] != "up" {
                continue;
            }
            match t["labels"]["job"].as_str()? {
                "weft-controller" => controller = true,
                _ => {
                    assert_eq!(t["labels"]["namespace"], "default", "{t}");
                    assert!(t["labels"]["deployment"].is_string(), "{t}");
                    pods.insert(t["labels"]["pod"].as_str()?.to_owned());
                }
            }
        }
        Some((pods, controller))
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The demo's pods.
const PODS: [&str; 6] = [
    "authors-0",
    "books-v1-0",
    "books-v1-1",
    "books-v2-0",
    "reader-0",
    "web-0",
];

impl Env {
    /// `weft up -d --prometheus` on any free port; Prometheus' address, once `weft ps`
    /// shows its row running with the URL the summary printed.
    fn up_with_prometheus(&self, extra: &[&str]) -> SocketAddr {
        let mut args = vec![
            "up",
            "-d",
            "--prometheus",
            "--prometheus-listen",
            "127.0.0.1:0",
        ];
        args.extend(extra);
        args.push(self.dir.to_str().unwrap());
        let out = self.run(&args);
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("prometheus: http://"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no Prometheus URL in:\n{stdout}"))
            .to_owned();
        let ps = self.run(&["ps", "-o", "json"]);
        let rows: Vec<Value> = serde_json::from_slice(&ps.stdout).unwrap();
        let row = rows
            .iter()
            .find(|r| r["name"] == "prometheus")
            .expect("a prometheus row");
        assert_eq!(row["state"], "running");
        assert_eq!(row["url"], format!("http://{url}"));
        url.parse().unwrap()
    }

    /// Waits until every pod and the controller are healthy targets and every pod has
    /// `response_total` series.
    fn wait_targets(&self, addr: SocketAddr) {
        let pods = set(&PODS);
        let targets = eventually(Duration::from_secs(20), || {
            self.healthy_targets(addr).filter(|(p, c)| *p == pods && *c)
        });
        assert!(
            targets.is_some(),
            "targets: {:?}",
            self.healthy_targets(addr)
        );
        let series = eventually(Duration::from_secs(20), || {
            let found: BTreeSet<String> = query(addr, "count by (pod) (response_total)")?
                .iter()
                .filter_map(|r| r["metric"]["pod"].as_str().map(str::to_owned))
                .collect();
            (found == pods).then_some(())
        });
        assert!(series.is_some(), "not every pod has response_total series");
    }

    /// `weft scale books-v1 3`: the new pod becomes a healthy target.
    fn scale_and_wait_target(&self, addr: SocketAddr) {
        let out = self.run(&["scale", "books-v1", "3"]);
        assert!(out.status.success());
        let mut more = set(&PODS);
        more.insert("books-v1-2".into());
        let scaled = eventually(Duration::from_secs(20), || {
            self.healthy_targets(addr).filter(|(p, _)| *p == more)
        });
        assert!(
            scaled.is_some(),
            "targets: {:?}",
            self.healthy_targets(addr)
        );
    }
}

/// Waits until the canary's responses counted inbound and by route reach [`ENOUGH`],
/// then runs each query and checks its value: success rates near 0.8, p99s from
/// books-v2's 10 ms (--latency) up to 2 s.
fn check_queries(addr: SocketAddr, queries: &[(String, String)]) {
    let counted = |promql: &str| scalar(addr, promql).unwrap_or(0.0);
    let enough = eventually(Duration::from_secs(30), || {
        let inbound = counted(
            r#"sum(increase(response_total{namespace="default", deployment="books-v2", direction="inbound"}[1m]))"#,
        );
        let routed = counted(
            r#"sum(increase(response_total{direction="outbound", route_name="books-canary", dst_service="books-v2"}[1m]))"#,
        );
        (inbound >= ENOUGH && routed >= ENOUGH).then_some(())
    });
    assert!(
        enough.is_some(),
        "the canary did not get {ENOUGH} requests in 30s"
    );
    for (name, promql) in queries {
        let value = scalar(addr, promql).unwrap_or_else(|| panic!("{name}: no value for {promql}"));
        eprintln!("{name} = {value:.3}\n  {promql}");
        let range = if name.ends_with("success-rate") {
            0.68..=0.92
        } else {
            10.0..=2000.0
        };
        assert!(
            range.contains(&value),
            "{name} = {value}, not in {range:?}: {promql}"
        );
    }
}

/// Skips (returning true) when Debian's prometheus is not installed.
fn no_prometheus() -> bool {
    if Path::new("/usr/bin/prometheus").is_file() {
        return false;
    }
    common::skip(
        "/usr/bin/prometheus is missing: Debian's prometheus package (scripts/setup installs it)",
    );
    true
}

#[test]
fn prometheus_scrapes_the_demo_and_the_argo_rollouts_queries_read_the_canary() {
    require_root!();
    if no_prometheus() {
        return;
    }
    let queries = doc_queries();
    let names: Vec<&str> = queries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "route-success-rate",
            "route-latency-p99",
            "success-rate",
            "latency-p99"
        ]
    );
    let started = Instant::now();
    let env = Env::new("a");
    env.write_demo();
    let addr = env.up_with_prometheus(&[]);
    // Ready at once: weft up waited for it.
    assert_eq!(http_get(addr, "/-/ready").map(|(s, _)| s), Some(200));
    let prometheus_pid = env.state()["prometheus"]["pid"].as_u64().unwrap() as u32;

    env.wait_targets(addr);
    check_queries(addr, &queries);
    env.scale_and_wait_target(addr);

    // `weft down` stops Prometheus with the rest and leaves nothing.
    let mut procs = env.recorded_procs();
    procs.push((prometheus_pid, stat(prometheus_pid).unwrap().1));
    let out = env.run(&["down"]);
    assert!(out.status.success());
    env.assert_nothing_left(&procs);
    assert!(
        !env.state_dir.join("prometheus").exists(),
        "Prometheus' files are left"
    );
    let closed = eventually(Duration::from_secs(5), || {
        TcpStream::connect(addr).is_err().then_some(())
    });
    assert!(closed.is_some(), "{addr} still answers");
    eprintln!("test took {:.1}s", started.elapsed().as_secs_f64());
}

/// Loopback mode (no root needed): Prometheus runs as the invoking user on the host's
/// address and scrapes every pod's admin address and the controller's.
#[test]
fn prometheus_beside_a_loopback_mesh_scrapes_every_pod() {
    require_binaries!();
    if no_prometheus() {
        return;
    }
    let env = Env::new("l");
    env.write_demo();
    let addr = env.up_with_prometheus(&["--loopback"]);
    let prometheus_pid = env.state()["prometheus"]["pid"].as_u64().unwrap() as u32;
    env.wait_targets(addr);
    let mut procs = env.recorded_procs();
    procs.push((prometheus_pid, stat(prometheus_pid).unwrap().1));
    let out = env.run(&["down"]);
    assert!(out.status.success());
    for (pid, start) in procs {
        let left = stat(pid).filter(|(state, started)| *started == start && *state != 'Z');
        assert!(left.is_none(), "process {pid} is still running");
    }
    assert!(
        !env.state_dir.join("state.json").exists(),
        "the state file is left"
    );
    assert!(
        !env.state_dir.join("prometheus").exists(),
        "Prometheus' files are left"
    );
}

//! The Gateway API's **mesh conformance** cases (issue 11) on weft's local mesh, each
//! test named after its case and using its inputs: the suite's Services
//! (`tests/conformance/mesh/manifests.yaml`, as upstream has them, Namespaces and
//! Deployments included: the local mesh ignores those kinds with a warning, and
//! `tests/conformance/mesh/mesh.yaml` runs the Deployments' pods as workloads of
//! `weft-demo-app echo`, which answers like the suite's echo server) and the case's
//! route file as upstream has it (`tests/conformance/routes/`). Requests go out of the
//! client pod through its proxy, as an app's do (`weft exec POD -- weft-demo-app get`),
//! and are checked as the suite checks them: status, which backend answered (the pod
//! the echo server names), the request the backend saw, response headers, a redirect's
//! `Location`, each one eventually and then three times in a row.
//!
//! Each test brings up its own mesh (nextest runs every test in a process of its own,
//! so meshes are not shared between tests; one comes up in about two seconds). Root
//! (network namespaces); skipped with the reason otherwise, failing under CI.

#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::MeshEnv as _;

common::ns_env!(Env, "g");

const NS: &str = "gateway-conformance-mesh";
/// The pod requests are sent from (upstream: the echo-v1 pod; here a client workload
/// of the same namespace).
const CLIENT: &str = "client.gateway-conformance-mesh-0";
/// The pod of the consumer namespace (upstream's echo-v1 there), for MeshConsumerRoute.
const CONSUMER: &str = "echo-v1.gateway-conformance-mesh-consumer-0";
/// How long a case may take to hold (the route reaching the client's proxy included).
const SETTLE: Duration = Duration::from_secs(10);
/// Consecutive matching answers a case needs, as the suite's "eventually consistent".
const IN_A_ROW: usize = 3;

fn conformance() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

/// The suite's mesh with the upstream route files `routes` (and `extra`, files of
/// ours) in its directory, up in the foreground.
fn mesh(tag: &str, routes: &[&str], extra: &[&str]) -> Env {
    let mut env = Env::new(tag);
    let dir = conformance();
    for (from, name) in [("mesh", "mesh.yaml"), ("mesh", "manifests.yaml")]
        .into_iter()
        .chain(routes.iter().map(|r| ("routes", *r)))
        .chain(extra.iter().map(|e| ("extra", *e)))
    {
        let text = std::fs::read_to_string(dir.join(from).join(name))
            .unwrap_or_else(|e| panic!("tests/conformance/{from}/{name}: {e}"));
        env.write(name, &text);
    }
    let started = Instant::now();
    env.up = Some(env.up_foreground(&[]));
    eprintln!("mesh up in {:?}", started.elapsed());
    env
}

/// One answer as `weft-demo-app get -i` printed it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Response headers, names in lower case.
    headers: Vec<(String, String)>,
    /// The echo server's description of the request, when the body is one.
    echo: Option<serde_json::Value>,
    /// The body as printed (a proxy's own answer says why).
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The values the backend received for header `name` (any case), joined by `,` as
    /// the suite compares them.
    fn request_header(&self, name: &str) -> Option<String> {
        let headers = self.echo.as_ref()?["headers"].as_object()?;
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.as_array().into_iter().flatten())
            .filter_map(|v| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The pod that answered, from the echo server.
    fn pod(&self) -> Option<&str> {
        self.echo.as_ref()?["pod"].as_str()
    }
}

/// What `out` (the output of `weft-demo-app get -i`) says, or why it says nothing.
fn parse_answers(out: &str) -> Result<Vec<Answer>, String> {
    let mut answers = Vec::new();
    let mut headers = Vec::new();
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("< ") {
            let (n, v) = h.split_once(": ").unwrap_or((h, ""));
            headers.push((n.to_ascii_lowercase(), v.to_owned()));
            continue;
        }
        if line.starts_with("error: ") {
            return Err(line.to_owned());
        }
        let (status, body) = line.split_once(' ').unwrap_or((line, ""));
        let status = status
            .parse()
            .map_err(|_| format!("not an answer line: {line:?}"))?;
        answers.push(Answer {
            status,
            headers: std::mem::take(&mut headers),
            echo: serde_json::from_str(body).ok(),
            body: body.to_owned(),
        });
    }
    Ok(answers)
}

impl Env {
    /// `weft-demo-app get -i URL -H ...` from `pod`, through its proxy; `count` answers.
    fn get_from(
        &self,
        pod: &str,
        url: &str,
        headers: &[(&str, &str)],
        count: u32,
    ) -> Result<Vec<Answer>, String> {
        let count = count.to_string();
        let mut args = vec![
            "exec",
            pod,
            "--",
            "weft-demo-app",
            "get",
            "-i",
            "--timeout",
            "2s",
            "--count",
            &count,
            url,
        ];
        let headers: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        for h in &headers {
            args.extend(["-H", h.as_str()]);
        }
        let out = self.weft(&args).output().expect("run weft exec");
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse_answers(&stdout).map_err(|e| {
            format!(
                "{e} (weft exec: {}{})",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// gRPC `Lookup` to `url` from the client pod, `count` calls: the answering pods.
    fn lookup(&self, url: &str, count: u32) -> Result<Vec<String>, String> {
        let count = count.to_string();
        let args = [
            "exec",
            CLIENT,
            "--",
            "weft-demo-app",
            "lookup",
            "--count",
            &count,
            "--timeout",
            "2s",
            url,
        ];
        let out = self.weft(&args).output().expect("run weft exec");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .map(|line| {
                // OK echo-v1 by various authors (pod echo-v1.gateway-conformance-mesh-0, zone )
                line.strip_prefix("OK ")
                    .and_then(|l| l.split_once("(pod "))
                    .and_then(|(_, rest)| rest.split_once(','))
                    .map(|(pod, _)| pod.to_owned())
                    .ok_or_else(|| format!("gRPC call failed: {line}"))
            })
            .collect()
    }

    /// The routes (`items`) as `weft get routes -o json` shows them for the running mesh.
    fn routes(&self) -> serde_json::Value {
        let out = self.run(&["get", "routes", "-o", "json"]);
        assert!(out.status.success(), "weft get routes failed");
        let list: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("weft get routes -o json prints JSON");
        list["items"].clone()
    }
}

/// A Location header's (scheme, host, port, path), the port the scheme's when absent.
fn location(url: &str) -> Option<(String, String, u16, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_owned();
    let default = if scheme == "https" { 443 } else { 80 };
    Some((
        scheme,
        uri.host()?.to_owned(),
        uri.port_u16().unwrap_or(default),
        uri.path().to_owned(),
    ))
}

/// One request of a case and what the suite expects of its answer (its
/// `ExpectedResponse`).
#[derive(Clone, Default)]
struct Case {
    /// The pod it is sent from: the client when empty.
    from: &'static str,
    url: String,
    headers: Vec<(&'static str, &'static str)>,
    /// 200 when 0.
    status: u16,
    /// The workload whose pod answers (echo-v1, echo-v2), in gateway-conformance-mesh.
    backend: Option<&'static str>,
    /// Headers the backend must have received (values joined by `,`).
    request_headers: Vec<(&'static str, &'static str)>,
    absent_request_headers: Vec<&'static str>,
    response_headers: Vec<(&'static str, &'static str)>,
    absent_response_headers: Vec<&'static str>,
    /// A redirect's expected Location.
    redirect: Option<String>,
    /// The path the backend must have seen (a rewrite's).
    request_path: Option<&'static str>,
}

fn get(url: &str) -> Case {
    Case {
        url: url.to_owned(),
        ..Case::default()
    }
}

impl Case {
    fn backend(mut self, b: &'static str) -> Case {
        self.backend = Some(b);
        self
    }
    fn status(mut self, s: u16) -> Case {
        self.status = s;
        self
    }
    fn header(mut self, n: &'static str, v: &'static str) -> Case {
        self.headers.push((n, v));
        self
    }
    fn redirect(mut self, status: u16, location: &str) -> Case {
        self.status = status;
        self.redirect = Some(location.to_owned());
        self
    }
    fn from(mut self, pod: &'static str) -> Case {
        self.from = pod;
        self
    }
    fn path(mut self, p: &'static str) -> Case {
        self.request_path = Some(p);
        self
    }

    /// The request, as the report names it.
    fn request(&self) -> String {
        let mut s = format!("GET {}", self.url);
        for (n, v) in &self.headers {
            s.push_str(&format!(" -H '{n}: {v}'"));
        }
        if !self.from.is_empty() {
            s.push_str(&format!(" from {}", self.from));
        }
        s
    }

    /// Whether `a` is what the case expects; else what differs.
    fn check(&self, a: &Answer) -> Result<(), String> {
        let mut wrong = Vec::new();
        let status = if self.status == 0 { 200 } else { self.status };
        if a.status != status {
            wrong.push(format!(
                "status {} (expected {status}; body {:?}, headers {:?})",
                a.status, a.body, a.headers
            ));
        }
        if let Some(b) = self.backend {
            match a.pod() {
                Some(pod) if pod.starts_with(&format!("{b}.{NS}-")) => {}
                other => wrong.push(format!("answered by {other:?} (expected a pod of {b})")),
            }
            let ns = a.echo.as_ref().and_then(|e| e["namespace"].as_str());
            if ns != Some(NS) {
                wrong.push(format!("namespace {ns:?} (expected {NS})"));
            }
        }
        for (n, v) in &self.request_headers {
            let got = a.request_header(n);
            if got.as_deref() != Some(v) {
                wrong.push(format!("backend saw {n}: {got:?} (expected {v:?})"));
            }
        }
        for n in &self.absent_request_headers {
            if let Some(v) = a.request_header(n) {
                wrong.push(format!("backend saw {n}: {v:?} (expected none)"));
            }
        }
        for (n, v) in &self.response_headers {
            if a.header(n) != Some(v) {
                wrong.push(format!("response {n}: {:?} (expected {v:?})", a.header(n)));
            }
        }
        for n in &self.absent_response_headers {
            if let Some(v) = a.header(n) {
                wrong.push(format!("response {n}: {v:?} (expected none)"));
            }
        }
        if let Some(expected) = self.request_path {
            let got = a.echo.as_ref().and_then(|e| e["path"].as_str());
            if got != Some(expected) {
                wrong.push(format!("backend saw path {got:?} (expected {expected:?})"));
            }
        }
        if let Some(expected) = &self.redirect {
            let got = a.header("location");
            if got.and_then(location) != location(expected) {
                wrong.push(format!("Location {got:?} (expected {expected})"));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }
}

/// Runs every case until it holds `IN_A_ROW` times in a row (within `SETTLE` each);
/// fails the test with every case that did not, its request, and what was observed.
fn expect_all(env: &Env, cases: &[Case]) {
    let mut failed = Vec::new();
    for case in cases {
        let started = Instant::now();
        let mut in_a_row = 0;
        let mut last = String::new();
        while in_a_row < IN_A_ROW && started.elapsed() < SETTLE {
            let from = if case.from.is_empty() {
                CLIENT
            } else {
                case.from
            };
            let result = env
                .get_from(from, &case.url, &case.headers, 1)
                .and_then(|answers| match answers.as_slice() {
                    [a] => case.check(a),
                    other => Err(format!("{} answers", other.len())),
                });
            match result {
                Ok(()) => in_a_row += 1,
                Err(e) => {
                    in_a_row = 0;
                    last = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        if in_a_row < IN_A_ROW {
            failed.push(format!("{}: {last}", case.request()));
        } else {
            eprintln!(
                "ok: {} (held after {:?})",
                case.request(),
                started.elapsed()
            );
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

/// Checks that `pods` (answering pods of one batch) split between echo-v1 and echo-v2
/// as 70/30, as the suite does: every answer from one of the two, each share within 5
/// points of its weight; a batch outside is drawn again, 3 batches at most (a correct
/// 70/30 split fails a batch of 500 about 1.6 % of the time, three in a row 4e-6).
fn split_70_30(mut batch: impl FnMut() -> Result<Vec<String>, String>) {
    let mut last = String::new();
    for attempt in 1..=3 {
        let pods = batch().unwrap_or_else(|e| panic!("a request of the batch failed: {e}"));
        let n = pods.len() as f64;
        let v1 = pods
            .iter()
            .filter(|p| p.starts_with(&format!("echo-v1.{NS}-")))
            .count();
        let v2 = pods
            .iter()
            .filter(|p| p.starts_with(&format!("echo-v2.{NS}-")))
            .count();
        assert_eq!(
            v1 + v2,
            pods.len(),
            "answers from pods other than echo-v1's and echo-v2's: {pods:?}"
        );
        let (s1, s2) = (v1 as f64 / n, v2 as f64 / n);
        eprintln!("batch {attempt}: echo-v1 {v1}, echo-v2 {v2} of {n}");
        if (s1 - 0.7).abs() <= 0.05 && (s2 - 0.3).abs() <= 0.05 {
            return;
        }
        last = format!("echo-v1 {s1:.3}, echo-v2 {s2:.3} of {n} requests");
    }
    panic!("the split is not 70/30 within 5 points in 3 batches: last {last}");
}

#[test]
fn mesh_basic() {
    common::require_root!();
    let env = mesh("ba", &[], &[]);
    expect_all(&env, &[get("http://echo/")]);
}

#[test]
fn mesh_ports() {
    common::require_root!();
    let env = mesh("po", &["mesh-ports.yaml"], &[]);
    let mut explicit = get("http://echo-v1/").backend("echo-v1");
    explicit.response_headers = vec![("X-Header-Set", "v1")];
    let mut excluded = get("http://echo-v1:8080/").backend("echo-v1");
    excluded.absent_response_headers = vec!["X-Header-Set"];
    let mut none = get("http://echo-v2/").backend("echo-v2");
    none.response_headers = vec![("X-Header-Set", "v2")];
    let mut none_8080 = get("http://echo-v2:8080/").backend("echo-v2");
    none_8080.response_headers = vec![("X-Header-Set", "v2")];
    expect_all(&env, &[explicit, excluded, none, none_8080]);
}

#[test]
fn mesh_frontend() {
    common::require_root!();
    let env = mesh("fr", &["mesh-frontend.yaml"], &[]);
    let mut service = get("http://echo-v2/").backend("echo-v2");
    service.response_headers = vec![("X-Header-Set", "set")];
    let ip = env
        .pod_ip(&format!("echo-v2.{NS}-0"))
        .expect("echo-v2's pod");
    let mut pod_ip = get(&format!("http://{ip}:8080/")).backend("echo-v2");
    pod_ip.absent_response_headers = vec!["X-Header-Set"];
    expect_all(&env, &[service, pod_ip]);
}

#[test]
fn mesh_traffic_split() {
    common::require_root!();
    let env = mesh("sp", &["mesh-split.yaml"], &[]);
    expect_all(
        &env,
        &[
            get("http://echo/v1").backend("echo-v1"),
            get("http://echo/v2").backend("echo-v2"),
        ],
    );
}

#[test]
fn mesh_http_route_weight() {
    common::require_root!();
    let env = mesh("we", &["httproute-weight.yaml"], &[]);
    expect_all(&env, &[get("http://echo/")]);
    split_70_30(|| {
        let answers = env.get_from(CLIENT, "http://echo/", &[], 500)?;
        answers
            .iter()
            .map(|a| match (a.status, a.pod()) {
                (200, Some(pod)) => Ok(pod.to_owned()),
                _ => Err(format!("status {} pod {:?}", a.status, a.pod())),
            })
            .collect()
    });
}

#[test]
fn mesh_grpc_route_weight() {
    common::require_root!();
    let env = mesh("gw", &["grpcroute-weight.yaml"], &[]);
    let routes = env.routes();
    assert_eq!(routes.as_array().map(Vec::len), Some(1), "{routes}");
    let first = common::eventually(SETTLE, || env.lookup("http://echo:7070", 1).ok());
    assert!(first.is_some(), "no gRPC call to echo:7070 succeeded");
    split_70_30(|| env.lookup("http://echo:7070", 500));
}

#[test]
fn mesh_http_route_matching() {
    common::require_root!();
    let env = mesh("ma", &["httproute-matching.yaml"], &[]);
    expect_all(
        &env,
        &[
            get("http://echo/").backend("echo-v1"),
            get("http://echo/example").backend("echo-v1"),
            get("http://echo/")
                .header("Version", "one")
                .backend("echo-v1"),
            get("http://echo/v2").backend("echo-v2"),
            get("http://echo/v2/example").backend("echo-v2"),
            get("http://echo/")
                .header("Version", "two")
                .backend("echo-v2"),
            get("http://echo/v2/").backend("echo-v2"),
            // Not a path segment prefix: not /v2.
            get("http://echo/v2example").backend("echo-v1"),
            get("http://echo/foo/v2/example").backend("echo-v1"),
        ],
    );
}

#[test]
fn mesh_http_route_query_param_matching() {
    common::require_root!();
    let env = mesh("qp", &["httproute-query-param-matching.yaml"], &[]);
    let to = |path: &str, b: &'static str| get(&format!("http://echo{path}")).backend(b);
    let none = |path: &str| get(&format!("http://echo{path}")).status(404);
    expect_all(
        &env,
        &[
            to("/?animal=whale", "echo-v1"),
            to("/?animal=dolphin", "echo-v2"),
            to("/?animal=whale&otherparam=irrelevant", "echo-v1"),
            to("/?animal=dolphin&color=yellow", "echo-v2"),
            none("/?color=blue"),
            none("/?animal=dog"),
            none("/?animal=whaledolphin"),
            none("/"),
            // Combined with core matches.
            to("/path1?animal=whale", "echo-v1"),
            to("/?animal=whale", "echo-v2").header("version", "one"),
            // ORed matches: one of them is enough.
            to("/path3?animal=shark", "echo-v1"),
            to("/path4?animal=kraken", "echo-v1").header("version", "three"),
            // ANDed conditions: a subset is not.
            none("/?animal=shark"),
            none("/path4?animal=kraken"),
            // Precedence: the path match wins.
            to("/path5?animal=hydra", "echo-v1"),
        ],
    );
}

/// The requests of MeshHTTPRouteRequestHeaderModifier (and of its backend variant).
fn header_modifier_cases() -> Vec<Case> {
    let with = |mut c: Case, seen: &[(&'static str, &'static str)], absent: &[&'static str]| {
        c.request_headers = seen.to_vec();
        c.absent_request_headers = absent.to_vec();
        c.backend("echo-v1")
    };
    vec![
        with(
            get("http://echo/set").header("Some-Other-Header", "val"),
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "set-overwrites-values"),
            ],
            &[],
        ),
        with(
            get("http://echo/set")
                .header("Some-Other-Header", "val")
                .header("X-Header-Set", "some-other-value"),
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "set-overwrites-values"),
            ],
            &[],
        ),
        with(
            get("http://echo/add").header("Some-Other-Header", "val"),
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "add-appends-values"),
            ],
            &[],
        ),
        with(
            get("http://echo/add")
                .header("Some-Other-Header", "val")
                .header("X-Header-Add", "some-other-value"),
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "some-other-value,add-appends-values"),
            ],
            &[],
        ),
        with(
            get("http://echo/remove").header("X-Header-Remove", "val"),
            &[],
            &["X-Header-Remove"],
        ),
        with(
            get("http://echo/multiple")
                .header("X-Header-Set-2", "set-val-2")
                .header("X-Header-Add-2", "add-val-2")
                .header("X-Header-Remove-2", "remove-val-2")
                .header("Another-Header", "another-header-val"),
            &[
                ("X-Header-Set-1", "header-set-1"),
                ("X-Header-Set-2", "header-set-2"),
                ("X-Header-Add-1", "header-add-1"),
                ("X-Header-Add-2", "add-val-2,header-add-2"),
                ("X-Header-Add-3", "header-add-3"),
                ("Another-Header", "another-header-val"),
            ],
            &["X-Header-Remove-1", "X-Header-Remove-2"],
        ),
        // The filter names headers canonically, the request in lower case.
        with(
            get("http://echo/case-insensitivity")
                .header("x-header-set", "original-val-set")
                .header("x-header-add", "original-val-add")
                .header("x-header-remove", "original-val-remove")
                .header("Another-Header", "another-header-val"),
            &[
                ("X-Header-Set", "header-set"),
                ("X-Header-Add", "original-val-add,header-add"),
                ("Another-Header", "another-header-val"),
            ],
            &["x-header-remove", "X-Header-Remove"],
        ),
    ]
}

#[test]
fn mesh_http_route_request_header_modifier() {
    common::require_root!();
    let env = mesh("rh", &["httproute-request-header-modifier.yaml"], &[]);
    expect_all(&env, &header_modifier_cases());
}

#[test]
fn mesh_http_route_backend_request_header_modifier() {
    common::require_root!();
    let env = mesh(
        "bh",
        &["httproute-request-header-modifier-backend.yaml"],
        &[],
    );
    expect_all(&env, &header_modifier_cases());
}

#[test]
fn mesh_http_route_simple_same_namespace() {
    common::require_root!();
    let env = mesh("sn", &["httproute-simple-same-namespace.yaml"], &[]);
    expect_all(&env, &[get("http://echo/").backend("echo-v1")]);
}

/// The consumer route's two requests: from its namespace the route applies, from the
/// producer's namespace it does not.
fn consumer_route_cases() -> Vec<Case> {
    let mut consumer = get("http://echo-v1.gateway-conformance-mesh/")
        .from(CONSUMER)
        .backend("echo-v1");
    consumer.response_headers = vec![("X-Header-Set", "set")];
    let mut producer = get("http://echo-v1.gateway-conformance-mesh/").backend("echo-v1");
    producer.absent_response_headers = vec!["X-Header-Set"];
    vec![consumer, producer]
}

/// Upstream's manifests as they are: the consumer route's backendRef names the
/// producer's Service (its own parent) in the producer's namespace, with no
/// ReferenceGrant (none is needed for a route's own parent).
#[test]
fn mesh_consumer_route() {
    common::require_root!();
    let env = mesh("cr", &["mesh-consumer-route.yaml"], &[]);
    expect_all(&env, &consumer_route_cases());
}

/// MeshConsumerRoute with a ReferenceGrant beside upstream's files
/// (`tests/conformance/extra/consumer-reference-grant.yaml`): the same answers.
#[test]
fn mesh_consumer_route_with_a_reference_grant() {
    common::require_root!();
    let env = mesh(
        "cg",
        &["mesh-consumer-route.yaml"],
        &["consumer-reference-grant.yaml"],
    );
    expect_all(&env, &consumer_route_cases());
}

#[test]
fn mesh_http_route_redirect_host_and_status() {
    common::require_root!();
    let env = mesh("rs", &["httproute-redirect-host-and-status.yaml"], &[]);
    expect_all(
        &env,
        &[
            get("http://echo/hostname-redirect")
                .redirect(302, "http://example.org/hostname-redirect"),
            get("http://echo/host-and-status").redirect(301, "http://example.org/host-and-status"),
            // The route file's 307 and 308 rules.
            get("http://echo/host-and-temporary")
                .redirect(307, "http://example.org/host-and-temporary"),
            get("http://echo/host-and-permanent")
                .redirect(308, "http://example.org/host-and-permanent"),
        ],
    );
}

#[test]
fn mesh_http_route_redirect_path() {
    common::require_root!();
    let env = mesh("rp", &["httproute-redirect-path.yaml"], &[]);
    expect_all(
        &env,
        &[
            get("http://echo/original-prefix/lemon")
                .redirect(302, "http://echo/replacement-prefix/lemon"),
            get("http://echo/full/path/original")
                .redirect(302, "http://echo/full-path-replacement"),
            get("http://echo/path-and-host").redirect(302, "http://example.org/replacement-prefix"),
            get("http://echo/path-and-status").redirect(301, "http://echo/replacement-prefix"),
            get("http://echo/full-path-and-host")
                .redirect(302, "http://example.org/replacement-full"),
            get("http://echo/full-path-and-status").redirect(301, "http://echo/replacement-full"),
            // The route file's 307 and 308 rules.
            get("http://echo/path-and-temporary").redirect(307, "http://echo/replacement-prefix"),
            get("http://echo/path-and-permanent").redirect(308, "http://echo/replacement-prefix"),
            get("http://echo/full-path-and-temporary")
                .redirect(307, "http://echo/replacement-full"),
            get("http://echo/full-path-and-permanent")
                .redirect(308, "http://echo/replacement-full"),
        ],
    );
}

#[test]
fn mesh_http_route_redirect_port() {
    common::require_root!();
    let env = mesh("ro", &["httproute-redirect-port.yaml"], &[]);
    expect_all(
        &env,
        &[
            get("http://echo/port").redirect(302, "http://echo:8083/port"),
            get("http://echo/port-and-host").redirect(302, "http://example.org:8083/port-and-host"),
            get("http://echo/port-and-status").redirect(301, "http://echo:8083/port-and-status"),
            get("http://echo/port-and-host-and-status")
                .redirect(302, "http://example.org:8083/port-and-host-and-status"),
            // The route file's 307 and 308 rules.
            get("http://echo/port-and-temporary")
                .redirect(307, "http://echo:8083/port-and-temporary"),
            get("http://echo/port-and-permanent")
                .redirect(308, "http://echo:8083/port-and-permanent"),
        ],
    );
}

#[test]
fn mesh_http_route_redirect_scheme() {
    common::require_root!();
    let env = mesh("rc", &["httproute-redirect-scheme.yaml"], &[]);
    expect_all(
        &env,
        &[
            get("http://echo/scheme").redirect(302, "https://echo/scheme"),
            get("http://echo/scheme-and-host").redirect(302, "https://example.org/scheme-and-host"),
            get("http://echo/scheme-and-status").redirect(301, "https://echo/scheme-and-status"),
            get("http://echo/scheme-and-host-and-status")
                .redirect(302, "https://example.org/scheme-and-host-and-status"),
            // The route file's 307 and 308 rules.
            get("http://echo/scheme-and-temporary")
                .redirect(307, "https://echo/scheme-and-temporary"),
            get("http://echo/scheme-and-permanent")
                .redirect(308, "https://echo/scheme-and-permanent"),
        ],
    );
}

/// MeshHTTPRouteRewritePath: URLRewrite, carried to the proxies by weft's extension
/// of the OutboundPolicies messages. Upstream's cases: prefix and full path
/// replacements (a prefix replaced by `/` strips it), with header modifiers beside
/// them; the route is accepted.
#[test]
fn mesh_http_route_rewrite_path() {
    common::require_root!();
    let env = mesh("rw", &["httproute-rewrite-path.yaml"], &[]);
    let routes = env.routes();
    let route = routes
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["metadata"]["name"] == "mesh-rewrite-path")
        })
        .unwrap_or_else(|| panic!("no mesh-rewrite-path in {routes}"));
    let conditions = route["status"]["parents"][0]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in &conditions {
        assert_eq!(c["status"], "True", "{c}");
    }
    assert_eq!(conditions.len(), 2, "{route}");
    let modified = |c: Case, path: &'static str| {
        let mut c = c
            .header("X-Header-Remove", "remove-val")
            .header("X-Header-Add-Append", "append-val-1")
            .header("X-Header-Set", "set-val")
            .backend("echo-v1")
            .path(path);
        c.request_headers = vec![
            ("X-Header-Add", "header-val-1"),
            ("X-Header-Add-Append", "append-val-1,header-val-2"),
            ("X-Header-Set", "set-overwrites-values"),
        ];
        c.absent_request_headers = vec!["X-Header-Remove"];
        c
    };
    expect_all(
        &env,
        &[
            get("http://echo/prefix/one/two")
                .backend("echo-v1")
                .path("/one/two"),
            get("http://echo/strip-prefix/three")
                .backend("echo-v1")
                .path("/three"),
            get("http://echo/strip-prefix").backend("echo-v1").path("/"),
            get("http://echo/full/one/two")
                .backend("echo-v1")
                .path("/one"),
            modified(
                get("http://echo/full/rewrite-path-and-modify-headers/test"),
                "/test",
            ),
            modified(
                get("http://echo/prefix/rewrite-path-and-modify-headers/one"),
                "/prefix/one",
            ),
        ],
    );
}

#[test]
fn answers_of_get_i_are_parsed() {
    let out = "< location: http://example.org/x\n< content-length: 0\n302 \n\
               < content-type: application/json\n\
               200 {\"path\":\"/\",\"pod\":\"echo-v1.gateway-conformance-mesh-0\",\"headers\":{\"X-A\":[\"1\",\"2\"]}}\n";
    let answers = parse_answers(out).unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].status, 302);
    assert_eq!(answers[0].header("Location"), Some("http://example.org/x"));
    assert!(answers[0].echo.is_none());
    assert_eq!(answers[1].pod(), Some("echo-v1.gateway-conformance-mesh-0"));
    assert_eq!(answers[1].request_header("x-a").as_deref(), Some("1,2"));
    assert_eq!(answers[1].header("location"), None);
    assert!(parse_answers("error: GET http://echo/: refused\n").is_err());
    assert_eq!(
        location("https://example.org/p"),
        location("https://example.org:443/p")
    );
    assert_ne!(location("http://echo:8083/p"), location("http://echo/p"));
}

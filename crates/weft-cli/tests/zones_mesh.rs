//! Zone-aware balancing in the local mesh: three zones, two server replicas in each and
//! one client workload per zone, load from `weft load` inside each client pod, faults
//! flipped per zone through the demo app's fault file, and every figure read by value
//! from the client proxies' `/metrics` (cross-zone share) and from `weft load` (success,
//! latency).
//!
//! - `zone_aware_mesh_*`: balanced load stays in zone; a slow zone's client spills over
//!   and comes back when the zone recovers; a failing zone's client fails over within a
//!   second and then sees no failures.
//! - `zone_modes_*`: `unaware` spreads over every zone (about two thirds cross-zone),
//!   `local-only` never leaves the zone, even while it fails.
//! - `bench_zones` (ignored; `bench/zones` runs it): the three scenarios under the three
//!   strategies, printed as a markdown table.
//!
//! Root only (network namespaces, iptables); skipped with a reason otherwise. Each mesh
//! has its own prefix and state directory and is taken down by a guard, also when an
//! assertion fails.

#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;
use weft_core::prom::{increase, Scrape};

mod common;
use common::{bin_dir, build_binaries, not_root_or_missing_tools, WEFT};
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// `None` when the mesh can run here, else why not.
fn cannot_run() -> Option<String> {
    not_root_or_missing_tools().or_else(build_binaries)
}

macro_rules! require_root {
    () => {
        if let Some(reason) = cannot_run() {
            common::skip(&reason);
            return;
        }
    };
}

/// `mesh.yaml`: servers in every zone (the `server` Service) and an idle client per
/// zone, whose pods `weft load` runs in; every proxy in `mode`, with `args`.
fn mesh_yaml(mode: &str, args: &[&str], server_replicas: u32) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let mut out = format!(
        "kind: Mesh\nproxy: {{zoneMode: {mode}, args: [{}]}}\nworkloads:\n",
        args.join(", ")
    );
    for zone in ZONES {
        let z = zone.trim_start_matches("zone-");
        out.push_str(&format!(
            r#"  - name: server-{z}
    zone: {zone}
    replicas: {server_replicas}
    labels: {{app: server}}
    ports: [8080]
    command: [weft-demo-app, serve, --name, server-{z}, --port, "8080", --fault-file, "faults/{{zone}}"]
  - name: client-{z}
    zone: {zone}
    ports: [8080]
    command: [weft-demo-app, serve, --name, client-{z}, --port, "8080"]
"#
        ));
    }
    out
}

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: server}\nspec:\n  selector: {app: server}\n  ports: [{port: 8080}]\n";

/// One mesh of this file: up on creation, down (`weft down`) when dropped.
struct ZoneMesh {
    base: PathBuf,
    dir: PathBuf,
    state_dir: PathBuf,
    prefix: String,
    vip: String,
    /// Client pods' admin addresses, in [`ZONES`] order.
    client_admins: Vec<String>,
}

impl ZoneMesh {
    fn up(tag: &str, mode: &str) -> ZoneMesh {
        Self::up_with(tag, mode, &[])
    }

    /// A mesh whose proxies also get `args`.
    fn up_with(tag: &str, mode: &str, args: &[&str]) -> ZoneMesh {
        let prefix = format!("z{tag}{}", std::process::id() % 100_000);
        let base = std::env::temp_dir().join(format!("weft-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("mesh");
        std::fs::create_dir_all(dir.join("faults")).unwrap();
        std::fs::write(dir.join("mesh.yaml"), mesh_yaml(mode, args, 2)).unwrap();
        std::fs::write(dir.join("services.yaml"), SERVICES).unwrap();
        let mut mesh = ZoneMesh {
            state_dir: base.join("state"),
            base,
            dir,
            prefix,
            vip: String::new(),
            client_admins: Vec::new(),
        };
        let out = mesh
            .weft(&["up", "-d", mesh.dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weft up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(mesh.state_dir.join("state.json")).unwrap(),
        )
        .unwrap();
        mesh.vip = state["services"][0]["vip"].as_str().unwrap().to_owned();
        mesh.client_admins = ZONES
            .iter()
            .map(|zone| {
                let name = format!("client-{}-0", zone.trim_start_matches("zone-"));
                let pod = state["pods"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .unwrap_or_else(|| panic!("no pod {name} in the state"));
                format!("{}:4191", pod["ip"].as_str().unwrap())
            })
            .collect();
        mesh
    }

    fn weft(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(WEFT);
        cmd.args(args)
            .env("WEFT_STATE_DIR", &self.state_dir)
            .env("WEFT_PREFIX", &self.prefix)
            .stdin(Stdio::null());
        cmd
    }

    fn netns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.prefix)
    }

    /// Sets (`Some`) or clears (`None`) the fault of every server in `zone`.
    fn fault(&self, zone: &str, fault: Option<&str>) {
        let path = self.dir.join("faults").join(zone);
        match fault {
            Some(text) => std::fs::write(&path, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        // The servers re-read it every 100 ms.
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Every client proxy's metrics, in [`ZONES`] order, read from the hub.
    fn scrape_clients(&self) -> Vec<Scrape> {
        self.client_admins
            .iter()
            .map(|admin| {
                let out = Command::new("ip")
                    .args(["netns", "exec", &self.netns("hub")])
                    .arg(bin_dir().join("weft-demo-app"))
                    .args(["get", &format!("http://{admin}/metrics"), "--timeout", "2s"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "metrics of {admin}: {text}");
                Scrape::parse(text.strip_prefix("200 ").unwrap_or(&text))
            })
            .collect()
    }

    /// `weft load` at `rps` for `duration` in every client pod at once, with the
    /// client proxies' metrics read before and after.
    fn measure(&self, duration: Duration, rps: u32) -> Window {
        let before = self.scrape_clients();
        let url = format!("http://{}:8080/", self.vip);
        let duration_arg = format!("{}ms", duration.as_millis());
        let rps_arg = rps.to_string();
        let mut running = Running(Vec::new());
        for zone in ZONES {
            let pod = format!("client-{}-0", zone.trim_start_matches("zone-"));
            let child = Command::new("ip")
                .args(["netns", "exec", &self.netns(&pod), WEFT, "load", &url])
                .args(["--rps", &rps_arg, "--duration", &duration_arg])
                .args([
                    "--connections",
                    "16",
                    "--timeout",
                    "2s",
                    "--json",
                    "--histogram",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            running.0.push(child);
        }
        let loads: Vec<Value> = std::mem::take(&mut running.0)
            .into_iter()
            .map(|child| {
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "weft load failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                serde_json::from_slice(&out.stdout).unwrap()
            })
            .collect();
        let after = self.scrape_clients();
        let clients = ZONES
            .iter()
            .zip(before.iter().zip(&after))
            .zip(loads)
            .map(|((zone, (b, a)), load)| ClientWindow::new(zone, b, a, load))
            .collect();
        Window { clients }
    }
}

impl Drop for ZoneMesh {
    fn drop(&mut self) {
        if self.state_dir.join("state.json").exists() {
            let down = self.weft(&["down"]).output();
            if !matches!(&down, Ok(out) if out.status.success()) {
                // Keep the state file: `weft down` can be run again on it.
                eprintln!(
                    "weft down failed ({down:?}); the mesh's state stays in {}: run WEFT_STATE_DIR={} WEFT_PREFIX={} weft down",
                    self.state_dir.display(),
                    self.state_dir.display(),
                    self.prefix
                );
                return;
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Load generators still running (killed, by pid, if the test fails meanwhile).
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one client saw over a window.
struct ClientWindow {
    zone: String,
    /// Outbound requests its proxy sent, per endpoint zone.
    by_dst_zone: Vec<(String, f64)>,
    sent: u64,
    failed: u64,
    p99_ms: f64,
    histogram: Histogram<u64>,
}

impl ClientWindow {
    fn new(zone: &str, before: &Scrape, after: &Scrape, load: Value) -> ClientWindow {
        let mut dst_zones: Vec<String> = after
            .matching("request_total", &[("direction", "outbound")])
            .map(|s| s.label("dst_zone").to_owned())
            .collect();
        dst_zones.sort();
        dst_zones.dedup();
        let by_dst_zone = dst_zones
            .into_iter()
            .map(|dst| {
                let labels = [
                    ("direction", "outbound"),
                    ("zone", zone),
                    ("dst_zone", dst.as_str()),
                ];
                let n = increase(
                    before.sum("request_total", &labels),
                    after.sum("request_total", &labels),
                );
                (dst, n)
            })
            .collect();
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for pair in load["histogram_us"].as_array().unwrap() {
            let (us, count) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
            histogram.record_n(us.max(1), count).unwrap();
        }
        ClientWindow {
            zone: zone.to_owned(),
            by_dst_zone,
            sent: load["sent"].as_u64().unwrap(),
            failed: load["failed"].as_u64().unwrap(),
            p99_ms: load["p99_ms"].as_f64().unwrap(),
            histogram,
        }
    }

    /// (requests to other zones, requests to a known zone).
    fn zone_counts(&self) -> (f64, f64) {
        let known = self.by_dst_zone.iter().filter(|(z, _)| !z.is_empty());
        known.fold((0.0, 0.0), |(cross, all), (z, n)| {
            (cross + if *z != self.zone { *n } else { 0.0 }, all + n)
        })
    }

    fn cross_zone(&self) -> f64 {
        let (cross, all) = self.zone_counts();
        assert!(all > 0.0, "{}: no outbound requests seen", self.zone);
        cross / all
    }
}

/// Every client over the same window.
struct Window {
    clients: Vec<ClientWindow>,
}

impl Window {
    fn client(&self, zone: &str) -> &ClientWindow {
        self.clients.iter().find(|c| c.zone == zone).unwrap()
    }

    fn cross_zone(&self) -> f64 {
        let (cross, all) = self
            .clients
            .iter()
            .map(ClientWindow::zone_counts)
            .fold((0.0, 0.0), |(c, a), (c2, a2)| (c + c2, a + a2));
        cross / all
    }

    fn sent(&self) -> u64 {
        self.clients.iter().map(|c| c.sent).sum()
    }

    fn failed(&self) -> u64 {
        self.clients.iter().map(|c| c.failed).sum()
    }

    fn success(&self) -> f64 {
        1.0 - self.failed() as f64 / self.sent().max(1) as f64
    }

    /// Latency quantile (ms) over every client's requests.
    fn quantile_ms(&self, q: f64) -> f64 {
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for c in &self.clients {
            all.add(&c.histogram).unwrap();
        }
        all.value_at_quantile(q) as f64 / 1000.0
    }

    fn describe(&self, what: &str) -> String {
        let mut out = format!(
            "{what}: cross-zone {:.1}%, success {:.2}% ({} of {} failed), p50 {:.1} ms, p99 {:.1} ms\n",
            self.cross_zone() * 100.0,
            self.success() * 100.0,
            self.failed(),
            self.sent(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.99)
        );
        for c in &self.clients {
            out.push_str(&format!(
                "  client in {}: cross-zone {:.1}%, {} of {} failed, p99 {:.1} ms, by endpoint zone {:?}\n",
                c.zone,
                c.cross_zone() * 100.0,
                c.failed,
                c.sent,
                c.p99_ms,
                c.by_dst_zone
            ));
        }
        out
    }
}

const RPS: u32 = 100;

#[test]
fn zone_aware_mesh_stays_in_zone_spills_when_slow_and_fails_over() {
    require_root!();
    let mesh = ZoneMesh::up("a", "aware");
    let warm = mesh.measure(Duration::from_secs(1), RPS);
    eprint!("{}", warm.describe("warm-up"));

    // Balanced: every client's traffic stays in its zone. `weft stat` reads the same
    // from the proxies meanwhile.
    let admins = mesh.client_admins.join(",");
    let stat = Command::new("ip")
        .args(["netns", "exec", &mesh.netns("hub"), WEFT, "stat"])
        .args(["--admin", &admins, "--window", "2s", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stat = Running(vec![stat]);
    let balanced = mesh.measure(Duration::from_secs(3), RPS);
    eprint!("{}", balanced.describe("balanced"));
    let out = stat.0.pop().unwrap().wait_with_output().unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    for row in rows.as_array().unwrap() {
        assert_eq!(row["direction"], "outbound");
        let share = row["cross_zone"].as_f64().unwrap();
        assert!(share <= 0.05, "weft stat: {row}");
    }
    for c in &balanced.clients {
        assert!(c.cross_zone() <= 0.05, "{}", balanced.describe("balanced"));
    }
    assert_eq!(balanced.failed(), 0, "{}", balanced.describe("balanced"));

    // Zone a's servers answer 50 ms later: its client's in-zone load passes the band
    // and other zones' endpoints join; the other clients stay home.
    mesh.fault("zone-a", Some("delay=50ms"));
    let _settle = mesh.measure(Duration::from_secs(1), RPS);
    let slow = mesh.measure(Duration::from_secs(3), RPS);
    eprint!("{}", slow.describe("zone-a slow"));
    assert!(
        slow.client("zone-a").cross_zone() >= 0.2,
        "{}",
        slow.describe("zone-a slow")
    );
    for zone in ["zone-b", "zone-c"] {
        assert!(slow.client(zone).cross_zone() <= 0.05);
    }
    assert_eq!(slow.failed(), 0);

    // Recovered: load falls below the band and the other zones leave again.
    mesh.fault("zone-a", None);
    let _settle = mesh.measure(Duration::from_secs(1), RPS);
    let recovered = mesh.measure(Duration::from_secs(2), RPS);
    eprint!("{}", recovered.describe("zone-a recovered"));
    assert!(recovered.client("zone-a").cross_zone() <= 0.05);

    // Zone a's servers fail every request: its client's proxy ejects them and moves
    // out of the zone within the first second; after that, nothing fails.
    mesh.fault("zone-a", Some("fail_rate=1"));
    let failover = mesh.measure(Duration::from_secs(1), RPS);
    eprint!("{}", failover.describe("zone-a failing, first second"));
    let after = mesh.measure(Duration::from_secs(3), RPS);
    eprint!("{}", after.describe("zone-a failing, after the failover"));
    let a = after.client("zone-a");
    assert_eq!(
        after.failed(),
        0,
        "{}",
        after.describe("zone-a failing, after the failover")
    );
    assert!(a.cross_zone() >= 0.95, "{}", after.describe("after"));
    assert_eq!(
        after.client("zone-b").failed + after.client("zone-c").failed,
        0
    );
}

#[test]
fn zone_modes_unaware_spreads_and_local_only_stays_in_a_failing_zone() {
    require_root!();
    {
        let mesh = ZoneMesh::up("u", "unaware");
        let _warm = mesh.measure(Duration::from_secs(1), RPS);
        let balanced = mesh.measure(Duration::from_secs(3), RPS);
        eprint!("{}", balanced.describe("unaware, balanced"));
        // Six equal endpoints, two per zone: two thirds of the requests leave the zone.
        let share = balanced.cross_zone();
        assert!(
            (0.5..=0.8).contains(&share),
            "{}",
            balanced.describe("unaware, balanced")
        );
        assert_eq!(balanced.failed(), 0);
    }
    {
        // Zone-aware with retries off: what the balancer alone does when a zone fails.
        // Five failures per in-zone endpoint eject them; after that only the probes of
        // the returning endpoints fail (one each per backoff step, at about 1 s and 3 s).
        let mesh = ZoneMesh::up_with("r", "aware", &["--retry-limit", "0"]);
        let _warm = mesh.measure(Duration::from_secs(1), RPS);
        mesh.fault("zone-a", Some("fail_rate=1"));
        let failover = mesh.measure(Duration::from_secs(1), RPS);
        eprint!(
            "{}",
            failover.describe("aware, no retries, zone-a failing, first second")
        );
        let after = mesh.measure(Duration::from_secs(3), RPS);
        eprint!(
            "{}",
            after.describe("aware, no retries, zone-a failing, after")
        );
        let a = failover.client("zone-a");
        assert!(
            (5..=12).contains(&a.failed),
            "{}",
            failover.describe("first second")
        );
        let a = after.client("zone-a");
        assert!(a.failed <= 4, "{}", after.describe("after the failover"));
        assert!(a.cross_zone() >= 0.95);
    }
    let mesh = ZoneMesh::up("l", "local-only");
    let _warm = mesh.measure(Duration::from_secs(1), RPS);
    let balanced = mesh.measure(Duration::from_secs(2), RPS);
    eprint!("{}", balanced.describe("local-only, balanced"));
    assert_eq!(balanced.cross_zone(), 0.0);
    // A failing zone keeps its traffic: topology hints never fail over.
    mesh.fault("zone-a", Some("fail_rate=1"));
    let _failover = mesh.measure(Duration::from_secs(1), RPS);
    let failing = mesh.measure(Duration::from_secs(2), RPS);
    eprint!("{}", failing.describe("local-only, zone-a failing"));
    let a = failing.client("zone-a");
    assert_eq!(a.cross_zone(), 0.0);
    assert!(
        a.failed as f64 >= a.sent as f64 * 0.5,
        "{}",
        failing.describe("local-only, zone-a failing")
    );
    assert_eq!(
        failing.client("zone-b").failed + failing.client("zone-c").failed,
        0
    );
}

/// `bench/zones`: three strategies × three scenarios, printed as a markdown table.
/// `BENCH_WINDOW` (default 5s) is each measured window, `BENCH_RPS` (100) each
/// client's rate.
#[test]
#[ignore = "a benchmark: bench/zones runs it"]
fn bench_zones() {
    require_root!();
    let window = std::env::var("BENCH_WINDOW")
        .ok()
        .map(|w| humantime::parse_duration(&w).expect("BENCH_WINDOW: a duration, e.g. 5s"))
        .unwrap_or(Duration::from_secs(5));
    let rps: u32 = std::env::var("BENCH_RPS")
        .ok()
        .map(|r| {
            r.parse()
                .expect("BENCH_RPS: requests per second per client")
        })
        .unwrap_or(RPS);
    let mut table = String::from(
        "| strategy | scenario | cross-zone | cross-zone (zone-a client) | success | p50 | p99 | p99 (zone-a client) | failed in the 1st second |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    // Retries are on (the proxy's default: 2, budget 20 % + 10/s) except in the last row,
    // which shows what the zone-aware balancer does alone.
    let no_retries: &[&str] = &["--retry-limit", "0"];
    // BENCH_PROXY_ARGS: more flags for every strategy's proxies, split on whitespace (a
    // proxy setting's A/B, e.g. `--h2-between-proxies false`).
    let extra = std::env::var("BENCH_PROXY_ARGS").unwrap_or_default();
    for (tag, mode, name, args) in [
        ("bu", "unaware", "zone-unaware P2C", &[][..]),
        ("bl", "local-only", "in-zone only (topology hints)", &[]),
        ("ba", "aware", "weft zone-aware", &[]),
        ("bn", "aware", "weft zone-aware, retries off", no_retries),
    ] {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(extra.split_whitespace())
            .collect();
        let mesh = ZoneMesh::up_with(tag, mode, &args);
        let _warm = mesh.measure(Duration::from_secs(2), rps);
        let balanced = mesh.measure(window, rps);
        mesh.fault("zone-a", Some("delay=50ms"));
        let _settle = mesh.measure(Duration::from_secs(1), rps);
        let slow = mesh.measure(window, rps);
        mesh.fault("zone-a", None);
        let _recover = mesh.measure(Duration::from_secs(2), rps);
        mesh.fault("zone-a", Some("fail_rate=1"));
        let failover = mesh.measure(Duration::from_secs(1), rps);
        let failing = mesh.measure(window, rps);
        for (scenario, w, first) in [
            ("balanced", &balanced, None),
            ("zone-a slow (+50 ms)", &slow, None),
            ("zone-a failing (after 1 s)", &failing, Some(&failover)),
        ] {
            eprint!("{}", w.describe(&format!("{name}, {scenario}")));
            table.push_str(&format!(
                "| {name} | {scenario} | {:.1} % | {:.1} % | {:.2} % | {:.2} ms | {:.2} ms | {:.2} ms | {} |\n",
                w.cross_zone() * 100.0,
                w.client("zone-a").cross_zone() * 100.0,
                w.success() * 100.0,
                w.quantile_ms(0.5),
                w.quantile_ms(0.99),
                w.client("zone-a").p99_ms,
                first.map_or("-".to_owned(), |f| format!("{} of {}", f.failed(), f.sent())),
            ));
        }
    }
    println!("\n{table}");
}

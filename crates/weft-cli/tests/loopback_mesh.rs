//! `weft up` in loopback mode (without root, or `--loopback`): pods are addresses from
//! 127.18.0.0/16, proxies run in explicit mode, apps send HTTP through `HTTP_PROXY`.
//! A 3-workload mesh (client → books → authors) answers a call made through the
//! client pod's proxy, over mTLS between the proxies with the workloads' identities;
//! scaling in the foreground reaches the new replica; `weft down` (also after `kill -9`
//! of `weft up`) leaves no process, state or endpoints file; and a user without root
//! gets the loopback mesh too. No test here needs root: as root they run the same (the
//! unprivileged one then runs as `nobody` through `setpriv`). Each test takes its own
//! loopback block, prefix and state directory, so they run side by side.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_core::prom::Scrape;

mod common;
use common::{
    bin_dir, build_binaries, eventually, mesh_yaml, stat, MeshEnv as _, BOOKS_ID, CLIENT_ID,
    SERVICES, WEFT,
};
const NOBODY: u32 = 65534;

/// `None` when the binaries the mesh runs are there (built if need be), else why not.
fn cannot_run() -> Option<String> {
    build_binaries()
}

macro_rules! require_binaries {
    () => {
        if let Some(reason) = cannot_run() {
            common::skip(&reason);
            return;
        }
    };
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One test's loopback mesh: a directory, a state directory, a prefix and a loopback
/// block of its own; `user` runs `weft` (`Some(uid)`: through setpriv, as root only).
struct Env {
    dir: PathBuf,
    state_dir: PathBuf,
    prefix: String,
    block: u8,
    user: Option<u32>,
    /// A foreground `weft up`, if one was started.
    up: Option<Child>,
    up_log: PathBuf,
}

impl Env {
    fn new(tag: &str, block: u8) -> Env {
        let id = std::process::id() % 100_000;
        let prefix = format!("l{tag}{id}");
        let base = std::env::temp_dir().join(format!("weft-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("mesh");
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            state_dir: base.join("state"),
            up_log: base.join("up.log"),
            dir,
            prefix,
            block,
            user: None,
            up: None,
        }
    }

    fn weft(&self, args: &[&str]) -> Command {
        let mut cmd = match self.user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                    WEFT,
                ]);
                c
            }
            None => Command::new(WEFT),
        };
        cmd.args(args)
            .env("WEFT_STATE_DIR", &self.state_dir)
            .env("WEFT_PREFIX", &self.prefix)
            .env("WEFT_LOOPBACK_BLOCK", self.block.to_string())
            .stdin(Stdio::null());
        cmd
    }

    /// `weft-demo-app get URL` as the app of pod `pod` would call: through its proxy.
    fn get_as(&self, pod: &str, url: &str) -> Output {
        let ip = self.pod_ip(pod).expect("the pod is recorded");
        demo_get(url, Some(&format!("http://{ip}:4140")))
    }

    /// A pod proxy's metrics, read straight from its admin address.
    fn metrics(&self, pod: &str) -> Option<Scrape> {
        let ip = self.pod_ip(pod)?;
        let out = demo_get(&format!("http://{ip}:4191/metrics"), None);
        out.status.success().then(|| {
            let text = String::from_utf8_lossy(&out.stdout);
            Scrape::parse(text.strip_prefix("200 ").unwrap_or(&text))
        })
    }

    /// Asserts nothing of this mesh is left: processes, state file, endpoints files,
    /// logs, tokens; and that no namespace was ever made for it.
    fn assert_nothing_left(&self, procs: &[(u32, u64)]) {
        for (pid, start) in procs {
            if let Some((state, started)) = stat(*pid) {
                assert!(
                    started != *start || state == 'Z',
                    "process {pid} is still running: {}",
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .unwrap_or_default()
                        .replace('\0', " ")
                );
            }
        }
        for left in ["state.json", "endpoints", "logs", "tokens", "identity"] {
            assert!(
                !self.state_dir.join(left).exists(),
                "{left} is left in {}",
                self.state_dir.display()
            );
        }
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            let list = String::from_utf8_lossy(&out.stdout);
            assert!(
                !list.contains(&format!("{}-", self.prefix)),
                "a network namespace was made in loopback mode:\n{list}"
            );
        }
    }
}

impl common::MeshEnv for Env {
    fn weft(&self, args: &[&str]) -> Command {
        Env::weft(self, args)
    }
    fn mesh_dir(&self) -> &Path {
        &self.dir
    }
    fn state_dir(&self) -> &Path {
        &self.state_dir
    }
    fn up_log(&self) -> &Path {
        &self.up_log
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let up = self.up.take();
        self.clean_up(up);
    }
}

/// `weft-demo-app get URL`, through `proxy` if given (never through one inherited
/// from the test's environment).
fn demo_get(url: &str, proxy: Option<&str>) -> Output {
    demo_app(&["get", url, "--timeout", "2s"], proxy)
}

/// `weft-demo-app ARGS`, through `proxy` (an `HTTP_PROXY`) or none.
fn demo_app(args: &[&str], proxy: Option<&str>) -> Output {
    let mut cmd = Command::new(bin_dir().join("weft-demo-app"));
    cmd.args(args);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    if let Some(proxy) = proxy {
        cmd.env("HTTP_PROXY", proxy);
    }
    cmd.output().unwrap()
}

/// The real UID a process runs as, from /proc.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A call as the client pod's app makes it, and the proxies' view of it: through the
/// client's proxy to books' (mTLS, both identities), then books' call to authors.
fn assert_meshed_call(env: &Env) {
    let out = env.get_as("client-0", "http://books.default.svc:8080/hello");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the call failed: {text}");
    assert!(text.starts_with("200 books /hello (pod books-0"), "{text}");
    assert!(text.contains("<- [200 authors / (pod authors-0"), "{text}");

    let client = env.metrics("client-0").expect("client metrics");
    assert!(
        client.sum(
            "request_total",
            &[
                ("direction", "outbound"),
                ("authority", "books.default.svc:8080"),
                ("dst_service", "books"),
                ("tls", "true"),
                ("server_id", BOOKS_ID),
            ]
        ) >= 1.0,
        "the client's proxy did not send the call to books over mTLS:\n{}",
        client.text
    );
    let books = env.metrics("books-0").expect("books metrics");
    assert!(
        books.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("authority", "books.default.svc:8080"),
                ("tls", "true"),
                ("client_id", CLIENT_ID),
            ]
        ) >= 1.0,
        "books' proxy did not see the client's identity:\n{}",
        books.text
    );
    assert_eq!(
        books.sum(
            "request_total",
            &[("direction", "inbound"), ("tls", "no_identity")]
        ),
        0.0,
        "plaintext requests reached books inside the mesh:\n{}",
        books.text
    );
    // books' own call to authors (by its short name) went through books' proxy.
    assert!(
        books.sum(
            "request_total",
            &[
                ("direction", "outbound"),
                ("authority", "authors:8080"),
                ("dst_service", "authors"),
                ("tls", "true"),
            ]
        ) >= 1.0,
        "books' calls to authors did not go through its proxy:\n{}",
        books.text
    );
}

#[test]
fn loopback_mesh_calls_go_proxy_to_proxy_over_mtls_and_down_removes_everything() {
    require_binaries!();
    let env = Env::new("d", 13);
    env.write("mesh.yaml", &mesh_yaml(1));
    env.write("services.yaml", SERVICES);
    let started = Instant::now();
    let out = env.run(&["up", "-d", "--loopback", env.dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    eprintln!(
        "weft up -d --loopback returned after {:?}",
        started.elapsed()
    );
    assert!(
        stdout.contains(
            "--loopback: running every pod on loopback addresses (127.18.0.0/16) with proxies in explicit mode; apps must listen on $WEFT_LISTEN_ADDR and send HTTP through $HTTP_PROXY"
        ),
        "{stdout}"
    );
    // Block 13 is 127.18.208.0/20: the controller first, the pods after it.
    let state = env.state();
    assert_eq!(state["loopback"], true);
    assert_eq!(env.pod_ip("client-0").as_deref(), Some("127.18.208.2"));
    assert!(
        stdout.contains("controller ready   127.18.208.1:8090"),
        "{stdout}"
    );

    // Ready means ready: the first call works, meshed.
    assert_meshed_call(&env);

    // gRPC through the client's proxy (h2c, resolved by `:authority`) to authors' first
    // port, which answers weft.demo.Authors/Lookup too; counted as a gRPC success.
    let client_proxy = format!("http://{}:4140", env.pod_ip("client-0").unwrap());
    let out = demo_app(
        &[
            "lookup",
            "http://authors:8080",
            "--book",
            "dune",
            "--timeout",
            "2s",
        ],
        Some(&client_proxy),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the gRPC call failed: {text}");
    assert!(
        text.starts_with("OK authors by Frank Herbert (pod authors-0, zone zone-c)"),
        "{text}"
    );
    let client = env.metrics("client-0").expect("client metrics");
    assert_eq!(
        client.sum(
            "response_total",
            &[
                ("direction", "outbound"),
                ("authority", "authors:8080"),
                ("tls", "true"),
                ("classification", "success"),
            ]
        ),
        1.0,
        "the client's proxy did not count one successful gRPC call to authors:\n{}",
        client.text
    );

    // A pod calling its own Service reaches its own app through its inbound proxy.
    let out = env.get_as("books-0", "http://books:8080/self");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the self-call failed: {text}");
    assert!(text.starts_with("200 books /self (pod books-0"), "{text}");

    // The endpoints file names books' ready pod by its inbound proxy and identity.
    let endpoints = std::fs::read_to_string(env.state_dir.join("endpoints/default.yaml")).unwrap();
    let books_ip = env.pod_ip("books-0").unwrap();
    assert!(
        endpoints.contains(&format!(
            "{{addr: \"{books_ip}:4143\", identity: \"{BOOKS_ID}\", zone: \"zone-b\"}}"
        )),
        "{endpoints}"
    );

    // A second mesh on the same state directory is refused while this one is up.
    let again = env.run(&["up", "-d", "--loopback", env.dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("weft down"));

    // Another mesh (its own state directory) cannot take the same loopback block...
    let other = Env::new("o", 13);
    other.write("mesh.yaml", &mesh_yaml(1));
    other.write("services.yaml", SERVICES);
    let out = other.run(&["up", "-d", "--loopback", other.dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loopback block 13 is in use (127.18.208.1:8090 or :9990 cannot be bound): another mesh runs there; take another --loopback-block (0-15)"),
        "{stderr}"
    );
    assert!(!other.state_dir.exists(), "the refused mesh made its state");
    // ...and a block out of range is refused by name.
    let out = other.run(&[
        "up",
        "-d",
        "--loopback",
        "--loopback-block",
        "16",
        other.dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--loopback-block"));

    let procs = env.recorded_procs();
    assert_eq!(procs.len(), 7, "the controller and 3 pods × (proxy + app)");
    let out = env.run(&["down"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("loopback mode"));
    env.assert_nothing_left(&procs);
    // The block is free again.
    for port in [8090, 9990] {
        assert!(std::net::TcpListener::bind(("127.18.208.1", port)).is_ok());
    }
}

#[test]
fn loopback_foreground_scaling_and_down_after_kill_9() {
    require_binaries!();
    let mut env = Env::new("f", 14);
    env.write("mesh.yaml", &mesh_yaml(1));
    env.write("services.yaml", SERVICES);
    let up = env.up_foreground(&["--loopback"]);
    env.up = Some(up);
    assert_meshed_call(&env);

    // Scale books to 2 in the directory: the client's steady load (50/s through its
    // proxy) reaches the new replica once it is ready and in the endpoints file.
    let scaled_at = Instant::now();
    env.write("mesh.yaml", &mesh_yaml(2));
    let reached = eventually(Duration::from_secs(10), || {
        let m = env.metrics("books-1")?;
        (m.sum(
            "request_total",
            &[("direction", "inbound"), ("tls", "true")],
        ) > 0.0)
            .then(|| scaled_at.elapsed())
    });
    let reached = reached.unwrap_or_else(|| {
        panic!(
            "no traffic reached books-1 within 10s:\n{}",
            env.up_output()
        )
    });
    eprintln!("traffic reached the new replica {reached:?} after the directory changed");
    assert!(
        reached <= Duration::from_secs(2),
        "traffic reached the new replica only after {reached:?}"
    );
    // The summary scraped every pod's proxy directly (no hub namespace): the
    // `weft stat deploy -A` view, books served over mTLS.
    let summary = eventually(Duration::from_secs(5), || {
        let out = env.up_output();
        out.lines()
            .any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.starts_with(&["books", "100.00%"])
            })
            .then_some(out)
    });
    assert!(
        summary.is_some(),
        "no golden metrics in the summary:\n{}",
        env.up_output()
    );

    // Crash: kill -9 weft up. `weft down` finds everything from the state file.
    let procs = env.recorded_procs();
    assert_eq!(procs.len(), 9, "the controller and 4 pods × (proxy + app)");
    let mut up = env.up.take().unwrap();
    up.kill().unwrap();
    up.wait().unwrap();
    let out = env.run(&["down"]);
    assert!(out.status.success());
    env.assert_nothing_left(&procs);
    let again = env.run(&["down"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
}

#[test]
fn without_root_weft_up_runs_in_loopback_mode() {
    require_binaries!();
    let mut env = Env::new("n", 15);
    env.write("mesh.yaml", &mesh_yaml(1));
    env.write("services.yaml", SERVICES);
    if is_root() {
        // Run it as nobody, in a state directory nobody may write.
        env.user = Some(NOBODY);
        let base = env.state_dir.parent().unwrap().to_owned();
        std::fs::create_dir_all(&env.state_dir).unwrap();
        for dir in [&base, &env.state_dir] {
            nix::unistd::chown(
                dir,
                Some(nix::unistd::Uid::from_raw(NOBODY)),
                Some(nix::unistd::Gid::from_raw(NOBODY)),
            )
            .unwrap();
        }
    }
    let out = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if stderr.contains("Permission denied") && !out.status.success() {
        eprintln!("skipped: nobody cannot reach the test binaries or directories: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "not root: running every pod on loopback addresses (127.18.0.0/16) with proxies in explicit mode; apps must listen on $WEFT_LISTEN_ADDR and send HTTP through $HTTP_PROXY"
        ),
        "{stdout}"
    );
    assert_meshed_call(&env);
    let procs = env.recorded_procs();
    if let Some(uid) = env.user {
        for (pid, _) in &procs {
            assert_eq!(
                uid_of(*pid),
                Some(uid),
                "process {pid} runs as another user"
            );
        }
    }
    // `weft check` without root skips what needs root and says why.
    let check = env.run(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("not root: `weft up` will run in loopback mode"),
        "{text}"
    );
    assert!(!text.contains("running as root"), "{text}");

    let out = env.run(&["down"]);
    assert!(out.status.success());
    env.assert_nothing_left(&procs);
}

/// `weft stat -o json` as an array of rows.
fn stat_json(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["stat"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    let out = env.run(&argv);
    assert!(out.status.success(), "weft {argv:?} failed");
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("weft stat -o json prints JSON")
        .as_array()
        .expect("an array of rows")
        .clone()
}

fn row<'a>(rows: &'a [Value], namespace: &str, name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["namespace"] == namespace && r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {namespace}/{name}: {rows:?}"))
}

#[test]
fn weft_stat_reads_the_local_mesh_per_deployment_and_service() {
    require_binaries!();
    let env = Env::new("s", 12);
    // No mesh yet: the error says where it looked and what to do.
    let out = env.run(&["stat"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "no local mesh is up ({} not found): start one with `weft up`, or pass --admin",
            env.state_dir.join("state.json").display()
        )),
        "{stderr}"
    );

    env.write("mesh.yaml", &mesh_yaml(1));
    env.write("services.yaml", SERVICES);
    let out = env.run(&["up", "-d", "--loopback", env.dir.to_str().unwrap()]);
    assert!(out.status.success());
    // The client calls books at 50 requests/s; wait until books has served some.
    let served = eventually(Duration::from_secs(10), || {
        let books = env.metrics("books-0")?;
        (books.sum("request_total", &[("direction", "inbound")]) > 0.0).then_some(())
    });
    assert!(served.is_some(), "no traffic reached books");

    let rows = stat_json(&env, &["deploy", "--window", "2s"]);
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["authors", "books", "client"], "{rows:?}");
    let books = row(&rows, "default", "books");
    assert!(books["rps"].as_f64().unwrap() > 10.0, "{books}");
    assert_eq!(books["success"], 1.0, "{books}");
    assert_eq!(books["meshed"], 1.0, "{books}");
    let p99 = books["latency_ms_p99"].as_f64().unwrap();
    assert!(
        p99 >= books["latency_ms_p50"].as_f64().unwrap() && p99 > 0.0,
        "{books}"
    );
    // books (zone-b) calls authors (zone-c): all of it crosses zones.
    assert_eq!(books["xzone"], 1.0, "{books}");
    // Nobody calls the client: a row without figures, but its calls cross zones.
    let client = row(&rows, "default", "client");
    assert_eq!(client["requests"], 0.0);
    assert_eq!(client["success"], Value::Null);
    assert_eq!(client["xzone"], 1.0, "{client}");

    let rows = stat_json(&env, &["svc", "--window", "1s"]);
    let books = row(&rows, "default", "books");
    assert!(books["rps"].as_f64().unwrap() > 10.0, "{books}");
    assert_eq!(books["success"], 1.0, "{books}");
    assert_eq!(books["meshed"], 1.0, "{books}");
    assert!(row(&rows, "default", "authors")["rps"].as_f64().unwrap() > 10.0);

    // Another namespace has nothing; -A has everything (the same as default here).
    assert!(stat_json(&env, &["-n", "other", "--window", "1s"]).is_empty());
    assert_eq!(
        stat_json(&env, &["services", "-A", "--window", "1s"]).len(),
        2
    );

    // The table: Linkerd's columns.
    let out = env.run(&["stat", "deployments", "--window", "1s"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MESHED",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
            "XZONE"
        ]
    );
    let books_line = table
        .lines()
        .find(|l| l.starts_with("books "))
        .expect(&table);
    assert!(books_line.contains("100.00%"), "{table}");

    // A mesh without routes: a table with none (its own line, exit code 0), and a
    // route asked for by name that does not exist is an error (exit code 1).
    let out = env.run(&["stat", "route"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME  KIND       BACKEND"), "{table}");
    assert!(
        table.contains("(no routes in namespace default)"),
        "{table}"
    );
    let out = env.run(&["stat", "route/books-canary"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no route \"books-canary\" in namespace default (`weft stat route` lists them)"));
    // An unknown kind lists the valid ones.
    let out = env.run(&["stat", "nodes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "unknown kind \"nodes\"; valid kinds: deploy (deployment, deployments), po (pod, pods), svc (service, services), route (routes)"
    ));

    let out = env.run(&["down"]);
    assert!(out.status.success());
}

#[test]
fn weft_stat_on_a_namespace_mesh_needs_root() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        common::skip("needs root and setpriv (to run weft as nobody)");
        return;
    }
    // A namespace-mode state file, readable by nobody: no mesh needs to run.
    let mut env = Env::new("r", 12);
    std::fs::create_dir_all(&env.state_dir).unwrap();
    std::fs::write(
        env.state_dir.join("state.json"),
        format!(
            r#"{{"version": 1, "mesh_dir": "{}", "prefix": "{}", "loopback": false, "hub": null, "owner": null}}"#,
            env.dir.display(),
            env.prefix
        ),
    )
    .unwrap();
    env.user = Some(NOBODY);
    let out = env.run(&["stat", "svc"]);
    // The guard's `weft down` must not run as nobody on a state file of root's.
    std::fs::remove_file(env.state_dir.join("state.json")).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "reading pods' metrics needs root (their admin ports are inside network namespaces)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

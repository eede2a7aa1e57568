//! What the local-mesh tests share (each test binary uses part of it, hence the
//! `dead_code` allowance): the binaries, root checks, polling, and the 3-workload mesh.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");
pub const CLIENT_ID: &str = "client.default.serviceaccount.identity.weft.cluster.local";
pub const BOOKS_ID: &str = "books.default.serviceaccount.identity.weft.cluster.local";

/// Where `weft` and the other packages' binaries are.
pub fn bin_dir() -> PathBuf {
    Path::new(WEFT).parent().unwrap().to_owned()
}

/// `None` when this runs as root with the tools namespace meshes need, else why not.
pub fn not_root_or_missing_tools() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespaces and iptables need root".into());
    }
    for tool in ["ip", "iptables-restore", "setpriv"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!(
                "`{tool}` is not installed (scripts/setup installs it)"
            ));
        }
    }
    None
}

/// `None` when the other packages' binaries the mesh runs are built beside `weft`
/// (tests never build them: `scripts/test` runs `cargo build --workspace --bins`
/// first, visibly), else why not.
pub fn build_binaries() -> Option<String> {
    let missing: Vec<&str> = ["weft-proxy", "weft-demo-app", "weft-controller"]
        .into_iter()
        .filter(|b| !bin_dir().join(b).exists())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not built in {}: run `cargo build --workspace --bins` first (scripts/test does)",
            missing.join(", "),
            bin_dir().display()
        )
    })
}

/// Skips a test that cannot run here with its reason, except under CI (`CI` set),
/// where a skipped root or service test would hide a failure: there it fails.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run under CI: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// (state, start time) of a process, from /proc.
pub fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f[0].chars().next()?, f[19].parse().ok()?))
}

/// Polls `f` every 50 ms until it is `Some` or `limit` passes.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// client (load generator) → books → authors, books with `books_replicas`.
pub fn mesh_yaml(books_replicas: u32) -> String {
    format!(
        r#"kind: Mesh
workloads:
  - name: client
    zone: zone-a
    ports: [8080]
    command: [weft-demo-app, serve, --name, client, --port, "8080",
              --call, "http://books.default.svc:8080/load", --rps, "50", --call-delay, 0s]
  - name: books
    zone: zone-b
    replicas: {books_replicas}
    ports: [8080]
    command: [weft-demo-app, serve, --name, books, --port, "8080",
              --upstream, "http://authors:8080/"]
  - name: authors
    zone: zone-c
    ports: [8080]
    command: [weft-demo-app, serve, --name, authors, --port, "8080"]
"#
    )
}

pub const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: books}
spec:
  selector: {app: books}
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: authors, namespace: default}
spec:
  selector: {app: authors}
  ports: [{name: http, port: 8080, targetPort: 8080}]
"#;

/// What a test's mesh (its directories and its `weft` command) gives the shared steps.
pub trait MeshEnv {
    /// `weft ARGS` for this test's mesh (its state directory, prefix, ...).
    fn weft(&self, args: &[&str]) -> Command;
    fn mesh_dir(&self) -> &Path;
    fn state_dir(&self) -> &Path;
    /// Where a foreground `weft up` of the test writes its output.
    fn up_log(&self) -> &Path;

    fn up_output(&self) -> String {
        std::fs::read_to_string(self.up_log()).unwrap_or_default()
    }

    /// After a test, passed or not: stops its foreground `weft up`, takes down what is
    /// still recorded, and removes the test's directories.
    fn clean_up(&self, up: Option<Child>) {
        if let Some(mut up) = up {
            let _ = up.kill();
            let _ = up.wait();
        }
        if self.state_dir().join("state.json").exists() {
            eprintln!("cleaning up after the test:\n{}", self.up_output());
            let _ = self.weft(&["down"]).output();
        }
        if let Some(base) = self.mesh_dir().parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }

    /// A foreground `weft up [ARGS] DIR --interval 1s` writing to the up log, once it
    /// says the mesh is up (30 s at most; killed, and the test failed, otherwise).
    fn up_foreground(&self, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.up_log()).unwrap();
        let dir = self.mesh_dir().to_str().unwrap().to_owned();
        let mut all = vec!["up"];
        all.extend(args);
        all.extend([dir.as_str(), "--interval", "1s"]);
        let mut up = self
            .weft(&all)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ready = eventually(Duration::from_secs(30), || {
            self.up_output().contains("mesh up in").then_some(())
        });
        if ready.is_none() {
            let _ = up.kill();
            let _ = up.wait();
            panic!("weft up did not come up:\n{}", self.up_output());
        }
        up
    }

    /// Runs `weft ARGS`, logging what it printed.
    fn run(&self, args: &[&str]) -> Output {
        let out = self.weft(args).output().expect("run weft");
        eprintln!(
            "$ weft {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.mesh_dir().join(name), text).unwrap();
    }

    fn state(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.state_dir().join("state.json")).expect("a state file");
        serde_json::from_str(&text).unwrap()
    }

    /// Every process the state file records, the controller's and the pods': (pid,
    /// start time), what must be gone after `weft down`.
    fn recorded_procs(&self) -> Vec<(u32, u64)> {
        let state = self.state();
        let mut out = Vec::new();
        let mut add = |p: &serde_json::Value| {
            out.push((
                p["pid"].as_u64().unwrap() as u32,
                p["start_time"].as_u64().unwrap(),
            ))
        };
        if state["controller"].is_object() {
            add(&state["controller"]);
        }
        for pod in state["pods"].as_array().unwrap() {
            for p in pod["procs"].as_array().unwrap() {
                add(p);
            }
        }
        out
    }

    /// (pid, restarts) of `pod`'s process with `role` (proxy, app) in the state file.
    fn proc(&self, pod: &str, role: &str) -> (u32, u64) {
        let state = self.state();
        let pod = state["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .clone();
        let p = pod["procs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["role"] == role)
            .unwrap_or_else(|| panic!("no {role} in {pod}"));
        (
            p["pid"].as_u64().unwrap() as u32,
            p["restarts"].as_u64().unwrap_or(0),
        )
    }

    fn pod_ip(&self, pod: &str) -> Option<String> {
        self.state()["pods"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == pod)
            .map(|p| p["ip"].as_str().unwrap().to_owned())
    }
}

/// One namespace-mode test mesh: a directory, a state directory and a namespace prefix
/// (`{kind}{tag}{pid}`) of its own. Dropping it stops its foreground `weft up`, takes
/// down what is still recorded and removes the directories.
pub struct NsEnv {
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub prefix: String,
    /// A foreground `weft up`, if one was started.
    pub up: Option<Child>,
    pub up_log: PathBuf,
}

impl NsEnv {
    /// Asserts nothing of this mesh is left: namespaces, hosts files, links, rules,
    /// processes, state.
    pub fn assert_nothing_left(&self, procs: &[(u32, u64)]) {
        let netns = run_ok("ip", &["netns", "list"]);
        assert!(
            !netns
                .lines()
                .any(|l| l.starts_with(&format!("{}-", self.prefix))),
            "namespaces left:\n{netns}"
        );
        let etc: Vec<_> = std::fs::read_dir("/etc/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
                    .collect()
            })
            .unwrap_or_default();
        assert!(etc.is_empty(), "/etc/netns entries left: {etc:?}");
        // Nothing was ever made in the root namespace; make sure it stays so.
        let links = run_ok("ip", &["-o", "link", "show"]);
        assert!(
            !links.contains(": wfv") && !links.contains(": weft0"),
            "links left in the root namespace:\n{links}"
        );
        let rules = run_ok("iptables", &["-w", "5", "-t", "nat", "-S"]);
        assert!(!rules.contains("WEFT_"), "iptables rules left:\n{rules}");
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
        assert!(
            !self.state_dir.join("state.json").exists(),
            "the state file is left"
        );
        assert!(
            !self.state_dir.join("pods.yaml").exists(),
            "the pods file is left"
        );
    }

    /// Kills the foreground `weft up` (kill -9), runs `weft down` and asserts it left
    /// nothing behind, the processes restarted meanwhile included.
    pub fn down_after_kill_9_of_up(&mut self) {
        let procs = self.recorded_procs();
        let mut up = self.up.take().expect("a foreground weft up");
        up.kill().unwrap();
        up.wait().unwrap();
        let out = self.run(&["down"]);
        assert!(out.status.success());
        self.assert_nothing_left(&procs);
    }

    /// `kind` keeps test files apart (one letter each), `tag` the tests of a file.
    pub fn new(kind: &str, tag: &str) -> NsEnv {
        let id = std::process::id() % 100_000;
        let prefix = format!("{kind}{tag}{id}");
        let base = std::env::temp_dir().join(format!("weft-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("mesh");
        std::fs::create_dir_all(&dir).unwrap();
        NsEnv {
            state_dir: base.join("state"),
            up_log: base.join("up.log"),
            dir,
            prefix,
            up: None,
        }
    }

    pub fn netns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.prefix)
    }

    /// `weft-demo-app get URL` inside `netns` (where /etc/netns/{netns}/hosts applies).
    pub fn get_in(netns: &str, url: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(bin_dir().join("weft-demo-app"))
            .args(["get", url, "--timeout", "2s"])
            .output()
            .unwrap()
    }

    /// A pod proxy's metrics, read from the hub namespace.
    pub fn metrics(&self, pod: &str) -> Option<weft_core::prom::Scrape> {
        let ip = self.pod_ip(pod)?;
        let out = NsEnv::get_in(
            &format!("{}-hub", self.prefix),
            &format!("http://{ip}:4191/metrics"),
        );
        out.status.success().then(|| {
            let text = String::from_utf8_lossy(&out.stdout);
            weft_core::prom::Scrape::parse(text.strip_prefix("200 ").unwrap_or(&text))
        })
    }
}

impl MeshEnv for NsEnv {
    fn weft(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(WEFT);
        cmd.args(args)
            .env("WEFT_STATE_DIR", &self.state_dir)
            .env("WEFT_PREFIX", &self.prefix)
            .stdin(std::process::Stdio::null());
        cmd
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

impl Drop for NsEnv {
    fn drop(&mut self) {
        let up = self.up.take();
        self.clean_up(up);
    }
}

/// At the top of a test that needs root and the tools: skips it (returning) when not
/// root, a tool is missing or the binaries do not build.
#[allow(unused_macros)]
macro_rules! require_root {
    () => {
        if let Some(reason) = common::not_root_or_missing_tools().or_else(common::build_binaries) {
            common::skip(&reason);
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_root;

/// At the top of a test that needs only the binaries (a loopback mesh): skips it
/// (returning) when they do not build.
#[allow(unused_macros)]
macro_rules! require_binaries {
    () => {
        if let Some(reason) = common::build_binaries() {
            common::skip(&reason);
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_binaries;

/// `struct $name(NsEnv)` that derefs to [`NsEnv`], made with `$name::new(tag)`: a test
/// file's mesh, to which the file adds its own methods.
#[allow(unused_macros)]
macro_rules! ns_env {
    ($name:ident, $kind:literal) => {
        /// This file's test mesh: the shared one ([`common::NsEnv`]) and what only
        /// these tests need.
        struct $name(common::NsEnv);

        impl std::ops::Deref for $name {
            type Target = common::NsEnv;
            fn deref(&self) -> &common::NsEnv {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut common::NsEnv {
                &mut self.0
            }
        }

        impl $name {
            fn new(tag: &str) -> $name {
                $name(common::NsEnv::new($kind, tag))
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use ns_env;

/// Runs a command that must succeed; its standard output.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

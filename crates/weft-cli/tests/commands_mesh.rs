//! The commands for a running local mesh (root, namespaces): `weft ps`, `logs`, `exec`,
//! `restart` and `scale`, against one detached mesh (`weft up -d`, whose supervisor
//! also watches the directory): ps lists pods with their addresses, zones, readiness
//! and restart counts (a killed app is restarted and counted); logs shows an app's
//! and a proxy's output and follows across a restart; exec runs a command inside a
//! pod as its app and returns its exit code; restart replaces a workload's pods one
//! at a time without counting crashes; scale edits mesh.yaml's replicas and the mesh
//! follows, up and down. The same commands on a loopback mesh, where exec has no
//! namespace to enter and runs the command here with the pod's environment.

#![cfg(target_os = "linux")]

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod common;
use common::{eventually, mesh_yaml, require_binaries, require_root, stat, MeshEnv as _, SERVICES};

common::ns_env!(Env, "c");

/// One row of `weft ps -o json`.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    state: String,
    ready: Option<bool>,
    restarts: u64,
    ip: String,
    zone: Option<String>,
}

impl Env {
    fn ps(&self) -> Vec<Row> {
        let out = self.weft(&["ps", "-o", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| Row {
                name: r["name"].as_str().unwrap().to_owned(),
                state: r["state"].as_str().unwrap().to_owned(),
                ready: r["ready"].as_bool(),
                restarts: r["restarts"].as_u64().unwrap(),
                ip: r["ip"].as_str().unwrap().to_owned(),
                zone: r["zone"].as_str().map(str::to_owned),
            })
            .collect()
    }

    /// `weft ps` once every pod (and the controller) is running and ready.
    fn all_ready(&self, limit: Duration) -> Vec<Row> {
        eventually(limit, || {
            let rows = self.ps();
            rows.iter()
                .all(|r| r.state == "running" && r.ready == Some(true))
                .then_some(rows)
        })
        .unwrap_or_else(|| {
            panic!(
                "not every pod became running and ready:\n{:#?}\n{}",
                self.ps(),
                self.supervisor_log()
            )
        })
    }

    fn supervisor_log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("logs").join("weft-up.log")).unwrap_or_default()
    }

    fn pods(&self) -> Vec<String> {
        self.state()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn row<'a>(rows: &'a [Row], name: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no row {name} in {rows:#?}"))
}

/// Where `ip` is (apps' PATH need not hold /sbin).
fn ip_tool() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("ip is installed")
}

#[test]
fn ps_logs_exec_restart_and_scale_on_a_running_mesh() {
    require_root!();
    let env = Env::new("m");
    let mesh = mesh_yaml(1);
    env.write("mesh.yaml", &mesh);
    env.write("services.yaml", SERVICES);
    let out = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
    assert!(out.status.success(), "weft up -d failed");

    // ps: the controller and every pod, running and ready, with address and zone.
    let rows = env.all_ready(Duration::from_secs(10));
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["controller", "client-0", "books-0", "authors-0"]);
    let books = row(&rows, "books-0");
    assert_eq!(books.ip, env.pod_ip("books-0").unwrap());
    assert_eq!(books.zone.as_deref(), Some("zone-b"));
    assert_eq!(books.restarts, 0);
    assert_eq!(row(&rows, "controller").ip, "198.18.0.1");
    let table = env.run(&["ps"]);
    assert!(table.status.success());
    let table = stdout(&table);
    assert!(
        table.starts_with("NAME ") && table.contains("RESTARTS") && table.contains(" AGE"),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.starts_with("books-0 "))
        .expect("a books-0 row");
    let cells: Vec<&str> = line.split_whitespace().collect();
    // NAME WORKLOAD STATE READY RESTARTS IP ZONE AGE
    assert_eq!(
        &cells[..7],
        ["books-0", "books", "running", "yes", "0", &books.ip, "zone-b"]
    );

    // kill -9 books-0's app: crashed, then restarted by the supervisor and counted.
    let (app, _) = env.proc("books-0", "app");
    kill(Pid::from_raw(app as i32), Signal::SIGKILL).unwrap();
    let mut seen_crashed = false;
    let back = eventually(Duration::from_secs(20), || {
        let rows = env.ps();
        let b = row(&rows, "books-0").clone();
        seen_crashed |= b.state == "crashed";
        (b.restarts == 1 && b.state == "running" && b.ready == Some(true)).then_some(())
    });
    assert!(
        back.is_some(),
        "books-0 was not running again with 1 restart:\n{:#?}\n{}",
        env.ps(),
        env.supervisor_log()
    );
    assert!(
        seen_crashed,
        "ps never showed books-0 crashed while it waited for its restart"
    );

    // logs: the app's output (across its restart), the proxy's, --tail, a workload name.
    let logs = env.run(&["logs", "books-0"]);
    assert!(logs.status.success());
    let logs = stdout(&logs);
    assert_eq!(
        logs.matches("books (books-0, zone zone-b) serving on")
            .count(),
        2,
        "{logs}"
    );
    assert!(logs.contains("--- weft up: the app exited (signal 9 (SIGKILL)); restart 1 ---"));
    let proxy = stdout(&env.run(&["logs", "books", "--proxy"]));
    assert!(
        proxy.contains("proxy listening")
            && proxy.contains("identity=books.default.serviceaccount")
            && !proxy.contains("serving on"),
        "the proxy's log:\n{proxy}"
    );
    let tail = stdout(&env.run(&["logs", "books-0", "--proxy", "--tail", "2"]));
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(proxy.ends_with(&tail));
    let controller = env.run(&["logs", "controller"]);
    assert!(controller.status.success() && !controller.stdout.is_empty());
    let missing = env.run(&["logs", "nope"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("error: no pod named nope; pods: client-0, books-0, authors-0"),
        "{}",
        text(&missing)
    );

    // exec: inside the pod's network namespace, as its app (UID 2103, the state
    // directory hidden, its hosts file), and CMD's exit code.
    let ip = env.run(&[
        "exec",
        "books-0",
        "--",
        ip_tool(),
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        "eth0",
    ]);
    assert!(ip.status.success());
    assert!(
        stdout(&ip).contains(&format!("inet {}/", books.ip)),
        "{}",
        text(&ip)
    );
    let id = env.run(&["exec", "books", "--", "id", "-u"]);
    assert_eq!(stdout(&id).trim(), "2103");
    let hosts = env.run(&["exec", "client-0", "--", "cat", "/etc/hosts"]);
    assert!(
        stdout(&hosts).contains("books.default.svc"),
        "{}",
        text(&hosts)
    );
    let hidden = env.run(&[
        "exec",
        "books-0",
        "--",
        "ls",
        "-A",
        env.state_dir.to_str().unwrap(),
    ]);
    assert!(
        hidden.status.success() && stdout(&hidden).trim().is_empty(),
        "{}",
        text(&hidden)
    );
    let call = env.run(&[
        "exec",
        "client-0",
        "--",
        "weft-demo-app",
        "get",
        "http://books.default.svc:8080/exec",
    ]);
    assert!(
        call.status.success() && stdout(&call).starts_with("200 books"),
        "{}",
        text(&call)
    );
    let code = env.run(&["exec", "books-0", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7));
    let root = env.run(&["exec", "--root", "books-0", "--", "id", "-u"]);
    assert_eq!(stdout(&root).trim(), "0");

    // scale 1 -> 2: mesh.yaml's one value changes, a second pod comes up.
    let started = Instant::now();
    let out = env.run(&["scale", "books", "2"]);
    assert!(out.status.success(), "{}", env.supervisor_log());
    eprintln!("scaled up in {:?}", started.elapsed());
    let edited = std::fs::read_to_string(env.dir.join("mesh.yaml")).unwrap();
    assert_eq!(edited, mesh.replace("replicas: 1", "replicas: 2"));
    let rows = env.all_ready(Duration::from_secs(5));
    assert!(rows.iter().any(|r| r.name == "books-1"), "{rows:#?}");

    // restart books: both pods replaced one at a time, ready again, no crash counted;
    // a follower of books-0's log sees the new process's output.
    let follower_out = env.state_dir.with_file_name("follow.log");
    let mut follower = env
        .weft(&["logs", "-f", "books-0", "--tail", "0"])
        .stdout(std::fs::File::create(&follower_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let before: Vec<((u32, u64), (u32, u64))> = ["books-0", "books-1"]
        .iter()
        .map(|p| (env.proc(p, "proxy"), env.proc(p, "app")))
        .collect();
    // The client calls books 50 times a second all along: a rolling restart of two
    // replicas fails none of them (each pod leaves the endpoints before it stops).
    let outbound = |class: &str| -> (f64, f64) {
        let m = env.metrics("client-0").expect("client-0's metrics");
        let labels = [("direction", "outbound"), ("classification", class)];
        (
            m.sum("response_total", &labels),
            m.sum("request_total", &[("direction", "outbound")]),
        )
    };
    let (failed_before, calls_before) = outbound("failure");
    let started = Instant::now();
    let out = env.run(&["restart", "books"]);
    assert!(out.status.success(), "{}", env.supervisor_log());
    eprintln!("restarted in {:?}", started.elapsed());
    let said = stdout(&out);
    let at = |s: &str| {
        said.find(s)
            .unwrap_or_else(|| panic!("no {s:?} in:\n{said}"))
    };
    assert!(at("books-0: out of the endpoints") < at("books-0: ready"));
    assert!(at("books-0: ready") < at("books-1: out of the endpoints"));
    assert!(at("books-1: ready") < at("restarted books in"));
    for (pod, ((proxy, proxy_restarts), (app, app_restarts))) in
        ["books-0", "books-1"].iter().zip(&before)
    {
        let (new_proxy, r1) = env.proc(pod, "proxy");
        let (new_app, r2) = env.proc(pod, "app");
        assert!(
            new_proxy != *proxy && new_app != *app,
            "{pod} was not restarted"
        );
        assert_eq!(
            (r1, r2),
            (*proxy_restarts, *app_restarts),
            "{pod}: a crash was counted"
        );
        assert!(
            stat(*app).is_none_or(|(s, _)| s == 'Z'),
            "{pod}'s old app runs"
        );
    }
    let (failed_after, calls_after) = outbound("failure");
    assert!(
        calls_after > calls_before + 20.0,
        "the client made no calls meanwhile"
    );
    assert_eq!(
        failed_after - failed_before,
        0.0,
        "calls failed during the rolling restart ({} calls)",
        calls_after - calls_before
    );
    let rows = env.all_ready(Duration::from_secs(5));
    assert_eq!(row(&rows, "books-0").restarts, 1);
    assert_eq!(row(&rows, "books-1").restarts, 0);
    let followed = eventually(Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&follower_out).unwrap_or_default();
        (t.contains("--- weft restart: the app is restarted on request ---")
            && t.contains("books (books-0, zone zone-b) serving on"))
        .then_some(())
    });
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        followed.is_some(),
        "logs -f did not follow the restart:\n{}",
        std::fs::read_to_string(&follower_out).unwrap_or_default()
    );

    // scale 2 -> 1: the file is as it was, books-1 goes.
    let out = env.run(&["scale", "books", "1"]);
    assert!(out.status.success(), "{}", env.supervisor_log());
    assert_eq!(
        std::fs::read_to_string(env.dir.join("mesh.yaml")).unwrap(),
        mesh
    );
    assert_eq!(env.pods(), ["client-0", "books-0", "authors-0"]);

    // Errors are one clear line.
    let out = env.run(&["restart", "nope"]);
    assert!(
        text(&out).contains("error: no workload named nope"),
        "{}",
        text(&out)
    );
    let out = env.run(&["scale", "nope", "2"]);
    assert!(
        text(&out).contains("error: no workload named nope"),
        "{}",
        text(&out)
    );
    let out = env.run(&["exec", "books-9", "--", "true"]);
    assert!(
        text(&out).contains("error: no pod named books-9; pods: "),
        "{}",
        text(&out)
    );

    let out = env.run(&["down"]);
    assert!(out.status.success());
    let out = env.run(&["ps"]);
    assert!(
        text(&out).contains("error: no local mesh is up"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_commands_in_loopback_mode() {
    // Loopback mode needs no root (as root, `--loopback` asks for it).
    require_binaries!();
    let env = Env::new("l");
    let mesh = mesh_yaml(1);
    env.write("mesh.yaml", &mesh);
    env.write("services.yaml", SERVICES);
    let dir = env.dir.to_str().unwrap().to_owned();
    let out = env.run(&["up", "-d", "--loopback", "--loopback-block", "11", &dir]);
    assert!(out.status.success(), "weft up -d --loopback failed");

    // ps: loopback addresses of block 11 (127.18.176.0/20), the controller first.
    let rows = env.all_ready(Duration::from_secs(10));
    assert_eq!(row(&rows, "controller").ip, "127.18.176.1");
    let client = row(&rows, "client-0").ip.clone();
    assert!(client.starts_with("127.18.176."), "{rows:#?}");

    // exec: no namespace to enter; CMD runs here with the pod's environment, and says so.
    let out = env.run(&[
        "exec",
        "client-0",
        "--",
        "sh",
        "-c",
        "echo $WEFT_POD $WEFT_LISTEN_ADDR $HTTP_PROXY; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stdout(&out),
        format!("client-0 {client} http://{client}:4140\n")
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("note: loopback mode: no network namespace to enter; running sh as you"));
    // Its HTTP calls go through the pod's proxy (whose endpoints file may trail
    // `weft up -d` by its 200 ms reload).
    let call = eventually(Duration::from_secs(5), || {
        let out = env
            .weft(&[
                "exec",
                "client-0",
                "--",
                "weft-demo-app",
                "get",
                "http://books.default.svc:8080/loopback",
            ])
            .output()
            .unwrap();
        (out.status.success() && stdout(&out).starts_with("200 books")).then_some(())
    });
    assert!(call.is_some(), "no call through client-0's proxy succeeded");
    let out = env.run(&["exec", "--root", "client-0", "--", "true"]);
    assert!(text(&out).contains("error: --root: a loopback mesh's pods have no network namespace"));

    // restart: new processes, ready again, no crash counted.
    let (proxy, app) = (env.proc("books-0", "proxy"), env.proc("books-0", "app"));
    let out = env.run(&["restart", "books"]);
    assert!(out.status.success(), "{}", env.supervisor_log());
    let (new_proxy, new_app) = (env.proc("books-0", "proxy"), env.proc("books-0", "app"));
    assert!(new_proxy.0 != proxy.0 && new_app.0 != app.0);
    assert_eq!((new_proxy.1, new_app.1), (0, 0));
    env.all_ready(Duration::from_secs(5));

    // scale 1 -> 2 -> 1 through the detached supervisor's watch.
    let out = env.run(&["scale", "books", "2"]);
    assert!(out.status.success(), "{}", env.supervisor_log());
    assert_eq!(
        std::fs::read_to_string(env.dir.join("mesh.yaml")).unwrap(),
        mesh.replace("replicas: 1", "replicas: 2")
    );
    assert_eq!(env.pods(), ["client-0", "books-0", "authors-0", "books-1"]);
    let out = env.run(&["scale", "books", "1"]);
    assert!(out.status.success(), "{}", env.supervisor_log());
    assert_eq!(
        std::fs::read_to_string(env.dir.join("mesh.yaml")).unwrap(),
        mesh
    );
    assert_eq!(env.pods(), ["client-0", "books-0", "authors-0"]);

    let out = env.run(&["down"]);
    assert!(out.status.success());
}

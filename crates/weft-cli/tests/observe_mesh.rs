//! Looking at a running local mesh (root, network namespaces): `weft stat` per
//! workload, per pod, one resource, `--from`/`--to` and the TCP view, shown at once;
//! `weft edges` with both identities and mTLS (and a plaintext caller from outside the
//! mesh); `weft diagnostics proxy-metrics`; `weft check` on a healthy mesh, and naming
//! the pod whose proxy was killed while the supervisor is held (SIGSTOP) so it cannot
//! restart it yet. One mesh, its own prefix and state directory.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

mod common;
use common::{eventually, require_binaries, require_root, stat, MeshEnv as _, NsEnv, SERVICES};

common::ns_env!(Env, "o");

const WEB_ID: &str = "web.default.serviceaccount.identity.weft.cluster.local";
const BOOKS_ID: &str = "books.default.serviceaccount.identity.weft.cluster.local";
const AUTHORS_ID: &str = "authors.default.serviceaccount.identity.weft.cluster.local";

/// web (30 calls/s) → books (2 replicas) → authors.
const MESH: &str = r#"kind: Mesh
workloads:
  - name: web
    zone: zone-a
    ports: [8080]
    command: [weft-demo-app, serve, --name, web, --port, "8080",
              --call, "http://books.default.svc:8080/load", --rps, "30", --call-delay, 0s]
  - name: books
    zone: zone-b
    replicas: 2
    ports: [8080]
    command: [weft-demo-app, serve, --name, books, --port, "8080",
              --upstream, "http://authors:8080/"]
  - name: authors
    zone: zone-c
    ports: [8080]
    command: [weft-demo-app, serve, --name, authors, --port, "8080"]
"#;

impl Env {
    /// `weft ARGS -o json` as an array, asserting it succeeded.
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut argv = args.to_vec();
        argv.extend(["-o", "json"]);
        let out = self.run(&argv);
        assert!(out.status.success(), "weft {argv:?} failed");
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("JSON")
            .as_array()
            .expect("an array")
            .clone()
    }
}

fn names(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["name"].as_str().unwrap()).collect()
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
}

/// Stops a process (SIGSTOP) until dropped (SIGCONT), also when the test fails.
struct Held(u32);

impl Held {
    fn stop(pid: u32) -> Held {
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        Held(pid)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGCONT);
    }
}

#[test]
fn stat_edges_diagnostics_and_check_on_a_running_mesh() {
    require_root!();
    let env = Env::new("a");
    env.write("mesh.yaml", MESH);
    env.write("services.yaml", SERVICES);
    let out = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
    assert!(out.status.success());
    // web → books → authors traffic flows.
    let flowing = eventually(Duration::from_secs(15), || {
        let served = |pod| {
            env.metrics(pod)
                // Answered, not only received: a response is counted when its body
                // ends, a moment after the request.
                .map_or(0.0, |m| {
                    m.sum("response_total", &[("direction", "inbound")])
                })
        };
        (served("books-0") > 0.0 && served("books-1") > 0.0 && served("authors-0") > 0.0)
            .then_some(())
    });
    assert!(flowing.is_some(), "no traffic through books and authors");

    // stat without --window: at once, from what the proxies counted since they started.
    let started = Instant::now();
    let rows = env.json(&["stat", "deploy"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "weft stat waited"
    );
    assert_eq!(names(&rows), ["authors", "books", "web"]);
    let books = row(&rows, "books");
    assert!(books["requests"].as_u64().unwrap() > 0, "{books}");
    assert!(books["rps"].as_f64().unwrap() > 0.0, "{books}");
    assert_eq!(books["success"], 1.0, "{books}");
    assert_eq!(books["meshed"], 1.0, "{books}");
    // One resource, and a window.
    let rows = env.json(&["stat", "deploy/books", "--window", "1s"]);
    assert_eq!(names(&rows), ["books"]);
    assert!(rows[0]["rps"].as_f64().unwrap() > 5.0, "{rows:?}");
    // Per pod.
    let rows = env.json(&["stat", "po"]);
    assert_eq!(names(&rows), ["authors-0", "books-0", "books-1", "web-0"]);
    for pod in ["authors-0", "books-0", "books-1"] {
        assert!(
            row(&rows, pod)["requests"].as_u64().unwrap() > 0,
            "{rows:?}"
        );
    }
    assert_eq!(row(&rows, "web-0")["requests"], 0);
    assert_eq!(names(&env.json(&["stat", "po/books-1"])), ["books-1"]);

    // --from: what web sends, per destination; --to: what books receives, per source.
    let rows = env.json(&["stat", "deploy", "--from", "deploy/web"]);
    assert_eq!(names(&rows), ["books"]);
    assert_eq!(rows[0]["meshed"], 1.0, "{rows:?}");
    assert_eq!(rows[0]["success"], 1.0, "{rows:?}");
    assert_eq!(
        names(&env.json(&["stat", "po", "--from", "deploy/web"])),
        ["books-0", "books-1"]
    );
    assert_eq!(
        names(&env.json(&["stat", "deploy", "--to", "deploy/books"])),
        ["web"]
    );
    assert_eq!(
        names(&env.json(&["stat", "deploy", "--to", "svc/authors"])),
        ["books"]
    );
    assert_eq!(
        names(&env.json(&["stat", "po", "--to", "deploy/authors"])),
        ["books-0", "books-1"]
    );
    assert_eq!(
        names(&env.json(&["stat", "svc", "--from", "deploy/books"])),
        ["authors"]
    );
    // The TCP view: connections and bytes of what each workload served.
    let rows = env.json(&["stat", "deploy", "-t", "tcp"]);
    let books = row(&rows, "books");
    assert!(books["tcp_opened"].as_u64().unwrap() > 0, "{books}");
    assert_eq!(books["tcp_opened_mtls"], books["tcp_opened"], "{books}");
    assert!(books["read_bytes"].as_u64().unwrap() > 0, "{books}");
    assert!(books["write_bytes"].as_u64().unwrap() > 0, "{books}");
    let out = env.run(&["stat", "-t", "tcp"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("NAME     TCP_CONN  NEW_CONN     MTLS  READ_BYTES/SEC  WRITE_BYTES/SEC"),
        "{table}"
    );
    // TCP between workloads: the callees' inbound connections by the caller's
    // identity (client_id).
    let rows = env.json(&["stat", "deploy", "-t", "tcp", "--from", "deploy/web"]);
    assert_eq!(names(&rows), ["books"]);
    assert!(rows[0]["tcp_opened"].as_u64().unwrap() > 0, "{rows:?}");
    assert!(rows[0]["read_bytes"].as_u64().unwrap() > 0, "{rows:?}");
    assert_eq!(
        names(&env.json(&["stat", "po", "-t", "tcp", "--from", "deploy/web"])),
        ["books-0", "books-1"]
    );
    assert_eq!(
        names(&env.json(&["stat", "deploy", "-t", "tcp", "--to", "deploy/authors"])),
        ["books"]
    );
    // A pod is not what TCP connections name their caller by.
    let out = env.run(&["stat", "po", "-t", "tcp", "--to", "deploy/books"]);
    assert!(!out.status.success());

    // A caller outside the mesh (the hub) calls books-0 in plaintext.
    let ip = env.pod_ip("books-0").unwrap();
    let out = NsEnv::get_in(&env.netns("hub"), &format!("http://{ip}:8080/from-hub"));
    assert!(out.status.success(), "{out:?}");

    // edges: web → books and books → authors over mTLS with both identities; the
    // plaintext caller is not meshed.
    let edges = env.json(&["edges"]);
    let edge = |src: &str, dst: &str| {
        edges
            .iter()
            .find(|e| e["src"] == src && e["dst"] == dst)
            .unwrap_or_else(|| panic!("no edge {src} -> {dst}: {edges:#?}"))
            .clone()
    };
    let web_books = edge("web", "books");
    assert_eq!(web_books["src_identity"], WEB_ID, "{web_books}");
    assert_eq!(web_books["dst_identity"], BOOKS_ID, "{web_books}");
    assert_eq!(web_books["secured"], true, "{web_books}");
    let books_authors = edge("books", "authors");
    assert_eq!(books_authors["src_identity"], BOOKS_ID);
    assert_eq!(books_authors["dst_identity"], AUTHORS_ID);
    assert_eq!(books_authors["secured"], true);
    let outside = edge("-", "books");
    assert_eq!(outside["secured"], false);
    assert!(
        outside["msg"].as_str().unwrap().starts_with("not meshed"),
        "{outside}"
    );
    let pods = env.json(&["edges", "po"]);
    for dst in ["books-0", "books-1"] {
        assert!(
            pods.iter()
                .any(|e| e["src"] == "web-0" && e["dst"] == dst && e["secured"] == true),
            "{pods:#?}"
        );
    }
    let out = env.run(&["edges"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("web ") && l.contains(" books "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains(WEB_ID) && line.contains(BOOKS_ID) && line.contains('√'),
        "{table}"
    );

    // diagnostics proxy-metrics: the proxy's /metrics as it is.
    let out = env.run(&["diagnostics", "proxy-metrics", "web-0"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\nrequest_total{"), "{text}");
    assert!(text.contains("identity_cert_expiration_timestamp_seconds"));
    assert!(text.contains("pod=\"web-0\""));
    let out = env.run(&["diagnostics", "proxy-metrics", "nobody-0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no pod \"nobody-0\" in the mesh (its pods: "));
    let out = env.run(&["diagnostics", "controller-metrics"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("weft_controller_identity_certify"));

    // check: a healthy running mesh passes, its running checks included.
    let out = env.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    for line in [
        "note  a mesh is up",
        "controller (pid",
        "pod books-1: proxy and app running, proxy ready, certificate valid for ",
        "clock skew: 5 process(es) within 5s",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(env.run(&["check", "--proxy"]).status.success());

    // books-1's proxy killed while the supervisor is held: the check names the pod.
    let supervisor = env.state()["owner"]["pid"].as_u64().unwrap() as u32;
    let held = Held::stop(supervisor);
    let proxy = env.proc("books-1", "proxy").0;
    kill(Pid::from_raw(proxy as i32), Signal::SIGKILL).unwrap();
    let gone = eventually(Duration::from_secs(5), || {
        matches!(stat(proxy), None | Some(('Z', _))).then_some(())
    });
    assert!(gone.is_some(), "the proxy did not exit");
    let out = env.run(&["check", "--proxy"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL  pod books-1: proxy (pid {proxy}) is not running"
        )),
        "{text}"
    );
    assert!(text.contains("fix: weft up restarts it"), "{text}");
    assert!(
        text.contains("pod books-0: proxy and app running"),
        "{text}"
    );
    // Released, the supervisor restarts it and the check passes again.
    drop(held);
    let healthy = eventually(Duration::from_secs(20), || {
        env.weft(&["check", "--proxy"])
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    assert!(
        healthy.is_some(),
        "check did not pass again after the restart"
    );

    let out = env.run(&["down"]);
    assert!(out.status.success());
}

/// The same views of a loopback mesh (no namespaces: run as root or not): pods are
/// loopback addresses, calls go proxy to proxy over mTLS, the CLI reads the proxies
/// directly.
#[test]
fn stat_edges_and_check_on_a_loopback_mesh() {
    require_binaries!();
    let env = Env::new("l");
    // No mesh yet: check --proxy fails saying so, edges says there is none to read.
    let out = env.run(&["check", "--proxy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL  a local mesh is up"));
    let out = env.run(&["edges"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no local mesh is up"));
    env.write("mesh.yaml", MESH);
    env.write("services.yaml", SERVICES);
    let out = env.run(&["up", "-d", "--loopback", env.dir.to_str().unwrap()]);
    assert!(out.status.success());
    let flowing = eventually(Duration::from_secs(15), || {
        let rows = env.json(&["stat", "po"]);
        ["books-0", "books-1", "authors-0"]
            .iter()
            .all(|p| row(&rows, p)["requests"].as_u64().unwrap_or(0) > 0)
            .then_some(())
    });
    assert!(flowing.is_some(), "no traffic through books and authors");
    let rows = env.json(&["stat", "deploy", "--from", "deploy/web"]);
    assert_eq!(names(&rows), ["books"]);
    assert_eq!(rows[0]["meshed"], 1.0, "{rows:?}");
    assert_eq!(
        names(&env.json(&["stat", "deploy", "--to", "deploy/authors"])),
        ["books"]
    );
    let rows = env.json(&["stat", "deploy", "-t", "tcp"]);
    assert!(
        row(&rows, "books")["tcp_opened"].as_u64().unwrap() > 0,
        "{rows:?}"
    );
    // A named resource that does not exist is an error, not an empty table.
    let out = env.run(&["stat", "deploy/nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no deployment \"nobody\" in namespace default (`weft stat deploy` lists them)"));

    let edges = env.json(&["edges"]);
    let web_books = edges
        .iter()
        .find(|e| e["src"] == "web" && e["dst"] == "books")
        .unwrap_or_else(|| panic!("no web -> books: {edges:#?}"));
    assert_eq!(web_books["src_identity"], WEB_ID, "{web_books}");
    assert_eq!(web_books["dst_identity"], BOOKS_ID, "{web_books}");
    assert_eq!(web_books["secured"], true, "{web_books}");

    let out = env.run(&["diagnostics", "proxy-metrics", "po/books-0"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod=\"books-0\""));
    let out = env.run(&["check", "--proxy"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("loopback mode") && text.contains("controller (pid"),
        "{text}"
    );

    let out = env.run(&["down"]);
    assert!(out.status.success());
}

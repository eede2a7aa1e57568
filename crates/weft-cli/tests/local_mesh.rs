//! `weft up` / `weft down` end to end: a 3-workload mesh from a directory, calls across
//! it through both proxies, scaling by editing the directory, `weft down` after a
//! `kill -9` of `weft up`, and nothing left behind; calls between pods are mTLS (a
//! capture on the hub's bridge sees no plaintext). The mesh tests need root (network
//! namespaces, iptables) and skip with a reason otherwise; the bad-input tests run
//! anywhere. Each test uses its own namespace prefix and state directory, so they run
//! side by side (and beside a mesh a developer has up).

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use weft_core::prom::Scrape;

mod common;
use common::{
    build_binaries, eventually, mesh_yaml, not_root_or_missing_tools, run_ok, stat, MeshEnv as _,
    NsEnv, SERVICES,
};

/// `None` when the mesh tests can run here, else why not.
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

common::ns_env!(Env, "t");

fn inbound_requests(scrape: &Scrape) -> f64 {
    scrape.sum("request_total", &[("direction", "inbound")])
}

#[test]
fn foreground_mesh_calls_scaling_and_down_after_kill_9() {
    require_root!();
    let mut env = Env::new("f");
    env.write("mesh.yaml", &mesh_yaml(1));
    env.write("services.yaml", SERVICES);

    let started = Instant::now();
    let up = env.up_foreground(&[]);
    env.up = Some(up);
    eprintln!("weft up ready after {:?}", started.elapsed());

    // A call from inside the client pod, by Service name, through both proxies.
    let out = NsEnv::get_in(
        &env.netns("client-0"),
        "http://books.default.svc:8080/hello",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the call failed: {text}");
    assert!(text.starts_with("200 books /hello (pod books-0"), "{text}");
    assert!(text.contains("<- [200 authors / (pod authors-0"), "{text}");
    let client = env.metrics("client-0").expect("client metrics");
    let out_labels = [
        ("direction", "outbound"),
        ("authority", "books.default.svc:8080"),
        ("dst_service", "books"),
    ];
    assert!(
        client.sum("request_total", &out_labels) >= 1.0,
        "the client's proxy saw no outbound request:\n{}",
        client.text
    );
    // The client's proxy learnt books' endpoints from the controller's destination
    // service (the VIP of its original destination, looked up once).
    assert!(
        client.sum("destination_lookups_total", &[("result", "service")]) >= 1.0
            && client.sum("destination_streams", &[]) >= 1.0,
        "the client's proxy did not resolve books through the controller:\n{}",
        client.text
    );
    let books = env.metrics("books-0").expect("books metrics");
    let in_labels = [
        ("direction", "inbound"),
        ("authority", "books.default.svc:8080"),
        ("pod", "books-0"),
    ];
    assert!(
        books.sum("request_total", &in_labels) >= 1.0,
        "the books proxy saw no inbound request:\n{}",
        books.text
    );
    assert!(
        books.sum(
            "request_total",
            &[("direction", "outbound"), ("dst_service", "authors")]
        ) >= 1.0,
        "books' calls to authors did not go through its proxy:\n{}",
        books.text
    );
    // Meshed without configuration: both hops are mTLS with the workloads' identities.
    let client_id = "client.default.serviceaccount.identity.weft.cluster.local";
    let books_id = "books.default.serviceaccount.identity.weft.cluster.local";
    assert!(
        client.sum(
            "request_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", books_id)
            ]
        ) >= 1.0,
        "the client's calls to books were not mTLS to {books_id}:\n{}",
        client.text
    );
    assert!(
        books.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", client_id)
            ]
        ) >= 1.0,
        "books did not see the client's identity:\n{}",
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

    // Scale books to 2 in the directory: the client's steady load reaches the new
    // replica once it is up and the proxies have its address.
    let scaled_at = Instant::now();
    env.write("mesh.yaml", &mesh_yaml(2));
    let reached = eventually(Duration::from_secs(10), || {
        let m = env.metrics("books-1")?;
        (inbound_requests(&m) > 0.0).then(|| scaled_at.elapsed())
    });
    let reached = reached.unwrap_or_else(|| {
        panic!(
            "no traffic reached books-1 within 10s:\n{}",
            env.up_output()
        )
    });
    eprintln!("traffic reached the new replica {reached:?} after the directory changed");
    assert!(
        reached <= Duration::from_secs(1),
        "traffic reached the new replica only after {reached:?}"
    );

    // Crash: kill -9 weft up. `weft down` finds everything from the state file.
    assert_eq!(
        env.recorded_procs().len(),
        9,
        "the controller and 4 pods × (proxy + app)"
    );
    env.down_after_kill_9_of_up();
    let again = env.run(&["down"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
}

#[test]
fn detached_up_is_ready_when_it_returns_and_down_removes_it() {
    require_root!();
    let env = Env::new("d");
    env.write("mesh.yaml", &mesh_yaml(2));
    env.write("services.yaml", SERVICES);
    let started = Instant::now();
    let out = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(out.status.success());
    eprintln!("weft up -d returned after {took:?}");
    // Ready means ready: the first call works.
    let out = NsEnv::get_in(&env.netns("client-0"), "http://books:8080/first");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("<- [200 authors"), "{text}");
    // A replica calling its own Service, answered by itself at times: that hop
    // bypasses its inbound proxy, so it must not be mTLS (it never leaves the pod).
    let mut answered = std::collections::BTreeSet::new();
    for i in 0..20 {
        let out = NsEnv::get_in(
            &env.netns("books-0"),
            &format!("http://books:8080/self/{i}"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "books-0 calling books failed: {text}");
        if let Some(pod) = text
            .split("(pod ")
            .nth(1)
            .and_then(|r| r.split([',', ')']).next())
        {
            answered.insert(pod.to_owned());
        }
    }
    assert!(
        answered.contains("books-0"),
        "books-0 never answered itself: {answered:?}"
    );
    // `weft stat` reads every pod's proxy from inside the hub: books (2 replicas,
    // summed) served the client's steady calls over mTLS; the callers saw books too.
    let stat = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut argv = vec!["stat"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["-o", "json", "--window", "2s"]);
        let out = env.run(&argv);
        assert!(out.status.success(), "weft {argv:?} failed");
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .expect("JSON")
            .as_array()
            .expect("an array")
            .clone()
    };
    for kind in ["deploy", "svc"] {
        let rows = stat(&[kind]);
        let books = rows
            .iter()
            .find(|r| r["name"] == "books" && r["namespace"] == "default")
            .unwrap_or_else(|| panic!("no books row in weft stat {kind}: {rows:?}"));
        assert!(books["rps"].as_f64().unwrap() > 10.0, "{kind}: {books}");
        assert_eq!(books["success"], 1.0, "{kind}: {books}");
        assert_eq!(books["meshed"], 1.0, "{kind}: {books}");
    }
    // A second mesh on the same prefix is refused while this one is up.
    let again = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("weft down"));
    // `weft check --pre` (can another mesh start?) points at the running mesh.
    let check = env.run(&["check", "--pre"]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("fix: weft down"));

    let procs = env.recorded_procs();
    assert_eq!(procs.len(), 9, "the controller and 4 pods × (proxy + app)");
    let out = env.run(&["down"]);
    assert!(out.status.success());
    env.assert_nothing_left(&procs);
}

#[test]
fn requests_succeed_after_the_controller_is_killed() {
    require_root!();
    let env = Env::new("k");
    env.write("mesh.yaml", &mesh_yaml(2));
    env.write("services.yaml", SERVICES);
    let out = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
    assert!(out.status.success());
    let client_pod = env.netns("client-0");
    // Resolved through the controller (the client's steady load calls books too), and
    // both replicas in use: a replica refused early calls while it started, and may sit
    // out an ejection backoff first.
    let answered_by = |path: &str| -> Option<String> {
        let out = NsEnv::get_in(
            &client_pod,
            &format!("http://books.default.svc:8080/{path}"),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        assert!(text.starts_with("200 books"), "{text}");
        text.split("(pod ")
            .nth(1)
            .and_then(|r| r.split([',', ')']).next())
            .map(str::to_owned)
    };
    let mut before = std::collections::BTreeSet::new();
    let both = eventually(Duration::from_secs(15), || {
        before.extend(answered_by("before"));
        (before.len() == 2).then_some(())
    });
    assert!(
        both.is_some(),
        "books-1 never answered before the kill: {before:?}"
    );

    // kill -9 the controller.
    let state = env.state();
    let pid = state["controller"]["pid"].as_u64().expect("a controller") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gone = eventually(Duration::from_secs(5), || {
        stat(pid as u32).is_none_or(|(s, _)| s == 'Z').then_some(())
    });
    assert!(gone.is_some(), "the controller did not die");
    // The client's proxy notices (its stream breaks, reopening it fails)...
    let noticed = eventually(Duration::from_secs(10), || {
        let m = env.metrics("client-0")?;
        (m.sum("destination_stream_errors_total", &[]) >= 2.0).then_some(())
    });
    assert!(noticed.is_some(), "the client's proxy did not notice");
    let failures_before = env.metrics("client-0").unwrap().sum(
        "response_total",
        &[("direction", "outbound"), ("classification", "failure")],
    );

    // ...and keeps serving with the endpoints it had: every call succeeds, on both
    // replicas, for new connections too (each call is one).
    let mut pods = std::collections::BTreeSet::new();
    for i in 0..20 {
        pods.extend(answered_by(&format!("after/{i}")));
    }
    assert_eq!(
        pods.into_iter().collect::<Vec<_>>(),
        ["books-0", "books-1"],
        "the calls did not reach both replicas"
    );
    // The steady load kept succeeding too: wait for it to answer a few more calls.
    let successes = |m: &Scrape| {
        m.sum(
            "response_total",
            &[("direction", "outbound"), ("classification", "success")],
        )
    };
    let answered = successes(&env.metrics("client-0").unwrap());
    let more = eventually(Duration::from_secs(10), || {
        let m = env.metrics("client-0")?;
        (successes(&m) >= answered + 5.0).then_some(())
    });
    assert!(more.is_some(), "the steady load stopped being answered");
    let client = env.metrics("client-0").unwrap();
    assert_eq!(
        client.sum(
            "response_total",
            &[("direction", "outbound"), ("classification", "failure")]
        ),
        failures_before,
        "requests failed after the controller died:\n{}",
        client.text
    );

    let procs = env.recorded_procs();
    let out = env.run(&["down"]);
    assert!(out.status.success());
    env.assert_nothing_left(&procs);
}

/// Each case: a broken mesh directory, and what the error must say.
const BAD: &[(&str, &str, &str)] = &[
    (
        "malformed",
        "kind: Mesh\nworkloads:\n  - name: [web\n",
        "mesh.yaml: ",
    ),
    (
        "duplicate",
        "kind: Mesh\nworkloads:\n  - {name: web, command: [x]}\n  - {name: web, command: [y]}\n",
        "mesh.yaml: workloads[1] (web): duplicate workload: default/web",
    ),
    (
        "unknown field",
        "kind: Mesh\nworkloads:\n  - {name: web, command: [x]}\n  - {name: books, replica: 2, command: [x]}\n",
        "mesh.yaml: workloads[1] (books): unknown field `replica`",
    ),
    (
        "port conflict",
        "kind: Mesh\nworkloads:\n  - {name: web, ports: [8080, 4191], command: [x]}\n",
        "mesh.yaml: workloads[0] (web): ports[1]: port 4191 conflicts with the proxy's admin port",
    ),
];

#[test]
fn bad_input_is_refused_with_its_location_and_nothing_starts() {
    for (case, mesh, expected) in BAD {
        let env = Env::new("b");
        env.write("mesh.yaml", mesh);
        env.write("services.yaml", SERVICES);
        let out = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: weft up accepted it");
        assert!(stderr.contains(expected), "{case}: {stderr}");
        assert!(
            !env.state_dir.exists(),
            "{case}: weft up made its state directory"
        );
        if nix::unistd::geteuid().is_root() {
            let netns = run_ok("ip", &["netns", "list"]);
            assert!(
                !netns.contains(&format!("{}-", env.prefix)),
                "{case}: namespaces were made:\n{netns}"
            );
        }
        // `weft check DIR` reports the same problem.
        let check = env.run(&["check", env.dir.to_str().unwrap()]);
        assert!(!check.status.success());
        assert!(
            String::from_utf8_lossy(&check.stdout).contains(expected),
            "{case}"
        );
    }
}

// Without root `weft up` runs the mesh in loopback mode: tests/loopback_mesh.rs
// (`without_root_weft_up_runs_in_loopback_mode`).

/// Every frame seen in network namespace `netns` (all its interfaces) while it runs:
/// an `AF_PACKET` socket for all protocols, read on a thread that entered the namespace.
/// Returns once the socket is open; `stop` ends it and gives the bytes.
struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Capture {
    fn start(netns: &str) -> Capture {
        use nix::sys::socket::{
            recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
            SockType,
        };
        use std::os::fd::AsRawFd as _;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (opened_tx, opened) = std::sync::mpsc::channel();
        let path = format!("/var/run/netns/{netns}");
        let stopping = stop.clone();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let captured = seen.clone();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::empty(),
                SockProtocol::EthAll,
            )
            .expect("a packet socket");
            setsockopt(
                &fd,
                sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(0, 50_000),
            )
            .unwrap();
            opened_tx.send(()).unwrap();
            let mut frame = vec![0u8; 65_536];
            // Bounded: a test that forgets to stop it still ends.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(n) = recv(fd.as_raw_fd(), &mut frame, MsgFlags::empty()) {
                    captured.lock().unwrap().extend_from_slice(&frame[..n]);
                }
            }
        });
        opened.recv().expect("the capture started");
        Capture { stop, seen, thread }
    }

    /// Stops once `marker` has been captured (or after 5 s: the caller's assertion then
    /// says it was not), and returns everything captured.
    fn stop_after(self, marker: &[u8]) -> Vec<u8> {
        eventually(Duration::from_secs(5), || {
            contains(&self.seen.lock().unwrap(), marker).then_some(())
        });
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the capture thread");
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn meshed_calls_are_encrypted_on_the_wire() {
    require_root!();
    let env = Env::new("w");
    env.write("mesh.yaml", &mesh_yaml(1));
    env.write("services.yaml", SERVICES);
    let out = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
    assert!(out.status.success());
    let hub = format!("{}-hub", env.prefix);
    let books_ip = env.pod_ip("books-0").unwrap();

    // Every pod's traffic crosses the hub's bridge: capture there.
    let capture = Capture::start(&hub);
    let secret = format!("wire-secret-{}", std::process::id());
    for i in 0..5 {
        let out = NsEnv::get_in(
            &env.netns("client-0"),
            &format!("http://books.default.svc:8080/{secret}/{i}"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "the meshed call failed: {text}");
        // The path came back in books' answer (so it crossed the wire twice).
        assert!(text.contains(&secret), "{text}");
    }
    // Control: an unmeshed caller (the hub itself) speaks plaintext, and the capture
    // must see it, or seeing nothing above would prove nothing.
    let control = format!("plaintext-control-{}", std::process::id());
    let out = NsEnv::get_in(&hub, &format!("http://{books_ip}:8080/{control}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let seen = capture.stop_after(control.as_bytes());

    assert!(
        contains(&seen, control.as_bytes()),
        "the capture did not see the plaintext control request ({} bytes captured)",
        seen.len()
    );
    assert!(
        !contains(&seen, secret.as_bytes()),
        "the meshed requests' path crossed the wire in plaintext"
    );
    // TLS 1.3 application data records (type 23, legacy version 3.3) carried them.
    assert!(contains(&seen, &[0x17, 0x03, 0x03]), "no TLS records seen");

    // Both proxies counted the calls as mTLS with the right identities.
    let client_id = "client.default.serviceaccount.identity.weft.cluster.local";
    let books_id = "books.default.serviceaccount.identity.weft.cluster.local";
    let books = env.metrics("books-0").unwrap();
    assert!(
        books.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", client_id)
            ]
        ) >= 5.0,
        "{}",
        books.text
    );
    // The unmeshed control request arrived without identity.
    assert_eq!(
        books.sum(
            "request_total",
            &[("direction", "inbound"), ("tls", "no_identity")]
        ),
        1.0,
        "{}",
        books.text
    );
    let client = env.metrics("client-0").unwrap();
    assert!(
        client.sum(
            "request_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", books_id)
            ]
        ) >= 5.0,
        "{}",
        client.text
    );
    let procs = env.recorded_procs();
    assert!(env.run(&["down"]).status.success());
    env.assert_nothing_left(&procs);
}

/// The counts in the last totals line an app printed (`POD: served N, calls ok N, calls
/// failed N`), if it printed one.
fn app_totals(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains(", calls failed "))?;
    let count = |key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((count("calls ok ")?, count("calls failed ")?))
}

#[test]
fn the_demo_mesh_starts_without_a_failed_call() {
    require_root!();
    let mut env = Env::new("s");
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    for file in ["mesh.yaml", "services.yaml"] {
        env.write(file, &std::fs::read_to_string(demo.join(file)).unwrap());
    }
    std::fs::create_dir_all(env.dir.join("faults")).unwrap();

    let up = env.up_foreground(&[]);
    env.up = Some(up);

    // The callers print their totals 10 s after they start: their first ten seconds.
    let logs = env.state_dir.join("logs");
    let totals =
        |pod: &str| app_totals(&std::fs::read_to_string(logs.join(format!("{pod}.app.log"))).ok()?);
    let first = eventually(Duration::from_secs(40), || {
        Some((totals("web-0")?, totals("reader-0")?))
    });
    let Some(((web_ok, web_failed), (reader_ok, reader_failed))) = first else {
        panic!(
            "the callers printed no totals within 40 s:\n{}",
            env.up_output()
        );
    };
    eprintln!(
        "web: {web_ok} ok, {web_failed} failed; reader: {reader_ok} ok, {reader_failed} failed"
    );
    assert!(web_ok >= 100 && reader_ok >= 50, "the callers called");
    assert_eq!(
        (web_failed, reader_failed),
        (0, 0),
        "calls failed in the mesh's first seconds:\n{}",
        env.up_output()
    );

    // Web (zone-a) stays on the books pods of its zone. Its proxy holds the calls it
    // makes before the books pods are published and sends them at once; when that
    // burst keeps the zone above the band for a step (first calls are slow on a
    // starved machine), the band lets one or two out. At most 2 % of the first ten
    // seconds' calls leave the zone, and none of the next 40.
    let to_books = |m: &weft_core::prom::Scrape, zone| {
        m.sum(
            "response_total",
            &[
                ("direction", "outbound"),
                ("dst_service", "books"),
                ("dst_zone", zone),
            ],
        )
    };
    let web = env.metrics("web-0").expect("web's metrics");
    let (home, away) = (to_books(&web, "zone-a"), to_books(&web, "zone-b"));
    eprintln!(
        "web to books: {} in zone-a, {} in zone-b",
        home as u64, away as u64
    );
    assert!(home >= 100.0, "{}", web.text);
    assert!(away <= 0.02 * (home + away), "{}", web.text);
    let later = eventually(Duration::from_secs(20), || {
        let m = env.metrics("web-0")?;
        (to_books(&m, "zone-a") + to_books(&m, "zone-b") >= home + away + 40.0).then_some(m)
    })
    .expect("web called books 40 more times within 20 s");
    assert_eq!(to_books(&later, "zone-b"), away, "{}", later.text);
}

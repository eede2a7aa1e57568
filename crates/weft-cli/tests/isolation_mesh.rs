//! Isolation of the local mesh's pods (root): IPv6 is off in every pod and in the hub,
//! so pods cannot reach each other past the proxies (whose redirection is IPv4 only);
//! apps run as an unprivileged user, in a mount namespace where the state directory is
//! hidden, so they cannot read the mesh's CA key or any token; the proxies (UID 2102)
//! cannot read the token files nor each other's memory. Calls across the mesh still
//! succeed over mTLS. Each test has its own prefix and state directory.

#![cfg(target_os = "linux")]

use std::fs::File;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

mod common;
use common::{eventually, mesh_yaml, require_root, MeshEnv as _, NsEnv, SERVICES};

common::ns_env!(Env, "i");

impl Env {
    /// `weft up -d`, which returns once every pod is ready.
    fn up(&self) {
        let out = self.run(&["up", "-d", self.dir.to_str().unwrap()]);
        assert!(out.status.success(), "weft up -d failed");
    }

    /// The network namespaces of the mesh (the hub and every pod), from the state file.
    fn namespaces(&self) -> Vec<String> {
        let state = self.state();
        let mut out = vec![state["hub"].as_str().unwrap().to_owned()];
        out.extend(
            state["pods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["netns"].as_str().unwrap().to_owned()),
        );
        out
    }
}

fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn stdout_ok(program: &str, args: &[&str]) -> String {
    let out = output(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside network namespace `netns`.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(netns);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// The link-local address the kernel would give a link with this MAC (EUI-64), and
/// what an attacker in a neighbouring pod would aim at.
fn link_local(mac: &str) -> Ipv6Addr {
    let b: Vec<u16> = mac
        .split(':')
        .map(|x| u16::from_str_radix(x, 16).unwrap())
        .collect();
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        ((b[0] ^ 0x02) << 8) | b[1],
        (b[2] << 8) | 0xff,
        0xfe00 | b[3],
        (b[4] << 8) | b[5],
    )
}

/// (index, MAC) of `eth0` in `netns`.
fn eth0(netns: &str) -> (u32, String) {
    let line = stdout_ok("ip", &["-n", netns, "-o", "link", "show", "eth0"]);
    let index = line.split(':').next().unwrap().trim().parse().unwrap();
    let mac = line
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {line}"))
        .to_owned();
    (index, mac)
}

#[test]
fn ipv6_is_off_in_every_pod_so_pods_meet_only_through_the_proxies_over_ipv4() {
    require_root!();
    let env = Env::new("v6");
    env.write("mesh.yaml", &mesh_yaml(1));
    env.write("services.yaml", SERVICES);
    env.up();

    let namespaces = env.namespaces();
    assert_eq!(namespaces.len(), 4, "{namespaces:?}");
    for ns in &namespaces {
        let addrs = stdout_ok("ip", &["-n", ns, "-6", "-o", "addr", "show"]);
        assert!(addrs.trim().is_empty(), "{ns} has IPv6 addresses:\n{addrs}");
        for knob in ["all", "default"] {
            let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
            let value = stdout_ok("ip", &["netns", "exec", ns, "cat", &path]);
            assert_eq!(value.trim(), "1", "{ns}: {path}");
        }
    }

    // An app of books listening on every IPv6 (and IPv4) address, as in the review.
    let books = env.netns("books-0");
    let listener = in_netns(&books, || {
        TcpListener::bind((Ipv6Addr::UNSPECIFIED, 18080)).expect("bind [::]:18080")
    });
    listener.set_nonblocking(true).unwrap();
    // It is there: books' own pod reaches it over loopback (never redirected).
    in_netns(&books, || {
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], 18080)),
            Duration::from_secs(2),
        )
        .expect("the listener answers inside its pod")
    });

    // From client's pod, over books' link-local address: no route (no IPv6 at all).
    let (_, books_mac) = eth0(&books);
    let client = env.netns("client-0");
    let (client_eth0, _) = eth0(&client);
    let target = SocketAddrV6::new(link_local(&books_mac), 18080, 0, client_eth0);
    let attempt = in_netns(&client, move || {
        TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))
    });
    assert!(
        attempt.is_err(),
        "a pod reached another pod over IPv6 ({target}), past the proxies"
    );
    drop(listener);

    // IPv4 goes through both proxies, over mTLS.
    let out = NsEnv::get_in(&client, "http://books.default.svc:8080/");
    assert!(
        out.status.success(),
        "a call over IPv4 failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let meshed = eventually(Duration::from_secs(10), || {
        let m = env.metrics("books-0")?;
        let n = m.sum(
            "request_total",
            &[("direction", "inbound"), ("tls", "true")],
        );
        (n > 0.0).then_some(n)
    });
    assert!(meshed.is_some(), "books' proxy saw no mTLS requests");

    let out = env.run(&["down"]);
    assert!(out.status.success());
    let left = stdout_ok("ip", &["netns", "list"]);
    assert!(
        !left
            .lines()
            .any(|l| l.starts_with(&format!("{}-", env.prefix))),
        "namespaces left:\n{left}"
    );
}

/// A workload that reports what its user can read, then serves on 8080.
fn probe(name: &str, user: Option<&str>, state_dir: &Path) -> String {
    let s = state_dir.display();
    let script = r#"dir=$1; shift; for f in "$@"; do if head -c1 "$f" >/dev/null 2>&1; then echo "READ $f"; else echo "DENIED $f"; fi; done; echo "ids uid=$(id -u) gid=$(id -g) groups=$(id -G)"; echo "state dir: [$(ls -A "$dir" 2>&1)]"; exec weft-demo-app serve --name "$0" --port 8080"#;
    let user = user.map_or(String::new(), |u| format!("    user: {u:?}\n"));
    format!(
        r#"  - name: {name}
    ports: [8080]
{user}    command: [sh, -c, {script:?}, {name}, "{s}", "{s}/identity/issuer.key", "{s}/identity/trust-anchors.pem", "{s}/tokens/default/books", "{s}/tokens/default/{name}", "{s}/state.json", "{s}/logs/books-0.proxy.log", /etc/hosts]
"#
    )
}

#[test]
fn apps_run_unprivileged_and_cannot_read_the_ca_key_or_tokens_and_proxies_only_their_own() {
    require_root!();
    let env = Env::new("iso");
    let mut mesh = mesh_yaml(1);
    mesh.push_str(&probe("probe", None, &env.state_dir));
    mesh.push_str(&probe("other", Some("3001:3002"), &env.state_dir));
    env.write("mesh.yaml", &mesh);
    env.write("services.yaml", SERVICES);
    env.up();
    let s = env.state_dir.display().to_string();

    // The files: root's alone, but for the public copy of the trust anchors.
    let mode = |p: &str| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&format!("{s}/identity")), 0o700);
    for f in std::fs::read_dir(format!("{s}/identity")).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(f.to_str().unwrap()), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&format!("{s}/tokens")), 0o700);
    assert_eq!(mode(&format!("{s}/tokens/default")), 0o700);
    assert_eq!(mode(&format!("{s}/tokens/default/books")), 0o600);
    assert_eq!(mode(&format!("{s}/trust-anchors.pem")), 0o644);

    // What the apps could read, as they are started (their own log says).
    for (pod, ids) in [
        ("probe-0", "ids uid=2103 gid=2103 groups=2103"),
        ("other-0", "ids uid=3001 gid=3002 groups=3002"),
    ] {
        let log = std::fs::read_to_string(format!("{s}/logs/{pod}.app.log")).unwrap();
        let own = pod.trim_end_matches("-0");
        for f in [
            "identity/issuer.key".to_owned(),
            "identity/trust-anchors.pem".to_owned(),
            "tokens/default/books".to_owned(),
            format!("tokens/default/{own}"),
            "state.json".to_owned(),
            "logs/books-0.proxy.log".to_owned(),
        ] {
            assert!(
                log.contains(&format!("DENIED {s}/{f}\n")),
                "{pod} could read {f}:\n{log}"
            );
        }
        assert!(log.contains("READ /etc/hosts\n"), "{pod}:\n{log}");
        assert!(log.contains(&format!("{ids}\n")), "{pod}:\n{log}");
        // The state directory is an empty file system in the app's mount namespace.
        assert!(log.contains("state dir: []\n"), "{pod}:\n{log}");
    }
    // The app processes themselves, and the host's mounts untouched.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", env.proc("client-0", "app").0)).unwrap();
    assert!(status.contains("Uid:\t2103\t2103\t2103\t2103"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!(" {s} ")),
        "the state directory's cover leaked into the host's mounts"
    );

    // The proxies' UID reads no token, nor another proxy's memory or environment.
    let as_proxy = |path: &str| {
        output(
            "setpriv",
            &[
                "--reuid=2102",
                "--regid=2102",
                "--clear-groups",
                "head",
                "-c1",
                path,
            ],
        )
        .status
        .success()
    };
    for token in ["books", "authors", "client", "probe"] {
        assert!(
            !as_proxy(&format!("{s}/tokens/default/{token}")),
            "UID 2102 read token {token}"
        );
    }
    assert!(!as_proxy(&format!("{s}/identity/issuer.key")));
    assert!(as_proxy(&format!("{s}/trust-anchors.pem")));
    let books_proxy = env.proc("books-0", "proxy").0;
    for what in ["environ", "mem"] {
        assert!(
            !as_proxy(&format!("/proc/{books_proxy}/{what}")),
            "UID 2102 read /proc/{books_proxy}/{what} of books' proxy"
        );
    }
    // No token on a command line either (those are public).
    let cmdline = std::fs::read(format!("/proc/{books_proxy}/cmdline")).unwrap();
    let token = std::fs::read(format!("{s}/tokens/default/books")).unwrap();
    assert!(
        !cmdline.windows(token.len()).any(|w| w == token),
        "the token is on the proxy's command line"
    );

    // And the apps, unprivileged, still call across the mesh over mTLS: client's load
    // reaches books, whose calls reach authors.
    for pod in ["books-0", "authors-0"] {
        let meshed = eventually(Duration::from_secs(10), || {
            let m = env.metrics(pod)?;
            let n = m.sum(
                "request_total",
                &[("direction", "inbound"), ("tls", "true")],
            );
            (n > 0.0).then_some(n)
        });
        assert!(meshed.is_some(), "{pod}'s proxy saw no mTLS requests");
    }
    // The probes serve too (a call into them from another pod).
    let probe_ip = env.pod_ip("probe-0").expect("probe-0's address");
    let out = NsEnv::get_in(&env.netns("client-0"), &format!("http://{probe_ip}:8080/"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let out = env.run(&["down"]);
    assert!(out.status.success());
    assert!(!env.state_dir.join("state.json").exists());
    let left = stdout_ok("ip", &["netns", "list"]);
    assert!(
        !left
            .lines()
            .any(|l| l.starts_with(&format!("{}-", env.prefix))),
        "namespaces left:\n{left}"
    );
}

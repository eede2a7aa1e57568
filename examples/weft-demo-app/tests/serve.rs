//! The demo app on loopback: serve, call an upstream per request, generate load, get.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_weft-demo-app");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(args: &[&str]) -> Killed {
    Killed(
        Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("WEFT_POD", "test-0")
            .stdout(Stdio::null())
            .spawn()
            .expect("start weft-demo-app"),
    )
}

/// `weft-demo-app get URL`, retried until it succeeds (for up to 5 s).
fn get_eventually(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new(BIN)
            .args(["get", url, "--timeout", "1s"])
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} kept failing: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_and_calls_upstreams() {
    let (a, b) = (free_port(), free_port());
    let _authors = serve(&["--name", "authors", "--port", &a.to_string()]);
    let upstream = format!("http://localhost:{a}/authors");
    let _books = serve(&[
        "--name",
        "books",
        "--port",
        &b.to_string(),
        "--upstream",
        &upstream,
    ]);
    let out = get_eventually(&format!("http://127.0.0.1:{b}/books"));
    assert!(out.starts_with("200 books /books (pod test-0"), "{out}");
    assert!(out.contains("<- [200 authors /authors"), "{out}");
}

#[test]
fn fail_rate_one_always_fails_and_get_says_so() {
    let p = free_port();
    let _s = serve(&[
        "--name",
        "bad",
        "--port",
        &p.to_string(),
        "--fail-rate",
        "1",
    ]);
    let url = format!("http://127.0.0.1:{p}/");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new(BIN).args(["get", &url]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.starts_with("500") {
            assert!(!out.status.success());
            break;
        }
        assert!(Instant::now() < deadline, "never got a 500: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `METHOD path` with `body` over HTTP/1.1; the status and body.
fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// Status and time of one GET through `weft-demo-app get`.
fn timed_status(url: &str) -> (String, Duration) {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["get", url, "--quiet", "--timeout", "2s"])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        started.elapsed(),
    )
}

#[test]
fn fault_file_changes_behaviour_while_serving_and_its_removal_restores_it() {
    let p = free_port();
    let dir = std::env::temp_dir().join(format!("weft-demo-fault-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // `{zone}` in the path: every server of a zone reads the same file.
    let template = dir.join("{zone}");
    let file = dir.join("zone-x");
    let mut child = Command::new(BIN)
        .args(["serve", "--name", "f", "--port", &p.to_string()])
        .arg("--fault-file")
        .arg(&template)
        .env("WEFT_POD", "f-0")
        .env("WEFT_ZONE", "zone-x")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What the server says about the fault file, from both streams, line by line.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
    }
    let _s = Killed(child);
    // Waits (up to 5 s) for the server's line saying it read the file.
    let said = |wanted: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("fault file") && line.ends_with(wanted) => break,
                Ok(_) => {}
                Err(_) => panic!("the server never said \"fault file ...{wanted}\""),
            }
        }
    };
    let url = format!("http://127.0.0.1:{p}/");
    get_eventually(&url);

    std::fs::write(&file, "fail_rate=1\n").unwrap();
    let failing = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        timed_status(&url).0 == "500"
    });
    assert!(failing, "the fault file did not make the server fail");
    assert_eq!(
        request(p, "GET", "/admin/fault", "").1,
        "delay=0s fail_rate=1\n"
    );

    std::fs::write(&file, "delay=300ms").unwrap();
    said(": delay=300ms");
    let (status, took) = timed_status(&url);
    assert_eq!(status, "200");
    assert!(took >= Duration::from_millis(300), "{took:?}");

    // A broken file is reported and the fault in force stays.
    std::fs::write(&file, "delay=fast").unwrap();
    said("; keeping delay=300ms");
    assert_eq!(request(p, "GET", "/admin/fault", "").1, "delay=300ms\n");

    std::fs::remove_file(&file).unwrap();
    said(": delay=0s");
    let (status, took) = timed_status(&url);
    assert_eq!(status, "200");
    assert!(took < Duration::from_millis(250), "{took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_fault_over_http_sets_and_shows_the_fault() {
    let p = free_port();
    let _s = serve(&["--name", "h", "--port", &p.to_string()]);
    get_eventually(&format!("http://127.0.0.1:{p}/"));
    assert_eq!(
        request(p, "GET", "/admin/fault", ""),
        (200, "delay=0s\n".into())
    );
    let (status, body) = request(p, "POST", "/admin/fault", "fail_rate=1&delay=5ms");
    assert_eq!((status, body.as_str()), (200, "delay=5ms fail_rate=1\n"));
    assert_eq!(request(p, "GET", "/anything", "").0, 500);
    let (status, body) = request(p, "POST", "/admin/fault", "fail_rate=often");
    assert_eq!(status, 400);
    assert!(
        body.contains("fail_rate=often: a number from 0 to 1"),
        "{body}"
    );
    // Cleared with an empty body.
    assert_eq!(request(p, "POST", "/admin/fault", "").1, "delay=0s\n");
    assert_eq!(request(p, "GET", "/anything", "").0, 200);
}

#[test]
fn weft_listen_addr_binds_that_address_only_and_bad_values_are_named() {
    let p = free_port();
    let _s = Killed(
        Command::new(BIN)
            .args(["serve", "--name", "solo", "--port", &p.to_string()])
            .env("WEFT_LISTEN_ADDR", "127.0.0.3")
            .stdout(Stdio::null())
            .spawn()
            .expect("start weft-demo-app"),
    );
    let out = get_eventually(&format!("http://127.0.0.3:{p}/here"));
    assert!(out.starts_with("200 solo /here"), "{out}");
    // Another loopback address of the same port is not served (pods share the ports).
    let other = Command::new(BIN)
        .args(["get", &format!("http://127.0.0.1:{p}/"), "--timeout", "1s"])
        .output()
        .unwrap();
    assert!(!other.status.success());

    let bad = Command::new(BIN)
        .args(["serve", "--name", "solo", "--port", &p.to_string()])
        .env("WEFT_LISTEN_ADDR", "pod-3")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("WEFT_LISTEN_ADDR \"pod-3\" is not an IP address"),
        "{stderr}"
    );
}

/// `weft-demo-app lookup URL --book BOOK`: whether it succeeded, and what it printed.
fn lookup(url: &str, book: &str, timeout: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["lookup", url, "--book", book, "--timeout", timeout])
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// `lookup`, retried until it succeeds (for up to 5 s).
fn lookup_eventually(url: &str, book: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, out) = lookup(url, book, "1s");
        if ok {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "lookup {url} kept failing: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn grpc_lookup_is_answered_on_the_grpc_port_and_the_http_port() {
    let (p, g) = (free_port(), free_port());
    let _authors = Killed(
        Command::new(BIN)
            .args(["serve", "--name", "authors", "--port", &p.to_string()])
            .args(["--grpc-port", &g.to_string()])
            .env("WEFT_POD", "authors-0")
            .env("WEFT_ZONE", "zone-c")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(
        lookup_eventually(&format!("http://127.0.0.1:{g}"), "dune"),
        "OK authors by Frank Herbert (pod authors-0, zone zone-c)"
    );
    // The HTTP port answers gRPC too (loopback mode sends a pod's inbound traffic to its
    // first port), and the gRPC port answers HTTP.
    assert_eq!(
        lookup_eventually(&format!("http://127.0.0.1:{p}"), "solaris"),
        "OK authors by Stanisław Lem (pod authors-0, zone zone-c)"
    );
    let out = get_eventually(&format!("http://127.0.0.1:{g}/authors"));
    assert!(
        out.starts_with("200 authors /authors (pod authors-0"),
        "{out}"
    );
    // --grpc-port equal to --port is refused, naming both.
    let same = Command::new(BIN)
        .args(["serve", "--name", "x", "--port", &p.to_string()])
        .args(["--grpc-port", &p.to_string()])
        .output()
        .unwrap();
    assert!(!same.status.success());
    let stderr = String::from_utf8_lossy(&same.stderr);
    assert!(
        stderr.contains(&format!("--grpc-port {p} is --port already")),
        "{stderr}"
    );
}

#[test]
fn grpc_faults_answer_unavailable_and_delays_hit_the_deadline() {
    let (p, g) = (free_port(), free_port());
    let _s = serve(&[
        "--name",
        "authors",
        "--port",
        &p.to_string(),
        "--grpc-port",
        &g.to_string(),
    ]);
    let url = format!("http://127.0.0.1:{g}");
    lookup_eventually(&url, "dune");
    assert_eq!(request(p, "POST", "/admin/fault", "fail_rate=1").0, 200);
    let (ok, out) = lookup(&url, "dune", "2s");
    assert!(!ok, "a failed call makes lookup fail: {out}");
    assert_eq!(out, "UNAVAILABLE: authors (pod test-0) failed on purpose");
    assert_eq!(
        request(p, "POST", "/admin/fault", "delay=1s").1,
        "delay=1s\n"
    );
    let started = Instant::now();
    let (ok, out) = lookup(&url, "dune", "200ms");
    assert!(!ok);
    assert_eq!(
        out,
        format!("DEADLINE_EXCEEDED: {url}/ /weft.demo.Authors/Lookup: no answer within 200ms")
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // Cleared: answered again.
    request(p, "POST", "/admin/fault", "");
    assert_eq!(
        lookup(&url, "dune", "2s"),
        (
            true,
            "OK authors by Frank Herbert (pod test-0, zone )".into()
        )
    );
}

#[test]
fn grpc_upstream_answers_are_included_and_failures_make_a_502() {
    let (a, g, b) = (free_port(), free_port(), free_port());
    let _authors = serve(&[
        "--name",
        "authors",
        "--port",
        &a.to_string(),
        "--grpc-port",
        &g.to_string(),
    ]);
    let upstream = format!("http://localhost:{g}");
    let _books = serve(&[
        "--name",
        "books",
        "--port",
        &b.to_string(),
        "--grpc-upstream",
        &upstream,
    ]);
    // The book is the request's last path segment.
    let out = get_eventually(&format!("http://127.0.0.1:{b}/books/the-dispossessed"));
    assert_eq!(
        out.trim_end(),
        "200 books /books/the-dispossessed (pod test-0, zone ) \
         <- [gRPC OK authors by Ursula K. Le Guin (pod test-0, zone )]"
    );
    // The upstream's failure is named in a 502.
    request(a, "POST", "/admin/fault", "fail_rate=1");
    let (status, body) = request(b, "GET", "/books/dune", "");
    assert_eq!(status, 502);
    assert_eq!(
        body.trim_end(),
        format!(
            "books /books/dune (pod test-0, zone ) \
             <- [gRPC {upstream}/ UNAVAILABLE: authors (pod test-0) failed on purpose]"
        )
    );
    // A gRPC upstream that is not a plain http://HOST:PORT is refused at start.
    let bad = Command::new(BIN)
        .args(["serve", "--name", "x", "--port", &free_port().to_string()])
        .args(["--grpc-upstream", "http://authors:9090/Lookup"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("gRPC upstream http://authors:9090/Lookup: no path expected"),
        "{stderr}"
    );
}

/// `echo` answers with the request as JSON (echo-basic's shape) on each of its ports,
/// and gRPC with its pod; `get -H` sends headers and `-i` prints the response's.
#[test]
fn echo_describes_the_request_and_get_sends_and_shows_headers() {
    let (p1, p2) = (free_port(), free_port());
    let _echo = Killed(
        Command::new(BIN)
            .args(["echo", "--name", "echo-v1", "--port", &p1.to_string()])
            .args(["--port", &p2.to_string()])
            .env("WEFT_POD", "echo-v1-0")
            .env("WEFT_NAMESPACE", "gateway-conformance-mesh")
            .stdout(Stdio::null())
            .spawn()
            .expect("start weft-demo-app echo"),
    );
    let url = format!("http://127.0.0.1:{p2}/add?animal=whale");
    get_eventually(&url);
    let out = Command::new(BIN)
        .args([
            "get",
            "-i",
            &url,
            "-H",
            "x-header-add: a",
            "-H",
            "X-Header-Add: b",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("< content-type: application/json"),
        "{stdout}"
    );
    let answer = lines
        .find(|l| !l.starts_with("< "))
        .unwrap_or_else(|| panic!("no answer line: {stdout}"));
    assert_eq!(
        answer,
        format!(
            concat!(
                r#"200 {{"path":"/add?animal=whale","host":"127.0.0.1:{}","method":"GET","#,
                r#""proto":"HTTP/1.1","headers":{{"X-Header-Add":["a","b"]}},"#,
                r#""namespace":"gateway-conformance-mesh","ingress":"","service":"","pod":"echo-v1-0"}}"#
            ),
            p2
        )
    );
    // The other port answers too, gRPC included, naming the pod.
    let out = Command::new(BIN)
        .args([
            "lookup",
            &format!("http://127.0.0.1:{p1}"),
            "--book",
            "dune",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "OK echo-v1 by Frank Herbert (pod echo-v1-0, zone )",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad header is refused by name.
    let out = Command::new(BIN)
        .args(["get", &url, "-H", "no colon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"no colon\" is not `Name: value`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

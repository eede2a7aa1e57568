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

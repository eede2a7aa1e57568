//! The `weft-proxy` binary: flags, start-up errors, and SIGTERM draining.

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use weft_test::{client, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_weft-proxy");

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .output()
        .expect("run weft-proxy")
}

/// A proxy process this test started; killed (by its pid) when dropped.
struct ProxyProcess(Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `weft-proxy` process in explicit mode in front of `app`, with `args`, once
/// ready: the process, its inbound and its admin address.
async fn ready_proxy(
    app: &TestServer,
    args: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> (ProxyProcess, SocketAddr, SocketAddr) {
    let (inbound, admin) = (free_port(), free_port());
    let mut cmd = Command::new(BIN);
    cmd.args(["--mode", "explicit"])
        .args(["--inbound-forward", &app.addr().to_string()])
        .args(["--inbound-listen", &inbound.to_string()])
        .args(["--outbound-listen", &free_port().to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(args)
        .stdin(Stdio::null());
    adjust(&mut cmd);
    let proxy = ProxyProcess(cmd.spawn().expect("start weft-proxy"));
    let ready = weft_test::eventually(Duration::from_secs(10), || async move {
        client::get(admin, "admin", "/ready")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ready, "weft-proxy became ready");
    (proxy, inbound, admin)
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--inbound-listen",
        "--outbound-listen",
        "--admin-listen",
        "--mode",
        "--endpoints",
        "--opaque-ports",
        "--drain-grace",
        "--destination",
        "--destination-wait",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("WEFT_INBOUND_LISTEN"));
    assert!(help.contains("WEFT_DESTINATION"));
    assert!(help.contains("WEFT_DESTINATION_WAIT"));
}

#[test]
fn the_destination_service_needs_trust_anchors() {
    let out = run(&["--destination", "198.18.0.1:8090"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--trust-anchors"), "{err}");
}

#[test]
fn a_bad_endpoints_file_is_refused_naming_the_file_and_field() {
    let dir = std::env::temp_dir().join(format!("weft-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("endpoints.yaml");
    std::fs::write(
        &file,
        "services:\n  - name: books\n    endpoint: [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = run(&["--endpoints", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("endpoints.yaml"), "{err}");
    assert!(err.contains("unknown field `endpoint`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn explicit_mode_needs_an_inbound_forward_address() {
    let out = run(&["--mode", "explicit"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--inbound-forward is required in explicit mode"));
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let out = run(&[
        "--inbound-listen",
        &free_port().to_string(),
        "--outbound-listen",
        &free_port().to_string(),
        "--admin-listen",
        &busy_addr,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {busy_addr} (admin)")),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let app = TestServer::loopback("books").await;
    let (mut proxy, inbound, _) =
        ready_proxy(&app, &["--log", "warn", "--drain-grace", "5s"], |_| {}).await;

    let in_flight = tokio::spawn(async move { client::get(inbound, "books", "/delay/500").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let rsp = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!((rsp.status.as_u16(), rsp.body.as_str()), (200, "slept 500"));

    let start = Instant::now();
    let status = loop {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "exited within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "clean exit after drain: {status}");
}

/// A full disk under the log file (here `/dev/full`, where every write fails with
/// ENOSPC) costs log lines, counted, never the process or a request.
#[tokio::test]
async fn a_log_that_cannot_be_written_loses_lines_not_requests() {
    let full = match std::fs::OpenOptions::new().write(true).open("/dev/full") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skipped: /dev/full is not available here: {e}");
            return;
        }
    };
    let app = TestServer::loopback("books").await;
    let (mut proxy, inbound, admin) = ready_proxy(&app, &["--log", "debug"], |cmd| {
        cmd.stderr(full);
    })
    .await;
    for _ in 0..20 {
        let rsp = client::get(inbound, "books", "/").await.unwrap();
        assert_eq!(rsp.status, 200);
    }
    assert!(proxy.0.try_wait().unwrap().is_none(), "the proxy is alive");
    let m = weft_test::metrics::fetch(admin).await.unwrap();
    assert!(m.sum("log_lines_dropped", &[]) > 0.0, "{}", m.text);
}

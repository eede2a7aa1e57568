//! The `weft-controller` binary: its help, a refusal to start on bad files, and a
//! clean stop on SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");

fn temp_dir(what: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("weft-controller-bin-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn help_lists_every_flag_and_its_environment_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--identity-dir", "WEFT_IDENTITY_DIR"),
        ("--tokens-dir", "WEFT_TOKENS_DIR"),
        ("--trust-domain", "WEFT_TRUST_DOMAIN"),
        ("--cert-lifetime", "WEFT_CERT_LIFETIME"),
        ("--listen", "WEFT_LISTEN"),
        ("--admin-listen", "WEFT_ADMIN_LISTEN"),
        ("--mesh-dir", "WEFT_MESH_DIR"),
        ("--pods-file", "WEFT_PODS_FILE"),
        ("--watch-interval", "WEFT_WATCH_INTERVAL"),
        ("--cluster-domain", "WEFT_CLUSTER_DOMAIN"),
        ("--opaque-ports", "WEFT_OPAQUE_PORTS"),
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
        assert!(help.contains(env), "{env} missing from:\n{help}");
    }
    assert!(help.contains("[default: 24h]"));
    assert!(help.contains("[default: 0.0.0.0:8090]"));
    assert!(help.contains("[default: 0.0.0.0:9990]"));
}

#[test]
fn a_mesh_directory_needs_a_pods_file() {
    let out = Command::new(BIN)
        .args([
            "--identity-dir",
            "/nonexistent",
            "--tokens-dir",
            "/nonexistent",
        ])
        .args(["--mesh-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--pods-file"), "{stderr}");
}

#[test]
fn missing_identity_files_stop_it_with_the_file_named() {
    let dir = temp_dir("missing");
    let out = Command::new(BIN)
        .args(["--identity-dir", dir.to_str().unwrap(), "--tokens-dir"])
        .arg(dir.join("tokens"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot read {}",
            dir.join("trust-anchors.pem").display()
        )),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_stops_it_cleanly() {
    let dir = temp_dir("sigterm");
    weft_controller::identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
    let mut child = Command::new(BIN)
        .arg("--identity-dir")
        .arg(dir.join("identity"))
        .arg("--tokens-dir")
        .arg(dir.join("tokens"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("WEFT_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut log = String::new();
    while !line.contains("controller serving") {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("the controller exited before serving:\n{log}");
        }
        log.push_str(&line);
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the controller did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
}

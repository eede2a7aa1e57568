//! The `weft` command's behaviour toward people: errors without backtraces.

use std::process::Command;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A user error is one line naming what went wrong, even with `RUST_BACKTRACE=1`
/// (common among Rust developers); `WEFT_DEBUG` adds the details.
#[test]
fn errors_are_one_message_without_a_backtrace() {
    let dir = std::env::temp_dir().join(format!("weft-cli-errors-{}", std::process::id()));
    let run = |debug: bool| {
        let mut cmd = Command::new(WEFT);
        cmd.args(["stat", "--state-dir", dir.to_str().unwrap()])
            .env("RUST_BACKTRACE", "1")
            .env_remove("WEFT_DEBUG");
        if debug {
            cmd.env("WEFT_DEBUG", "1");
        }
        cmd.output().expect("run weft")
    };
    let out = run(false);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");

    let out = run(true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.lines().count() > 1, "{stderr}");
}

/// A reader that stops early (`weft check | head -1`) ends the command quietly with
/// status 0: no `failed printing to stdout` panic from `println!` (weft check), no
/// error from a command that writes its output whole (weft install).
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = std::env::temp_dir().join(format!("weft-cli-epipe-{}", std::process::id()));
    let state = dir.to_str().unwrap();
    for args in [
        &["check", "--pre", "--state-dir", state][..],
        &["install"][..],
        &["install", "--crds"][..],
    ] {
        // The reading end is closed before weft starts: its first write fails (EPIPE).
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(WEFT)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run weft");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "weft {}: {stderr}",
            args.join(" ")
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "weft {}: {stderr}",
            args.join(" ")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

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

//! `weft identity init`: writes the anchor and issuer, refuses to overwrite them
//! without --force.

use std::process::Command;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

#[test]
fn identity_init_writes_once_and_replaces_with_force() {
    let dir = std::env::temp_dir().join(format!("weft-cli-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let init = |extra: &[&str]| {
        Command::new(WEFT)
            .args(["identity", "init", "--dir"])
            .arg(&dir)
            .args(["--trust-domain", "example.org"])
            .args(extra)
            .env_remove("WEFT_IDENTITY_DIR")
            .output()
            .unwrap()
    };

    let out = init(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for file in ["trust-anchors.pem", "issuer.crt", "issuer.key"] {
        let path = dir.join(file);
        assert!(path.exists(), "{file} missing");
        assert!(
            stdout.contains(&format!("wrote {}", path.display())),
            "{stdout}"
        );
    }
    assert!(stdout.contains("trust anchor CN=root.identity.weft.example.org"));
    assert!(stdout.contains("issuer CN=identity.weft.example.org"));
    let anchors = std::fs::read(dir.join("trust-anchors.pem")).unwrap();

    let out = init(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.join("trust-anchors.pem")).unwrap(),
        anchors
    );

    let out = init(&["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        std::fs::read(dir.join("trust-anchors.pem")).unwrap(),
        anchors
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

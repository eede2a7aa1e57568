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

/// The issuer-renewal and anchor-rotation commands of docs/identity.md, "Rotation".
#[test]
fn identity_rotate_issuer_and_new_anchor_follow_the_documented_procedure() {
    let dir = std::env::temp_dir().join(format!("weft-cli-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("identity");
    let weft = |args: &[&str]| {
        let out = Command::new(WEFT)
            .args(args)
            .env_remove("WEFT_IDENTITY_DIR")
            .env_remove("WEFT_TRUST_DOMAIN")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let p = |path: &std::path::Path| path.display().to_string();
    let (key, new_cert, new_key) = (
        dir.join("offline/anchor.key"),
        dir.join("new-anchor.crt"),
        dir.join("offline/new-anchor.key"),
    );
    let anchors = ca.join("trust-anchors.pem");
    let mode = |path: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    };

    let (ok, out, err) = weft(&[
        "identity",
        "init",
        "--dir",
        &p(&ca),
        "--anchor-key-out",
        &p(&key),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("store it offline"), "{out}");
    assert_eq!(mode(&key), 0o600);

    // Renewing the issuer under the same anchor.
    let before = std::fs::read(ca.join("issuer.crt")).unwrap();
    let (ok, out, err) = weft(&[
        "identity",
        "rotate-issuer",
        "--anchor-cert",
        &p(&anchors),
        "--anchor-key",
        &p(&key),
        "--out",
        &p(&ca),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "issuer CN=identity.weft.cluster.local, signed by CN=root.identity.weft.cluster.local"
        ),
        "{out}"
    );
    assert_ne!(std::fs::read(ca.join("issuer.crt")).unwrap(), before);
    assert_eq!(mode(&ca.join("issuer.key")), 0o600);

    // Anchor rotation: a new anchor is refused until the bundle holds it.
    let (ok, _, err) = weft(&[
        "identity",
        "new-anchor",
        "--cert-out",
        &p(&new_cert),
        "--key-out",
        &p(&new_key),
    ]);
    assert!(ok, "{err}");
    let rotate_to_new = [
        "identity",
        "rotate-issuer",
        "--anchor-cert",
        &p(&new_cert),
        "--anchor-key",
        &p(&new_key),
        "--out",
        &p(&ca),
    ];
    let (ok, _, err) = weft(&rotate_to_new);
    assert!(!ok);
    assert!(err.contains("does not hold the trust anchor"), "{err}");
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(&anchors).unwrap(),
        std::fs::read_to_string(&new_cert).unwrap()
    );
    std::fs::write(&anchors, bundle).unwrap();
    let (ok, _, err) = weft(&rotate_to_new);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

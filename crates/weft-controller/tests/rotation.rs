//! Issuer and trust-anchor rotation: `rotate_issuer` / `new_anchor` (what `weft
//! identity rotate-issuer` / `new-anchor` run), and a running controller picking up new
//! identity files without a restart, keeping its issuer when the new files are bad.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use weft_controller::identity::{
    self, CaError, InitOptions, Issuer, ReloadOptions, RotateOptions, TrustAnchors,
};
use weft_controller::{Config, Controller};

/// A directory of this test's own, removed when dropped.
fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("weft-controller-rotation-{what}-"))
        .tempdir()
        .unwrap()
}

/// `identity/` with an anchor whose key is kept in `anchor.key`.
fn init(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = dir.join("identity");
    let key = dir.join("offline").join("anchor.key");
    let written = identity::init_with(
        &ca,
        &InitOptions {
            anchor_key_out: Some(key.clone()),
            ..InitOptions::new("cluster.local")
        },
    )
    .unwrap();
    assert_eq!(written.anchor_key.as_deref(), Some(key.as_path()));
    (ca.clone(), ca.join(identity::ANCHORS_FILE), key)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn der(pem_file: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(pem_file).unwrap()
}

#[test]
fn rotate_issuer_signs_a_new_issuer_with_the_kept_anchor_key() {
    let tmp = temp_dir("rotate");
    let (ca, anchors, anchor_key) = init(tmp.path());
    assert_eq!(mode(&anchor_key), 0o600);
    let old_cert = der(&ca.join(identity::ISSUER_CERT_FILE));
    let old_key = std::fs::read(ca.join(identity::ISSUER_KEY_FILE)).unwrap();

    let rotated = identity::rotate_issuer(&RotateOptions::new(&anchors, &anchor_key, &ca)).unwrap();
    assert_eq!(rotated.issuer_subject, "CN=identity.weft.cluster.local");
    assert_eq!(
        rotated.anchor_subject,
        "CN=root.identity.weft.cluster.local"
    );
    assert!(rotated.anchors_written.is_none());
    // A new certificate and a new key, which load as the controller loads them.
    assert_ne!(der(&rotated.issuer_cert), old_cert);
    assert_ne!(std::fs::read(&rotated.issuer_key).unwrap(), old_key);
    assert_eq!(mode(&rotated.issuer_key), 0o600);
    let bundle = TrustAnchors::load(&anchors).unwrap();
    let issuer = Issuer::load(&rotated.issuer_cert, &rotated.issuer_key, &bundle).unwrap();
    let left = issuer
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > identity::ISSUER_LIFETIME - Duration::from_secs(60));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(&ca)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn rotate_issuer_refuses_an_anchor_the_controller_does_not_trust_yet_or_a_wrong_key() {
    let tmp = temp_dir("refuse");
    let (ca, anchors, anchor_key) = init(tmp.path());
    let before = std::fs::read(ca.join(identity::ISSUER_CERT_FILE)).unwrap();
    let new_cert = tmp.path().join("new/anchor.crt");
    let new_key = tmp.path().join("new/anchor.key");
    let made = identity::new_anchor(
        &new_cert,
        &new_key,
        "cluster.local",
        identity::ANCHOR_LIFETIME,
        false,
    )
    .unwrap();
    assert_eq!(made.subject, "CN=root.identity.weft.cluster.local");
    assert_eq!(mode(&new_key), 0o600);
    assert!(matches!(
        identity::new_anchor(
            &new_cert,
            &new_key,
            "cluster.local",
            identity::ANCHOR_LIFETIME,
            false
        ),
        Err(CaError::Exists { .. })
    ));

    // The new anchor is not in the controller's bundle yet (rotation step 1 missing).
    let err = identity::rotate_issuer(&RotateOptions::new(&new_cert, &new_key, &ca))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trust-anchors.pem") && err.contains("does not hold the trust anchor"),
        "{err}"
    );
    // A key that is not the anchor's.
    let err = identity::rotate_issuer(&RotateOptions::new(&anchors, &new_key, &ca))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not belong to the trust anchor"), "{err}");
    // A bundle is not one anchor.
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(&anchors).unwrap(),
        std::fs::read_to_string(&new_cert).unwrap()
    );
    std::fs::write(&anchors, &bundle).unwrap();
    let err = identity::rotate_issuer(&RotateOptions::new(&anchors, &anchor_key, &ca))
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds 2 certificates"), "{err}");
    // Nothing was replaced.
    assert_eq!(
        std::fs::read(ca.join(identity::ISSUER_CERT_FILE)).unwrap(),
        before
    );
    // With the bundle in place, the new anchor signs an issuer the controller loads.
    let rotated = identity::rotate_issuer(&RotateOptions::new(&new_cert, &new_key, &ca)).unwrap();
    let bundle = TrustAnchors::load(&anchors).unwrap();
    Issuer::load(&rotated.issuer_cert, &rotated.issuer_key, &bundle).unwrap();
}

fn config(dir: &Path) -> Config {
    Config {
        identity_dir: dir.join("identity"),
        tokens_dir: dir.join("tokens"),
        trust_domain: "cluster.local".into(),
        cert_lifetime: Duration::from_secs(3600),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        destination: None,
    }
}

/// The value of a metric line `name` in the controller's metrics (0 if absent).
fn metric(controller: &Controller, name: &str) -> f64 {
    let text = controller.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `check` holds (10 s at most).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_running_controller_switches_issuers_and_keeps_its_issuer_when_new_files_are_bad() {
    let tmp = temp_dir("reload");
    let (ca, anchors, anchor_key) = init(tmp.path());
    let controller = Controller::start_with(
        config(tmp.path()),
        ReloadOptions {
            interval: Duration::from_millis(50),
            ..ReloadOptions::default()
        },
    )
    .await
    .unwrap();
    let first = der(&ca.join(identity::ISSUER_CERT_FILE));
    assert_eq!(controller.serving_cert().chain()[1], first);
    const RELOAD_OK: &str = "weft_controller_identity_reloads_total{result=\"ok\"}";
    const RELOAD_ERROR: &str = "weft_controller_identity_reloads_total{result=\"error\"}";
    const EXPIRY: &str = "weft_controller_identity_issuer_expiration_timestamp_seconds";

    // A broken issuer certificate: refused, counted, the first issuer keeps signing.
    std::fs::write(ca.join(identity::ISSUER_CERT_FILE), "not a certificate").unwrap();
    until("the bad file is refused", || {
        metric(&controller, RELOAD_ERROR) == 1.0
    })
    .await;
    assert_eq!(metric(&controller, RELOAD_OK), 0.0);
    assert_eq!(controller.serving_cert().chain()[1], first);

    // A good new issuer: loaded, the serving certificate reissued by it, the expiry
    // exported.
    let rotated = identity::rotate_issuer(&RotateOptions {
        lifetime: Duration::from_secs(30 * 24 * 3600),
        ..RotateOptions::new(&anchors, &anchor_key, &ca)
    })
    .unwrap();
    let second = der(&rotated.issuer_cert);
    until("the new issuer is loaded", || {
        metric(&controller, RELOAD_OK) == 1.0
    })
    .await;
    assert_eq!(controller.serving_cert().chain()[1], second);
    let expiry = rotated
        .issuer_not_after
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert_eq!(metric(&controller, EXPIRY), expiry);
    assert_eq!(metric(&controller, RELOAD_ERROR), 1.0);

    // An issuer from an anchor outside the bundle: refused with the file named.
    let other = temp_dir("reload-other");
    identity::init(other.path(), "cluster.local", false).unwrap();
    for name in [identity::ISSUER_KEY_FILE, identity::ISSUER_CERT_FILE] {
        std::fs::copy(other.path().join(name), ca.join(name)).unwrap();
    }
    until("the foreign issuer is refused", || {
        metric(&controller, RELOAD_ERROR) == 2.0
    })
    .await;
    assert_eq!(controller.serving_cert().chain()[1], second);
    assert_eq!(metric(&controller, RELOAD_OK), 1.0);
    controller.shutdown().await.unwrap();
}

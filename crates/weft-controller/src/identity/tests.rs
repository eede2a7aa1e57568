//! The identity service's refusals, the certificates it issues, and its files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tonic::Code;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::metrics::{CertifyLabels, IdentityMetrics};

const TD: &str = "cluster.local";
const BOOKS: &str = "books.shop.serviceaccount.identity.weft.cluster.local";
const BOOKS_SPIFFE: &str = "spiffe://cluster.local/ns/shop/sa/books";

struct Fixture {
    dir: PathBuf,
    anchors: TrustAnchors,
    certifier: Certifier,
    metrics: IdentityMetrics,
    token: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture() -> Fixture {
    fixture_with(InitOptions::new(TD), DEFAULT_LIFETIME)
}

fn fixture_with(options: InitOptions, lifetime: Duration) -> Fixture {
    let dir = test_dir("ca");
    let ca = dir.join("identity");
    init_with(&ca, &options).unwrap();
    let anchors = TrustAnchors::load(&ca.join(ANCHORS_FILE)).unwrap();
    let issuer = Issuer::load(
        &ca.join(ISSUER_CERT_FILE),
        &ca.join(ISSUER_KEY_FILE),
        &anchors,
    )
    .unwrap();
    let tokens = dir.join("tokens");
    let (_, token) = write_token(&tokens, "shop", "books").unwrap();
    let metrics = IdentityMetrics::default();
    let certifier = Certifier::new(issuer, TD, Arc::new(LocalTokens::new(&tokens)))
        .unwrap()
        .with_lifetime(lifetime)
        .with_metrics(metrics.clone());
    Fixture {
        dir,
        anchors,
        certifier,
        metrics,
        token,
    }
}

/// A CSR for `sans` (DNS names, or URIs when they contain "://") with a fresh key.
fn csr_with(alg: &'static rcgen::SignatureAlgorithm, sans: &[&str]) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| {
            if s.contains("://") {
                SanType::URI(s.to_string().try_into().unwrap())
            } else {
                SanType::DnsName(s.to_string().try_into().unwrap())
            }
        })
        .collect();
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn csr(sans: &[&str]) -> Vec<u8> {
    csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, sans)
}

async fn refused(f: &Fixture, name: &str, token: &[u8], csr: &[u8]) -> tonic::Status {
    let err = f.certifier.certify(name, token, csr).await.unwrap_err();
    tonic::Status::from(err)
}

fn count(metrics: &IdentityMetrics, result: &'static str) -> u64 {
    metrics
        .certify
        .get_or_create(&CertifyLabels { result })
        .get()
}

fn verify_as_server(
    anchors: &TrustAnchors,
    certified: &Certified,
    name: &str,
) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(
        anchors.root_store(),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let intermediates: Vec<_> = certified
        .intermediates
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    verifier
        .verify_server_cert(
            &CertificateDer::from(certified.leaf.clone()),
            &intermediates,
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

#[tokio::test]
async fn a_good_request_gets_a_leaf_naming_exactly_its_identity() {
    let f = fixture();
    let certified = f
        .certifier
        .certify(BOOKS, f.token.as_bytes(), &csr(&[BOOKS, BOOKS_SPIFFE]))
        .await
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&certified.leaf).unwrap();

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        [format!("DNSName({BOOKS})"), format!("URI({BOOKS_SPIFFE})")]
    );
    assert!(!leaf.is_ca());
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);

    // Valid from a minute ago for the lifetime.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let v = leaf.validity();
    assert!((v.not_before.timestamp() - (now - 60)).abs() <= 2);
    assert!((v.not_after.timestamp() - (now + 24 * 3600)).abs() <= 2);
    assert_eq!(
        certified.valid_until,
        SystemTime::UNIX_EPOCH + Duration::from_secs(v.not_after.timestamp() as u64)
    );

    // The chain: the issuer, which the anchor signed.
    assert_eq!(
        certified.intermediates,
        vec![f.certifier.issuer().certificate().to_vec()]
    );
    verify_as_server(&f.anchors, &certified, BOOKS).unwrap();
    assert!(verify_as_server(
        &f.anchors,
        &certified,
        "web.shop.serviceaccount.identity.weft.cluster.local"
    )
    .is_err());
    let client_verifier = WebPkiClientVerifier::builder_with_provider(
        f.anchors.root_store(),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    client_verifier
        .verify_client_cert(
            &CertificateDer::from(certified.leaf.clone()),
            &[CertificateDer::from(certified.intermediates[0].clone())],
            UnixTime::now(),
        )
        .unwrap();

    // The SPIFFE URI is optional in the request; the leaf carries it anyway.
    let only_dns = f
        .certifier
        .certify(BOOKS, f.token.as_bytes(), &csr(&[BOOKS]))
        .await
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&only_dns.leaf).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 2);
    assert_eq!(count(&f.metrics, "ok"), 2);
}

#[tokio::test]
async fn lifetime_is_configurable_and_capped_at_the_issuer() {
    let f = fixture_with(InitOptions::new(TD), Duration::from_secs(90));
    let c = f
        .certifier
        .certify(BOOKS, f.token.as_bytes(), &csr(&[BOOKS]))
        .await
        .unwrap();
    let left = c.valid_until.duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(90) && left >= Duration::from_secs(87));

    let short_issuer = InitOptions {
        issuer_lifetime: Duration::from_secs(3600),
        ..InitOptions::new(TD)
    };
    let f = fixture_with(short_issuer, DEFAULT_LIFETIME);
    let c = f
        .certifier
        .certify(BOOKS, f.token.as_bytes(), &csr(&[BOOKS]))
        .await
        .unwrap();
    assert_eq!(c.valid_until, f.certifier.issuer().not_after());
}

#[tokio::test]
async fn pem_csrs_are_accepted_too() {
    let f = fixture();
    let key = KeyPair::generate().unwrap();
    let pem = CertificateParams::new(vec![BOOKS.to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    f.certifier
        .certify(BOOKS, f.token.as_bytes(), pem.as_bytes())
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let f = fixture();
    let good_csr = csr(&[BOOKS]);
    let status = refused(&f, BOOKS, b"0123456789abcdef", &good_csr).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        format!("token refused: the token does not match the one registered for {BOOKS}")
    );

    let status = refused(&f, BOOKS, b"", &good_csr).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "token refused: the request carries no token"
    );

    // An identity without a token file, even with another workload's token.
    let web = "web.shop.serviceaccount.identity.weft.cluster.local";
    let status = refused(&f, web, f.token.as_bytes(), &csr(&[web])).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        format!("token refused: no token is registered for {web}")
    );
    assert_eq!(count(&f.metrics, "bad_token"), 3);
    assert_eq!(count(&f.metrics, "ok"), 0);
}

#[tokio::test]
async fn a_csr_for_another_identity_is_permission_denied() {
    let f = fixture();
    let web = "web.shop.serviceaccount.identity.weft.cluster.local";
    let status = refused(&f, BOOKS, f.token.as_bytes(), &csr(&[web])).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!(
            "the CSR is not for {BOOKS}: it asks for DNS:{web}, but only DNS:{BOOKS} and URI:{BOOKS_SPIFFE} may be named"
        )
    );

    // Its own name plus another one.
    let status = refused(&f, BOOKS, f.token.as_bytes(), &csr(&[BOOKS, "localhost"])).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("it asks for DNS:localhost"),
        "{}",
        status.message()
    );

    // Another workload's SPIFFE ID.
    let status = refused(
        &f,
        BOOKS,
        f.token.as_bytes(),
        &csr(&[BOOKS, "spiffe://cluster.local/ns/shop/sa/web"]),
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status
        .message()
        .contains("it asks for URI:spiffe://cluster.local/ns/shop/sa/web"));

    // No name at all.
    let status = refused(&f, BOOKS, f.token.as_bytes(), &csr(&[])).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!("the CSR is not for {BOOKS}: it does not name DNS:{BOOKS} in its subject alternative names")
    );
    assert_eq!(count(&f.metrics, "wrong_identity"), 4);
}

#[tokio::test]
async fn malformed_csrs_are_invalid_arguments() {
    let f = fixture();
    let status = refused(&f, BOOKS, f.token.as_bytes(), b"not a CSR at all").await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with(
            "malformed CSR: 16 bytes that do not parse as a PKCS#10 certification request"
        ),
        "{}",
        status.message()
    );

    let status = refused(&f, BOOKS, f.token.as_bytes(), b"").await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "malformed CSR: the request carries no CSR"
    );

    let mut trailing = csr(&[BOOKS]);
    trailing.extend_from_slice(b"xx");
    let status = refused(&f, BOOKS, f.token.as_bytes(), &trailing).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "malformed CSR: 2 trailing bytes after the certification request"
    );
    assert_eq!(count(&f.metrics, "malformed_csr"), 3);

    // A CSR whose signature was tampered with (the last byte is in the signature).
    let mut tampered = csr(&[BOOKS]);
    *tampered.last_mut().unwrap() ^= 0x01;
    let status = refused(&f, BOOKS, f.token.as_bytes(), &tampered).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("the CSR's signature does not verify with its own public key"),
        "{}",
        status.message()
    );
    assert_eq!(count(&f.metrics, "bad_signature"), 1);
}

#[tokio::test]
async fn keys_other_than_p256_are_unsupported() {
    let f = fixture();
    let p384 = csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, &[BOOKS]);
    let status = refused(&f, BOOKS, f.token.as_bytes(), &p384).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "unsupported key in the CSR: the key is ECDSA P-384; weft certifies ECDSA P-256 keys only"
    );
    let ed25519 = csr_with(&rcgen::PKCS_ED25519, &[BOOKS]);
    let status = refused(&f, BOOKS, f.token.as_bytes(), &ed25519).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "unsupported key in the CSR: the key is Ed25519; weft certifies ECDSA P-256 keys only"
    );
    assert_eq!(count(&f.metrics, "unsupported_key"), 2);
}

#[tokio::test]
async fn bad_identity_names_are_invalid_arguments() {
    let f = fixture();
    let good_csr = csr(&[BOOKS]);
    let status = refused(
        &f,
        "books.shop.svc.cluster.local",
        f.token.as_bytes(),
        &good_csr,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "invalid identity \"books.shop.svc.cluster.local\": \"books.shop.svc.cluster.local\" is not a weft identity name ({sa}.{ns}.serviceaccount.identity.weft.{trust-domain})"
    );
    let status = refused(
        &f,
        "Books.shop.serviceaccount.identity.weft.cluster.local",
        f.token.as_bytes(),
        &good_csr,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status
        .message()
        .contains("service account \"Books\" is not a DNS label"));

    let other_td = "books.shop.serviceaccount.identity.weft.example.org";
    let status = refused(&f, other_td, f.token.as_bytes(), &good_csr).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        format!("identity {other_td} is in trust domain \"example.org\"; this controller issues for \"cluster.local\"")
    );
    assert_eq!(count(&f.metrics, "bad_name"), 3);
}

#[test]
fn init_writes_three_files_and_refuses_to_overwrite_them() {
    let dir = test_dir("init");
    let written = init(&dir, TD, false).unwrap();
    assert_eq!(written.anchors, dir.join("trust-anchors.pem"));
    assert_eq!(written.issuer_cert, dir.join("issuer.crt"));
    assert_eq!(written.issuer_key, dir.join("issuer.key"));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&written.issuer_key), 0o600);
    assert_eq!(mode(&written.anchors), 0o644);

    let anchors = std::fs::read(&written.anchors).unwrap();
    let err = init(&dir, TD, false).unwrap_err();
    assert!(matches!(err, CaError::Exists { .. }));
    assert!(err.to_string().contains("trust-anchors.pem already exists"));
    assert_eq!(std::fs::read(&written.anchors).unwrap(), anchors);

    // Force replaces them with a new, consistent set.
    init(&dir, TD, true).unwrap();
    assert_ne!(std::fs::read(&written.anchors).unwrap(), anchors);
    let anchors = TrustAnchors::load(&written.anchors).unwrap();
    let issuer = Issuer::load(&written.issuer_cert, &written.issuer_key, &anchors).unwrap();
    assert_eq!(issuer.subject(), "CN=identity.weft.cluster.local");
    let (_, cert) = X509Certificate::from_der(issuer.certificate()).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let left = issuer
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > ISSUER_LIFETIME - Duration::from_secs(60) && left <= ISSUER_LIFETIME);

    assert!(matches!(
        init(&dir.join("x"), "Bad..Domain", false),
        Err(CaError::TrustDomain(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loading_names_the_file_and_the_problem() {
    let dir = test_dir("load");
    let a = dir.join("a");
    let b = dir.join("b");
    init(&a, TD, false).unwrap();
    init(&b, TD, false).unwrap();
    let anchors_a = TrustAnchors::load(&a.join(ANCHORS_FILE)).unwrap();

    // An issuer from another anchor.
    let err = Issuer::load(
        &b.join(ISSUER_CERT_FILE),
        &b.join(ISSUER_KEY_FILE),
        &anchors_a,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!("{}: the issuer CN=identity.weft.cluster.local (issued by CN=root.identity.weft.cluster.local) is not signed by any of the 1 trust anchor(s) in {}", b.join(ISSUER_CERT_FILE).display(), a.join(ANCHORS_FILE).display())),
        "{err}"
    );

    // A key that is not the certificate's.
    let err = Issuer::load(
        &a.join(ISSUER_CERT_FILE),
        &b.join(ISSUER_KEY_FILE),
        &anchors_a,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: this key does not belong to the issuer certificate",
            b.join(ISSUER_KEY_FILE).display()
        )),
        "{err}"
    );

    // A P-384 key.
    let p384 = dir.join("p384.key");
    std::fs::write(
        &p384,
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let err = Issuer::load(&a.join(ISSUER_CERT_FILE), &p384, &anchors_a)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: the issuer key is ECDSA P-384; weft issuers use ECDSA P-256",
            p384.display()
        )
    );

    // Not PEM; missing; a leaf as an anchor.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let err = TrustAnchors::load(&junk).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: holds no PEM certificate", junk.display())));
    let err = TrustAnchors::load(&dir.join("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&format!(
        "cannot read {}",
        dir.join("missing.pem").display()
    )));
    let err = Issuer::load(&a.join(ISSUER_CERT_FILE), &junk, &anchors_a)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&format!("{}: is not a PEM private key", junk.display())));
    // The issuer is a CA but not self-signed: not an anchor.
    let err = TrustAnchors::load(&a.join(ISSUER_CERT_FILE))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not self-signed"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_expired_issuer_is_refused() {
    let dir = test_dir("expired");
    let root_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = rcgen::CertifiedIssuer::self_signed(params, root_key).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let day = Duration::from_secs(24 * 3600);
    params.not_before = (SystemTime::now() - 3 * day).into();
    params.not_after = (SystemTime::now() - day).into();
    let key = KeyPair::generate().unwrap();
    let key_pem = key.serialize_pem();
    let issuer = rcgen::CertifiedIssuer::signed_by(params, key, &root).unwrap();
    std::fs::write(dir.join(ANCHORS_FILE), root.pem()).unwrap();
    std::fs::write(dir.join(ISSUER_CERT_FILE), issuer.pem()).unwrap();
    std::fs::write(dir.join(ISSUER_KEY_FILE), key_pem).unwrap();
    let anchors = TrustAnchors::load(&dir.join(ANCHORS_FILE)).unwrap();
    let err = Issuer::load(
        &dir.join(ISSUER_CERT_FILE),
        &dir.join(ISSUER_KEY_FILE),
        &anchors,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: the issuer CN=rcgen self signed cert expired at ",
            dir.join(ISSUER_CERT_FILE).display()
        )),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_bundle_of_two_anchors_accepts_either_issuer() {
    let old = fixture();
    let new = fixture();
    // The rotation bundle: old anchor then new anchor.
    let bundle_path = old.dir.join("bundle.pem");
    std::fs::write(
        &bundle_path,
        format!("{}{}", old.anchors.pem(), new.anchors.pem()),
    )
    .unwrap();
    let bundle = TrustAnchors::load(&bundle_path).unwrap();
    assert_eq!(bundle.len(), 2);

    // The new issuer loads against the bundle.
    let new_ca = new.dir.join("identity");
    Issuer::load(
        &new_ca.join(ISSUER_CERT_FILE),
        &new_ca.join(ISSUER_KEY_FILE),
        &bundle,
    )
    .unwrap();

    // Leaves of both issuers verify against the bundle; each only against its own
    // anchor alone.
    let from_new = new
        .certifier
        .certify(BOOKS, new.token.as_bytes(), &csr(&[BOOKS]))
        .await
        .unwrap();
    let from_old = old
        .certifier
        .certify(BOOKS, old.token.as_bytes(), &csr(&[BOOKS]))
        .await
        .unwrap();
    verify_as_server(&bundle, &from_new, BOOKS).unwrap();
    verify_as_server(&bundle, &from_old, BOOKS).unwrap();
    assert!(verify_as_server(&old.anchors, &from_new, BOOKS).is_err());
    assert!(verify_as_server(&new.anchors, &from_old, BOOKS).is_err());
}

#[tokio::test]
async fn the_controller_identity_is_reserved_even_with_a_valid_token() {
    let f = fixture();
    // A workload declared as the controller's service account, with a token for it.
    let tokens = f.dir.join("tokens");
    let (_, token) = write_token(&tokens, "weft-system", "weft-controller").unwrap();
    let controller = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";
    let status = refused(&f, controller, token.as_bytes(), &csr(&[controller])).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!("identity {controller} is reserved for the controller (service account weft-controller in namespace weft-system): Certify never issues it to a workload")
    );
    // Spelled in capitals it is no identity name at all.
    let status = refused(
        &f,
        &controller.to_ascii_uppercase(),
        token.as_bytes(),
        &csr(&[controller]),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(count(&f.metrics, "reserved"), 1);
    assert_eq!(count(&f.metrics, "ok"), 0);
    // Other service accounts of its namespace are ordinary workloads.
    let (_, other) = write_token(&tokens, "weft-system", "weft-dashboard").unwrap();
    let dashboard = "weft-dashboard.weft-system.serviceaccount.identity.weft.cluster.local";
    f.certifier
        .certify(dashboard, other.as_bytes(), &csr(&[dashboard]))
        .await
        .unwrap();
}

/// A token verifier that holds every request until released.
struct HeldTokens {
    entered: tokio::sync::watch::Sender<usize>,
    release: tokio::sync::Semaphore,
}

impl TokenVerifier for HeldTokens {
    fn verify<'a>(&'a self, _: &'a weft_core::identity::Identity, _: &'a [u8]) -> VerifyFuture<'a> {
        Box::pin(async move {
            self.entered.send_modify(|n| *n += 1);
            let _held = self.release.acquire().await;
            Ok(())
        })
    }
}

#[tokio::test]
async fn certify_beyond_the_in_flight_limit_is_refused_at_once() {
    let f = fixture();
    let (entered, mut watch_entered) = tokio::sync::watch::channel(0);
    let tokens = Arc::new(HeldTokens {
        entered,
        release: tokio::sync::Semaphore::new(0),
    });
    let ca = f.dir.join("identity");
    let issuer = Issuer::load(
        &ca.join(ISSUER_CERT_FILE),
        &ca.join(ISSUER_KEY_FILE),
        &f.anchors,
    )
    .unwrap();
    let metrics = IdentityMetrics::default();
    let certifier = Arc::new(
        Certifier::new(issuer, TD, tokens.clone())
            .unwrap()
            .with_metrics(metrics.clone())
            .with_max_in_flight(2),
    );
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = certifier.clone();
            tokio::spawn(async move { c.certify(BOOKS, b"t", &csr(&[BOOKS])).await })
        })
        .collect();
    watch_entered.wait_for(|n| *n == 2).await.unwrap();
    // The third is answered without waiting for the two in flight.
    let err = certifier
        .certify(BOOKS, b"t", &csr(&[BOOKS]))
        .await
        .unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "the identity service is busy: 2 Certify requests are being checked (the limit); retry shortly"
    );
    assert_eq!(count(&metrics, "overloaded"), 1);
    tokens.release.add_permits(2);
    for task in held {
        task.await.unwrap().unwrap();
    }
    // Permits are given back: the next request is served.
    tokens.release.add_permits(1);
    certifier
        .certify(BOOKS, b"t", &csr(&[BOOKS]))
        .await
        .unwrap();
    assert_eq!(count(&metrics, "ok"), 3);
}

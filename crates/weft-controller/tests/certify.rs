//! The controller in-process: Identity.Certify over gRPC with TLS, called through the
//! linkerd2-proxy-api client with a channel that trusts the anchors and expects the
//! controller's identity as the server name.

use std::time::{Duration, SystemTime};

use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use weft_controller::identity::{self, TrustAnchors};
use weft_controller::{Config, Controller};
use weft_core::identity::Identity;

const BOOKS: &str = "books.shop.serviceaccount.identity.weft.cluster.local";
const CONTROLLER: &str = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";

/// A directory of this test's own, removed when dropped.
fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("weft-controller-it-{what}-"))
        .tempdir()
        .unwrap()
}

/// An identity directory, a tokens directory with a token for shop/books, and a
/// controller serving them on loopback.
async fn start(tmp: &tempfile::TempDir) -> (Controller, String) {
    let ca = tmp.path().join("identity");
    identity::init(&ca, "cluster.local", false).unwrap();
    let tokens = tmp.path().join("tokens");
    let (_, token) = identity::write_token(&tokens, "shop", "books").unwrap();
    let controller = Controller::start(config(tmp.path())).await.unwrap();
    (controller, token)
}

fn config(dir: &std::path::Path) -> Config {
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

async fn channel(controller: &Controller, anchors_pem: &[u8], name: &str) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(anchors_pem))
        .domain_name(name);
    Endpoint::from_shared(format!("https://{}", controller.grpc_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

fn csr_for(names: &[&str]) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(|n| SanType::DnsName(n.to_string().try_into().unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().der().to_vec()
}

async fn admin_get(controller: &Controller, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(controller.admin_addr())
        .await
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn certify_over_tls_with_the_generated_client() {
    let tmp = temp_dir("grpc");
    let (controller, token) = start(&tmp).await;
    let anchors = std::fs::read(tmp.path().join("identity").join(identity::ANCHORS_FILE)).unwrap();
    let mut client = IdentityClient::new(channel(&controller, &anchors, CONTROLLER).await);

    let rsp = client
        .certify(CertifyRequest {
            identity: BOOKS.into(),
            token: token.clone().into_bytes(),
            certificate_signing_request: csr_for(&[BOOKS]),
        })
        .await
        .unwrap()
        .into_inner();
    let (_, leaf) = x509_parser::parse_x509_certificate(&rsp.leaf_certificate).unwrap();
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        [
            format!("DNSName({BOOKS})"),
            "URI(spiffe://cluster.local/ns/shop/sa/books)".to_owned()
        ]
    );
    assert_eq!(rsp.intermediate_certificates.len(), 1);
    let valid_until = rsp.valid_until.unwrap();
    assert_eq!(valid_until.seconds, leaf.validity().not_after.timestamp());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((valid_until.seconds - (now + 3600)).abs() <= 2);

    // A refusal keeps its status and message across the wire.
    let status = client
        .certify(CertifyRequest {
            identity: BOOKS.into(),
            token: b"wrong".to_vec(),
            certificate_signing_request: csr_for(&[BOOKS]),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        format!("token refused: the token does not match the one registered for {BOOKS}")
    );

    // Services not served answer UNIMPLEMENTED.
    let mut grpc = tonic::client::Grpc::new(channel(&controller, &anchors, CONTROLLER).await);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, CertifyResponse, _>(
            tonic::Request::new(CertifyRequest::default()),
            http::uri::PathAndQuery::from_static("/io.linkerd.proxy.destination.Destination/Get"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    // Admin: counted by result, ready, live.
    let metrics = admin_get(&controller, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("weft_controller_identity_certify_total{result=\"ok\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_controller_identity_certify_total{result=\"bad_token\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("weft_controller_identity_issuer_expiration_timestamp_seconds "));
    assert!(admin_get(&controller, "/ready")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(admin_get(&controller, "/live")
        .await
        .starts_with("HTTP/1.1 200"));

    controller.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_serving_certificate_names_the_controller_identity_only() {
    let tmp = temp_dir("serving");
    let (controller, _) = start(&tmp).await;
    let chain = controller.serving_cert().chain();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        [
            format!("DNSName({CONTROLLER})"),
            "URI(spiffe://cluster.local/ns/weft-system/sa/weft-controller)".to_owned()
        ]
    );

    // A client expecting another server name, or trusting another anchor, is refused
    // in the handshake.
    let anchors = std::fs::read(tmp.path().join("identity").join(identity::ANCHORS_FILE)).unwrap();
    let other = temp_dir("other");
    identity::init(other.path(), "cluster.local", false).unwrap();
    let other_anchors = std::fs::read(other.path().join(identity::ANCHORS_FILE)).unwrap();
    for (pem, name) in [(&anchors, BOOKS), (&other_anchors, CONTROLLER)] {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name(name);
        let connected = Endpoint::from_shared(format!("https://{}", controller.grpc_addr()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await;
        assert!(connected.is_err(), "{name} connected");
    }
    controller.shutdown().await.unwrap();
}

#[tokio::test]
async fn during_a_rotation_the_bundle_trusts_the_new_issuer() {
    // Old anchor A, new anchor B; the controller has B's issuer and the bundle A+B.
    let tmp = temp_dir("rotation");
    let old = temp_dir("rotation-old");
    identity::init(old.path(), "cluster.local", false).unwrap();
    let (first, _) = start(&tmp).await;
    first.shutdown().await.unwrap();
    let ca = tmp.path().join("identity");
    let new_anchor = std::fs::read_to_string(ca.join(identity::ANCHORS_FILE)).unwrap();
    let old_anchor = std::fs::read_to_string(old.path().join(identity::ANCHORS_FILE)).unwrap();
    let bundle = format!("{old_anchor}{new_anchor}");
    std::fs::write(ca.join(identity::ANCHORS_FILE), &bundle).unwrap();

    let controller = Controller::start(config(tmp.path())).await.unwrap();
    let token = std::fs::read_to_string(identity::token_path(
        &tmp.path().join("tokens"),
        "shop",
        "books",
    ))
    .unwrap();
    // A proxy that already has the bundle.
    let mut client = IdentityClient::new(channel(&controller, bundle.as_bytes(), CONTROLLER).await);
    let rsp = client
        .certify(CertifyRequest {
            identity: BOOKS.into(),
            token: token.into_bytes(),
            certificate_signing_request: csr_for(&[BOOKS]),
        })
        .await
        .unwrap()
        .into_inner();
    // The leaf verifies against the bundle (as the proxy checks it).
    let roots = TrustAnchors::from_pem(bundle.as_bytes(), std::path::Path::new("bundle"))
        .unwrap()
        .root_store();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots,
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    use rustls::client::danger::ServerCertVerifier as _;
    verifier
        .verify_server_cert(
            &rsp.leaf_certificate.clone().into(),
            &[rsp.intermediate_certificates[0].clone().into()],
            &rustls::pki_types::ServerName::try_from(BOOKS).unwrap(),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .unwrap();
    controller.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_proxy_identity_code_accepts_what_the_controller_issues() {
    let tmp = temp_dir("proxy");
    let (controller, token) = start(&tmp).await;
    let anchors_path = tmp.path().join("identity").join(identity::ANCHORS_FILE);
    let roots = weft_proxy::identity::load_anchors(&anchors_path).unwrap();
    let name = Identity::new("books", "shop", "cluster.local").unwrap();
    let local = weft_proxy::identity::LocalIdentity::new(name, roots).unwrap();
    let anchors = std::fs::read(&anchors_path).unwrap();
    let mut client = IdentityClient::new(channel(&controller, &anchors, CONTROLLER).await);
    let rsp = client
        .certify(CertifyRequest {
            identity: BOOKS.into(),
            token: token.into_bytes(),
            certificate_signing_request: local.csr().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let expiry = local
        .set_certificate(rsp.leaf_certificate, rsp.intermediate_certificates)
        .unwrap();
    assert!(local.is_ready());
    assert_eq!(
        expiry,
        SystemTime::UNIX_EPOCH + Duration::from_secs(rsp.valid_until.unwrap().seconds as u64)
    );
    controller.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_serving_certificate_is_renewed_before_it_expires() {
    let tmp = temp_dir("renew");
    identity::init(&tmp.path().join("identity"), "cluster.local", false).unwrap();
    let controller = Controller::start(Config {
        cert_lifetime: Duration::from_secs(1),
        ..config(tmp.path())
    })
    .await
    .unwrap();
    let first = controller.serving_cert().chain()[0].clone();
    // Renewal at 70 % of the lifetime: 0.7 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while controller.serving_cert().chain()[0] == first {
        assert!(tokio::time::Instant::now() < deadline, "not renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New handshakes get the new certificate and still verify.
    let anchors = std::fs::read(tmp.path().join("identity").join(identity::ANCHORS_FILE)).unwrap();
    let mut client = IdentityClient::new(channel(&controller, &anchors, CONTROLLER).await);
    let status = client.certify(CertifyRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    controller.shutdown().await.unwrap();
}

/// GET `path` from a plain-HTTP admin server: (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The sum of the samples of `name` with `labels` in a /metrics text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    weft_core::prom::Scrape::parse(text).sum(name, labels)
}

const EXPIRY: &str = "identity_cert_expiration_timestamp_seconds";
const REFRESH: &str = "identity_cert_refresh_total";

#[tokio::test]
async fn a_proxy_certifies_keeps_its_certificate_through_an_outage_and_renews_after() {
    use clap::Parser as _;
    let tmp = temp_dir("outage");
    identity::init(&tmp.path().join("identity"), "cluster.local", false).unwrap();
    let (token_file, _) =
        identity::write_token(&tmp.path().join("tokens"), "shop", "books").unwrap();
    let mut config = config(tmp.path());
    // Renewal due at 70 % = 7 s.
    config.cert_lifetime = Duration::from_secs(10);
    let controller = Controller::start(config.clone()).await.unwrap();
    let grpc = controller.grpc_addr();

    // The real proxy, as `weft-proxy` would run with these flags.
    let anchors = tmp.path().join("identity").join(identity::ANCHORS_FILE);
    let args = weft_proxy::Args::try_parse_from([
        "weft-proxy",
        "--mode=explicit",
        "--inbound-forward=127.0.0.1:9",
        "--inbound-listen=127.0.0.1:0",
        "--outbound-listen=127.0.0.1:0",
        "--admin-listen=127.0.0.1:0",
        "--namespace=shop",
        "--service-account=books",
        &format!("--trust-anchors={}", anchors.display()),
        &format!("--controller={grpc}"),
        &format!("--identity-token={}", token_file.display()),
    ])
    .unwrap();
    let proxy = weft_proxy::Proxy::start(args.into_config().unwrap())
        .await
        .unwrap();
    let admin = proxy.admin_addr();
    let metrics = || async move { http_get(admin, "/metrics").await.unwrap().1 };

    // Ready once it holds a certificate from the controller.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while http_get(admin, "/ready").await.map(|r| r.0) != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never got ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = metrics().await;
    let expiry = sample(&first, EXPIRY, &[]);
    assert!(expiry > 0.0, "{first}");
    assert_eq!(sample(&first, REFRESH, &[("result", "ok")]), 1.0);

    // The controller goes away past the renewal time: renewals fail, the proxy stays
    // ready with the certificate it has.
    controller.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(7600)).await;
    let during = metrics().await;
    assert!(
        sample(&during, REFRESH, &[("result", "error")]) >= 1.0,
        "{during}"
    );
    assert_eq!(sample(&during, EXPIRY, &[]), expiry);
    assert_eq!(http_get(admin, "/ready").await.map(|r| r.0), Some(200));

    // Back on the same address: the next retry renews (backoff is at most ~1.6 s by
    // now, well inside the 10 s lifetime).
    config.listen = grpc;
    let controller = Controller::start(config).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = metrics().await;
        if sample(&now, REFRESH, &[("result", "ok")]) >= 2.0 {
            assert!(sample(&now, EXPIRY, &[]) > expiry);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal after the controller came back:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown();
    controller.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_controller_identity_is_never_issued_over_the_wire() {
    let tmp = temp_dir("reserved");
    let (controller, _) = start(&tmp).await;
    // A workload declared in the controller's namespace and service account, with a
    // valid token: still refused.
    let (_, token) =
        identity::write_token(&tmp.path().join("tokens"), "weft-system", "weft-controller")
            .unwrap();
    let anchors = std::fs::read(tmp.path().join("identity").join(identity::ANCHORS_FILE)).unwrap();
    let mut client = IdentityClient::new(channel(&controller, &anchors, CONTROLLER).await);
    let status = client
        .certify(CertifyRequest {
            identity: CONTROLLER.into(),
            token: token.into_bytes(),
            certificate_signing_request: csr_for(&[CONTROLLER]),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!("identity {CONTROLLER} is reserved for the controller (service account weft-controller in namespace weft-system): Certify never issues it to a workload")
    );
    let metrics = admin_get(&controller, "/metrics").await;
    assert!(
        metrics.contains("weft_controller_identity_certify_total{result=\"reserved\"} 1\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"ok\""), "{metrics}");
    controller.shutdown().await.unwrap();
}

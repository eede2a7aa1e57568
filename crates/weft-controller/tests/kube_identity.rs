//! Identity on Kubernetes, against a real kube-apiserver (`weft_test::kube::KubeApi`):
//! Certify requests carry projected ServiceAccount tokens (audience
//! `identity.weft.io`), the controller checks them with TokenReview and issues the
//! review's identity only.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::CertifyRequest;
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use weft_controller::identity::{self, KubeTokensConfig};
use weft_controller::{Config, Controller, Tokens};
use weft_core::identity::KUBE_TOKEN_AUDIENCE;
use weft_test::kube::{KubeApi, API_AUDIENCE};

const BOOKS: &str = "books.shop.serviceaccount.identity.weft.cluster.local";
const WEB: &str = "web.shop.serviceaccount.identity.weft.cluster.local";
const CONTROLLER: &str = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";

fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("weft-controller-kube-{what}-"))
        .tempdir()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A client of the test API server with its admin credentials.
async fn kube_config(api: &KubeApi) -> kube::Config {
    let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig()).unwrap();
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap()
}

/// A controller in-process (identity only) checking tokens with TokenReview through
/// `client`.
async fn controller(dir: &std::path::Path, client: kube::Client) -> Controller {
    identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
    let config = Config {
        identity_dir: dir.join("identity"),
        // Not read with Tokens::Kube.
        tokens_dir: dir.join("no-tokens"),
        trust_domain: "cluster.local".into(),
        cert_lifetime: Duration::from_secs(3600),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        destination: None,
    };
    Controller::start_with_tokens(
        config,
        Default::default(),
        Tokens::Kube {
            client,
            config: KubeTokensConfig::default(),
        },
    )
    .await
    .unwrap()
}

async fn identity_client(
    controller: &Controller,
    dir: &std::path::Path,
) -> IdentityClient<Channel> {
    let anchors = std::fs::read(dir.join("identity").join(identity::ANCHORS_FILE)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(anchors))
        .domain_name(CONTROLLER);
    let channel = Endpoint::from_shared(format!("https://{}", controller.grpc_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    IdentityClient::new(channel)
}

fn csr_for(name: &str) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(name.to_string().try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

async fn certify(
    client: &mut IdentityClient<Channel>,
    identity: &str,
    token: &str,
    csr_name: &str,
) -> Result<Vec<u8>, tonic::Status> {
    client
        .certify(CertifyRequest {
            identity: identity.into(),
            token: token.as_bytes().to_vec(),
            certificate_signing_request: csr_for(csr_name),
        })
        .await
        .map(|r| r.into_inner().leaf_certificate)
}

fn dns_names(leaf: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_owned()))
}

fn reviews(metrics: &str, result: &str) -> f64 {
    weft_core::prom::Scrape::parse(metrics).sum(
        "weft_controller_identity_token_reviews_total",
        &[("result", result)],
    )
}

/// A ServiceAccount token signed by hand with the API server's own service-account key
/// (the fixture's `pki/sa.key`), as TokenRequest makes them, but with any expiry: the
/// API server refuses TokenRequest durations under 10 minutes, so an expired token
/// cannot be asked for.
fn signed_token(api: &KubeApi, namespace: &str, sa: &str, uid: &str, exp: i64) -> String {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let key_pem = std::fs::read(api.dir().join("pki").join("sa.key")).unwrap();
    let der = pem::parse(key_pem).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.contents(), &rng).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let claims = serde_json::json!({
        "iss": API_AUDIENCE,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "aud": [KUBE_TOKEN_AUDIENCE],
        "iat": exp - 3600,
        "nbf": exp - 3600,
        "exp": exp,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa, "uid": uid}},
    });
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let signature = key.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", b64(signature.as_ref()))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn certify_takes_the_identity_from_the_token_review() {
    let Some(api) = KubeApi::shared() else { return };
    api.kubectl(&["create", "namespace", "shop"]).unwrap();
    for sa in ["books", "web"] {
        api.kubectl(&["-n", "shop", "create", "serviceaccount", sa])
            .unwrap();
    }
    let token = |sa: &str, audience: &str| {
        api.kubectl(&[
            "-n",
            "shop",
            "create",
            "token",
            sa,
            &format!("--audience={audience}"),
            "--duration=10m",
        ])
        .unwrap()
        .trim()
        .to_owned()
    };
    let books = token("books", KUBE_TOKEN_AUDIENCE);
    let web = token("web", KUBE_TOKEN_AUDIENCE);
    let books_for_the_api = token("books", API_AUDIENCE);
    let books_uid = api
        .kubectl(&[
            "-n",
            "shop",
            "get",
            "serviceaccount",
            "books",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .unwrap();
    let expired = signed_token(api, "shop", "books", &books_uid, unix_now() - 3600);
    // The same hand-made token, unexpired, passes: the expired one is refused for its
    // expiry alone.
    let handmade = signed_token(api, "shop", "books", &books_uid, unix_now() + 600);

    let tmp = temp_dir("identity");
    runtime().block_on(async {
        let client = kube::Client::try_from(kube_config(api).await).unwrap();
        let controller = controller(tmp.path(), client).await;
        let mut grpc = identity_client(&controller, tmp.path()).await;

        // A's token gets A's certificate.
        let leaf = certify(&mut grpc, BOOKS, &books, BOOKS).await.unwrap();
        assert_eq!(
            dns_names(&leaf),
            [
                format!("DNSName({BOOKS})"),
                "URI(spiffe://cluster.local/ns/shop/sa/books)".to_owned()
            ]
        );
        let leaf = certify(&mut grpc, WEB, &web, WEB).await.unwrap();
        assert_eq!(dns_names(&leaf)[0], format!("DNSName({WEB})"));

        // A's token asking for B's identity (with B's CSR): refused, naming both.
        let status = certify(&mut grpc, WEB, &books, WEB).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status.message(),
            format!("token refused: the token proves ServiceAccount shop/books ({BOOKS}), not {WEB}: a workload obtains only its own identity")
        );
        // A's token with B's CSR under A's name: the CSR check refuses it.
        let status = certify(&mut grpc, BOOKS, &books, WEB).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().starts_with(&format!("the CSR is not for {BOOKS}")), "{status:?}");

        // A token for another audience (the API server's own): the review's error.
        let status = certify(&mut grpc, BOOKS, &books_for_the_api, BOOKS)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().starts_with("token refused: the token does not authenticate: ")
                && status.message().contains("audience"),
            "{status:?}"
        );
        eprintln!("wrong audience: {}", status.message());
        // Expired.
        let status = certify(&mut grpc, BOOKS, &expired, BOOKS).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("expired"), "{status:?}");
        eprintln!("expired: {}", status.message());
        certify(&mut grpc, BOOKS, &handmade, BOOKS).await.unwrap();
        // Garbage, and nothing at all.
        let status = certify(&mut grpc, BOOKS, "not-a-token", BOOKS).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().starts_with("token refused: the token does not authenticate: "),
            "{status:?}"
        );
        let status = certify(&mut grpc, BOOKS, "", BOOKS).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

        // Reviews by result: books' token was reviewed once and then reused from the
        // cache (twice), web's and the handmade one once each.
        let (_, metrics) = admin_get(controller.admin_addr(), "/metrics").await.unwrap();
        assert_eq!(reviews(&metrics, "authenticated"), 3.0, "{metrics}");
        assert_eq!(reviews(&metrics, "cached"), 2.0, "{metrics}");
        assert_eq!(reviews(&metrics, "unauthenticated"), 3.0, "{metrics}");
        assert_eq!(reviews(&metrics, "error"), 0.0, "{metrics}");
        let certified = weft_core::prom::Scrape::parse(&metrics).sum(
            "weft_controller_identity_certify_total",
            &[("result", "wrong_identity")],
        );
        assert_eq!(certified, 2.0, "{metrics}");

        // The proxy itself, with the token in a file as the injector mounts it
        // (--identity-token).
        proxy_obtains_a_certificate(&controller, tmp.path(), &books).await;
        controller.shutdown().await.unwrap();
    });
}

async fn proxy_obtains_a_certificate(controller: &Controller, dir: &std::path::Path, token: &str) {
    use clap::Parser as _;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let anchors = dir.join("identity").join(identity::ANCHORS_FILE);
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
        &format!("--controller={}", controller.grpc_addr()),
        &format!("--identity-token={}", token_file.display()),
    ])
    .unwrap();
    let proxy = weft_proxy::Proxy::start(args.into_config().unwrap())
        .await
        .unwrap();
    let admin = proxy.admin_addr();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while admin_get(admin, "/ready").await.map(|r| r.0) != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never got a certificate with its ServiceAccount token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = admin_get(admin, "/metrics").await.unwrap();
    let scrape = weft_core::prom::Scrape::parse(&metrics);
    assert_eq!(
        scrape.sum("identity_cert_refresh_total", &[("result", "ok")]),
        1.0,
        "{metrics}"
    );
    assert!(scrape.sum("identity_cert_expiration_timestamp_seconds", &[]) > unix_now() as f64);
}

/// No API server behind the client: UNAVAILABLE (the proxy retries), never a denial.
#[test]
fn an_unreachable_api_server_is_unavailable_not_denied() {
    let tmp = temp_dir("unreachable");
    runtime().block_on(async {
        // A loopback port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = kube::Config::new(format!("https://{closed}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let controller = controller(tmp.path(), client).await;
        let mut grpc = identity_client(&controller, tmp.path()).await;
        let status = certify(&mut grpc, BOOKS, "some.jwt.token", BOOKS)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().starts_with(&format!(
                "token refused: cannot check the token of {BOOKS}: the Kubernetes API is unreachable for the TokenReview: "
            )),
            "{status:?}"
        );
        let (_, metrics) = admin_get(controller.admin_addr(), "/metrics").await.unwrap();
        assert_eq!(reviews(&metrics, "error"), 1.0, "{metrics}");
        let certified = weft_core::prom::Scrape::parse(&metrics).sum(
            "weft_controller_identity_certify_total",
            &[("result", "token_check_failed")],
        );
        assert_eq!(certified, 1.0, "{metrics}");
        controller.shutdown().await.unwrap();
    });
}

//! Issuer and trust-anchor rotation under steady load: real proxies certified by an
//! in-process controller with short-lived certificates (3 s, renewed at 70 %), steady
//! requests through them over mTLS (a new handshake per request), the controller's
//! identity files replaced under it as `weft identity rotate-issuer` does. Not one
//! request may fail.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use weft_controller::identity::{self, InitOptions, ReloadOptions, RotateOptions};
use weft_controller::{Config, Controller};
use weft_proxy::identity::LocalIdentity;
use weft_proxy::Proxy;
use weft_test::{client, TestServer};

const BOOKS: &str = "books.default.serviceaccount.identity.weft.cluster.local";
const CERT_LIFETIME: Duration = Duration::from_secs(3);

/// A directory of this test's own, removed when dropped.
fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("weft-test-rotation-{what}-"))
        .tempdir()
        .unwrap()
}

/// A controller on loopback with short-lived certificates, watching its identity
/// directory every 100 ms; its anchor's key kept in `anchor.key`.
async fn controller(dir: &Path) -> Controller {
    identity::init_with(
        &dir.join("identity"),
        &InitOptions {
            anchor_key_out: Some(dir.join("anchor.key")),
            ..InitOptions::new("cluster.local")
        },
    )
    .unwrap();
    for sa in ["books", "web", "strict"] {
        identity::write_token(&dir.join("tokens"), "default", sa).unwrap();
    }
    Controller::start_with(
        Config {
            identity_dir: dir.join("identity"),
            tokens_dir: dir.join("tokens"),
            trust_domain: "cluster.local".into(),
            cert_lifetime: CERT_LIFETIME,
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            destination: None,
        },
        ReloadOptions {
            interval: Duration::from_millis(100),
            ..ReloadOptions::default()
        },
    )
    .await
    .unwrap()
}

/// A real proxy (as `weft-proxy` runs with these flags) of service account `sa`,
/// certified by `controller`, trusting the anchors in `anchors`, forwarding inbound
/// traffic to `app`; `books` (an inbound address) makes it a caller of books, with a new
/// connection (mTLS handshake) per request.
async fn proxy(
    dir: &Path,
    controller: &Controller,
    anchors: &Path,
    sa: &str,
    app: SocketAddr,
    books: Option<SocketAddr>,
) -> (Proxy, Arc<LocalIdentity>) {
    let token = identity::token_path(&dir.join("tokens"), "default", sa);
    let mut args = vec![
        "weft-proxy".to_owned(),
        "--mode=explicit".into(),
        format!("--inbound-forward={app}"),
        "--inbound-listen=127.0.0.1:0".into(),
        "--outbound-listen=127.0.0.1:0".into(),
        "--admin-listen=127.0.0.1:0".into(),
        "--namespace=default".into(),
        format!("--service-account={sa}"),
        format!("--trust-anchors={}", anchors.display()),
        format!("--controller={}", controller.grpc_addr()),
        format!("--identity-token={}", token.display()),
        "--pool-idle-timeout=0s".into(),
    ];
    if let Some(books) = books {
        let endpoints = dir.join(format!("{sa}-endpoints.yaml"));
        std::fs::write(
            &endpoints,
            format!("services:\n  - name: books\n    listen: 127.0.0.1:0\n    identity: {BOOKS}\n    endpoints: [\"{books}\"]\n"),
        )
        .unwrap();
        args.push(format!("--endpoints={}", endpoints.display()));
    }
    let config = weft_proxy::Args::try_parse_from(args)
        .unwrap()
        .into_config()
        .unwrap();
    let local = config.identity.as_ref().unwrap().local.clone();
    let proxy = Proxy::start(config).await.unwrap();
    let ready = weft_test::eventually(Duration::from_secs(10), || {
        let ready = local.is_ready();
        async move { ready }
    })
    .await;
    assert!(ready, "{sa} never got a certificate");
    (proxy, local)
}

/// The chain `target` presents to a meshed client `client` (leaf, issuer), or why the
/// handshake failed.
async fn presented(
    client: &LocalIdentity,
    target: &Proxy,
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let tcp = tokio::net::TcpStream::connect(target.inbound_addr())
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(client.client_config());
    let tls = connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap_or(&[]).to_vec())
}

/// Requests through `addr` (a caller's books listener) every 5 ms until stopped (or
/// 60 s / 10 000 requests): (succeeded, failures described).
struct Load {
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
            async move {
                let start = tokio::time::Instant::now();
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed)
                    && sent < 10_000
                    && start.elapsed() < Duration::from_secs(60)
                {
                    sent += 1;
                    match client::get(addr, "books", "/").await {
                        Ok(rsp) if rsp.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(rsp) => failures.lock().unwrap().push(format!(
                            "{} {:?} {}",
                            rsp.status,
                            rsp.header("weft-proxy-error"),
                            rsp.body
                        )),
                        Err(e) => failures.lock().unwrap().push(format!("{e:#}")),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Load {
            ok,
            failures,
            stop,
            task,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Waits until `n` more requests than now have succeeded.
    async fn more(&self, n: usize) {
        let target = self.ok() + n;
        let done = weft_test::eventually(Duration::from_secs(20), || {
            let ok = self.ok();
            async move { ok >= target }
        })
        .await;
        assert!(
            done,
            "load stalled at {} ok; failures: {:?}",
            self.ok(),
            self.failures()
        );
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failures) = (self.ok.clone(), self.failures.clone());
        self.task.await.unwrap();
        let failures = failures.lock().unwrap().clone();
        (ok.load(Ordering::Relaxed), failures)
    }
}

fn issuer_der(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("identity").join(identity::ISSUER_CERT_FILE)).unwrap()
}

/// Waits until both proxies present leaves under `issuer` (each probed by the other).
async fn until_both_hold_leaves_from(
    issuer: &CertificateDer<'static>,
    (books, books_id): (&Proxy, &LocalIdentity),
    (web, web_id): (&Proxy, &LocalIdentity),
) {
    let web_name = "web.default.serviceaccount.identity.weft.cluster.local";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let b = presented(web_id, books, BOOKS).await;
        let w = presented(books_id, web, web_name).await;
        let from_new = |c: &Result<Vec<CertificateDer<'static>>, String>| {
            c.as_ref().is_ok_and(|chain| chain.get(1) == Some(issuer))
        };
        if from_new(&b) && from_new(&w) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxies never moved to the new issuer (books: {:?}, web: {:?})",
            b.map(|c| c.len()),
            w.map(|c| c.len())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reloads_ok(controller: &Controller) -> usize {
    let text = controller.metrics().encode();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("weft_controller_identity_reloads_total{result=\"ok\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn issuer_rotation_under_steady_load_fails_no_request() {
    weft_test::trace_init();
    let tmp = temp_dir("issuer");
    let dir = &tmp.path();
    let controller = controller(dir).await;
    let anchors = dir.join("identity").join(identity::ANCHORS_FILE);
    let app = TestServer::loopback("books").await;
    let (books, books_id) = proxy(dir, &controller, &anchors, "books", app.addr(), None).await;
    let (web, web_id) = proxy(
        dir,
        &controller,
        &anchors,
        "web",
        app.addr(),
        Some(books.inbound_addr()),
    )
    .await;
    let old = issuer_der(dir);

    let load = Load::start(web.service_addr("books").unwrap());
    load.more(20).await;
    identity::rotate_issuer(&RotateOptions::new(
        &anchors,
        &dir.join("anchor.key"),
        &dir.join("identity"),
    ))
    .unwrap();
    let new = issuer_der(dir);
    assert_ne!(new, old);
    until_both_hold_leaves_from(&new, (&books, &books_id), (&web, &web_id)).await;
    assert_eq!(reloads_ok(&controller), 1);
    assert_eq!(controller.serving_cert().chain()[1], new);
    // Requests keep flowing with the new leaves on both sides.
    load.more(20).await;
    let (ok, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    assert!(ok >= 40, "{ok}");
    eprintln!("issuer rotation: {ok} requests, 0 failed");
    books.shutdown();
    web.shutdown();
    controller.shutdown().await.unwrap();
}

#[tokio::test]
async fn anchor_rotation_bundle_then_new_issuer_then_old_anchor_removed_fails_no_request() {
    weft_test::trace_init();
    let tmp = temp_dir("anchor");
    let dir = &tmp.path();
    let controller = controller(dir).await;
    let ca = dir.join("identity");
    let controller_anchors = ca.join(identity::ANCHORS_FILE);
    let old_pem = std::fs::read_to_string(&controller_anchors).unwrap();
    let (new_cert, new_key) = (dir.join("new-anchor.crt"), dir.join("new-anchor.key"));
    identity::new_anchor(
        &new_cert,
        &new_key,
        "cluster.local",
        identity::ANCHOR_LIFETIME,
        false,
    )
    .unwrap();
    let new_pem = std::fs::read_to_string(&new_cert).unwrap();
    let bundle = format!("{old_pem}{new_pem}");
    // Step 1 for the proxies: they run with the bundle old + new (each proxy reads its
    // anchors at start, so in a mesh this is a rolling restart).
    let proxy_anchors = dir.join("bundle.pem");
    std::fs::write(&proxy_anchors, &bundle).unwrap();
    let app = TestServer::loopback("books").await;
    let (books, books_id) =
        proxy(dir, &controller, &proxy_anchors, "books", app.addr(), None).await;
    let (web, web_id) = proxy(
        dir,
        &controller,
        &proxy_anchors,
        "web",
        app.addr(),
        Some(books.inbound_addr()),
    )
    .await;
    let load = Load::start(web.service_addr("books").unwrap());
    load.more(20).await;

    // Step 1 for the controller: the bundle, picked up without a restart.
    let write = |text: &str| {
        let tmp = ca.join(".trust-anchors.pem.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &controller_anchors).unwrap();
    };
    write(&bundle);
    let reloaded = weft_test::eventually(Duration::from_secs(10), || {
        let n = reloads_ok(&controller);
        async move { n == 1 }
    })
    .await;
    assert!(reloaded, "the bundle was not loaded");
    load.more(10).await;

    // Step 2: an issuer signed by the new anchor; every leaf moves to it.
    identity::rotate_issuer(&RotateOptions::new(&new_cert, &new_key, &ca)).unwrap();
    let new_issuer = issuer_der(dir);
    until_both_hold_leaves_from(&new_issuer, (&books, &books_id), (&web, &web_id)).await;
    assert_eq!(reloads_ok(&controller), 2);
    load.more(10).await;

    // Step 3: the old anchor leaves the controller's bundle...
    write(&new_pem);
    let reloaded = weft_test::eventually(Duration::from_secs(10), || {
        let n = reloads_ok(&controller);
        async move { n == 3 }
    })
    .await;
    assert!(reloaded, "the bundle without the old anchor was not loaded");
    // ...and a proxy trusting only the new anchor gets its certificate from the
    // controller (whose serving certificate is from the new issuer), calls books, and
    // accepts web's certificate: nothing depends on the old anchor any more.
    let strict_anchors = dir.join("new-only.pem");
    std::fs::write(&strict_anchors, &new_pem).unwrap();
    let (strict, strict_id) = proxy(
        dir,
        &controller,
        &strict_anchors,
        "strict",
        app.addr(),
        Some(books.inbound_addr()),
    )
    .await;
    let strict_load = Load::start(strict.service_addr("books").unwrap());
    strict_load.more(20).await;
    let web_chain = presented(
        &strict_id,
        &web,
        "web.default.serviceaccount.identity.weft.cluster.local",
    )
    .await
    .unwrap();
    assert_eq!(web_chain.get(1), Some(&new_issuer));
    load.more(10).await;

    let (ok, failures) = load.stop().await;
    let (strict_ok, strict_failures) = strict_load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    assert!(strict_failures.is_empty(), "{strict_failures:?}");
    assert!(ok >= 60 && strict_ok >= 20, "{ok} {strict_ok}");
    eprintln!("anchor rotation: {ok} + {strict_ok} requests, 0 failed");
    strict.shutdown();
    books.shutdown();
    web.shutdown();
    controller.shutdown().await.unwrap();
}

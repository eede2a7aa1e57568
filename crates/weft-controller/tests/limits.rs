//! The `weft-controller` binary under a flood of oversize Certify requests without a
//! token: each is refused from its gRPC frame header (OUT_OF_RANGE) before its 4 MiB
//! are buffered, and the controller's peak resident memory (VmHWM) stays bounded.
//!
//! The requests are written with hyper's HTTP/2 client, their bodies slices of one
//! shared buffer, so the test itself holds 4 MiB however many are in flight.

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::ServerName;

const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");
const CONTROLLER: &str = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";

/// Requests in the flood, over this many connections, each this large.
const REQUESTS: usize = 200;
const CONNECTIONS: usize = 20;
const MESSAGE: usize = 4 * 1024 * 1024;
/// The controller's peak RSS may exceed its idle RSS by at most this much. (Were the
/// messages buffered whole, 200 of them would take 800 MiB.)
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

struct Controller {
    child: Child,
    dir: PathBuf,
    grpc: SocketAddr,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Controller {
    fn start() -> Controller {
        let dir =
            std::env::temp_dir().join(format!("weft-controller-limits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        weft_controller::identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
        let mut child = Command::new(BIN)
            .arg("--identity-dir")
            .arg(dir.join("identity"))
            .arg("--tokens-dir")
            .arg(dir.join("tokens"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            // Refusals are logged at info; the flood's 200 lines are not the point.
            .env("WEFT_LOG", "info,weft_controller::identity=warn")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        let grpc = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("the controller exited before serving:\n{log}");
            }
            log.push_str(&line);
            if line.contains("controller serving") {
                let addr = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("grpc_addr="))
                    .unwrap_or_else(|| panic!("no grpc_addr in {line}"));
                break addr.parse().unwrap();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while matches!(stderr.read_line(&mut sink), Ok(n) if n > 0) {
                sink.clear();
            }
        });
        Controller { child, dir, grpc }
    }

    /// A field of /proc/PID/status, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }
}

fn tls_config(anchors_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(anchors_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The gRPC status of a response: from its headers (trailers-only) or its trailers.
async fn grpc_status(rsp: hyper::Response<hyper::body::Incoming>) -> (String, String) {
    let (parts, body) = rsp.into_parts();
    let header = |h: &http::HeaderMap, name: &str| {
        h.get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    if let Some(code) = header(&parts.headers, "grpc-status") {
        let message = header(&parts.headers, "grpc-message").unwrap_or_default();
        return (code, percent_decode(&message));
    }
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (
        header(&trailers, "grpc-status").unwrap_or_default(),
        percent_decode(&header(&trailers, "grpc-message").unwrap_or_default()),
    )
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_flood_of_oversize_certify_requests_is_refused_with_bounded_memory() {
    let controller = Controller::start();
    let anchors = std::fs::read(controller.dir.join("identity").join("trust-anchors.pem")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let idle_kib = controller.status_kib("VmRSS:");

    // One 4 MiB message body (protobuf bytes, never decoded), shared by every request.
    let payload = Bytes::from(vec![0x5a_u8; MESSAGE]);
    let mut header = vec![0u8];
    header.extend_from_slice(&(MESSAGE as u32).to_be_bytes());
    let header = Bytes::from(header);

    let statuses: Vec<(String, String)> = runtime.block_on(async {
        let tls = tokio_rustls::TlsConnector::from(tls_config(&anchors));
        let mut senders = Vec::new();
        for _ in 0..CONNECTIONS {
            let tcp = tokio::net::TcpStream::connect(controller.grpc)
                .await
                .unwrap();
            let name = ServerName::try_from(CONTROLLER).unwrap();
            let stream = tls.connect(name, tcp).await.unwrap();
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            senders.push(sender);
        }
        let requests = (0..REQUESTS).map(|i| {
            let mut sender = senders[i % CONNECTIONS].clone();
            let chunks: Vec<Bytes> = std::iter::once(header.clone())
                .chain(
                    (0..MESSAGE)
                        .step_by(64 * 1024)
                        .map(|at| payload.slice(at..at + 64 * 1024)),
                )
                .collect();
            async move {
                let body = StreamBody::new(futures_util::stream::iter(
                    chunks
                        .into_iter()
                        .map(|c| Ok::<_, Infallible>(Frame::data(c))),
                ));
                let request = http::Request::post(format!(
                    "https://{CONTROLLER}/io.linkerd.proxy.identity.Identity/Certify"
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(body)
                .unwrap();
                sender.ready().await.unwrap();
                let rsp =
                    tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
                        .await
                        .expect("an answer within 30 s")
                        .expect("an HTTP/2 response, not a reset connection");
                assert_eq!(rsp.status(), 200);
                grpc_status(rsp).await
            }
        });
        futures_util::future::join_all(requests).await
    });

    let peak_kib = controller.status_kib("VmHWM:");
    let growth = peak_kib.saturating_sub(idle_kib);
    eprintln!(
        "{REQUESTS} x {} MiB Certify over {CONNECTIONS} connections: controller RSS idle {idle_kib} KiB, peak {peak_kib} KiB (+{growth} KiB)",
        MESSAGE >> 20
    );
    assert_eq!(statuses.len(), REQUESTS);
    for (code, message) in &statuses {
        // 11 = OUT_OF_RANGE.
        assert_eq!(code, "11", "{message}");
        assert!(
            message
                == "Error, decoded message length too large: found 4194304 bytes, the limit is: 65536 bytes",
            "{message}"
        );
    }
    assert!(
        growth < RSS_GROWTH_BOUND_KIB,
        "the controller grew by {growth} KiB (idle {idle_kib} KiB, peak {peak_kib} KiB), more than {RSS_GROWTH_BOUND_KIB} KiB"
    );
    // Still serving: the admin endpoint and a fresh connection answer.
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(controller.grpc)
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls_config(&anchors));
        tls.connect(ServerName::try_from(CONTROLLER).unwrap(), tcp)
            .await
            .expect("a TLS handshake after the flood");
    });
}

//! `weft-demo-app echo`: the Gateway API conformance suite's echo server for weft's
//! local mesh. Every HTTP request is answered with 200 and one line of JSON saying what
//! arrived, in the shape of the suite's `echo-basic` image:
//!
//! ```text
//! {"path":"/v2?x=1","host":"echo","method":"GET","proto":"HTTP/1.1",
//!  "headers":{"Accept":["*/*"],"X-Header-Add":["a","b"]},
//!  "namespace":"gateway-conformance-mesh","ingress":"","service":"","pod":"echo-v1.gateway-conformance-mesh-0"}
//! ```
//!
//! (`path` includes the query, as echo-basic's `RequestURI` does; header names are
//! canonicalised as Go's `net/http` does, each with its values in arrival order.)
//! gRPC requests (by content type) get the demo's `weft.demo.Authors/Lookup` with this
//! pod's `--name` and pod name in the reply, so a gRPC caller learns who answered.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::grpc;

#[derive(clap::Args)]
pub struct EchoArgs {
    /// The server's name (gRPC replies carry it; HTTP answers name the pod).
    #[arg(long)]
    pub name: String,
    /// Ports to listen on (on $WEFT_LISTEN_ADDR when set, else on all addresses), each
    /// answering HTTP/1.1, HTTP/2 and gRPC.
    #[arg(long = "port", default_values_t = [8080])]
    pub ports: Vec<u16>,
}

/// Who answers: from the environment `weft up` sets.
struct Me {
    name: String,
    pod: String,
    namespace: String,
}

pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let me = Arc::new(Me {
        name: args.name,
        pod: env("WEFT_POD"),
        namespace: env("WEFT_NAMESPACE"),
    });
    let host = match std::env::var("WEFT_LISTEN_ADDR") {
        Ok(addr) if !addr.is_empty() => addr
            .parse::<std::net::IpAddr>()
            .with_context(|| format!("WEFT_LISTEN_ADDR {addr:?} is not an IP address"))?,
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    let mut ports = args.ports;
    ports.sort_unstable();
    ports.dedup();
    for port in &ports {
        let listen = std::net::SocketAddr::new(host, *port);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tokio::spawn(accept(listener, me.clone()));
    }
    println!(
        "echo {} (pod {}, namespace {}) on {host} ports {ports:?}",
        me.name, me.pod, me.namespace
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn accept(listener: tokio::net::TcpListener, me: Arc<Me>) {
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let me = me.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let me = me.clone();
                async move {
                    if grpc::is_grpc(&req) {
                        let answer: Arc<dyn grpc::Lookup> = Arc::new(Who(me));
                        return Ok::<_, Infallible>(grpc::serve(answer, req).await);
                    }
                    let body = Bytes::from(describe(&req, &me.namespace, &me.pod));
                    let mut rsp = Response::new(Full::new(body));
                    *rsp.status_mut() = StatusCode::OK;
                    rsp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok(rsp.map(tonic::body::Body::new))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), svc)
                .await;
        });
    }
}

/// gRPC `Lookup`: who answered (the author from the demo's catalogue, as `serve` does).
struct Who(Arc<Me>);

impl grpc::Lookup for Who {
    fn lookup(
        &self,
        book: String,
    ) -> Pin<Box<dyn Future<Output = Result<grpc::LookupReply, tonic::Status>> + Send>> {
        let me = self.0.clone();
        Box::pin(async move {
            Ok(grpc::LookupReply {
                author: grpc::author_of(&book).to_owned(),
                name: me.name.clone(),
                pod: me.pod.clone(),
                zone: std::env::var("WEFT_ZONE").unwrap_or_default(),
            })
        })
    }
}

/// The request as echo-basic describes it: one line of JSON.
fn describe<B>(req: &Request<B>, namespace: &str, pod: &str) -> String {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // HTTP/1 carries the host in a header, HTTP/2 in :authority (the URI).
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let proto = match req.version() {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/?",
    };
    // Names in order of first appearance, canonical as Go prints them; the Host header
    // is not among them (Go moves it to `host`).
    let mut headers: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in req.headers() {
        if name == http::header::HOST {
            continue;
        }
        let name = canonical(name.as_str());
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => headers.push((name, vec![value])),
        }
    }
    let headers = headers
        .iter()
        .map(|(name, values)| {
            let values: Vec<String> = values.iter().map(|v| json_string(v)).collect();
            format!("{}:[{}]", json_string(name), values.join(","))
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{{\"path\":{},\"host\":{},\"method\":{},\"proto\":{},\"headers\":{{{headers}}},\"namespace\":{},\"ingress\":\"\",\"service\":\"\",\"pod\":{}}}\n",
        json_string(path),
        json_string(&host),
        json_string(req.method().as_str()),
        json_string(proto),
        json_string(namespace),
        json_string(pod),
    )
}

/// `x-header-set` → `X-Header-Set` (Go's `CanonicalHeaderKey`).
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_described_as_echo_basic_does() {
        let req = Request::get("/add?animal=whale")
            .header("host", "echo:80")
            .header("x-header-add", "a")
            .header("X-HEADER-ADD", "b\"c")
            .header("user-agent", "t")
            .body(())
            .unwrap();
        assert_eq!(
            describe(&req, "gateway-conformance-mesh", "echo-v1-0"),
            concat!(
                r#"{"path":"/add?animal=whale","host":"echo:80","method":"GET","proto":"HTTP/1.1","#,
                r#""headers":{"X-Header-Add":["a","b\"c"],"User-Agent":["t"]},"#,
                r#""namespace":"gateway-conformance-mesh","ingress":"","service":"","pod":"echo-v1-0"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn header_names_are_canonical_and_strings_escaped() {
        assert_eq!(canonical("x-header-set-1"), "X-Header-Set-1");
        assert_eq!(canonical("CONTENT-type"), "Content-Type");
        assert_eq!(json_string("a\\b\u{1}\n"), r#""a\\b\u0001\n""#);
    }
}

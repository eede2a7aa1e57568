//! The application's HTTP probes, made by the proxy for the kubelet. The injector points
//! a container's `httpGet` readiness, liveness and startup probes at the proxy's admin
//! port (`/app-probe/CONTAINER/KIND`) and gives the proxy the originals
//! (`--app-probes`, JSON); the proxy then calls the application on loopback and answers
//! with its status. The kubelet's probes so pass neither the inbound proxy nor the
//! inbound policy, which would otherwise have to admit the node's unauthenticated
//! calls.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use weft_core::admin::{text, Reply};

/// How long a probe may take at the most (the kubelet's own timeout, 1 s by default,
/// usually ends it sooner by closing the connection).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// One probe: where the application answers it on loopback.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppProbe {
    pub port: u16,
    /// The path and query (`/healthz`).
    #[serde(default = "root")]
    pub path: String,
    /// Headers the probe sends (`httpHeaders`).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

fn root() -> String {
    "/".to_owned()
}

/// The probes by name (`CONTAINER/KIND`).
pub type AppProbes = HashMap<String, AppProbe>;

/// `--app-probes`: a JSON object of probes by name.
pub fn parse(s: &str) -> Result<AppProbes, String> {
    // JSON is YAML: the YAML parser the proxy has reads it.
    let probes: AppProbes = serde_yaml_ng::from_str(s)
        .map_err(|e| format!("not a JSON object of probes ({{\"app/readiness\": {{\"port\": 8080, \"path\": \"/ready\"}}}}): {e}"))?;
    for (name, probe) in &probes {
        if probe.port == 0 {
            return Err(format!("probe {name:?}: port 0"));
        }
        if !probe.path.starts_with('/') {
            return Err(format!(
                "probe {name:?}: path {:?} does not start with /",
                probe.path
            ));
        }
    }
    Ok(probes)
}

/// Makes `probe` against the application on loopback: its status code, or 503 saying
/// why it could not be asked.
pub async fn run(name: String, probe: AppProbe) -> Reply {
    match tokio::time::timeout(PROBE_TIMEOUT, call(&probe)).await {
        Ok(Ok(status)) => text(status, format!("app probe {name}: {status}\n")),
        Ok(Err(why)) => {
            tracing::debug!(probe = %name, port = probe.port, error = %why, "app probe failed");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app probe {name}: {why}\n"),
            )
        }
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app probe {name}: no answer within {PROBE_TIMEOUT:?}\n"),
        ),
    }
}

async fn call(probe: &AppProbe) -> Result<StatusCode, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], probe.port));
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::get(probe.path.as_str()).header(http::header::HOST, addr.to_string());
    for (k, v) in &probe.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("the probe's request: {e}"))?;
    let rsp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{addr}{}: {e}", probe.path))?;
    Ok(rsp.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_and_bad_ones_are_refused_naming_them() {
        let p = parse(r#"{"app/readiness": {"port": 8080, "path": "/ready"}, "app/liveness": {"port": 8081}}"#).unwrap();
        assert_eq!(p["app/readiness"].path, "/ready");
        assert_eq!(p["app/liveness"].path, "/");
        assert!(parse("[]").unwrap_err().contains("not a JSON object"));
        assert!(parse(r#"{"a/b": {"port": 0}}"#)
            .unwrap_err()
            .contains("port 0"));
        assert!(parse(r#"{"a/b": {"port": 1, "path": "x"}}"#)
            .unwrap_err()
            .contains("does not start with /"));
    }

    #[tokio::test]
    async fn a_probe_answers_with_the_applications_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let status = if req.uri().path() == "/ready"
                                && req.headers().get("x-probe").is_some()
                            {
                                StatusCode::NO_CONTENT
                            } else {
                                StatusCode::INTERNAL_SERVER_ERROR
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Empty::<Bytes>::new())
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let good = AppProbe {
            port,
            path: "/ready".into(),
            headers: vec![("x-probe".into(), "1".into())],
        };
        assert_eq!(
            run("app/readiness".into(), good.clone()).await.status(),
            StatusCode::NO_CONTENT
        );
        let bad = AppProbe {
            headers: vec![],
            ..good
        };
        assert_eq!(
            run("app/readiness".into(), bad).await.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        // Nothing listening: 503, saying so.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rsp = run(
            "app/liveness".into(),
            AppProbe {
                port: closed,
                path: "/".into(),
                headers: vec![],
            },
        )
        .await;
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

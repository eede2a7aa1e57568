//! The demo's gRPC service, `weft.demo.Authors/Lookup {book} -> {author, name, pod,
//! zone}`, written against tonic's server and client APIs by hand (prost derives, no
//! `.proto` build step, so no protoc is needed).
//!
//! ```text
//! package weft.demo;
//! service Authors { rpc Lookup(LookupRequest) returns (LookupReply); }
//! message LookupRequest { string book = 1; }
//! message LookupReply { string author = 1; string name = 2; string pod = 3; string zone = 4; }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::Uri;
use hyper_util::client::proxy::matcher::Matcher;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The method's path, as gRPC sends it (`/{package}.{service}/{method}`).
pub const LOOKUP: &str = "/weft.demo.Authors/Lookup";

#[derive(Clone, PartialEq, prost::Message)]
pub struct LookupRequest {
    #[prost(string, tag = "1")]
    pub book: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LookupReply {
    #[prost(string, tag = "1")]
    pub author: String,
    /// The answering service's --name.
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub pod: String,
    #[prost(string, tag = "4")]
    pub zone: String,
}

impl std::fmt::Display for LookupReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} by {} (pod {}, zone {})",
            self.name, self.author, self.pod, self.zone
        )
    }
}

/// The demo's small catalogue: who wrote `book` (a title in any case, words joined by
/// `-`, `_` or spaces).
pub fn author_of(book: &str) -> &'static str {
    let key: String = book
        .chars()
        .map(|c| match c {
            '-' | '_' => ' ',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    match key.trim() {
        "dune" => "Frank Herbert",
        "the dispossessed" => "Ursula K. Le Guin",
        "solaris" => "Stanisław Lem",
        "neuromancer" => "William Gibson",
        "books" | "" => "various authors",
        _ => "unknown",
    }
}

/// Whether a request is gRPC (by its content type, as gRPC's spec defines it).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the server does for one lookup: the reply, or the status to fail with.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, book: String) -> BoxFuture<Result<LookupReply, Status>>;
}

struct LookupService(Arc<dyn Lookup>);

impl tonic::server::UnaryService<LookupRequest> for LookupService {
    type Response = LookupReply;
    type Future = BoxFuture<Result<Response<LookupReply>, Status>>;

    fn call(&mut self, request: Request<LookupRequest>) -> Self::Future {
        let work = self.0.lookup(request.into_inner().book);
        Box::pin(async move { work.await.map(Response::new) })
    }
}

/// Answers one gRPC request: `Lookup` through `service`, any other method UNIMPLEMENTED.
pub async fn serve<B>(
    service: Arc<dyn Lookup>,
    req: http::Request<B>,
) -> http::Response<tonic::body::Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    if req.uri().path() != LOOKUP {
        let path = req.uri().path().to_owned();
        return Status::unimplemented(format!("no method {path}: this server has {LOOKUP}"))
            .into_http();
    }
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<LookupReply, LookupRequest>::default());
    grpc.unary(LookupService(service), req).await
}

/// A gRPC upstream (`--grpc-upstream http://authors:9090`): one HTTP/2 connection,
/// opened on first use and again after it breaks. With an HTTP proxy set for the URL
/// (`HTTP_PROXY`, loopback mode) the connection goes to the proxy, in cleartext HTTP/2
/// (h2c prior knowledge, no CONNECT), and `:authority` still names the upstream: weft's
/// explicit-mode outbound listener resolves each HTTP/2 request by its authority.
#[derive(Clone)]
pub struct Upstream {
    uri: Uri,
    /// Where the connection goes: the upstream itself or the proxy.
    via: Uri,
    grpc: tonic::client::Grpc<Channel>,
}

impl Upstream {
    /// `proxies` says which proxy (if any) serves `uri`, as for HTTP calls.
    pub fn new(uri: Uri, proxies: &Matcher) -> anyhow::Result<Upstream> {
        anyhow::ensure!(
            uri.scheme_str() == Some("http") && uri.authority().is_some(),
            "gRPC upstream {uri}: expected http://HOST:PORT (cleartext HTTP/2; the mesh adds TLS)"
        );
        anyhow::ensure!(
            matches!(uri.path(), "" | "/"),
            "gRPC upstream {uri}: no path expected (the method's path is {LOOKUP})"
        );
        let via = match proxies.intercept(&uri) {
            None => uri.clone(),
            Some(proxy) => {
                let proxy = proxy.uri().clone();
                anyhow::ensure!(
                    proxy.scheme_str() == Some("http"),
                    "HTTP_PROXY {proxy}: only http:// proxies are supported"
                );
                proxy
            }
        };
        let origin: Uri = format!(
            "http://{}",
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        )
        .parse()?;
        let channel = Endpoint::from(via.clone())
            .origin(origin)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Upstream {
            uri,
            via,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Where connections go (the upstream, or the proxy that serves it).
    pub fn via(&self) -> &Uri {
        &self.via
    }

    /// A status the client made from a transport error (it carries its source; a
    /// server's status does not) says where it tried to go and why it failed there.
    fn transport_context(&self, status: Status, limit: Duration) -> Status {
        use std::error::Error as _;
        let Some(source) = status.source() else {
            return status;
        };
        let mut causes = Vec::new();
        let mut next = Some(source);
        while let Some(e) = next {
            if e.is::<tonic::TimeoutExpired>() {
                // The client's own deadline (the request's grpc-timeout) ran out: that is
                // DEADLINE_EXCEEDED to gRPC, though tonic reports it as CANCELLED. Same
                // words as the outer timer's, whichever of the two fires first.
                return deadline_exceeded(&self.uri, limit);
            }
            causes.push(e.to_string());
            next = e.source();
        }
        causes.dedup();
        Status::new(
            status.code(),
            format!("cannot reach {}: {}", self.via, causes.join(": ")),
        )
    }

    /// Calls `Lookup` within `limit`; a call that takes longer is DEADLINE_EXCEEDED.
    pub async fn lookup(&self, book: &str, limit: Duration) -> Result<LookupReply, Status> {
        let mut grpc = self.grpc.clone();
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("cannot connect to {}: {e}", self.via)))?;
            let mut request = Request::new(LookupRequest {
                book: book.to_owned(),
            });
            request.set_timeout(limit);
            let rsp = grpc
                .unary(
                    request,
                    PathAndQuery::from_static(LOOKUP),
                    ProstCodec::<LookupRequest, LookupReply>::default(),
                )
                .await
                .map_err(|status| self.transport_context(status, limit))?;
            Ok(rsp.into_inner())
        };
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(deadline_exceeded(&self.uri, limit)))
    }
}

fn deadline_exceeded(uri: &impl std::fmt::Display, limit: Duration) -> Status {
    Status::deadline_exceeded(format!("{uri} {LOOKUP}: no answer within {limit:?}"))
}

/// A status in one line: its code's name as the gRPC spec writes it
/// (`UNAVAILABLE`, `DEADLINE_EXCEEDED`), then its message.
pub fn status_line(status: &Status) -> String {
    let mut name = String::new();
    for (i, c) in format!("{:?}", status.code()).chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    format!("{name}: {}", status.message())
}

//! A gRPC echo service, written against tonic's server and client APIs without a
//! `.proto` build step: `weft.test.Echo/Unary` and the bidirectional stream
//! `weft.test.Echo/Chat`. A unary message `fail` answers NOT_FOUND.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoMessage {
    #[prost(string, tag = "1")]
    pub text: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type MessageStream = Pin<Box<dyn Stream<Item = Result<EchoMessage, Status>> + Send + 'static>>;

const UNARY: &str = "/weft.test.Echo/Unary";
const CHAT: &str = "/weft.test.Echo/Chat";

#[derive(Clone)]
struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "weft.test.Echo";
}

struct Unary;

impl tonic::server::UnaryService<EchoMessage> for Unary {
    type Response = EchoMessage;
    type Future = BoxFuture<Result<Response<EchoMessage>, Status>>;

    fn call(&mut self, request: Request<EchoMessage>) -> Self::Future {
        Box::pin(async move {
            let text = request.into_inner().text;
            if text == "fail" {
                return Err(Status::not_found("asked to fail"));
            }
            Ok(Response::new(EchoMessage {
                text: format!("echo: {text}"),
            }))
        })
    }
}

struct Chat;

impl tonic::server::StreamingService<EchoMessage> for Chat {
    type Response = EchoMessage;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<Response<MessageStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<EchoMessage>>) -> Self::Future {
        Box::pin(async move {
            let incoming = request.into_inner();
            let replies = incoming.map(|m| {
                m.map(|m| EchoMessage {
                    text: format!("echo: {}", m.text),
                })
            });
            Ok(Response::new(Box::pin(replies) as MessageStream))
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for EchoService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            UNARY => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<EchoMessage, EchoMessage>::default());
                Ok(grpc.unary(Unary, req).await)
            }),
            CHAT => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<EchoMessage, EchoMessage>::default());
                Ok(grpc.streaming(Chat, req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A running gRPC echo server. Stops when dropped.
pub struct GrpcServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GrpcServer {
    pub async fn loopback() -> GrpcServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoService)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        GrpcServer { addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client of the echo service connected to `addr` (a server or a proxy).
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    pub async fn connect(addr: SocketAddr, authority: &str) -> anyhow::Result<EchoClient> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .origin(format!("http://{authority}").parse()?)
            .connect()
            .await?;
        Ok(EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    pub async fn unary(&mut self, text: &str) -> Result<String, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let rsp = self
            .grpc
            .unary(
                Request::new(EchoMessage {
                    text: text.to_owned(),
                }),
                PathAndQuery::from_static(UNARY),
                ProstCodec::<EchoMessage, EchoMessage>::default(),
            )
            .await?;
        Ok(rsp.into_inner().text)
    }

    /// Opens the bidirectional chat: send on the returned sender, read replies from the
    /// stream, interleaved.
    pub async fn chat(&mut self) -> Result<(mpsc::Sender<String>, Streaming<EchoMessage>), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<String>(16);
        let outgoing = ReceiverStream::new(rx).map(|text| EchoMessage { text });
        let rsp = self
            .grpc
            .streaming(
                Request::new(outgoing),
                PathAndQuery::from_static(CHAT),
                ProstCodec::<EchoMessage, EchoMessage>::default(),
            )
            .await?;
        Ok((tx, rsp.into_inner()))
    }
}

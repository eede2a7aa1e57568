//! gRPC through the proxy: unary calls, a bidirectional stream, and gRPC errors
//! classified as failures.

use std::time::Duration;

use weft_test::{proxy, EchoClient, GrpcServer};

#[tokio::test]
async fn grpc_unary_and_bidirectional_streaming() {
    let server = GrpcServer::loopback().await;
    let proxy = proxy::inbound_to(server.addr()).start().await;
    let mut client = EchoClient::connect(proxy.inbound(), "echo.default.svc:9090")
        .await
        .unwrap();

    assert_eq!(client.unary("hi").await.unwrap(), "echo: hi");
    let err = client.unary("fail").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "asked to fail");

    // Each reply arrives before the next message is sent: nothing is buffered whole.
    let (tx, mut replies) = client.chat().await.unwrap();
    for text in ["a", "b", "c"] {
        tx.send(text.to_owned()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("reply in time")
            .unwrap()
            .unwrap();
        assert_eq!(reply.text, format!("echo: {text}"));
    }
    drop(tx);
    assert!(
        replies.message().await.unwrap().is_none(),
        "stream ends with OK trailers"
    );

    let m = proxy.metrics().await;
    let route = [
        ("direction", "inbound"),
        ("authority", "echo.default.svc:9090"),
    ];
    assert_eq!(m.sum("request_total", &route), 3.0, "{}", m.text);
    // HTTP 200 for all three; the NOT_FOUND call is a failure by its grpc-status.
    assert_eq!(
        m.sum(
            "response_total",
            &[("classification", "success"), ("status_code", "200")]
        ),
        2.0
    );
    assert_eq!(
        m.sum(
            "response_total",
            &[("classification", "failure"), ("status_code", "200")]
        ),
        1.0
    );
}

#[tokio::test]
async fn grpc_callers_get_grpc_errors_from_the_proxy() {
    // Nothing listens on the forward address: the proxy answers UNAVAILABLE in gRPC terms.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = proxy::inbound_to(dead).start().await;
    let mut client = EchoClient::connect(proxy.inbound(), "echo:9090")
        .await
        .unwrap();
    let err = client.unary("hi").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("refused"), "{}", err.message());
}

#[tokio::test]
async fn outbound_grpc_errors_are_failures_and_not_retried_by_default() {
    let server = GrpcServer::loopback().await;
    let services = format!(
        "services:\n  - name: echo\n    listen: 127.0.0.1:0\n    endpoints: [\"{}\"]\n",
        server.addr()
    );
    let proxy = proxy::inbound_to(server.addr())
        .services(&services)
        .start()
        .await;
    let mut client = EchoClient::connect(proxy.service("echo"), "echo.default.svc:9090")
        .await
        .unwrap();
    assert_eq!(client.unary("hi").await.unwrap(), "echo: hi");
    let err = client.unary("fail").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let m = proxy.metrics().await;
    let outbound = |classification| {
        m.sum(
            "response_total",
            &[
                ("direction", "outbound"),
                ("dst_service", "echo"),
                ("classification", classification),
            ],
        )
    };
    assert_eq!(outbound("success"), 1.0, "{}", m.text);
    assert_eq!(outbound("failure"), 1.0, "{}", m.text);
    // gRPC calls are POSTs: retried on a response only when a gRPC status is listed.
    assert_eq!(m.sum("retry_requests_total", &[]), 0.0, "{}", m.text);
}

//! The proxy's destination client authenticates to the controller with its workload
//! certificate: it does not connect before it has one, and then presents it (the
//! controller answers only mesh workloads). A stand-in controller that requires a
//! client certificate reports who connected.

use std::sync::Arc;
use std::time::Duration;

use weft_core::identity::Identity;
use weft_proxy::balance::BalanceConfig;
use weft_proxy::destination::{DestinationConfig, DestinationMetrics, Destinations};
use weft_proxy::endpoints::ServiceIndex;
use weft_proxy::identity::{peer_identity, LocalIdentity};
use weft_test::ca::TestCa;

#[tokio::test]
async fn the_destination_client_presents_the_current_workload_certificate() {
    let ca = TestCa::default();
    // The controller's stand-in: mTLS required; reports each client's identity.
    let controller = ca.identity("weft-controller", "weft-system", Duration::from_secs(3600));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(controller.server_config());
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            // Refused handshakes (no certificate) report nothing.
            if let Ok(tls) = acceptor.accept(tcp).await {
                let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
                let _ = seen_tx.send(certs.first().and_then(peer_identity));
                // Keep the connection open: the client's HTTP/2 waits on it.
                tokio::spawn(async move {
                    let _hold = tls;
                    std::future::pending::<()>().await;
                });
            }
        }
    });

    let web = LocalIdentity::new(
        Identity::new("web", "default", "cluster.local").unwrap(),
        ca.roots(),
    )
    .unwrap();
    let config = DestinationConfig {
        controller: addr.to_string(),
        controller_name: controller.name().dns_name(),
        anchors_pem: ca.anchors_pem().into_bytes(),
        first_update: Duration::from_millis(100),
        mesh_networks: Vec::new(),
    };
    let metrics = DestinationMetrics::default();
    let destinations = Destinations::new(
        &config,
        Some(web.clone()),
        Arc::new(BalanceConfig::default()),
        ServiceIndex::default(),
        metrics.clone(),
    )
    .unwrap();

    // No certificate yet: the lookup gets no answer, and no connection was made.
    let _ = destinations
        .resolve_addr("198.18.0.9:8080".parse().unwrap())
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metrics.errors.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed attempt is not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.try_recv().is_err(), "connected without a certificate");

    // With its certificate, the next attempt (after the follower's backoff) connects
    // presenting it.
    ca.certify(&web, Duration::from_secs(3600));
    let presented = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a connection within the retry backoff")
        .unwrap();
    assert_eq!(presented.as_ref(), Some(web.name()));
    server.abort();
}

//! Zone-aware balancing through a proxy: in-zone while it keeps up, out of the zone at
//! once when the zone's endpoints fail.

use weft_test::{proxy, TestClient, TestServer};

fn service(endpoints: &[(std::net::SocketAddr, &str)]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(addr, zone)| format!("{{addr: \"{addr}\", zone: {zone}}}"))
        .collect();
    format!(
        "services:\n  - name: books\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn traffic_stays_in_zone_and_fails_over_out_of_it() {
    let a = TestServer::loopback("books-a").await;
    let b = TestServer::loopback("books-b").await;
    let c = TestServer::loopback("books-c").await;
    let yaml = service(&[
        (a.addr(), "zone-a"),
        (b.addr(), "zone-b"),
        (c.addr(), "zone-c"),
    ]);
    let proxy = proxy::inbound_to(a.addr())
        .zone("zone-a")
        .services(&yaml)
        // A new upstream connection per request, so a stopped server is seen at once.
        .pool_idle_timeout(std::time::Duration::ZERO)
        .start()
        .await;

    let mut client = TestClient::http1(proxy.service("books"), "books:8080")
        .await
        .unwrap();
    for _ in 0..50 {
        assert_eq!(client.get("/").await.unwrap().body, "hello from books-a");
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "request_total",
            &[("zone", "zone-a"), ("dst_zone", "zone-a")]
        ),
        50.0,
        "{}",
        m.text
    );
    assert_eq!((b.requests(), c.requests()), (0, 0));
    assert_eq!(
        m.sum(
            "balancer_endpoints",
            &[("dst_service", "books"), ("dst_zone", "zone-a")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("balancer_endpoints", &[("dst_service", "books")]),
        1.0,
        "only the in-zone endpoint is in use"
    );

    // The zone's only endpoint goes away: a few requests fail until it is ejected, then
    // everything goes to the other zones.
    drop(a);
    let mut failed = 0;
    let mut ok_after_failover = 0;
    for _ in 0..60 {
        let rsp = client.get("/").await.unwrap();
        if rsp.status == 200 {
            ok_after_failover += 1;
        } else {
            assert_eq!(
                ok_after_failover, 0,
                "no failure once traffic moved out of the zone"
            );
            failed += 1;
        }
    }
    assert!(failed <= 5, "{failed} requests failed before the failover");
    assert!(b.requests() > 0 && c.requests() > 0);
    let m = proxy.metrics().await;
    assert!(m.sum("request_total", &[("dst_zone", "zone-b")]) > 0.0);
}

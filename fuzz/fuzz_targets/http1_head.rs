//! The proxy's own logic on an HTTP/1 request head, as hyper hands it over: the
//! authority it routes by (or the 400), upgrade detection, hop-by-hop stripping and the
//! `grpc-timeout` deadline. The head is parsed with httparse, hyper's parser, and
//! turned into an `http::Request` the way hyper does (a head hyper refuses is skipped).
#![no_main]

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use weft_proxy::http::{authority_of, is_upgrade, strip_hop_by_hop};
use weft_proxy::retry::{grpc_timeout, grpc_timeout_value};

fn request(data: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    // A head cut short still has its request line and the headers so far.
    let _ = req.parse(data);
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let uri: Uri = req.path?.parse().ok()?;
    let version = match req.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder().method(method).uri(uri).version(version);
    for h in req.headers.iter().take_while(|h| !h.name.is_empty()) {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        builder = builder.header(name, value);
    }
    builder.body(()).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(mut req) = request(data) else {
        return;
    };
    if let Ok(authority) = authority_of(&req) {
        assert_eq!(authority, authority.to_ascii_lowercase());
        assert!(
            authority.is_empty() || authority.parse::<http::uri::Authority>().is_ok(),
            "routed by an invalid authority {authority:?}"
        );
        if authority.is_empty() {
            assert_eq!(req.version(), Version::HTTP_10);
        }
    }
    if let Some(d) = grpc_timeout(req.headers()) {
        assert!(d <= std::time::Duration::from_secs(99_999_999 * 3600));
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", grpc_timeout_value(d));
        assert!(
            grpc_timeout(&h).is_some(),
            "our own grpc-timeout does not parse"
        );
    }
    let _ = is_upgrade(req.headers());
    let named: Vec<HeaderName> = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    strip_hop_by_hop(req.headers_mut());
    let h = req.headers();
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        assert!(!h.contains_key(&name), "{name} left after stripping");
    }
    assert!(!h.contains_key("keep-alive") && !h.contains_key("proxy-connection"));
    for name in named {
        assert!(!h.contains_key(&name), "{name} named in Connection left");
    }
    assert!(!is_upgrade(h));
});

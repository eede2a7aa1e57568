//! HTTP/1 carried over HTTP/2 between proxies, by Linkerd's convention: the outbound
//! proxy sends an HTTP/1 request to a meshed endpoint as an HTTP/2 request on the one
//! connection it shares with every other request to that endpoint, with an
//! `l5d-orig-proto` header naming the request's version; the endpoint's inbound proxy
//! takes the header off and sends the application the HTTP/1 request, and says the
//! same on the response. Either proxy may be weft's or Linkerd's.
//!
//! Requests that ask for a protocol upgrade (WebSocket) and CONNECT stay HTTP/1: they
//! take over their connection.

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Parts, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};

/// The header naming the version of a request (or response) carried over HTTP/2.
pub(crate) const HEADER: HeaderName = HeaderName::from_static("l5d-orig-proto");

fn name(version: Version) -> Option<HeaderValue> {
    match version {
        Version::HTTP_11 => Some(HeaderValue::from_static("HTTP/1.1")),
        Version::HTTP_10 => Some(HeaderValue::from_static("HTTP/1.0")),
        _ => None,
    }
}

/// The version a header value [`name`]s, exactly.
fn named(value: Option<HeaderValue>) -> Option<Version> {
    match value?.as_bytes() {
        b"HTTP/1.1" => Some(Version::HTTP_11),
        b"HTTP/1.0" => Some(Version::HTTP_10),
        _ => None,
    }
}

/// Outbound: makes `req`, an HTTP/1 request prepared for its hop (origin-form, Host
/// set), an HTTP/2 request that names its version. Its `:authority` is its Host (which
/// a route may have rewritten: the application sees what HTTP/1 would have shown it),
/// else `authority`, the one it was routed by. `false` (and `req` unchanged) when it
/// cannot go that way: not HTTP/1, CONNECT, or no valid authority for `:authority` (an
/// HTTP/1.0 request without Host).
pub(crate) fn upgrade<B>(req: &mut Request<B>, authority: &str) -> bool {
    let Some(value) = name(req.version()) else {
        return false;
    };
    if req.method() == Method::CONNECT {
        return false;
    }
    let authority = match req.headers().get(header::HOST) {
        Some(host) => Authority::try_from(host.as_bytes()),
        None => Authority::try_from(authority),
    };
    let Ok(authority) = authority else {
        return false;
    };
    let mut parts = Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let Ok(uri) = Uri::from_parts(parts) else {
        return false;
    };
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    req.headers_mut().insert(HEADER, value);
    true
}

/// Outbound: undoes [`upgrade`] (the request goes to an endpoint that takes HTTP/1
/// instead: a retry elsewhere).
pub(crate) fn undo<B>(req: &mut Request<B>) {
    *req.version_mut() = named(req.headers_mut().remove(HEADER)).unwrap_or(Version::HTTP_11);
    if let Some(path) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(path);
    }
}

/// Outbound: the response to an upgraded request, as the HTTP/1 response it carries:
/// the version the server's proxy names (the application's), else the request's.
pub(crate) fn downgrade_response<B>(rsp: &mut Response<B>, request_version: Version) {
    *rsp.version_mut() = named(rsp.headers_mut().remove(HEADER)).unwrap_or(request_version);
}

/// Inbound: when `req` is an HTTP/2 request carrying an HTTP/1 one, makes it that
/// request again: its version, origin-form, its authority in Host. Returns whether it
/// did (the response then names its version: [`mark_response`]). A value this proxy
/// does not know is taken off and leaves the request HTTP/2, as Linkerd's proxy does.
pub(crate) fn downgrade<B>(req: &mut Request<B>) -> bool {
    if req.version() != Version::HTTP_2 {
        return false;
    }
    let Some(value) = req.headers_mut().remove(HEADER) else {
        return false;
    };
    // "HTTP/1.1", or "HTTP/1.1; absolute-form" from a client that sent one (the
    // application gets origin-form either way, as from any proxied hop).
    let value = value.as_bytes();
    let version = if value.starts_with(b"HTTP/1.1") {
        Version::HTTP_11
    } else if value.starts_with(b"HTTP/1.0") {
        Version::HTTP_10
    } else {
        tracing::debug!(value = %String::from_utf8_lossy(value), "unknown l5d-orig-proto: forwarded as HTTP/2");
        return false;
    };
    *req.version_mut() = version;
    if req.method() != Method::CONNECT {
        // The authority the request was sent to is its Host (usually it is already:
        // weft's outbound side keeps Host). Origin-form and a Host the connection saw
        // before: the path's authority cache ([`super::ConnContext::authority`]) hits.
        if let Some(authority) = req.uri().authority() {
            let host = req.headers().get(header::HOST).map(HeaderValue::as_bytes);
            if host != Some(authority.as_str().as_bytes()) {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    req.headers_mut().insert(header::HOST, host);
                }
            }
        }
        if let Some(path) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(path);
        }
    }
    true
}

/// Inbound: names the version of the response to a downgraded request, for the
/// caller's proxy.
pub(crate) fn mark_response<B>(rsp: &mut Response<B>) {
    let value = name(rsp.version()).unwrap_or(HeaderValue::from_static("HTTP/1.1"));
    rsp.headers_mut().insert(HEADER, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h1(uri: &str, host: &str, version: Version) -> Request<()> {
        let mut req = Request::get(uri)
            .header(header::HOST, host)
            .body(())
            .unwrap();
        *req.version_mut() = version;
        req
    }

    #[test]
    fn an_upgraded_request_comes_back_down_as_it_was() {
        let mut req = h1("/a/b?c=d", "books:8080", Version::HTTP_10);
        assert!(upgrade(&mut req, "books:8080"));
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri(), "http://books:8080/a/b?c=d");
        assert_eq!(req.headers()[&HEADER], "HTTP/1.0");

        assert!(downgrade(&mut req));
        assert_eq!(req.version(), Version::HTTP_10);
        assert_eq!(req.uri(), "/a/b?c=d");
        assert_eq!(req.headers()[header::HOST], "books:8080");
        assert!(!req.headers().contains_key(&HEADER));

        let mut rsp = Response::new(());
        *rsp.version_mut() = Version::HTTP_11;
        mark_response(&mut rsp);
        assert_eq!(rsp.headers()[&HEADER], "HTTP/1.1");
        *rsp.version_mut() = Version::HTTP_2;
        // The application's version, named by the server's proxy.
        downgrade_response(&mut rsp, Version::HTTP_10);
        assert_eq!(rsp.version(), Version::HTTP_11);
        assert!(!rsp.headers().contains_key(&HEADER));
        // Not named (a proxy that does not say): the request's.
        *rsp.version_mut() = Version::HTTP_2;
        downgrade_response(&mut rsp, Version::HTTP_10);
        assert_eq!(rsp.version(), Version::HTTP_10);
    }

    #[test]
    fn the_authority_is_the_host_a_route_may_have_rewritten() {
        let mut req = h1("/x", "books.internal", Version::HTTP_11);
        assert!(upgrade(&mut req, "books:8080"));
        assert_eq!(req.uri(), "http://books.internal/x");
        assert!(downgrade(&mut req));
        assert_eq!(req.headers()[header::HOST], "books.internal");
        // No Host (HTTP/1.0): the routed authority.
        let mut req = Request::get("/y").body(()).unwrap();
        *req.version_mut() = Version::HTTP_10;
        assert!(upgrade(&mut req, "books:8080"));
        assert_eq!(req.uri(), "http://books:8080/y");
    }

    #[test]
    fn undo_gives_back_the_http1_request() {
        let mut req = h1("/x", "books", Version::HTTP_11);
        assert!(upgrade(&mut req, "books"));
        undo(&mut req);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri(), "/x");
        assert!(!req.headers().contains_key(&HEADER));
    }

    #[test]
    fn what_cannot_be_carried_stays_as_it_is() {
        let mut connect = Request::connect("books:443").body(()).unwrap();
        assert!(!upgrade(&mut connect, "books:443"));
        assert_eq!(connect.version(), Version::HTTP_11);
        let mut no_host = h1("/x", "", Version::HTTP_10);
        assert!(!upgrade(&mut no_host, ""));
        let mut h2 = h1("/x", "books", Version::HTTP_2);
        assert!(!upgrade(&mut h2, "books"));
    }

    #[test]
    fn the_downgrade_takes_only_http2_requests_that_carry_one() {
        // An HTTP/1 request with the header (sent by an application): left alone.
        let mut req = h1("/x", "books", Version::HTTP_11);
        req.headers_mut()
            .insert(HEADER, HeaderValue::from_static("HTTP/1.0"));
        assert!(!downgrade(&mut req));
        assert_eq!(req.version(), Version::HTTP_11);
        // Plain HTTP/2: left alone.
        let h2 = || {
            let mut req = Request::get("http://books/x").body(()).unwrap();
            *req.version_mut() = Version::HTTP_2;
            req
        };
        let mut plain = h2();
        assert!(!downgrade(&mut plain));
        assert_eq!(plain.uri(), "http://books/x");
        // Linkerd's absolute-form marker: origin-form to the application all the same.
        let mut abs = h2();
        abs.headers_mut()
            .insert(HEADER, HeaderValue::from_static("HTTP/1.1; absolute-form"));
        assert!(downgrade(&mut abs));
        assert_eq!(abs.version(), Version::HTTP_11);
        assert_eq!(abs.uri(), "/x");
        assert_eq!(abs.headers()[header::HOST], "books");
        // A version it does not know: the header is taken, the request stays HTTP/2.
        let mut odd = h2();
        odd.headers_mut()
            .insert(HEADER, HeaderValue::from_static("HTTP/3"));
        assert!(!downgrade(&mut odd));
        assert_eq!(odd.version(), Version::HTTP_2);
        assert!(!odd.headers().contains_key(&HEADER));
    }
}

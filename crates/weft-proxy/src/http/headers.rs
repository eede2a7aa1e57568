//! Request and response heads as the proxy reads and rewrites them: the authority a
//! request is routed by, the HTTP/1 hop's rewriting, hop-by-hop headers, protocol
//! upgrades and gRPC markers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::ProxyError;

/// The authority a request head is routed by (lowercased), or why the proxy refuses it
/// as malformed (400): what both request paths do first with every request. Public for the
/// fuzz targets (`fuzz/`); the body type does not matter.
pub fn authority_of<B>(req: &Request<B>) -> Result<String, String> {
    request_authority(req).map_err(|e| e.message)
}

/// The request's authority: the URI's (HTTP/2, absolute-form HTTP/1) or the Host header.
pub(super) fn request_authority<B>(req: &Request<B>) -> Result<String, ProxyError> {
    // RFC 9112 §3.2: a request with more than one Host field is refused (which one a
    // server reads is up to it: the proxy and the application could disagree).
    // One lookup for both: the first Host value, and whether there is a second.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::new(
            StatusCode::BAD_REQUEST,
            "malformed request",
            "more than one Host header",
        ));
    }
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_ascii_lowercase());
    }
    match host {
        Some(host) => match host.to_str() {
            Ok(h) if !h.is_empty() && h.parse::<http::uri::Authority>().is_ok() => {
                Ok(h.to_ascii_lowercase())
            }
            _ => Err(ProxyError::new(
                StatusCode::BAD_REQUEST,
                "malformed request",
                "the Host header is not a valid authority",
            )),
        },
        None if req.version() == Version::HTTP_10 => Ok(String::new()),
        None => Err(ProxyError::new(
            StatusCode::BAD_REQUEST,
            "malformed request",
            "HTTP/1.1 request without a Host header",
        )),
    }
}

/// Whether `req` is routed by `known`, an authority [`request_authority`] returned for
/// an earlier request: its URI names none and its one Host header is `known`, byte for
/// byte. Then [`request_authority`] would return `known` again, and the Host need not be
/// parsed (and copied, and lowercased) again. `known` is lowercase; a Host in another
/// case does not match and is parsed.
pub(super) fn names_authority<B>(req: &Request<B>, known: &str) -> bool {
    if known.is_empty() || req.uri().authority().is_some() {
        return false;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    matches!((hosts.next(), hosts.next()), (Some(host), None) if host.as_bytes() == known.as_bytes())
}

/// Rewrites an HTTP/1 request for the upstream hop: origin-form URI, Host header,
/// no hop-by-hop headers (but the upgrade handshake when one is asked for).
pub(super) fn prepare_h1_request(
    req: &mut Request<Incoming>,
    authority: &str,
    upgrade: bool,
) -> Result<(), ProxyError> {
    if req.uri().authority().is_some() && req.method() != Method::CONNECT {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        *req.uri_mut() = Uri::try_from(path).map_err(|_| {
            ProxyError::new(
                StatusCode::BAD_REQUEST,
                "malformed request",
                "invalid request target",
            )
        })?;
        // RFC 9112 §3.2.2: the target's authority replaces any Host the client sent
        // (the request was routed by it; the upstream must see the same).
        if let Ok(v) = HeaderValue::from_str(authority) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let upgrade_value = upgrade
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(req.headers_mut());
    if let Some(protocol) = upgrade_value {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, protocol);
    }
    Ok(())
}

/// Whether the request asks for a protocol upgrade (`Upgrade` named in `Connection`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes headers that apply to one connection only (RFC 9110 §7.6.1), including
/// those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names a head has (a handful; most have none of these, or only
    // `Connection`) instead of a hashed removal of every hop-by-hop name: 19 removals
    // per proxied request cost about 3,000 instructions (bench/instructions).
    let mut found = 0usize;
    let mut connection = false;
    for name in headers.keys() {
        if is_hop_by_hop(name) {
            found += 1;
            connection |= name == header::CONNECTION;
        }
    }
    if found == 0 {
        return;
    }
    if connection {
        // `Connection`'s values are taken out first, then the other names they list
        // are removed by `&str` (no `HeaderName` made for each; an invalid one finds
        // nothing). Its usual tokens (`close`, `keep-alive`) name no header to remove
        // here: hop-by-hop names go below.
        let values: Vec<HeaderValue> = match headers.entry(header::CONNECTION) {
            header::Entry::Occupied(entry) => entry.remove_entry_mult().1.collect(),
            header::Entry::Vacant(_) => Vec::new(),
        };
        found -= 1;
        for value in &values {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if !token.is_empty()
                    && !token.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h))
                {
                    headers.remove(token);
                }
            }
        }
        if found == 0 {
            return;
        }
    }
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
}

/// The headers that apply to one connection only, whatever `Connection` names.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header applies to one connection only, whatever `Connection` names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

pub(super) async fn tunnel(server: hyper::upgrade::OnUpgrade, client: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(server, client) {
        Ok((server, client)) => {
            let mut server = TokioIo::new(server);
            let mut client = TokioIo::new(client);
            if let Err(error) = tokio::io::copy_bidirectional(&mut server, &mut client).await {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
        Err(error) => tracing::debug!(%error, "protocol upgrade failed"),
    }
}

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

pub(crate) fn grpc_status_of(headers: &HeaderMap) -> Option<bool> {
    headers.get("grpc-status").map(|v| v.as_bytes() == b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        map.keys().map(|n| n.as_str()).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut map = head(&[
            ("host", "books:8080"),
            ("connection", "keep-alive, x-session"),
            ("connection", "x-trace"),
            ("keep-alive", "timeout=5"),
            ("x-session", "1"),
            ("x-trace", "2"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(names(&map), ["host", "x-kept"]);
    }

    #[test]
    fn connection_tokens_are_matched_whatever_their_case_and_odd_ones_are_ignored() {
        let mut map = head(&[
            ("connection", "Keep-Alive, X-Session, close, , bad name, TE"),
            ("Keep-Alive", "timeout=5"),
            ("x-session", "1"),
            ("te", "trailers"),
            ("close", "not a hop-by-hop header"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut map);
        let mut left = names(&map);
        left.sort_unstable();
        assert_eq!(left, ["close", "x-kept"]);
    }

    #[test]
    fn a_head_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut map = head(&[
            ("host", "books:8080"),
            ("accept", "*/*"),
            ("accept", "text/plain"),
        ]);
        let before = map.clone();
        strip_hop_by_hop(&mut map);
        assert_eq!(map, before);
    }

    fn get(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut req = Request::get(uri);
        for host in hosts {
            req = req.header(header::HOST, *host);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn the_last_authority_is_taken_again_only_where_parsing_would_give_it() {
        let known = "books:8080";
        let again = get("/shelves", &["books:8080"]);
        assert!(names_authority(&again, known));
        assert_eq!(request_authority(&again).unwrap(), known);
        // Parsed instead: another name, another case (lowercased then), two Hosts (a
        // 400), none (a 400 for HTTP/1.1), an absolute URI (its authority wins), and
        // an empty last authority (an HTTP/1.0 request without Host).
        let parsed = [
            get("/", &["authors:8080"]),
            get("/", &["Books:8080"]),
            get("/", &["books:8080", "books:8080"]),
            get("/", &[]),
            get("http://authors:8080/", &["books:8080"]),
        ];
        for req in &parsed {
            assert!(!names_authority(req, known), "{req:?}");
        }
        assert_eq!(request_authority(&parsed[1]).unwrap(), known);
        assert!(request_authority(&parsed[2]).is_err());
        assert!(!names_authority(&get("/", &[""]), ""));
    }
}

//! A rule's filters, applied to one request: header modifiers, redirects, failure
//! injection, URL rewrites, and which requests a mirror copies.

use http::header::{self, HeaderMap};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Version};
use rand::Rng;

use super::select::prefix_matches;
use super::{
    FailureInjector, HeaderModifier, Mirror, PathMatch, PathModifier, Redirect, UrlRewrite,
};

/// `set` replaces, `add` appends to what is there, `remove` removes (Gateway API
/// order: set, add, remove).
pub fn modify_headers(m: &HeaderModifier, headers: &mut HeaderMap) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

/// Whether this request is one of the injector's share.
pub fn inject(f: &FailureInjector) -> bool {
    share(f.numerator, f.denominator)
}

/// Whether this request is one of the mirror's share.
pub fn mirrored(m: &Mirror) -> bool {
    share(m.numerator, m.denominator)
}

fn share(numerator: u32, denominator: u32) -> bool {
    numerator >= denominator
        || (numerator > 0 && rand::rng().random_range(0..denominator) < numerator)
}

/// The path with what `modifier` replaces: the whole path, or the prefix `matched`
/// matched (the Gateway API's rules: `/foo/bar` with prefix `/foo` replaced by `/xyz`
/// or `/xyz/` is `/xyz/bar`; by `/` or nothing, `/bar`; `/foo` is `/xyz`, `/foo/` is
/// `/xyz/`). A prefix replacement needs a prefix match (the controller checks it).
fn replace_path(
    modifier: &PathModifier,
    path: &str,
    matched: Option<&PathMatch>,
) -> Result<String, String> {
    match modifier {
        PathModifier::Full(full) => Ok(full.clone()),
        PathModifier::Prefix(replacement) => match matched {
            Some(PathMatch::Prefix(prefix)) if prefix_matches(prefix, path) => {
                let rest = &path[prefix.len()..];
                let replacement = replacement.trim_end_matches('/');
                Ok(match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{replacement}{rest}"),
                })
            }
            _ => Err("a prefix replacement on a rule without a path prefix match".into()),
        },
    }
}

/// Applies a `URLRewrite` to the request before it goes to the backend: its host
/// (the `Host` header, and the URI's authority when it has one) and its path (the
/// query is kept). `matched` is the path match that chose the rule.
pub fn rewrite<B>(
    r: &UrlRewrite,
    req: &mut Request<B>,
    matched: Option<&PathMatch>,
) -> Result<(), String> {
    let path = match &r.path {
        Some(m) => Some(replace_path(m, req.uri().path(), matched)?),
        None => None,
    };
    if path.is_none() && r.hostname.is_none() {
        return Ok(());
    }
    let mut parts = req.uri().clone().into_parts();
    if let Some(path) = path {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.path_and_query = Some(
            PathAndQuery::try_from(pq.as_str())
                .map_err(|_| format!("the rewritten path {pq:?} is not valid"))?,
        );
    }
    if let Some(host) = &r.hostname {
        if req.version() == Version::HTTP_2 {
            // HTTP/2 carries the authority in the URI (`:authority`).
            if parts.authority.is_some() {
                parts.authority = Some(
                    host.to_str()
                        .ok()
                        .and_then(|h| h.parse().ok())
                        .ok_or_else(|| format!("{host:?} is not a valid authority"))?,
                );
            }
        } else {
            // HTTP/1: origin-form, so that the upstream hop keeps this Host (an
            // absolute-form target's authority would replace it).
            parts.scheme = None;
            parts.authority = None;
        }
        req.headers_mut().insert(header::HOST, host.clone());
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|e| format!("the rewritten request target: {e}"))?;
    Ok(())
}

/// The `Location` of a redirect: the request's URL with what the filter replaces.
/// `matched` is the path match that chose the rule (a prefix replacement replaces
/// what it matched). `authority` is the one the request was routed by.
pub fn location<B>(
    r: &Redirect,
    req: &Request<B>,
    authority: &str,
    matched: Option<&PathMatch>,
) -> Result<HeaderValue, String> {
    let (req_host, req_port) = split_authority(authority);
    let scheme = r
        .scheme
        .as_ref()
        .map_or("http", |s| s.as_str())
        .to_ascii_lowercase();
    let host = r.host.as_deref().unwrap_or(req_host);
    // No port given: the scheme's own port when the scheme changes, else the request's.
    let port = r.port.or(if r.scheme.is_some() { None } else { req_port });
    let default_port = match scheme.as_str() {
        "https" => 443,
        _ => 80,
    };
    let path = req.uri().path();
    let path = match &r.path {
        None => path.to_owned(),
        Some(m) => replace_path(m, path, matched)?,
    };
    let mut url = format!("{scheme}://{host}");
    if let Some(p) = port.filter(|p| *p != default_port) {
        url.push_str(&format!(":{p}"));
    }
    url.push_str(&path);
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    HeaderValue::from_str(&url).map_err(|_| format!("{url:?} is not a valid Location"))
}

fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            match port.parse() {
                Ok(p) => (host, Some(p)),
                Err(_) => (authority, None),
            }
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.trim_end_matches('/').to_owned())
    }

    fn rewritten(r: &UrlRewrite, uri: &str, matched: Option<&PathMatch>) -> Request<()> {
        let mut req = Request::builder().uri(uri).body(()).unwrap();
        rewrite(r, &mut req, matched).unwrap_or_else(|e| panic!("{uri}: {e}"));
        req
    }

    fn path(modifier: PathModifier) -> UrlRewrite {
        UrlRewrite {
            hostname: None,
            path: Some(modifier),
        }
    }

    /// The Gateway API's table for `ReplacePrefixMatch` (HTTPPathModifier), and
    /// MeshHTTPRouteRewritePath's cases.
    #[test]
    fn prefix_replacement_follows_the_gateway_apis_trailing_slash_rules() {
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            // MeshHTTPRouteRewritePath.
            ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/strip-prefix", "/strip-prefix", "/", "/"),
            (
                "/prefix/rewrite-path-and-modify-headers/one",
                "/prefix/rewrite-path-and-modify-headers",
                "/prefix",
                "/prefix/one",
            ),
            // The root prefix.
            ("/a/b", "/", "/v2", "/v2/a/b"),
        ];
        for (request, matched, replacement, expected) in cases {
            let r = path(PathModifier::Prefix(replacement.into()));
            let req = rewritten(&r, request, Some(&prefix(matched)));
            assert_eq!(
                req.uri().path(),
                expected,
                "{request} with prefix {matched} replaced by {replacement:?}"
            );
        }
    }

    #[test]
    fn a_full_replacement_keeps_the_query() {
        let r = path(PathModifier::Full("/one".into()));
        let req = rewritten(&r, "/full/one/two?x=1&y", Some(&prefix("/full/one")));
        assert_eq!(req.uri(), "/one?x=1&y");
        // Without a prefix match, a prefix replacement cannot apply.
        let r = path(PathModifier::Prefix("/x".into()));
        let mut req = Request::builder().uri("/a").body(()).unwrap();
        assert!(rewrite(&r, &mut req, Some(&PathMatch::Exact("/a".into()))).is_err());
    }

    #[test]
    fn a_hostname_replaces_the_host_header_and_the_uris_authority() {
        let r = UrlRewrite {
            hostname: Some(HeaderValue::from_static("elsewhere.example")),
            path: None,
        };
        let mut req = Request::builder()
            .uri("/a?b")
            .header(header::HOST, "echo")
            .body(())
            .unwrap();
        rewrite(&r, &mut req, None).unwrap();
        assert_eq!(req.headers()[header::HOST], "elsewhere.example");
        assert_eq!(req.uri(), "/a?b");
        // HTTP/1 absolute-form: origin-form, so that the upstream hop keeps the Host.
        let req = rewritten(&r, "http://echo:80/a", None);
        assert_eq!(req.uri(), "/a");
        assert_eq!(req.headers()[header::HOST], "elsewhere.example");
        // HTTP/2: the authority.
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://echo:80/a")
            .body(())
            .unwrap();
        rewrite(&r, &mut req, None).unwrap();
        assert_eq!(req.uri(), "http://elsewhere.example/a");
    }
}

//! A rule's filters, applied to one request: header modifiers, redirects, failure
//! injection.

use http::header::HeaderMap;
use http::{HeaderValue, Request};
use rand::Rng;

use super::select::prefix_matches;
use super::{FailureInjector, HeaderModifier, PathMatch, PathModifier, Redirect};

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
    f.numerator >= f.denominator || rand::rng().random_range(0..f.denominator) < f.numerator
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
        Some(PathModifier::Full(full)) => full.clone(),
        Some(PathModifier::Prefix(replacement)) => match matched {
            Some(PathMatch::Prefix(prefix)) if prefix_matches(prefix, path) => {
                let rest = &path[prefix.len()..];
                let replacement = replacement.trim_end_matches('/');
                match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{replacement}{rest}"),
                }
            }
            // A prefix replacement needs a prefix match (the controller checks that).
            _ => return Err("a prefix replacement on a rule without a path prefix match".into()),
        },
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

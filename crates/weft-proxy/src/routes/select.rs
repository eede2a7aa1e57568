//! Which rule a request takes: of every match of every rule the request satisfies, the
//! most specific wins, as the Gateway API orders them: the hostname (exact before
//! wildcard, longer first), then the path (exact, then a regular expression, then a
//! prefix, longer first within each), then a method match, then the most header
//! matches, then the most query parameter matches. Equals are decided by the order the
//! controller sends the routes in (oldest first, then by namespace and name), then by
//! rule order within a route.

use http::Request;

use super::{HostMatch, PathMatch, RequestMatch, Route, Routes, Rule, ValueMatch};

/// The rule a request takes, and the match that chose it.
#[derive(Debug)]
pub struct Selected<'a> {
    pub route: &'a Route,
    pub rule: &'a Rule,
    /// `None` for a rule without matches (it takes every request).
    pub matched: Option<&'a RequestMatch>,
}

/// How specific a match is; greater wins.
type Score = (u8, usize, u8, usize, bool, usize, usize);

/// The rule `req` takes among `routes`, if any. `authority` is the request's (the
/// host is compared without its port).
pub fn select<'a, B>(
    routes: &'a Routes,
    req: &Request<B>,
    authority: &str,
) -> Option<Selected<'a>> {
    let host = host_of(authority);
    let path = req.uri().path();
    let mut best: Option<(Score, Selected<'a>)> = None;
    for route in &routes.routes {
        let Some(host_score) = host_score(&route.hosts, host) else {
            continue;
        };
        for rule in &route.rules {
            let mut consider = |m: Option<&'a RequestMatch>| {
                let path_score = match m {
                    None => path_score(None),
                    Some(m) => match matches(m, req, path) {
                        Some(score) => score,
                        None => return,
                    },
                };
                let score: Score = (
                    host_score.0,
                    host_score.1,
                    path_score.0,
                    path_score.1,
                    m.is_some_and(|m| m.method.is_some()),
                    m.map_or(0, |m| m.headers.len()),
                    m.map_or(0, |m| m.query.len()),
                );
                if best.as_ref().is_none_or(|(b, _)| score > *b) {
                    best = Some((
                        score,
                        Selected {
                            route,
                            rule,
                            matched: m,
                        },
                    ));
                }
            };
            if rule.matches.is_empty() {
                consider(None);
            } else {
                for m in &rule.matches {
                    consider(Some(m));
                }
            }
        }
    }
    best.map(|(_, s)| s)
}

fn host_of(authority: &str) -> &str {
    // `[v6]:port`, `host:port`, `host`.
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// How well `host` matches a route's hostnames: `None` when it does not; a route with
/// none matches every host, least specifically.
fn host_score(hosts: &[HostMatch], host: &str) -> Option<(u8, usize)> {
    if hosts.is_empty() {
        return Some((0, 0));
    }
    hosts
        .iter()
        .filter_map(|h| match h {
            HostMatch::Exact(e) if e.eq_ignore_ascii_case(host) => Some((2, e.len())),
            HostMatch::Suffix(s)
                if host.len() > s.len() + 1
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.' =>
            {
                Some((1, s.len()))
            }
            _ => None,
        })
        .max()
}

/// The path part of the score: exact 3, regex 2, prefix 1 (no path match is the
/// prefix `/`), with the length of what was matched against.
fn path_score(path: Option<&PathMatch>) -> (u8, usize) {
    match path {
        Some(PathMatch::Exact(p)) => (3, p.len()),
        Some(PathMatch::Regex(r)) => (2, r.as_str().len()),
        Some(PathMatch::Prefix(p)) => (1, p.len()),
        None => (1, 0),
    }
}

/// Whether the request satisfies all of `m`, and how specific its path match is.
fn matches<B>(m: &RequestMatch, req: &Request<B>, path: &str) -> Option<(u8, usize)> {
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Exact(p)) => path == p,
        Some(PathMatch::Prefix(p)) => prefix_matches(p, path),
        Some(PathMatch::Regex(r)) => r.is_match(path),
    };
    if !path_ok {
        return None;
    }
    if m.method
        .as_ref()
        .is_some_and(|method| method != req.method())
    {
        return None;
    }
    let headers_ok = m.headers.iter().all(|h| {
        req.headers()
            .get_all(&h.name)
            .iter()
            .any(|v| match &h.value {
                ValueMatch::Exact(e) => v.as_bytes() == e.as_slice(),
                ValueMatch::Regex(r) => v.to_str().is_ok_and(|v| r.is_match(v)),
            })
    });
    if !headers_ok {
        return None;
    }
    let query = req.uri().query().unwrap_or_default();
    let query_ok = m.query.iter().all(|q| {
        let value = query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(name, _)| *name == q.name)
            .map(|(_, v)| v);
        value.is_some_and(|v| match &q.value {
            ValueMatch::Exact(e) => v == e,
            ValueMatch::Regex(r) => r.is_match(v),
        })
    });
    if !query_ok {
        return None;
    }
    Some(path_score(m.path.as_ref()))
}

/// Element-wise prefix: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`;
/// the empty prefix (`/`) matches every path.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

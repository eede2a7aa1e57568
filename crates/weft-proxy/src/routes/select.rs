//! Which rule a request takes: of every match of every rule the request satisfies, the
//! most specific wins, as the Gateway API orders them: the hostname (exact before
//! wildcard, longer first), then the path (exact, then a regular expression, then a
//! prefix, longer first within each), then a method match, then the most header
//! matches, then the most query parameter matches. Equals are decided by the order the
//! controller sends the routes in (oldest first, then by namespace and name), then by
//! rule order within a route.
//!
//! Every way a request can take a rule (a [`Candidate`]) is computed and ordered when
//! the routes arrive, and filed by its path match ([`PathIndex`]): a request tries
//! only the candidates its path can satisfy, in that order, and the first it satisfies
//! wins.

use http::Request;

use super::index::{PathIndex, PathKey};
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

/// One way a request can take a rule: a hostname of the route (or any host) and one
/// of the rule's matches (or every request), with how specific it is.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    score: Score,
    route: usize,
    rule: usize,
    /// The index of the hostname in the route's (`None`: the route has none).
    host: Option<usize>,
    /// The index of the match in the rule's (`None`: the rule has none).
    matched: Option<usize>,
}

/// The candidates of a Service's routes, and where to find them by path.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    /// Most specific first, equals in the controller's order.
    all: Vec<Candidate>,
    index: PathIndex,
}

impl Candidates {
    pub(crate) fn new(routes: &[Route]) -> Candidates {
        let all = candidates(routes);
        let index = PathIndex::new(all.iter().map(|c| {
            let rule = &routes[c.route].rules[c.rule];
            match c.matched.and_then(|i| rule.matches[i].path.as_ref()) {
                None => PathKey::Prefix(""),
                Some(PathMatch::Exact(p)) => PathKey::Exact(p),
                Some(PathMatch::Prefix(p)) => PathKey::Prefix(p),
                Some(PathMatch::Regex(_)) => PathKey::Other,
            }
        }));
        Candidates { all, index }
    }
}

/// Every candidate of `routes`, most specific first, equals in the controller's order
/// (route, then rule, then match): the first one a request satisfies is the one the
/// Gateway API picks, so selection stops there.
fn candidates(routes: &[Route]) -> Vec<Candidate> {
    let mut all = Vec::new();
    for (r, route) in routes.iter().enumerate() {
        let hosts: Vec<(Option<usize>, (u8, usize))> = if route.hosts.is_empty() {
            vec![(None, (0, 0))]
        } else {
            route
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| match h {
                    HostMatch::Exact(e) => (Some(i), (2, e.len())),
                    HostMatch::Suffix(s) => (Some(i), (1, s.len())),
                })
                .collect()
        };
        for (n, rule) in route.rules.iter().enumerate() {
            let matches: Vec<(Option<usize>, Option<&RequestMatch>)> = if rule.matches.is_empty() {
                vec![(None, None)]
            } else {
                rule.matches
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (Some(i), Some(m)))
                    .collect()
            };
            for &(host, host_score) in &hosts {
                for &(matched, m) in &matches {
                    let path = path_score(m.and_then(|m| m.path.as_ref()));
                    all.push(Candidate {
                        score: (
                            host_score.0,
                            host_score.1,
                            path.0,
                            path.1,
                            m.is_some_and(|m| m.method.is_some()),
                            m.map_or(0, |m| m.headers.len()),
                            m.map_or(0, |m| m.query.len()),
                        ),
                        route: r,
                        rule: n,
                        host,
                        matched,
                    });
                }
            }
        }
    }
    // Stable: equals keep the controller's order.
    all.sort_by_key(|c| std::cmp::Reverse(c.score));
    all
}

/// Up to this many candidates, trying each in order costs less than the index's
/// lookups (bench/routes: 1 route, 541 instructions scanned against 808 indexed).
const SCAN_UP_TO: usize = 4;

/// The rule `req` takes among `routes`, if any. `authority` is the request's (the
/// host is compared without its port).
pub fn select<'a, B>(
    routes: &'a Routes,
    req: &Request<B>,
    authority: &str,
) -> Option<Selected<'a>> {
    if routes.candidates.all.len() <= SCAN_UP_TO {
        select_linear(routes, req, authority)
    } else {
        select_indexed(routes, req, authority)
    }
}

/// [`select`] through the path index.
fn select_indexed<'a, B>(
    routes: &'a Routes,
    req: &Request<B>,
    authority: &str,
) -> Option<Selected<'a>> {
    let host = host_of(authority);
    let path = req.uri().path();
    let table = &routes.candidates;
    // The best (first in order) candidate the request satisfies: each list is in
    // order, so a list is tried up to its first satisfied candidate, or up to the
    // best found in another list.
    let mut best: Option<(usize, Selected<'a>)> = None;
    table.index.lists(path, |list| {
        for &position in list {
            if best.as_ref().is_some_and(|(b, _)| position >= *b) {
                break;
            }
            if let Some(s) = take(routes, &table.all[position], req, host, path) {
                best = Some((position, s));
                break;
            }
        }
        // Nothing comes before the first candidate.
        best.as_ref().is_none_or(|(b, _)| *b > 0)
    });
    best.map(|(_, s)| s)
}

/// [`select`] by trying every candidate in order, without the index (what the index
/// must agree with).
fn select_linear<'a, B>(
    routes: &'a Routes,
    req: &Request<B>,
    authority: &str,
) -> Option<Selected<'a>> {
    let host = host_of(authority);
    let path = req.uri().path();
    routes
        .candidates
        .all
        .iter()
        .find_map(|c| take(routes, c, req, host, path))
}

/// The rule of candidate `c`, if the request (`host`, `path`) satisfies it.
fn take<'a, B>(
    routes: &'a Routes,
    c: &Candidate,
    req: &Request<B>,
    host: &str,
    path: &str,
) -> Option<Selected<'a>> {
    let route = &routes.routes[c.route];
    if let Some(h) = c.host {
        if !host_matches(&route.hosts[h], host) {
            return None;
        }
    }
    let rule = &route.rules[c.rule];
    let matched = c.matched.map(|i| &rule.matches[i]);
    if let Some(m) = matched {
        matches(m, req, path)?;
    }
    Some(Selected {
        route,
        rule,
        matched,
    })
}

fn host_of(authority: &str) -> &str {
    // `[v6]:port`, `host:port`, `host`.
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Whether `host` matches one of a route's hostnames (`*.example.com`: a name
/// ending in `.example.com`).
fn host_matches(pattern: &HostMatch, host: &str) -> bool {
    match pattern {
        HostMatch::Exact(e) => e.eq_ignore_ascii_case(host),
        HostMatch::Suffix(s) => {
            host.len() > s.len() + 1
                && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                && host.as_bytes()[host.len() - s.len() - 1] == b'.'
        }
    }
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

#[cfg(test)]
mod tests;

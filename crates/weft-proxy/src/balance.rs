//! Load balancing over a service's endpoints: power of two choices (each drawn with
//! probability proportional to its weight) over peak-EWMA latency × (pending + 1),
//! failures as a decaying latency penalty,
//! ejection of endpoints that keep failing (with backoff, and never more than half of
//! them; a returning endpoint is on probation and gets a single probe request), and a
//! zone mode: zone-aware selection that keeps traffic in the proxy's zone while the
//! in-zone load stays inside a band ([`ZoneMode::Aware`]), zone-unaware P2C over every
//! endpoint ([`ZoneMode::Unaware`]), or in-zone only, topology-hints style
//! ([`ZoneMode::LocalOnly`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use weft_core::identity::Identity;

/// One endpoint as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    pub addr: SocketAddr,
    pub zone: Option<Arc<str>>,
    /// Relative share of traffic (1 when unset); 0 takes no traffic.
    pub weight: u32,
    /// The identity the endpoint's proxy proves: connections to it use mTLS (when this
    /// proxy has an identity of its own). `None`: unmeshed, plaintext.
    pub identity: Option<Identity>,
}

impl EndpointMeta {
    pub fn new(addr: SocketAddr) -> Self {
        EndpointMeta {
            addr,
            zone: None,
            weight: 1,
            identity: None,
        }
    }
}

/// How a proxy that knows its zone uses endpoints' zones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ZoneMode {
    /// In-zone endpoints while their load stays inside the band (`zone_low` ..
    /// `zone_high` pending requests per endpoint); other zones' endpoints join one at a
    /// time above it and leave below it, and take everything at once when no in-zone
    /// endpoint is healthy.
    #[default]
    Aware,
    /// Zones are ignored: P2C over every healthy endpoint.
    Unaware,
    /// Only in-zone endpoints while the zone has any, however they fail or lag
    /// (Kubernetes topology-aware hints); every endpoint when the zone has none.
    LocalOnly,
}

impl ZoneMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneMode::Aware => "aware",
            ZoneMode::Unaware => "unaware",
            ZoneMode::LocalOnly => "local-only",
        }
    }
}

impl std::fmt::Display for ZoneMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tuning shared by every balancer of a proxy.
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    /// The proxy's own zone; `None` disables zone awareness.
    pub zone: Option<Arc<str>>,
    /// How the zone is used (only when `zone` is set).
    pub zone_mode: ZoneMode,
    /// In-zone load (pending requests per in-zone endpoint) below which other zones'
    /// endpoints are dropped again.
    pub zone_low: f64,
    /// In-zone load above which other zones' endpoints are added.
    pub zone_high: f64,
    /// How often the zone set may grow or shrink by one endpoint.
    pub zone_step: Duration,
    /// Time constant of the latency estimate's decay.
    pub decay: Duration,
    /// Latency charged for a failure (decays like any other observation).
    pub failure_penalty: Duration,
    /// Consecutive failures that eject an endpoint.
    pub eject_after: u32,
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// Largest share of endpoints that may be ejected at once.
    pub max_ejected_share: f64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            zone: None,
            zone_mode: ZoneMode::Aware,
            zone_low: 0.8,
            zone_high: 2.0,
            zone_step: Duration::from_millis(50),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(1),
            eject_after: 5,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(60),
            max_ejected_share: 0.5,
        }
    }
}

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    updated: Instant,
    consecutive_failures: u32,
    /// Set when the endpoint was ejected; once past, the endpoint is on probation until
    /// a request to it succeeds.
    ejected_until: Option<Instant>,
    backoff: Duration,
}

/// An endpoint and what the balancer knows of it.
#[derive(Debug)]
pub struct Endpoint {
    pub meta: EndpointMeta,
    pending: AtomicUsize,
    estimate: Mutex<Estimate>,
}

impl Endpoint {
    fn new(meta: EndpointMeta, now: Instant) -> Arc<Self> {
        Arc::new(Endpoint {
            meta,
            pending: AtomicUsize::new(0),
            estimate: Mutex::new(Estimate {
                rtt_ns: 0.0,
                updated: now,
                consecutive_failures: 0,
                ejected_until: None,
                backoff: Duration::ZERO,
            }),
        })
    }

    fn estimate(&self) -> std::sync::MutexGuard<'_, Estimate> {
        self.estimate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.estimate()
            .ejected_until
            .is_some_and(|until| until > now)
    }

    /// Back from an ejection and not yet answered well: one probe request at a time,
    /// and one failure ejects it again (with a longer backoff).
    fn on_probation(&self, now: Instant) -> bool {
        self.estimate()
            .ejected_until
            .is_some_and(|until| until <= now)
    }

    /// Peak-EWMA latency (decayed to now) × (pending + 1). Weights act in the draw,
    /// not here, so that equal endpoints share traffic in proportion to them.
    fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let e = self.estimate();
        let elapsed = now.saturating_duration_since(e.updated).as_secs_f64();
        let rtt = e.rtt_ns * (-elapsed / decay.as_secs_f64()).exp();
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        (rtt + 1.0) * (pending + 1.0)
    }

    fn observe(&self, rtt: Duration, now: Instant, decay: Duration) {
        let mut e = self.estimate();
        let rtt = rtt.as_nanos() as f64;
        let elapsed = now.saturating_duration_since(e.updated).as_secs_f64();
        let decayed = e.rtt_ns * (-elapsed / decay.as_secs_f64()).exp();
        // Peak: a slower response takes over at once; faster ones pull it down gently.
        e.rtt_ns = if rtt > decayed {
            rtt
        } else {
            let w = (-elapsed / decay.as_secs_f64()).exp().clamp(0.0, 0.95);
            decayed * w + rtt * (1.0 - w)
        };
        e.updated = now;
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Balances one service's requests (or connections) over its endpoints.
#[derive(Debug)]
pub struct Balancer {
    config: Arc<BalanceConfig>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    endpoints: Vec<Arc<Endpoint>>,
    /// Other zones' endpoints currently in use (zone awareness), in endpoint order.
    extra: usize,
    last_step: Instant,
}

/// How an endpoint did on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 5xx, 429, a connect error, a broken stream.
    Failure,
}

/// An endpoint picked for one request; counts as pending until dropped.
#[derive(Debug)]
pub struct Picked {
    endpoint: Arc<Endpoint>,
    start: Instant,
    balancer: Arc<BalanceConfig>,
    done: bool,
}

impl Picked {
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.meta.addr
    }

    pub fn zone(&self) -> Option<&Arc<str>> {
        self.endpoint.meta.zone.as_ref()
    }

    /// The endpoint's identity (mTLS), if it is meshed.
    pub fn identity(&self) -> Option<&Identity> {
        self.endpoint.meta.identity.as_ref()
    }

    /// Reports how the request went (latency counts from the pick).
    pub fn finish(mut self, outcome: Outcome) {
        self.report(outcome);
    }

    /// Reports the outcome but stays pending until dropped (a TCP connection: its
    /// connect is the outcome, its lifetime the load).
    pub fn report(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let now = Instant::now();
        let config = &self.balancer;
        match outcome {
            Outcome::Success => {
                self.endpoint.observe(now - self.start, now, config.decay);
                let mut e = self.endpoint.estimate();
                e.consecutive_failures = 0;
                e.backoff = Duration::ZERO;
                e.ejected_until = None;
            }
            Outcome::Failure => {
                let rtt = (now - self.start).max(config.failure_penalty);
                self.endpoint.observe(rtt, now, config.decay);
                let mut e = self.endpoint.estimate();
                e.consecutive_failures += 1;
                let failed_probe = e.ejected_until.is_some_and(|until| until <= now);
                if failed_probe || e.consecutive_failures >= config.eject_after {
                    // Asked for; granted by the balancer only within the ejection cap.
                    e.backoff = (e.backoff * 2).clamp(config.eject_base, config.eject_max);
                    e.ejected_until = Some(now + e.backoff);
                    e.consecutive_failures = 0;
                }
            }
        }
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new(config: Arc<BalanceConfig>, endpoints: Vec<EndpointMeta>) -> Self {
        let now = Instant::now();
        let b = Balancer {
            config,
            state: Mutex::new(State {
                endpoints: Vec::new(),
                extra: 0,
                last_step: now,
            }),
        };
        b.set_endpoints(endpoints);
        b
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the endpoints; endpoints that stay keep their estimates.
    pub fn set_endpoints(&self, endpoints: Vec<EndpointMeta>) {
        let now = Instant::now();
        let mut state = self.state();
        let old = std::mem::take(&mut state.endpoints);
        let mut next: Vec<Arc<Endpoint>> = endpoints
            .into_iter()
            .map(|meta| match old.iter().find(|e| e.meta == meta) {
                Some(kept) => kept.clone(),
                None => Endpoint::new(meta, now),
            })
            .collect();
        // In-zone first, then by zone and address: the order other zones join in.
        let local = self.config.zone.clone();
        next.sort_by(|a, b| {
            let ka = (a.meta.zone != local, a.meta.zone.clone(), a.meta.addr);
            let kb = (b.meta.zone != local, b.meta.zone.clone(), b.meta.addr);
            ka.cmp(&kb)
        });
        state.endpoints = next;
    }

    pub fn endpoints(&self) -> Vec<EndpointMeta> {
        self.state()
            .endpoints
            .iter()
            .map(|e| e.meta.clone())
            .collect()
    }

    /// Picks the endpoint for one request (or connection).
    pub fn pick(&self) -> Option<Picked> {
        self.pick_avoiding(&[])
    }

    /// Picks as [`Self::pick`] does, but none of `avoid` (the endpoints a retried
    /// request already failed on) while there is another: in zone-aware mode another
    /// zone's endpoint rather than the same one again.
    pub fn pick_avoiding(&self, avoid: &[SocketAddr]) -> Option<Picked> {
        let now = Instant::now();
        let config = &self.config;
        let mut guard = self.state();
        let state = &mut *guard;
        let narrowed = Self::candidates(config, state, now, true);
        let fresh = |e: &&Arc<Endpoint>| !avoid.contains(&e.meta.addr);
        let candidates = if avoid.is_empty() {
            narrowed
        } else if narrowed.iter().any(fresh) {
            narrowed.into_iter().filter(fresh).collect()
        } else if config.zone_mode == ZoneMode::Aware {
            let all = healthy(config, state.endpoints.iter().collect(), now);
            if all.iter().any(fresh) {
                all.into_iter().filter(fresh).collect()
            } else {
                all
            }
        } else {
            narrowed
        };
        let chosen = {
            let mut rng = rand::rng();
            let first = weighted(&candidates, &mut rng)?;
            let second = weighted(&candidates, &mut rng).unwrap_or(first);
            if second.cost(now, config.decay) < first.cost(now, config.decay) {
                second
            } else {
                first
            }
        };
        chosen.pending.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            endpoint: chosen.clone(),
            start: now,
            balancer: config.clone(),
            done: false,
        })
    }

    /// The endpoints in use: healthy ones (ejection capped; an endpoint on probation
    /// only while no probe to it is pending), narrowed by the zone mode.
    fn candidates<'a>(
        config: &BalanceConfig,
        state: &'a mut State,
        now: Instant,
        step: bool,
    ) -> Vec<&'a Arc<Endpoint>> {
        let zone = config
            .zone
            .as_ref()
            .filter(|_| config.zone_mode != ZoneMode::Unaware);
        let Some(zone) = zone else {
            return healthy(config, state.endpoints.iter().collect(), now);
        };
        if config.zone_mode == ZoneMode::LocalOnly {
            let local: Vec<&Arc<Endpoint>> = state
                .endpoints
                .iter()
                .filter(|e| e.meta.zone.as_ref() == Some(zone) && e.meta.weight > 0)
                .collect();
            // Topology hints: the zone's endpoints, failing or not, while it has any.
            let set = if local.is_empty() {
                state.endpoints.iter().collect()
            } else {
                local
            };
            return healthy(config, set, now);
        }
        let healthy = healthy(config, state.endpoints.iter().collect(), now);
        let (local, other): (Vec<_>, Vec<_>) = healthy
            .into_iter()
            .partition(|e| e.meta.zone.as_ref() == Some(zone));
        // Endpoints on probation do not hold traffic in the zone: while they are all the
        // zone has, traffic stays out of it and they only get their probe.
        let (local, probing): (Vec<_>, Vec<_>) =
            local.into_iter().partition(|e| !e.on_probation(now));
        if local.is_empty() {
            // No healthy endpoint in the zone: everything else, at once.
            return other.into_iter().chain(probing).collect();
        }
        let load = local.iter().map(|e| e.pending() as f64).sum::<f64>() / local.len() as f64;
        if step && now.saturating_duration_since(state.last_step) >= config.zone_step {
            if load > config.zone_high && state.extra < other.len() {
                state.extra += 1;
                state.last_step = now;
            } else if load < config.zone_low && state.extra > 0 {
                state.extra -= 1;
                state.last_step = now;
            }
        }
        let extra = state.extra.min(other.len());
        local
            .into_iter()
            .chain(probing)
            .chain(other.into_iter().take(extra))
            .collect()
    }

    /// Endpoints currently in use, per zone (for the `balancer_endpoints` gauge).
    pub fn in_use_by_zone(&self) -> Vec<(Option<Arc<str>>, usize)> {
        let now = Instant::now();
        let mut state = self.state();
        let mut counts: Vec<(Option<Arc<str>>, usize)> = Vec::new();
        // Reading the gauge must not move the zone set: no step here.
        for e in Self::candidates(&self.config, &mut state, now, false) {
            match counts.iter_mut().find(|(z, _)| *z == e.meta.zone) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.meta.zone.clone(), 1)),
            }
        }
        counts
    }
}

/// The endpoints of `set` that may take a request: not ejected (unless more than the
/// allowed share would be out), weight above zero, and not on probation with its probe
/// still pending (unless nothing else is left).
fn healthy<'a>(
    config: &BalanceConfig,
    set: Vec<&'a Arc<Endpoint>>,
    now: Instant,
) -> Vec<&'a Arc<Endpoint>> {
    let max_ejected = (set.len() as f64 * config.max_ejected_share).floor() as usize;
    let ejected: Vec<bool> = set.iter().map(|e| e.is_ejected(now)).collect();
    let n_ejected = ejected.iter().filter(|e| **e).count();
    let usable: Vec<&Arc<Endpoint>> = if n_ejected > max_ejected || n_ejected == set.len() {
        // Too many would be out: an outlier never takes the whole service down.
        set.into_iter().filter(|e| e.meta.weight > 0).collect()
    } else {
        set.into_iter()
            .zip(&ejected)
            .filter(|(e, out)| !**out && e.meta.weight > 0)
            .map(|(e, _)| e)
            .collect()
    };
    let probe_pending = |e: &&&Arc<Endpoint>| e.pending() > 0 && e.on_probation(now);
    if usable.iter().any(|e| probe_pending(&e)) && !usable.iter().all(|e| probe_pending(&e)) {
        usable.into_iter().filter(|e| !probe_pending(&e)).collect()
    } else {
        usable
    }
}

/// A random candidate, with probability proportional to its weight.
fn weighted<'a>(candidates: &[&'a Arc<Endpoint>], rng: &mut impl Rng) -> Option<&'a Arc<Endpoint>> {
    let total: u64 = candidates.iter().map(|e| u64::from(e.meta.weight)).sum();
    if total == 0 {
        return candidates.first().copied();
    }
    let mut x = rng.random_range(0..total);
    for e in candidates {
        let w = u64::from(e.meta.weight);
        if x < w {
            return Some(e);
        }
        x -= w;
    }
    candidates.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 1], 8000 + i))
    }

    fn meta(i: u16, zone: &str, weight: u32) -> EndpointMeta {
        EndpointMeta {
            addr: addr(i),
            zone: Some(zone.into()),
            weight,
            identity: None,
        }
    }

    fn balancer(zone: Option<&str>, endpoints: Vec<EndpointMeta>) -> Balancer {
        balancer_in(ZoneMode::Aware, zone, endpoints)
    }

    fn balancer_in(mode: ZoneMode, zone: Option<&str>, endpoints: Vec<EndpointMeta>) -> Balancer {
        let config = BalanceConfig {
            zone: zone.map(Into::into),
            zone_mode: mode,
            zone_step: Duration::ZERO,
            ..BalanceConfig::default()
        };
        Balancer::new(Arc::new(config), endpoints)
    }

    /// Three zones, two endpoints each: 1-2 in a, 3-4 in b, 5-6 in c.
    fn three_zones() -> Vec<EndpointMeta> {
        (1..=6u16)
            .map(|i| meta(i, ["a", "b", "c"][usize::from(i - 1) / 2], 1))
            .collect()
    }

    fn zone_of(p: &Picked) -> &str {
        p.zone().map_or("", |z| &**z)
    }

    /// Fails every request to zone `failing`, succeeds the others; returns how many
    /// of `n` picks failed.
    fn run_with_failing_zone(b: &Balancer, failing: &str, n: usize) -> usize {
        let mut failed = 0;
        for _ in 0..n {
            let p = b.pick().unwrap();
            if zone_of(&p) == failing {
                failed += 1;
                p.finish(Outcome::Failure);
            } else {
                p.finish(Outcome::Success);
            }
        }
        failed
    }

    #[test]
    fn a_retry_avoids_the_endpoints_already_tried() {
        let b = balancer(
            None,
            vec![
                EndpointMeta::new(addr(1)),
                EndpointMeta::new(addr(2)),
                EndpointMeta::new(addr(3)),
            ],
        );
        for _ in 0..200 {
            let p = b.pick_avoiding(&[addr(1), addr(3)]).unwrap();
            assert_eq!(p.addr(), addr(2));
            assert_ne!(b.pick_avoiding(&[addr(2)]).unwrap().addr(), addr(2));
        }
        // Every endpoint tried: one of them again rather than none.
        assert!(b.pick_avoiding(&[addr(1), addr(2), addr(3)]).is_some());
    }

    #[test]
    fn a_retry_leaves_the_zone_when_its_endpoints_were_tried() {
        let b = balancer(
            Some("a"),
            vec![meta(1, "a", 1), meta(2, "b", 1), meta(3, "c", 1)],
        );
        // Unloaded: only the in-zone endpoint is in use, but a retry goes elsewhere.
        assert_eq!(b.pick().unwrap().addr(), addr(1));
        for _ in 0..50 {
            assert_ne!(b.pick_avoiding(&[addr(1)]).unwrap().addr(), addr(1));
        }
    }

    #[test]
    fn prefers_the_faster_endpoint() {
        let b = balancer(
            None,
            vec![EndpointMeta::new(addr(1)), EndpointMeta::new(addr(2))],
        );
        // Teach it: endpoint 1 takes 50 ms, endpoint 2 is fast.
        for _ in 0..20 {
            let p = b.pick().unwrap();
            if p.addr() == addr(1) {
                p.endpoint.observe(
                    Duration::from_millis(50),
                    Instant::now(),
                    Duration::from_secs(10),
                );
                drop(p);
            } else {
                p.finish(Outcome::Success);
            }
        }
        let fast = (0..1000)
            .filter(|_| b.pick().unwrap().addr() == addr(2))
            .count();
        // P2C picks the slow one only when both draws land on it: about a quarter.
        assert!(fast > 650, "{fast}");
    }

    #[test]
    fn failing_endpoints_are_ejected_and_probed_back() {
        let b = balancer(None, (1..=4).map(|i| EndpointMeta::new(addr(i))).collect());
        // Five consecutive failures of endpoint 1 eject it.
        let mut failed = 0;
        while failed < 5 {
            let p = b.pick().unwrap();
            if p.addr() == addr(1) {
                p.finish(Outcome::Failure);
                failed += 1;
            }
        }
        assert!((0..500).all(|_| b.pick().unwrap().addr() != addr(1)));
        // After the backoff it may take traffic again.
        std::thread::sleep(Duration::from_millis(1100));
        assert!((0..2000).any(|_| b.pick().unwrap().addr() == addr(1)));
    }

    #[test]
    fn never_more_than_half_are_ejected() {
        let b = balancer(None, (1..=2).map(|i| EndpointMeta::new(addr(i))).collect());
        for _ in 0..50 {
            b.pick().unwrap().finish(Outcome::Failure);
        }
        // Both failed: ejecting both would take the service down, so neither is out.
        assert!(b.pick().is_some());
    }

    #[test]
    fn zone_aware_keeps_traffic_in_zone_until_load_passes_the_band() {
        let b = balancer(
            Some("a"),
            vec![
                meta(1, "a", 1),
                meta(2, "a", 1),
                meta(3, "b", 1),
                meta(4, "c", 1),
            ],
        );
        assert!((0..200).all(|_| b.pick().unwrap().zone().map(|z| &**z) == Some("a")));
        // Hold many requests open: in-zone load goes above 2 per endpoint.
        let held: Vec<Picked> = (0..10).map(|_| b.pick().unwrap()).collect();
        let spilled: Vec<Picked> = (0..20).map(|_| b.pick().unwrap()).collect();
        assert!(spilled.iter().any(|p| p.zone().map(|z| &**z) != Some("a")));
        assert_eq!(b.in_use_by_zone().len(), 3);
        drop(held);
        drop(spilled);
        // Load back under the band: other zones leave one step at a time.
        for _ in 0..10 {
            drop(b.pick());
        }
        assert!((0..200).all(|_| b.pick().unwrap().zone().map(|z| &**z) == Some("a")));
    }

    #[test]
    fn zone_failure_moves_traffic_out_at_once() {
        let b = balancer(
            Some("a"),
            vec![
                meta(1, "a", 1),
                meta(2, "b", 1),
                meta(3, "b", 1),
                meta(4, "c", 1),
            ],
        );
        for _ in 0..5 {
            let p = b.pick().unwrap();
            assert_eq!(p.addr(), addr(1));
            p.finish(Outcome::Failure);
        }
        assert!((0..200).all(|_| b.pick().unwrap().addr() != addr(1)));
    }

    #[test]
    fn zone_unaware_spreads_over_every_zone() {
        let b = balancer_in(ZoneMode::Unaware, Some("a"), three_zones());
        let n = 3000;
        let in_zone = (0..n)
            .filter(|_| zone_of(&b.pick().unwrap()) == "a")
            .count();
        // Idle, equal endpoints: a third of the traffic stays in the zone.
        let share = in_zone as f64 / n as f64;
        assert!((share - 1.0 / 3.0).abs() < 0.05, "{share}");
        assert_eq!(b.in_use_by_zone().len(), 3);
    }

    #[test]
    fn local_only_stays_in_a_failing_zone_and_aware_leaves_it() {
        let local_only = balancer_in(ZoneMode::LocalOnly, Some("a"), three_zones());
        let failed = run_with_failing_zone(&local_only, "a", 200);
        assert_eq!(failed, 200, "topology hints never leave the zone");
        let aware = balancer_in(ZoneMode::Aware, Some("a"), three_zones());
        let failed = run_with_failing_zone(&aware, "a", 200);
        // Five consecutive failures eject each of the two in-zone endpoints.
        assert!(failed <= 10, "{failed}");
        assert_eq!(run_with_failing_zone(&aware, "a", 200), 0);
    }

    #[test]
    fn local_only_uses_other_zones_when_its_zone_has_no_endpoint() {
        let endpoints = three_zones()
            .into_iter()
            .filter(|e| e.zone.as_deref() != Some("a"));
        let b = balancer_in(ZoneMode::LocalOnly, Some("a"), endpoints.collect());
        let zones: std::collections::BTreeSet<String> = (0..300)
            .map(|_| zone_of(&b.pick().unwrap()).to_owned())
            .collect();
        assert_eq!(zones, ["b".to_owned(), "c".to_owned()].into());
        // A weight of zero is no endpoint either.
        let mut endpoints = three_zones();
        endpoints[0].weight = 0;
        endpoints[1].weight = 0;
        let b = balancer_in(ZoneMode::LocalOnly, Some("a"), endpoints);
        assert!((0..300).all(|_| zone_of(&b.pick().unwrap()) != "a"));
    }

    #[test]
    fn a_returning_endpoint_gets_one_probe_and_a_failed_probe_ejects_it_again() {
        let b = balancer(None, (1..=4).map(|i| EndpointMeta::new(addr(i))).collect());
        let mut failed = 0;
        while failed < 5 {
            let p = b.pick().unwrap();
            if p.addr() == addr(1) {
                p.finish(Outcome::Failure);
                failed += 1;
            } else {
                p.finish(Outcome::Success);
            }
        }
        std::thread::sleep(Duration::from_millis(1050));
        // Back on probation: while a probe is pending, it takes no other request.
        let probe = std::iter::repeat_with(|| b.pick().unwrap())
            .take(5000)
            .find(|p| p.addr() == addr(1))
            .expect("a probe reaches the returning endpoint");
        assert!((0..500).all(|_| b.pick().unwrap().addr() != addr(1)));
        // One failed probe is enough to eject it again, for twice as long.
        probe.finish(Outcome::Failure);
        assert!((0..2000).all(|_| b.pick().unwrap().addr() != addr(1)));
        let e = b.state().endpoints[0].clone();
        assert_eq!(e.meta.addr, addr(1));
        assert_eq!(e.estimate().backoff, Duration::from_secs(2));
    }

    #[test]
    fn aware_keeps_traffic_out_of_a_failed_zone_while_it_is_on_probation() {
        let b = balancer_in(ZoneMode::Aware, Some("a"), three_zones());
        assert!(run_with_failing_zone(&b, "a", 200) <= 10);
        std::thread::sleep(Duration::from_millis(1050));
        // Both in-zone endpoints are back on probation: they get a probe each (failed
        // again) and the rest of the traffic stays in the other zones.
        assert_eq!(run_with_failing_zone(&b, "a", 2000), 2);
        assert!((0..500).all(|_| zone_of(&b.pick().unwrap()) != "a"));
    }

    #[test]
    fn aware_returns_to_the_zone_once_a_probe_succeeds() {
        let b = balancer_in(ZoneMode::Aware, Some("a"), three_zones());
        assert!(run_with_failing_zone(&b, "a", 200) <= 10);
        std::thread::sleep(Duration::from_millis(1050));
        // The zone recovered: its probes succeed and traffic comes home.
        assert_eq!(run_with_failing_zone(&b, "none", 3000), 0);
        assert!((0..200).all(|_| zone_of(&b.pick().unwrap()) == "a"));
    }

    proptest! {
        #[test]
        fn zone_modes_never_leave_or_leave_the_zone_as_they_say(
            mode in prop_oneof![Just(ZoneMode::Aware), Just(ZoneMode::Unaware), Just(ZoneMode::LocalOnly)],
            failures in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let b = balancer_in(mode, Some("a"), three_zones());
            // Requests to zone a fail or succeed as drawn; other zones always succeed.
            for fail in &failures {
                let p = b.pick().unwrap();
                let outcome = if zone_of(&p) == "a" && *fail { Outcome::Failure } else { Outcome::Success };
                p.finish(outcome);
            }
            let picks: Vec<String> = (0..100).map(|_| zone_of(&b.pick().unwrap()).to_owned()).collect();
            match mode {
                // Topology hints: always the zone, healthy or not.
                ZoneMode::LocalOnly => prop_assert!(picks.iter().all(|z| z == "a")),
                // Idle (nothing pending): in the zone unless both its endpoints are out.
                ZoneMode::Aware => {
                    let now = Instant::now();
                    let zone_out = b.state().endpoints.iter()
                        .filter(|e| e.meta.zone.as_deref() == Some("a"))
                        .all(|e| e.is_ejected(now));
                    prop_assert!(zone_out || picks.iter().all(|z| z == "a"), "{picks:?}");
                    prop_assert!(!zone_out || picks.iter().all(|z| z != "a"), "{picks:?}");
                }
                ZoneMode::Unaware => prop_assert!(picks.iter().any(|z| z != "a")),
            }
        }

        #[test]
        fn never_picks_an_ejected_or_removed_endpoint_while_a_healthy_one_exists(
            failures in proptest::collection::vec(0u16..6, 0..60),
            keep in 2usize..6,
        ) {
            let b = balancer(None, (0..6).map(|i| EndpointMeta::new(addr(i))).collect());
            for target in failures {
                // Fail requests that land on `target`, succeed the others.
                let p = b.pick().unwrap();
                let outcome = if p.addr() == addr(target) { Outcome::Failure } else { Outcome::Success };
                p.finish(outcome);
            }
            let now = Instant::now();
            let ejected: Vec<SocketAddr> = b.state().endpoints.iter().filter(|e| e.is_ejected(now)).map(|e| e.meta.addr).collect();
            prop_assert!(ejected.len() <= 3);
            for _ in 0..50 {
                let picked = b.pick().unwrap().addr();
                prop_assert!(!ejected.contains(&picked));
            }
            // Removed endpoints are never picked.
            b.set_endpoints((0..keep as u16).map(|i| EndpointMeta::new(addr(i))).collect());
            for _ in 0..50 {
                let picked = b.pick().unwrap().addr();
                prop_assert!(picked.port() < 8000 + keep as u16);
            }
        }

        #[test]
        fn weights_are_respected(weights in proptest::collection::vec(1u32..8, 2..5)) {
            let endpoints: Vec<EndpointMeta> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| EndpointMeta { weight: *w, ..EndpointMeta::new(addr(i as u16)) })
                .collect();
            let b = balancer(None, endpoints);
            let n = 6000;
            let mut counts = vec![0usize; weights.len()];
            for _ in 0..n {
                // Equal, idle endpoints: the share follows the weights.
                let p = b.pick().unwrap();
                counts[(p.addr().port() - 8000) as usize] += 1;
            }
            let total: u32 = weights.iter().sum();
            for (count, w) in counts.iter().zip(&weights) {
                let expected = n as f64 * f64::from(*w) / f64::from(total);
                prop_assert!((*count as f64 - expected).abs() < expected * 0.2 + 30.0, "{counts:?} vs weights {weights:?}");
            }
        }
    }
}

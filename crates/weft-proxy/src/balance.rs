//! Load balancing over a service's endpoints: power of two choices (each drawn with
//! probability proportional to its weight) over peak-EWMA latency × (pending + 1),
//! failures as a decaying latency penalty,
//! ejection of endpoints that keep failing (with backoff, and never more than half of
//! them), and zone-aware selection that keeps traffic in the proxy's zone while the
//! in-zone load stays inside a band.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

/// One endpoint as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    pub addr: SocketAddr,
    pub zone: Option<Arc<str>>,
    /// Relative share of traffic (1 when unset); 0 takes no traffic.
    pub weight: u32,
}

impl EndpointMeta {
    pub fn new(addr: SocketAddr) -> Self {
        EndpointMeta {
            addr,
            zone: None,
            weight: 1,
        }
    }
}

/// Tuning shared by every balancer of a proxy.
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    /// The proxy's own zone; `None` disables zone awareness.
    pub zone: Option<Arc<str>>,
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
            }
            Outcome::Failure => {
                let rtt = (now - self.start).max(config.failure_penalty);
                self.endpoint.observe(rtt, now, config.decay);
                let mut e = self.endpoint.estimate();
                e.consecutive_failures += 1;
                if e.consecutive_failures >= config.eject_after {
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
        let now = Instant::now();
        let config = &self.config;
        let mut state = self.state();
        let candidates = Self::candidates(config, &mut state, now, true);
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

    /// The endpoints in use: healthy ones (ejection capped), narrowed to the proxy's
    /// zone while its load allows.
    fn candidates<'a>(
        config: &BalanceConfig,
        state: &'a mut State,
        now: Instant,
        step: bool,
    ) -> Vec<&'a Arc<Endpoint>> {
        let all = &state.endpoints;
        let max_ejected = (all.len() as f64 * config.max_ejected_share).floor() as usize;
        let ejected: Vec<bool> = all.iter().map(|e| e.is_ejected(now)).collect();
        let n_ejected = ejected.iter().filter(|e| **e).count();
        let healthy: Vec<&Arc<Endpoint>> = if n_ejected > max_ejected || n_ejected == all.len() {
            // Too many would be out: an outlier never takes the whole service down.
            all.iter().filter(|e| e.meta.weight > 0).collect()
        } else {
            all.iter()
                .zip(&ejected)
                .filter(|(e, out)| !**out && e.meta.weight > 0)
                .map(|(e, _)| e)
                .collect()
        };
        let Some(zone) = config.zone.as_ref() else {
            return healthy;
        };
        let (local, other): (Vec<_>, Vec<_>) = healthy
            .into_iter()
            .partition(|e| e.meta.zone.as_ref() == Some(zone));
        if local.is_empty() {
            // No healthy endpoint in the zone: everything else, at once.
            return other;
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
        }
    }

    fn balancer(zone: Option<&str>, endpoints: Vec<EndpointMeta>) -> Balancer {
        let config = BalanceConfig {
            zone: zone.map(Into::into),
            zone_step: Duration::ZERO,
            ..BalanceConfig::default()
        };
        Balancer::new(Arc::new(config), endpoints)
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

    proptest! {
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
                .map(|(i, w)| EndpointMeta { addr: addr(i as u16), zone: None, weight: *w })
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

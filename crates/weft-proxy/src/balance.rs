//! Load balancing over a service's endpoints: power of two choices (each drawn with
//! probability proportional to its weight) over peak-EWMA latency × (pending + 1),
//! failures as a decaying latency penalty,
//! ejection of endpoints that keep failing (with backoff, and never more than half of
//! them; a returning endpoint is on probation and gets a single probe request), and a
//! zone mode: zone-aware selection that keeps traffic in the proxy's zone while the
//! in-zone load stays inside a band ([`ZoneMode::Aware`]), zone-unaware P2C over every
//! endpoint ([`ZoneMode::Unaware`]), or in-zone only, topology-hints style
//! ([`ZoneMode::LocalOnly`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
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

/// What a balancer's endpoints share with it: the tuning, the origin of the times the
/// endpoints keep in atomics (nanoseconds since it), and the flag an endpoint raises
/// when its health changes (ejected, or back) so that the next pick rebuilds the
/// candidates.
#[derive(Debug)]
struct Common {
    config: Arc<BalanceConfig>,
    origin: Instant,
    health_changed: AtomicBool,
    /// Zone-aware: requests pending on in-zone endpoints, kept as they are picked and
    /// dropped, so that the band's load costs one read however many endpoints the zone
    /// has.
    zone_pending: AtomicUsize,
}

impl Common {
    /// `at` in nanoseconds since the origin.
    fn nanos(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Which side of the band a zone's load is on, kept with the time it got there in one
/// atomic ([`Balancer::step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outside {
    Above,
    Below,
}

impl Outside {
    /// `(at + 1) << 1 | above`: never 0, which means inside the band.
    fn encode(self, at: u64) -> u64 {
        (at.min(u64::MAX >> 2) + 1) << 1 | u64::from(self == Outside::Above)
    }

    fn decode(v: u64) -> Option<(Outside, u64)> {
        let side = if v & 1 == 1 {
            Outside::Above
        } else {
            Outside::Below
        };
        (v != 0).then(|| (side, (v >> 1) - 1))
    }
}

/// An endpoint and what the balancer knows of it: its load and health, in atomics, so
/// that picks and reports never wait for one another.
#[derive(Debug)]
pub struct Endpoint {
    pub meta: EndpointMeta,
    common: Arc<Common>,
    /// Zone-aware and in the proxy's zone: its pending requests count in
    /// [`Common::zone_pending`].
    in_zone: bool,
    pending: AtomicUsize,
    /// Peak-EWMA latency in nanoseconds (`f64` bits) as of `updated` (nanoseconds since
    /// the origin). Read and written without a lock: a read racing a write may pair one
    /// observation's latency with the other's time, both recent, which an estimate can
    /// bear.
    rtt_ns: AtomicU64,
    updated: AtomicU64,
    consecutive_failures: AtomicU32,
    /// When its ejection ends (nanoseconds since the origin; 0: not ejected). Once past,
    /// the endpoint is on probation until a request to it succeeds.
    ejected_until: AtomicU64,
    /// Its last ejection's length in nanoseconds (the next one is twice as long).
    backoff: AtomicU64,
}

impl Endpoint {
    fn new(meta: EndpointMeta, common: Arc<Common>) -> Arc<Self> {
        let config = &common.config;
        let in_zone = config.zone_mode == ZoneMode::Aware
            && config.zone.is_some()
            && meta.zone == config.zone;
        Arc::new(Endpoint {
            meta,
            common,
            in_zone,
            pending: AtomicUsize::new(0),
            rtt_ns: AtomicU64::new(0f64.to_bits()),
            updated: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            backoff: AtomicU64::new(0),
        })
    }

    fn ejected_until(&self) -> Option<u64> {
        Some(self.ejected_until.load(Ordering::Relaxed)).filter(|&until| until != 0)
    }

    fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until().is_some_and(|until| until > now)
    }

    /// Back from an ejection and not yet answered well: one probe request at a time,
    /// and one failure ejects it again (with a longer backoff).
    fn on_probation(&self, now: u64) -> bool {
        self.ejected_until().is_some_and(|until| until <= now)
    }

    /// The latency estimate decayed to `now`, and the decay factor it took.
    fn decayed(&self, now: u64) -> (f64, f64) {
        let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.updated.load(Ordering::Relaxed)) as f64;
        let factor = (-elapsed / self.common.config.decay.as_nanos() as f64).exp();
        (rtt * factor, factor)
    }

    /// Peak-EWMA latency (decayed to now) × (pending + 1). Weights act in the draw,
    /// not here, so that equal endpoints share traffic in proportion to them.
    fn cost(&self, now: u64) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        let rtt = match f64::from_bits(self.rtt_ns.load(Ordering::Relaxed)) {
            // Never observed (or long decayed away): no clock arithmetic needed.
            0.0 => 0.0,
            _ => self.decayed(now).0,
        };
        (rtt + 1.0) * (pending + 1.0)
    }

    fn observe(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let (decayed, factor) = self.decayed(now);
        // Peak: a slower response takes over at once; faster ones pull it down gently.
        let next = if rtt > decayed {
            rtt
        } else {
            let w = factor.clamp(0.0, 0.95);
            decayed * w + rtt * (1.0 - w)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.updated.store(now, Ordering::Relaxed);
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn add_pending(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.in_zone {
            self.common.zone_pending.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sub_pending(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        if self.in_zone {
            self.common.zone_pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Balances one service's requests (or connections) over its endpoints.
///
/// A pick reads the current [`Candidates`] without a lock, draws two of them (an
/// index, or a binary search when weights differ) and compares their costs: its cost
/// does not grow with the number of endpoints and it allocates nothing. The candidates
/// are computed again only when the endpoints change, when an endpoint's health
/// changes (ejected, back on probation, healthy again) and, in zone-aware mode, never
/// for the band: it only moves how many of them are in use.
#[derive(Debug)]
pub struct Balancer {
    common: Arc<Common>,
    candidates: ArcSwap<Candidates>,
    /// Serializes whoever replaces the candidates (new endpoints, a health change);
    /// picks never take it.
    writer: Mutex<()>,
    /// Zone-aware: other zones' endpoints in use, and when that last changed
    /// (nanoseconds since the origin; 0 before the first change).
    extra: AtomicUsize,
    last_step: AtomicU64,
    /// Zone-aware: since when the zone's load has been outside the band, and on which
    /// side ([`Outside`]; 0 while it is inside). The band moves only for a load that
    /// stayed outside it for a whole `zone_step`.
    outside: AtomicU64,
}

/// A balancer's endpoints and the candidates a pick draws from, computed when they or
/// their health change, never per request.
#[derive(Debug, Default)]
struct Candidates {
    /// Every endpoint: in-zone first, then by zone and address (the order other zones
    /// join in).
    endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints that may take a request (ejection capped, weight above zero), in
    /// the order the zone mode uses them: a pick draws from a prefix of them.
    usable: Vec<Arc<Endpoint>>,
    /// Each usable endpoint's weight plus those of the ones before it.
    cumulative: Vec<u64>,
    /// Every usable endpoint has the same weight: a draw is one random index.
    uniform: bool,
    /// Zone-aware with healthy endpoints in the zone: the first `local` usable ones
    /// are the zone's healthy endpoints (the band's load is the zone's pending requests
    /// per one of them), then come its endpoints on probation (up to `fixed`), then
    /// other zones', of which the first `extra` are in use. Otherwise every usable
    /// endpoint is in use.
    banded: bool,
    local: usize,
    fixed: usize,
    /// The first usable endpoint on probation (`usable.len()` when none): while the
    /// endpoints in use reach it, picks take the general path, which holds an endpoint
    /// with a pending probe back.
    first_probation: usize,
    /// When the next ejection ends (nanoseconds since the origin), which puts an
    /// endpoint on probation: the candidates are computed again then.
    recompute_at: u64,
}

impl Candidates {
    fn new(config: &BalanceConfig, endpoints: Vec<Arc<Endpoint>>, now: u64) -> Self {
        let all: Vec<&Arc<Endpoint>> = endpoints.iter().collect();
        let mut banded = false;
        let mut local = 0;
        let mut fixed = 0;
        let usable: Vec<Arc<Endpoint>> = match zone_of(config) {
            None => usable(config, all, now),
            Some(zone) if config.zone_mode == ZoneMode::LocalOnly => {
                usable(config, local_only_set(zone, all), now)
            }
            Some(zone) => {
                let (zone_healthy, probing, other) = by_zone(zone, usable(config, all, now), now);
                if zone_healthy.is_empty() {
                    other.into_iter().chain(probing).collect()
                } else {
                    banded = true;
                    local = zone_healthy.len();
                    fixed = local + probing.len();
                    zone_healthy
                        .into_iter()
                        .chain(probing)
                        .chain(other)
                        .collect()
                }
            }
        }
        .into_iter()
        .cloned()
        .collect();
        let cumulative: Vec<u64> = usable
            .iter()
            .scan(0u64, |sum, e| {
                *sum += u64::from(e.meta.weight);
                Some(*sum)
            })
            .collect();
        let uniform = usable
            .windows(2)
            .all(|w| w[0].meta.weight == w[1].meta.weight);
        let first_probation = usable
            .iter()
            .position(|e| e.on_probation(now))
            .unwrap_or(usable.len());
        let recompute_at = endpoints
            .iter()
            .filter_map(|e| e.ejected_until())
            .filter(|&until| until > now)
            .min()
            .unwrap_or(u64::MAX);
        Candidates {
            endpoints,
            usable,
            cumulative,
            uniform,
            banded,
            local,
            fixed,
            first_probation,
            recompute_at,
        }
    }

    /// One of the first `n` usable endpoints (n > 0), with probability proportional to
    /// its weight.
    fn draw(&self, n: usize, rng: &mut impl Rng) -> &Arc<Endpoint> {
        if self.uniform {
            return &self.usable[rng.random_range(0..n)];
        }
        let x = rng.random_range(0..self.cumulative[n - 1]);
        &self.usable[self.cumulative[..n].partition_point(|&sum| sum <= x)]
    }
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
        let e = &*self.endpoint;
        let common = &*e.common;
        let config = &*common.config;
        let end = Instant::now();
        let now = common.nanos(end);
        let took = end.saturating_duration_since(self.start);
        match outcome {
            Outcome::Success => {
                e.observe(took, now);
                if e.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    e.consecutive_failures.store(0, Ordering::Relaxed);
                }
                // Back from an ejection (or answered while ejected): healthy again.
                if e.ejected_until().is_some() {
                    e.ejected_until.store(0, Ordering::Relaxed);
                    e.backoff.store(0, Ordering::Relaxed);
                    common.health_changed.store(true, Ordering::Release);
                }
            }
            Outcome::Failure => {
                e.observe(took.max(config.failure_penalty), now);
                let failures = e.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let failed_probe = e.on_probation(now);
                if failed_probe || failures >= config.eject_after {
                    // Asked for; granted by the balancer only within the ejection cap.
                    let backoff = (Duration::from_nanos(e.backoff.load(Ordering::Relaxed)) * 2)
                        .clamp(config.eject_base, config.eject_max);
                    e.backoff.store(nanos(backoff), Ordering::Relaxed);
                    let until = now.saturating_add(nanos(backoff)).max(1);
                    e.ejected_until.store(until, Ordering::Relaxed);
                    e.consecutive_failures.store(0, Ordering::Relaxed);
                    common.health_changed.store(true, Ordering::Release);
                }
            }
        }
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.endpoint.sub_pending();
    }
}

impl Balancer {
    pub fn new(config: Arc<BalanceConfig>, endpoints: Vec<EndpointMeta>) -> Self {
        let b = Balancer {
            common: Arc::new(Common {
                config,
                origin: Instant::now(),
                health_changed: AtomicBool::new(false),
                zone_pending: AtomicUsize::new(0),
            }),
            candidates: ArcSwap::from_pointee(Candidates::default()),
            writer: Mutex::new(()),
            extra: AtomicUsize::new(0),
            last_step: AtomicU64::new(0),
            outside: AtomicU64::new(0),
        };
        b.set_endpoints(endpoints);
        b
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.common.nanos(Instant::now())
    }

    /// Replaces the endpoints; endpoints that stay (same address, zone, weight and
    /// identity) keep their estimates. O(n) but for the sort.
    pub fn set_endpoints(&self, endpoints: Vec<EndpointMeta>) {
        let _writer = self.writer();
        let old = self.candidates.load_full();
        let by_addr: HashMap<SocketAddr, &Arc<Endpoint>> =
            old.endpoints.iter().map(|e| (e.meta.addr, e)).collect();
        let mut next: Vec<Arc<Endpoint>> = endpoints
            .into_iter()
            .map(|meta| match by_addr.get(&meta.addr) {
                Some(kept) if kept.meta == meta => Arc::clone(kept),
                _ => Endpoint::new(meta, self.common.clone()),
            })
            .collect();
        // In-zone first, then by zone and address: the order other zones join in.
        let local = self.common.config.zone.as_ref();
        let key = |e: &Arc<Endpoint>| {
            (
                e.meta.zone.as_ref() != local,
                e.meta.zone.clone(),
                e.meta.addr,
            )
        };
        next.sort_by_cached_key(key);
        self.common.health_changed.store(false, Ordering::Relaxed);
        let now = self.now();
        self.candidates
            .store(Arc::new(Candidates::new(&self.common.config, next, now)));
    }

    /// Computes the candidates again after a health change or when an ejection ends.
    fn recompute(&self) {
        let _writer = self.writer();
        let current = self.candidates.load_full();
        let now = self.now();
        // Cleared before health is read: a change from here on raises it again.
        let changed = self.common.health_changed.swap(false, Ordering::Acquire);
        if !changed && now < current.recompute_at {
            return; // another pick did it
        }
        let endpoints = current.endpoints.clone();
        self.candidates.store(Arc::new(Candidates::new(
            &self.common.config,
            endpoints,
            now,
        )));
    }

    pub fn endpoints(&self) -> Vec<EndpointMeta> {
        self.candidates
            .load()
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
        let start = Instant::now();
        let now = self.common.nanos(start);
        let mut current = self.candidates.load();
        if now >= current.recompute_at || self.common.health_changed.load(Ordering::Acquire) {
            self.recompute();
            current = self.candidates.load();
        }
        let c = &*current;
        let in_use = self.in_use(c, now, true);
        let mut rng = rand::rng();
        let chosen = if avoid.is_empty() && in_use <= c.first_probation {
            // The fast path: no endpoint in use is on probation.
            if in_use == 0 {
                return None;
            }
            let first = c.draw(in_use, &mut rng);
            let second = c.draw(in_use, &mut rng);
            cheaper(first, second, now).clone()
        } else {
            self.pick_general(c, now, avoid, &mut rng)?
        };
        chosen.add_pending();
        Some(Picked {
            endpoint: chosen,
            start,
            done: false,
        })
    }

    /// How many of the usable endpoints are in use; zone-aware, moves the band by one
    /// endpoint when `step` and its time has come.
    fn in_use(&self, c: &Candidates, now: u64, step: bool) -> usize {
        if !c.banded {
            return c.usable.len();
        }
        let others = c.usable.len() - c.fixed;
        if step {
            self.step(c.local, others, now);
        }
        c.fixed + self.extra.load(Ordering::Relaxed).min(others)
    }

    /// Zone-aware: one more other-zone endpoint when the zone's load (requests pending
    /// in the zone per healthy in-zone endpoint, of which there are `zone`) has been
    /// above the band for a `zone_step`, one fewer when it has been below it for as
    /// long; at most one step per `zone_step`. A burst that clears within a step (held
    /// requests sent at once when endpoints arrive, a stalled moment) moves nothing.
    fn step(&self, zone: usize, others: usize, now: u64) {
        if zone == 0 {
            return;
        }
        let config = &self.common.config;
        let period = nanos(config.zone_step);
        let pending = self.common.zone_pending.load(Ordering::Relaxed);
        let load = pending as f64 / zone as f64;
        let extra = self.extra.load(Ordering::Relaxed);
        let (side, next) = if load > config.zone_high && extra < others {
            (Outside::Above, extra + 1)
        } else if load < config.zone_low && extra > 0 {
            (Outside::Below, extra - 1)
        } else {
            if self.outside.load(Ordering::Relaxed) != 0 {
                self.outside.store(0, Ordering::Relaxed);
            }
            return;
        };
        let seen = self.outside.load(Ordering::Relaxed);
        let since = match Outside::decode(seen) {
            Some((s, since)) if s == side => since,
            _ => {
                // The first pick to see the load there (a race with another one only
                // moves the start by the time between them).
                self.outside.store(side.encode(now), Ordering::Relaxed);
                now
            }
        };
        // 0: the band has not moved yet.
        let last = self.last_step.load(Ordering::Relaxed);
        if now.saturating_sub(since) < period || (last != 0 && now.saturating_sub(last) < period) {
            return;
        }
        // One step per period, whichever pick takes it.
        if self
            .last_step
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.extra.store(next, Ordering::Relaxed);
        }
    }

    /// The pick when an endpoint in use is on probation (it takes one probe at a time)
    /// or a retry avoids endpoints: the candidates filtered per request.
    fn pick_general(
        &self,
        c: &Candidates,
        now: u64,
        avoid: &[SocketAddr],
        rng: &mut impl Rng,
    ) -> Option<Arc<Endpoint>> {
        let config = &*self.common.config;
        let narrowed = self.in_use_now(c, now);
        let fresh = |e: &&Arc<Endpoint>| !avoid.contains(&e.meta.addr);
        let candidates = if avoid.is_empty() {
            narrowed
        } else if narrowed.iter().any(fresh) {
            narrowed.into_iter().filter(fresh).collect()
        } else if config.zone_mode == ZoneMode::Aware {
            let all = healthy(config, c.endpoints.iter().collect(), now);
            if all.iter().any(fresh) {
                all.into_iter().filter(fresh).collect()
            } else {
                all
            }
        } else {
            narrowed
        };
        let first = weighted(&candidates, rng)?;
        let second = weighted(&candidates, rng).unwrap_or(first);
        Some(cheaper(first, second, now).clone())
    }

    /// The endpoints in use, each filtered now: healthy ones (ejection capped; an
    /// endpoint on probation only while no probe to it is pending), narrowed by the zone
    /// mode. The band is not moved here.
    fn in_use_now<'a>(&self, c: &'a Candidates, now: u64) -> Vec<&'a Arc<Endpoint>> {
        let config = &*self.common.config;
        let all = c.endpoints.iter().collect();
        let Some(zone) = zone_of(config) else {
            return healthy(config, all, now);
        };
        if config.zone_mode == ZoneMode::LocalOnly {
            return healthy(config, local_only_set(zone, all), now);
        }
        let (local, probing, other) = by_zone(zone, healthy(config, all, now), now);
        if local.is_empty() {
            // No healthy endpoint in the zone: everything else, at once.
            return other.into_iter().chain(probing).collect();
        }
        let extra = self.extra.load(Ordering::Relaxed).min(other.len());
        local
            .into_iter()
            .chain(probing)
            .chain(other.into_iter().take(extra))
            .collect()
    }

    /// Endpoints currently in use, per zone (for the `balancer_endpoints` gauge).
    pub fn in_use_by_zone(&self) -> Vec<(Option<Arc<str>>, usize)> {
        let now = self.now();
        let current = self.candidates.load();
        let mut counts: Vec<(Option<Arc<str>>, usize)> = Vec::new();
        // Reading the gauge must not move the zone set: no step here.
        for e in self.in_use_now(&current, now) {
            match counts.iter_mut().find(|(z, _)| *z == e.meta.zone) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.meta.zone.clone(), 1)),
            }
        }
        counts
    }
}

/// The proxy's zone, when its zone mode uses it.
fn zone_of(config: &BalanceConfig) -> Option<&Arc<str>> {
    config
        .zone
        .as_ref()
        .filter(|_| config.zone_mode != ZoneMode::Unaware)
}

/// Topology hints: the zone's endpoints, failing or not, while it has any (with a
/// weight above zero); every endpoint when it has none.
fn local_only_set<'a>(zone: &Arc<str>, all: Vec<&'a Arc<Endpoint>>) -> Vec<&'a Arc<Endpoint>> {
    let in_zone = |e: &&Arc<Endpoint>| e.meta.zone.as_ref() == Some(zone) && e.meta.weight > 0;
    if all.iter().any(in_zone) {
        all.into_iter().filter(in_zone).collect()
    } else {
        all
    }
}

/// Zone-aware: `set`'s in-zone endpoints not on probation, its in-zone endpoints on
/// probation (they do not hold traffic in the zone: while they are all the zone has,
/// traffic stays out of it and they only get their probe), and other zones' endpoints.
#[allow(clippy::type_complexity)]
fn by_zone<'a>(
    zone: &Arc<str>,
    set: Vec<&'a Arc<Endpoint>>,
    now: u64,
) -> (
    Vec<&'a Arc<Endpoint>>,
    Vec<&'a Arc<Endpoint>>,
    Vec<&'a Arc<Endpoint>>,
) {
    let (local, other): (Vec<_>, Vec<_>) = set
        .into_iter()
        .partition(|e| e.meta.zone.as_ref() == Some(zone));
    let (local, probing) = local.into_iter().partition(|e| !e.on_probation(now));
    (local, probing, other)
}

/// The cheaper of two drawn endpoints (the first on a tie).
fn cheaper<'a>(first: &'a Arc<Endpoint>, second: &'a Arc<Endpoint>, now: u64) -> &'a Arc<Endpoint> {
    if Arc::ptr_eq(first, second) || first.cost(now) <= second.cost(now) {
        first
    } else {
        second
    }
}

/// The endpoints of `set` that may take a request: not ejected (unless more than the
/// allowed share would be out), weight above zero.
fn usable<'a>(
    config: &BalanceConfig,
    set: Vec<&'a Arc<Endpoint>>,
    now: u64,
) -> Vec<&'a Arc<Endpoint>> {
    let max_ejected = (set.len() as f64 * config.max_ejected_share).floor() as usize;
    let n_ejected = set.iter().filter(|e| e.is_ejected(now)).count();
    if n_ejected > max_ejected || n_ejected == set.len() {
        // Too many would be out: an outlier never takes the whole service down.
        set.into_iter().filter(|e| e.meta.weight > 0).collect()
    } else {
        set.into_iter()
            .filter(|e| !e.is_ejected(now) && e.meta.weight > 0)
            .collect()
    }
}

/// [`usable`], and not on probation with its probe still pending (unless nothing else
/// is left).
fn healthy<'a>(
    config: &BalanceConfig,
    set: Vec<&'a Arc<Endpoint>>,
    now: u64,
) -> Vec<&'a Arc<Endpoint>> {
    let usable = usable(config, set, now);
    let probe_pending = |e: &&Arc<Endpoint>| e.pending() > 0 && e.on_probation(now);
    if usable.iter().any(probe_pending) && !usable.iter().all(probe_pending) {
        usable.into_iter().filter(|e| !probe_pending(e)).collect()
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
                let now = b.now();
                p.endpoint.observe(Duration::from_millis(50), now);
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
    fn the_band_moves_only_for_load_that_stays_above_it_for_a_step() {
        let endpoints = || {
            vec![
                meta(1, "a", 1),
                meta(2, "a", 1),
                meta(3, "b", 1),
                meta(4, "c", 1),
            ]
        };
        let with_step = |step| {
            let config = BalanceConfig {
                zone: Some("a".into()),
                zone_step: step,
                ..BalanceConfig::default()
            };
            Balancer::new(Arc::new(config), endpoints())
        };
        let in_zone = |p: &Picked| p.zone().map(|z| &**z) == Some("a");

        // A burst (5 pending per in-zone endpoint) that clears within the step.
        let b = with_step(Duration::from_secs(3600));
        let burst: Vec<Picked> = (0..10).map(|_| b.pick().unwrap()).collect();
        assert!((0..20).all(|_| in_zone(&b.pick().unwrap())));
        drop(burst);
        assert!((0..200).all(|_| in_zone(&b.pick().unwrap())));
        assert_eq!(b.in_use_by_zone().len(), 1);

        // Load that stays above the band: another zone joins, a step after the first
        // pick that saw it there.
        let step = Duration::from_millis(20);
        let b = with_step(step);
        let before = Instant::now();
        let held: Vec<Picked> = (0..10).map(|_| b.pick().unwrap()).collect();
        let deadline = before + Duration::from_secs(10);
        let spilled = loop {
            let p = b.pick().unwrap();
            if !in_zone(&p) {
                break Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "no other zone joined within 10 s"
            );
            std::thread::yield_now();
        };
        assert!(spilled - before >= step);
        drop(held);
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
        let e = b.candidates.load().endpoints[0].clone();
        assert_eq!(e.meta.addr, addr(1));
        assert_eq!(
            e.backoff.load(Ordering::Relaxed),
            nanos(Duration::from_secs(2))
        );
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
                    let now = b.now();
                    let zone_out = b.candidates.load().endpoints.iter()
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
            let now = b.now();
            let ejected: Vec<SocketAddr> = b.candidates.load().endpoints.iter().filter(|e| e.is_ejected(now)).map(|e| e.meta.addr).collect();
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

//! The retry budget: retries are allowed while, over a sliding window of `ttl`,
//! `retries ≤ ratio × requests + min_per_second × ttl` (Finagle's and Linkerd's
//! budget). However many requests fail, retries add at most `ratio` to the load plus a
//! small floor, so they cannot turn a partial outage into a full one.
//!
//! Lock-free: the window is [`SLOTS`] time slots per counter, each an `AtomicU64`
//! holding the slot's epoch (high 32 bits) and its count (low 32 bits). A deposit is
//! one compare-and-swap on the current slot; a withdrawal adds to the current slot,
//! sums the window (2 × [`SLOTS`] loads) and takes its retry back if over budget, so
//! concurrent withdrawals can only under-spend, never overspend.
//!
//! Why not tower's `TpsBudget` (tower 0.5, `tower::retry::budget`), which has the same
//! design (ten slots over a 1-60 s `ttl`, a ratio, a per-second minimum): checked
//! against its source (tower-0.5.3 `src/retry/budget/tps_budget.rs`), it
//! - takes a `Mutex` on every `deposit` and `withdraw` (`expire` locks the slot
//!   generation before anything else), and a service's budget is shared by every
//!   request to it on every worker thread: a lock per request in the request path,
//!   where this one is one compare-and-swap;
//! - rounds the ratio: a withdrawal costs `(1 / ratio) as isize` deposits, so a
//!   `ratio` of 0.3 allows 0.33 retries per request, 0.4 allows 0.5 and 0.7 allows 1.0
//!   (43 % more retries than asked), where `retries.budget.ratio` here is exact; and
//!   the minimum counts whole seconds of `ttl` only;
//! - reads its own clock (`tokio::time::Instant::now()` on each call), where the
//!   proxy passes the instant it already read for the request;
//! - panics (`assert!`) on parameters out of range instead of returning an error;
//!   [`BudgetParams::validate`] names the field at fault.
//!
//! The first two change behaviour or cost on the request path, so the budget stays
//! ours; the tests below pin the behaviour `TpsBudget` would change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots per window: a slot lasts `ttl / SLOTS`, and the window is the current slot
/// plus the `SLOTS - 1` before it.
const SLOTS: usize = 10;

/// How much retrying a budget allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetParams {
    /// Retries allowed per request over the window (0.2: one retry per five requests).
    pub ratio: f64,
    /// Retries allowed per second whatever the request rate, so that quiet clients
    /// can still retry (over a window: `min_per_second × ttl`).
    pub min_per_second: u32,
    /// How long a request or retry counts.
    pub ttl: Duration,
}

impl Default for BudgetParams {
    fn default() -> Self {
        BudgetParams {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl BudgetParams {
    /// Checks the values; an error names the field at fault (`ratio` or `ttl`) and
    /// what is wrong with it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.ratio.is_finite() && self.ratio >= 0.0) {
            return Err((
                "ratio",
                format!(
                    "must be a number ≥ 0 (retries per request), got {}",
                    self.ratio
                ),
            ));
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(60) {
            return Err((
                "ttl",
                format!(
                    "must be from 1s to 60s, got {}",
                    humantime::format_duration(self.ttl)
                ),
            ));
        }
        Ok(())
    }
}

/// One destination's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries the window always allows: `min_per_second × ttl`.
    reserve: f64,
    slot_nanos: u64,
    origin: Instant,
    requests: [AtomicU64; SLOTS],
    retries: [AtomicU64; SLOTS],
}

impl RetryBudget {
    pub fn new(params: &BudgetParams) -> Self {
        Self::starting_at(params, Instant::now())
    }

    /// A budget whose clock starts at `origin` (tests pass instants after it).
    pub fn starting_at(params: &BudgetParams, origin: Instant) -> Self {
        let ttl = params.ttl.max(Duration::from_millis(SLOTS as u64));
        RetryBudget {
            ratio: params.ratio,
            reserve: f64::from(params.min_per_second) * ttl.as_secs_f64(),
            slot_nanos: (ttl.as_nanos() / SLOTS as u128).max(1) as u64,
            origin,
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Counts a request (every request that could be retried, retried or not).
    pub fn deposit(&self, now: Instant) {
        let epoch = self.epoch(now);
        bump(&self.requests[slot(epoch)], epoch);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let cell = &self.retries[slot(epoch)];
        bump(cell, epoch);
        let (requests, retries) = self.window_at(epoch);
        if retries as f64 <= self.ratio * requests as f64 + self.reserve {
            return true;
        }
        unbump(cell, epoch);
        false
    }

    /// Requests and retries counted in the window ending at `now`.
    pub fn window(&self, now: Instant) -> (u64, u64) {
        self.window_at(self.epoch(now))
    }

    fn window_at(&self, epoch: u32) -> (u64, u64) {
        (sum(&self.requests, epoch), sum(&self.retries, epoch))
    }

    fn epoch(&self, now: Instant) -> u32 {
        // Wraps after 2^32 slots (over a century at the shortest ttl); only
        // differences between epochs matter.
        (now.saturating_duration_since(self.origin).as_nanos() / u128::from(self.slot_nanos)) as u32
    }
}

fn slot(epoch: u32) -> usize {
    epoch as usize % SLOTS
}

fn pack(epoch: u32, count: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(count)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// Adds one to `cell` for `epoch`, starting the slot afresh if it held an older epoch.
fn bump(cell: &AtomicU64, epoch: u32) {
    let mut current = cell.load(Ordering::Relaxed);
    loop {
        let (e, n) = unpack(current);
        // A slot already moved on to a newer epoch (a thread that read the clock
        // later got there first) keeps its epoch: count there.
        let next = if e == epoch || (e.wrapping_sub(epoch) as i32) > 0 {
            pack(e, n.saturating_add(1))
        } else {
            pack(epoch, 1)
        };
        match cell.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// Takes back a [`bump`] if the slot still holds `epoch`.
fn unbump(cell: &AtomicU64, epoch: u32) {
    let mut current = cell.load(Ordering::Relaxed);
    loop {
        let (e, n) = unpack(current);
        if e != epoch || n == 0 {
            return;
        }
        match cell.compare_exchange_weak(
            current,
            pack(e, n - 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// The counts of the slots whose epoch is within the window ending at `epoch`.
fn sum(cells: &[AtomicU64; SLOTS], epoch: u32) -> u64 {
    cells
        .iter()
        .map(|c| unpack(c.load(Ordering::Relaxed)))
        .filter(|(e, _)| epoch.wrapping_sub(*e) < SLOTS as u32)
        .map(|(_, n)| u64::from(n))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn params(ratio: f64, min_per_second: u32, ttl_secs: u64) -> BudgetParams {
        BudgetParams {
            ratio,
            min_per_second,
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    #[test]
    fn allows_ratio_of_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::starting_at(&params(0.2, 0, 10), t0);
        for _ in 0..100 {
            budget.deposit(t0);
        }
        let granted = (0..100).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(granted, 20);
        assert_eq!(budget.window(t0), (100, 20));
    }

    #[test]
    fn ratios_are_exact_not_rounded_to_a_whole_cost_per_retry() {
        // tower's TpsBudget charges `(1 / ratio) as isize` deposits per retry: 0.3 would
        // allow 33 of 100 and 0.7 all 100.
        let t0 = Instant::now();
        for (ratio, allowed) in [(0.3, 30), (0.7, 70)] {
            let budget = RetryBudget::starting_at(&params(ratio, 0, 10), t0);
            for _ in 0..100 {
                budget.deposit(t0);
            }
            let granted = (0..100).filter(|_| budget.withdraw(t0)).count();
            assert_eq!(granted, allowed, "ratio {ratio}");
        }
    }

    #[test]
    fn minimum_per_second_allows_retries_without_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::starting_at(&params(0.2, 3, 2), t0);
        // 3/s over a 2 s window: 6 retries even before any request.
        let granted = (0..20).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(granted, 6);
    }

    #[test]
    fn requests_and_retries_expire_after_the_ttl() {
        let t0 = Instant::now();
        let budget = RetryBudget::starting_at(&params(0.5, 0, 10), t0);
        for _ in 0..10 {
            budget.deposit(t0);
        }
        assert_eq!((0..10).filter(|_| budget.withdraw(t0)).count(), 5);
        // Half-way through the window both still count: nothing more is allowed.
        let t5 = t0 + Duration::from_secs(5);
        assert!(!budget.withdraw(t5));
        // A full window later, the old requests no longer earn retries...
        let t11 = t0 + Duration::from_secs(11);
        assert_eq!(budget.window(t11), (0, 0));
        assert!(!budget.withdraw(t11));
        // ... and new ones do.
        budget.deposit(t11);
        budget.deposit(t11);
        assert!(budget.withdraw(t11));
        assert!(!budget.withdraw(t11));
    }

    #[test]
    fn the_window_slides_slot_by_slot() {
        let t0 = Instant::now();
        let budget = RetryBudget::starting_at(&params(1.0, 0, 10), t0);
        // One request per second for 20 s: the window holds the last 10 (or 9 and the
        // current slot's).
        for s in 0..20 {
            budget.deposit(t0 + Duration::from_secs(s));
        }
        let (requests, _) = budget.window(t0 + Duration::from_millis(19_500));
        assert_eq!(requests, 10);
    }

    #[test]
    fn zero_ratio_and_minimum_allows_nothing() {
        let t0 = Instant::now();
        let budget = RetryBudget::starting_at(&params(0.0, 0, 10), t0);
        for _ in 0..1000 {
            budget.deposit(t0);
        }
        assert!(!budget.withdraw(t0));
        assert_eq!(budget.window(t0), (1000, 0));
    }

    #[test]
    fn concurrent_withdrawals_never_overspend() {
        let t0 = Instant::now();
        let budget = Arc::new(RetryBudget::starting_at(&params(0.2, 1, 10), t0));
        for _ in 0..1000 {
            budget.deposit(t0);
        }
        // Cap: 0.2 × 1000 + 1 × 10 = 210.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || (0..200).filter(|_| budget.withdraw(t0)).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(granted <= 210, "{granted} retries granted, cap is 210");
        // Rejections only happen when the window is (provisionally) full, so the
        // budget is spent up to the few withdrawals racing at the end.
        assert!(granted >= 206, "only {granted} of 210 retries granted");
        assert_eq!(budget.window(t0).1, granted as u64);
    }

    #[test]
    fn validation_names_the_field() {
        assert!(params(0.2, 10, 10).validate().is_ok());
        assert_eq!(params(-0.1, 10, 10).validate().unwrap_err().0, "ratio");
        assert_eq!(params(f64::NAN, 10, 10).validate().unwrap_err().0, "ratio");
        let (field, problem) = params(0.2, 10, 0).validate().unwrap_err();
        assert_eq!(
            (field, problem.as_str()),
            ("ttl", "must be from 1s to 60s, got 0s")
        );
        assert_eq!(params(0.2, 10, 61).validate().unwrap_err().0, "ttl");
    }
}

//! Request timeouts, retries and retry budgets (outbound, the client's side, as Linkerd
//! and Envoy do it).
//!
//! - A **request timeout** bounds a whole request, every attempt and the response
//!   body included; a gRPC `grpc-timeout` shortens it.
//! - A request is **retried**, on another endpoint when the service has one, when its
//!   attempt failed before it was sent (connect errors: always safe), or when it is
//!   replayable (a method declared safe to repeat, a body of at most
//!   [`MAX_REPLAY_BODY`]) and its response is one the policy names (`on`), or its
//!   attempt timed out or was reset.
//! - Every retry is paid from the destination's [`RetryBudget`].
//!
//! Settings come from flags (proxy-wide defaults, [`RequestPolicy`]) and per service
//! from the endpoints file ([`PolicyOverrides`]).

pub mod budget;
pub mod replay;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use rand::Rng;
use serde::Deserialize;

pub use budget::{BudgetParams, RetryBudget};
pub use replay::{Replay, RequestBody};

/// Request bodies up to this size are copied while they stream, so that the request
/// can be retried on its response (Linkerd's limit). Larger ones are never retried on a
/// response.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// Tells the upstream which retry a request is (`1` for the first retry).
pub const RETRY_ATTEMPT_HEADER: &str = "weft-retry-attempt";

/// gRPC status codes by their names in the gRPC spec (lower case, `-` for `_`).
const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// gRPC's UNAVAILABLE: what a gRPC client makes of HTTP 429, 502, 503 and 504.
const GRPC_UNAVAILABLE: u32 = 14;

/// One kind of response worth another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCondition {
    /// HTTP statuses from `.0` to `.1` (inclusive), for requests other than gRPC.
    Http(u16, u16),
    /// A gRPC status, for gRPC requests.
    Grpc(u32),
}

impl FromStr for RetryCondition {
    type Err = String;

    /// `503`, `500-504`, `5xx`, `4xx`, `gateway-error` (502-504), or a gRPC status name
    /// (`unavailable`, `resource-exhausted`, ...).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let code = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(c) if (400..=599).contains(&c) => Ok(c),
                Ok(c) => Err(format!(
                    "{c} is not an error status: only 400 to 599 can be retried"
                )),
                Err(_) => Err(format!("{s:?} is not a retry condition: expected an HTTP status (503), a range (500-504), 5xx, 4xx, gateway-error or a gRPC status name (unavailable, resource-exhausted, ...)")),
            }
        };
        match lower.as_str() {
            "5xx" => return Ok(RetryCondition::Http(500, 599)),
            "4xx" => return Ok(RetryCondition::Http(400, 499)),
            "gateway-error" => return Ok(RetryCondition::Http(502, 504)),
            "ok" => return Err("gRPC status ok is a success and cannot be retried".into()),
            _ => {}
        }
        let grpc_name = lower.replace('_', "-");
        if let Some(i) = GRPC_CODES.iter().position(|n| *n == grpc_name) {
            return Ok(RetryCondition::Grpc(i as u32));
        }
        match lower.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (code(lo)?, code(hi)?);
                if lo > hi {
                    return Err(format!("range {s:?} is empty: {lo} is above {hi}"));
                }
                Ok(RetryCondition::Http(lo, hi))
            }
            None => code(&lower).map(|c| RetryCondition::Http(c, c)),
        }
    }
}

impl fmt::Display for RetryCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RetryCondition::Http(lo, hi) if lo == hi => write!(f, "{lo}"),
            RetryCondition::Http(lo, hi) => write!(f, "{lo}-{hi}"),
            RetryCondition::Grpc(code) => {
                f.write_str(GRPC_CODES.get(code as usize).copied().unwrap_or("?"))
            }
        }
    }
}

/// The responses that are retried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    http: Vec<(u16, u16)>,
    /// gRPC statuses, one bit per code.
    grpc: u32,
}

impl RetryOn {
    pub fn new(conditions: &[RetryCondition]) -> Self {
        let mut on = RetryOn::default();
        for c in conditions {
            match *c {
                RetryCondition::Http(lo, hi) => on.http.push((lo, hi)),
                RetryCondition::Grpc(code) => on.grpc |= 1 << code,
            }
        }
        on
    }

    /// Whether an HTTP response with `status` is retried (requests other than gRPC).
    pub fn http_status(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        self.http.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s))
    }

    /// Whether a gRPC response with status `code` is retried.
    pub fn grpc_status(&self, code: u32) -> bool {
        code < 32 && self.grpc & (1 << code) != 0
    }

    pub fn has_http(&self) -> bool {
        !self.http.is_empty()
    }

    /// Listing a gRPC status declares the destination's gRPC calls safe to repeat on
    /// it (as gRPC's own retry policy does): gRPC calls are all POSTs, so the method
    /// says nothing.
    pub fn has_grpc(&self) -> bool {
        self.grpc != 0
    }
}

/// HTTP methods, as a set (CONNECT is never retried and cannot be listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodSet(u16);

const METHOD_NAMES: [&str; 8] = [
    "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH",
];

impl MethodSet {
    /// The methods RFC 9110 calls idempotent: repeating them has the effect of doing
    /// them once.
    pub const IDEMPOTENT: MethodSet = MethodSet(0b11_1111);

    pub fn contains(&self, method: &Method) -> bool {
        METHOD_NAMES
            .iter()
            .position(|n| *n == method.as_str())
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = 0u16;
        for name in names {
            let upper = name.trim().to_ascii_uppercase();
            match METHOD_NAMES.iter().position(|n| *n == upper) {
                Some(i) => set |= 1 << i,
                None if upper == "CONNECT" => {
                    return Err("CONNECT opens a tunnel and cannot be retried".into())
                }
                None => {
                    return Err(format!(
                        "{name:?} is not an HTTP method (one of {})",
                        METHOD_NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(MethodSet(set))
    }
}

impl Default for MethodSet {
    fn default() -> Self {
        MethodSet::IDEMPOTENT
    }
}

impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = METHOD_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// How a destination's requests are retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 turns retrying off.
    pub limit: u32,
    pub on: RetryOn,
    /// Methods retried on a response (`on`) or after a timed-out or reset attempt.
    pub methods: MethodSet,
    /// Time each attempt has for its response headers (`None`: only the request
    /// timeout); an attempt that runs out of it may be retried.
    pub attempt_timeout: Option<Duration>,
    /// Base of the jittered wait before a retry (doubling per retry, up to 10×).
    pub backoff: Duration,
    pub budget: BudgetParams,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            limit: 2,
            on: RetryOn::new(&DEFAULT_RETRY_ON),
            methods: MethodSet::IDEMPOTENT,
            attempt_timeout: None,
            backoff: Duration::from_millis(25),
            budget: BudgetParams::default(),
        }
    }
}

/// `500,502-504`: failures of one replica that another may not share. Not 501 (Not
/// Implemented) or 505 (HTTP Version Not Supported), which are about the request
/// itself, so every replica answers them alike.
pub const DEFAULT_RETRY_ON: [RetryCondition; 2] = [
    RetryCondition::Http(500, 500),
    RetryCondition::Http(502, 504),
];

impl RetryPolicy {
    /// Whether a request's response may lead to a retry: the request is one the policy
    /// calls safe to repeat.
    pub fn replayable(&self, method: &Method, grpc: bool) -> bool {
        if grpc {
            self.on.has_grpc()
        } else {
            self.methods.contains(method)
        }
    }

    /// Whether a response asks for a retry (for a replayable request).
    pub fn retry_on_response(&self, status: StatusCode, headers: &HeaderMap, grpc: bool) -> bool {
        if !grpc {
            return self.on.http_status(status);
        }
        if status != StatusCode::OK {
            // gRPC's HTTP-to-status mapping: gateways and overload are UNAVAILABLE.
            let unavailable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
            return unavailable && self.on.grpc_status(GRPC_UNAVAILABLE);
        }
        // A trailers-only response carries its status in the headers; one in the
        // trailers comes with a body, which is streamed to the caller, not retried.
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|code| self.on.grpc_status(code))
    }

    /// The wait before retry number `retry` (1 for the first): half to all of
    /// `backoff × 2^(retry-1)`, capped at 10 × `backoff`, so that concurrent retries
    /// spread out.
    pub fn backoff(&self, retry: u32) -> Duration {
        let full = self
            .backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(10))
            .min(self.backoff.saturating_mul(10));
        if full.is_zero() {
            return full;
        }
        let nanos = full.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
    }
}

/// Timeouts and retries of one destination.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestPolicy {
    /// Deadline of the whole request, the response body included (`None`: no limit).
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
}

/// A destination's policy and the budget its retries are paid from.
#[derive(Debug)]
pub struct BudgetedPolicy {
    pub policy: RequestPolicy,
    pub budget: RetryBudget,
}

impl BudgetedPolicy {
    pub fn new(policy: RequestPolicy) -> Self {
        let budget = RetryBudget::new(&policy.retry.budget);
        BudgetedPolicy { policy, budget }
    }
}

/// A service's timeouts and retries: what its entry in the endpoints file overrides,
/// and, made at its first request from the proxy's defaults, its policy and budget.
#[derive(Debug, Default)]
pub struct ServicePolicy {
    overrides: PolicyOverrides,
    resolved: std::sync::OnceLock<BudgetedPolicy>,
}

impl ServicePolicy {
    pub fn new(overrides: PolicyOverrides) -> Self {
        ServicePolicy {
            overrides,
            resolved: std::sync::OnceLock::new(),
        }
    }

    pub fn overrides(&self) -> &PolicyOverrides {
        &self.overrides
    }

    /// The service's policy over `defaults` (the proxy's, which do not change while it
    /// runs), and its own retry budget.
    pub fn get(&self, defaults: &RequestPolicy) -> &BudgetedPolicy {
        self.resolved
            .get_or_init(|| BudgetedPolicy::new(self.overrides.apply(defaults)))
    }
}

/// A service's `retries:` section in the endpoints file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    limit: Option<u32>,
    on: Option<Vec<StatusOrName>>,
    methods: Option<Vec<String>>,
    timeout: Option<String>,
    backoff: Option<String>,
    budget: Option<BudgetSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BudgetSpec {
    ratio: Option<f64>,
    min_per_second: Option<u32>,
    ttl: Option<String>,
}

/// `503` and `"5xx"` alike.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum StatusOrName {
    Status(u16),
    Name(String),
}

/// What a service's entry in the endpoints file changes from the proxy's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyOverrides {
    timeout: Option<Option<Duration>>,
    limit: Option<u32>,
    on: Option<RetryOn>,
    methods: Option<MethodSet>,
    attempt_timeout: Option<Option<Duration>>,
    backoff: Option<Duration>,
    ratio: Option<f64>,
    min_per_second: Option<u32>,
    ttl: Option<Duration>,
}

/// A duration such as `2s` or `250ms`; `0s` means none.
fn duration(field: &str, text: &str) -> Result<Option<Duration>, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{field}`: {text:?} is not a duration such as 2s or 250ms ({e})"))?;
    Ok((!d.is_zero()).then_some(d))
}

impl PolicyOverrides {
    /// Reads a service's `timeout` and `retries`; errors name the field at fault.
    pub fn parse(timeout: Option<&str>, retries: Option<&RetrySpec>) -> Result<Self, String> {
        let mut o = PolicyOverrides {
            timeout: timeout.map(|t| duration("timeout", t)).transpose()?,
            ..Default::default()
        };
        let Some(r) = retries else {
            return Ok(o);
        };
        o.limit = r.limit;
        if let Some(on) = &r.on {
            let conditions = on
                .iter()
                .map(|c| match c {
                    StatusOrName::Status(s) => s.to_string().parse(),
                    StatusOrName::Name(n) => n.parse(),
                })
                .collect::<Result<Vec<RetryCondition>, String>>()
                .map_err(|e| format!("`retries.on`: {e}"))?;
            o.on = Some(RetryOn::new(&conditions));
        }
        if let Some(methods) = &r.methods {
            o.methods = Some(
                MethodSet::parse(methods.iter().map(String::as_str))
                    .map_err(|e| format!("`retries.methods`: {e}"))?,
            );
        }
        o.attempt_timeout = r
            .timeout
            .as_deref()
            .map(|t| duration("retries.timeout", t))
            .transpose()?;
        o.backoff = r
            .backoff
            .as_deref()
            .map(|t| duration("retries.backoff", t).map(Option::unwrap_or_default))
            .transpose()?;
        if let Some(b) = &r.budget {
            o.ratio = b.ratio;
            o.min_per_second = b.min_per_second;
            o.ttl = b
                .ttl
                .as_deref()
                .map(|t| {
                    duration("retries.budget.ttl", t)?.ok_or_else(|| {
                        "`retries.budget.ttl` must be from 1s to 60s, got 0s".to_string()
                    })
                })
                .transpose()?;
            // Checked against the defaults for the fields it leaves out.
            let params = BudgetParams {
                ratio: o.ratio.unwrap_or(0.2),
                min_per_second: 0,
                ttl: o.ttl.unwrap_or(Duration::from_secs(10)),
            };
            params
                .validate()
                .map_err(|(field, problem)| format!("`retries.budget.{field}` {problem}"))?;
        }
        Ok(o)
    }

    /// A route's request timeout (`timeouts.request`), when it sets one.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        if let Some(t) = timeout {
            self.timeout = Some(Some(t));
        }
    }

    /// A route's per-attempt timeout (`timeouts.backendRequest`), when it sets one.
    pub fn set_attempt_timeout(&mut self, timeout: Option<Duration>) {
        if let Some(t) = timeout {
            self.attempt_timeout = Some(Some(t));
        }
    }

    /// A route's `retry`: its limit always; the conditions, per-attempt timeout and
    /// backoff when it sets them (the Service's otherwise).
    pub fn set_retries(
        &mut self,
        limit: u32,
        on: Option<RetryOn>,
        attempt_timeout: Option<Duration>,
        backoff: Option<Duration>,
    ) {
        self.limit = Some(limit);
        if on.is_some() {
            self.on = on;
        }
        self.set_attempt_timeout(attempt_timeout);
        if backoff.is_some() {
            self.backoff = backoff;
        }
    }

    /// The policy for a service: `defaults` with these overrides.
    pub fn apply(&self, defaults: &RequestPolicy) -> RequestPolicy {
        let d = &defaults.retry;
        RequestPolicy {
            timeout: self.timeout.unwrap_or(defaults.timeout),
            retry: RetryPolicy {
                limit: self.limit.unwrap_or(d.limit),
                on: self.on.clone().unwrap_or_else(|| d.on.clone()),
                methods: self.methods.unwrap_or(d.methods),
                attempt_timeout: self.attempt_timeout.unwrap_or(d.attempt_timeout),
                backoff: self.backoff.unwrap_or(d.backoff),
                budget: BudgetParams {
                    ratio: self.ratio.unwrap_or(d.budget.ratio),
                    min_per_second: self.min_per_second.unwrap_or(d.budget.min_per_second),
                    ttl: self.ttl.unwrap_or(d.budget.ttl),
                },
            },
        }
    }
}

/// The deadline a gRPC client asked for (`grpc-timeout: 1*8DIGIT unit`). A malformed
/// value is ignored, as if absent.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value (at most 8 digits, the finest unit that fits).
pub fn grpc_timeout_value(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let text = if d.as_micros() <= MAX {
        format!("{}u", d.as_micros().max(1))
    } else if d.as_millis() <= MAX {
        format!("{}m", d.as_millis())
    } else {
        format!("{}S", u128::from(d.as_secs()).min(MAX))
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("99999999S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(list: &[&str]) -> RetryOn {
        let c: Vec<RetryCondition> = list.iter().map(|s| s.parse().unwrap()).collect();
        RetryOn::new(&c)
    }

    #[test]
    fn conditions_parse_like_linkerd() {
        let on = conditions(&["5xx"]);
        assert!(on.http_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(on.http_status(StatusCode::NOT_IMPLEMENTED));
        assert!(!on.http_status(StatusCode::TOO_MANY_REQUESTS));
        let on = conditions(&["gateway-error", "429"]);
        assert!(on.http_status(StatusCode::BAD_GATEWAY));
        assert!(on.http_status(StatusCode::GATEWAY_TIMEOUT));
        assert!(on.http_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!on.http_status(StatusCode::INTERNAL_SERVER_ERROR));
        let on = conditions(&["500-502"]);
        assert!(on.http_status(StatusCode::from_u16(501).unwrap()));
        assert!(!on.http_status(StatusCode::SERVICE_UNAVAILABLE));
        let on = conditions(&["unavailable", "RESOURCE_EXHAUSTED"]);
        assert!(on.grpc_status(14) && on.grpc_status(8) && !on.grpc_status(13));
        assert!(on.has_grpc() && !on.has_http());
    }

    #[test]
    fn the_default_skips_statuses_about_the_request() {
        let on = RetryOn::new(&DEFAULT_RETRY_ON);
        for s in [500, 502, 503, 504] {
            assert!(on.http_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 404, 429, 501, 505] {
            assert!(!on.http_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        assert!(!on.has_grpc());
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        let err = |s: &str| s.parse::<RetryCondition>().unwrap_err();
        assert!(
            err("5xy").contains("is not a retry condition"),
            "{}",
            err("5xy")
        );
        assert!(err("200").contains("only 400 to 599"), "{}", err("200"));
        assert!(err("504-500").contains("is empty"), "{}", err("504-500"));
        assert!(err("ok").contains("success"));
    }

    #[test]
    fn methods() {
        assert!(MethodSet::IDEMPOTENT.contains(&Method::GET));
        assert!(MethodSet::IDEMPOTENT.contains(&Method::DELETE));
        assert!(!MethodSet::IDEMPOTENT.contains(&Method::POST));
        assert!(!MethodSet::IDEMPOTENT.contains(&Method::PATCH));
        assert!(!MethodSet::IDEMPOTENT.contains(&Method::CONNECT));
        assert_eq!(
            MethodSet::IDEMPOTENT.to_string(),
            "GET,HEAD,OPTIONS,TRACE,PUT,DELETE"
        );
        let set = MethodSet::parse(["get", "POST"]).unwrap();
        assert!(set.contains(&Method::POST) && !set.contains(&Method::PUT));
        assert!(MethodSet::parse(["CONNECT"])
            .unwrap_err()
            .contains("tunnel"));
        assert!(MethodSet::parse(["FETCH"])
            .unwrap_err()
            .contains("not an HTTP method"));
    }

    #[test]
    fn grpc_responses() {
        let policy = RetryPolicy {
            on: conditions(&["unavailable"]),
            ..RetryPolicy::default()
        };
        let mut headers = HeaderMap::new();
        assert!(!policy.retry_on_response(StatusCode::OK, &headers, true));
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        assert!(policy.retry_on_response(StatusCode::OK, &headers, true));
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert!(!policy.retry_on_response(StatusCode::OK, &headers, true));
        assert!(policy.retry_on_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), true));
        assert!(!policy.retry_on_response(StatusCode::NOT_FOUND, &HeaderMap::new(), true));
        // gRPC calls are retried only when a gRPC status is listed.
        assert!(policy.replayable(&Method::POST, true));
        assert!(!RetryPolicy::default().replayable(&Method::POST, true));
        assert!(!policy.replayable(&Method::POST, false));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let policy = RetryPolicy {
            backoff: Duration::from_millis(20),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(10) && first <= Duration::from_millis(20));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(40) && third <= Duration::from_millis(80));
            assert!(policy.backoff(30) <= Duration::from_millis(200));
        }
        let none = RetryPolicy {
            backoff: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(none.backoff(3), Duration::ZERO);
    }

    #[test]
    fn grpc_timeouts() {
        let t = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            grpc_timeout(&h)
        };
        assert_eq!(t("200m"), Some(Duration::from_millis(200)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("500u"), Some(Duration::from_micros(500)));
        assert_eq!(t("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(t("123456789m"), None, "more than 8 digits");
        assert_eq!(t("1x"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("-1m"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
        for d in [
            Duration::from_micros(1500),
            Duration::from_secs(2),
            Duration::from_secs(200),
        ] {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", grpc_timeout_value(d));
            let back = grpc_timeout(&h).unwrap();
            assert!(
                back <= d && d - back < Duration::from_millis(1),
                "{d:?} -> {back:?}"
            );
        }
    }

    #[test]
    fn overrides_apply_over_defaults() {
        let spec: RetrySpec = serde_yaml_ng::from_str(
            "{limit: 3, on: [503, unavailable], methods: [GET, POST], timeout: 100ms, backoff: 0s, budget: {ratio: 0.5, minPerSecond: 1}}",
        )
        .unwrap();
        let o = PolicyOverrides::parse(Some("2s"), Some(&spec)).unwrap();
        let defaults = RequestPolicy::default();
        let p = o.apply(&defaults);
        assert_eq!(p.timeout, Some(Duration::from_secs(2)));
        assert_eq!(p.retry.limit, 3);
        assert!(p.retry.on.http_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!p.retry.on.http_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(p.retry.on.grpc_status(14));
        assert!(p.retry.methods.contains(&Method::POST));
        assert_eq!(p.retry.attempt_timeout, Some(Duration::from_millis(100)));
        assert_eq!(p.retry.backoff, Duration::ZERO);
        assert_eq!(
            p.retry.budget,
            BudgetParams {
                ratio: 0.5,
                min_per_second: 1,
                ttl: Duration::from_secs(10)
            }
        );
        // Nothing set: the defaults, and `timeout: 0s` turns a default timeout off.
        assert_eq!(PolicyOverrides::default().apply(&defaults), defaults);
        let with_timeout = RequestPolicy {
            timeout: Some(Duration::from_secs(5)),
            ..RequestPolicy::default()
        };
        let off = PolicyOverrides::parse(Some("0s"), None).unwrap();
        assert_eq!(off.apply(&with_timeout).timeout, None);
    }

    #[test]
    fn override_errors_name_the_field() {
        let parse = |yaml: &str| {
            let spec: RetrySpec = serde_yaml_ng::from_str(yaml).unwrap();
            PolicyOverrides::parse(None, Some(&spec)).unwrap_err()
        };
        assert!(parse("{on: [5xy]}").starts_with("`retries.on`: "));
        assert!(parse("{methods: [FETCH]}").starts_with("`retries.methods`: "));
        assert!(parse("{timeout: soon}").starts_with("`retries.timeout`: "));
        let e = parse("{budget: {ratio: -1}}");
        assert!(e.starts_with("`retries.budget.ratio` must be"), "{e}");
        let e = parse("{budget: {ttl: 2m}}");
        assert!(e.starts_with("`retries.budget.ttl` must be"), "{e}");
        assert!(PolicyOverrides::parse(Some("later"), None)
            .unwrap_err()
            .starts_with("`timeout`: "));
        let unknown = serde_yaml_ng::from_str::<RetrySpec>("{limt: 2}").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `limt`"),
            "{unknown}"
        );
    }
}

//! Judging the canary: its figures over a window (from `weft stat route`'s rows)
//! against the Rollout's thresholds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spec::Analysis;
use crate::stat::route::RouteRow;

/// A backend's figures over a window, as judged and as `status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub requests: u64,
    pub rps: f64,
    pub success: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// The time the figures cover, in seconds.
    pub window_s: f64,
}

impl Figures {
    pub fn of(row: Option<&RouteRow>, window: Duration) -> Figures {
        match row {
            Some(r) => Figures {
                requests: r.requests,
                rps: r.rps,
                success: r.success,
                latency_ms_p99: r.latency_ms_p99,
                window_s: window.as_secs_f64(),
            },
            None => Figures {
                window_s: window.as_secs_f64(),
                ..Figures::default()
            },
        }
    }

    /// `145 requests over 5.0s` (what a verdict's message adds).
    pub fn basis(&self) -> String {
        format!("{} requests over {:.1}s", self.requests, self.window_s)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every threshold kept.
    Pass,
    /// A threshold broken: the threshold's field, its value and the measured one.
    Fail(String),
    /// Too few requests (or no responses yet) to judge.
    Inconclusive(String),
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// The canary's verdict for `figures` under `analysis`.
pub fn judge(analysis: &Analysis, figures: &Figures) -> Verdict {
    if figures.requests < analysis.min_requests {
        return Verdict::Inconclusive(format!(
            "{} canary requests, spec.analysis.minRequests is {}",
            figures.requests, analysis.min_requests
        ));
    }
    if let Some(min) = analysis.min_success_rate {
        let Some(success) = figures.success else {
            return Verdict::Inconclusive(format!("no canary responses yet ({})", figures.basis()));
        };
        if success < min {
            return Verdict::Fail(format!(
                "success rate {} is below spec.analysis.minSuccessRate {} ({})",
                pct(success),
                pct(min),
                figures.basis()
            ));
        }
    }
    if let (Some(max), Some(p99)) = (analysis.max_p99_latency, figures.latency_ms_p99) {
        let max_ms = max.as_secs_f64() * 1000.0;
        if p99 > max_ms {
            return Verdict::Fail(format!(
                "p99 latency {p99:.1}ms is above spec.analysis.maxP99Latency {} ({})",
                humantime::format_duration(max),
                figures.basis()
            ));
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis() -> Analysis {
        Analysis {
            min_success_rate: Some(0.99),
            max_p99_latency: Some(Duration::from_millis(500)),
            window: Duration::from_secs(5),
            min_requests: 20,
        }
    }

    fn figures(requests: u64, success: Option<f64>, p99: Option<f64>) -> Figures {
        Figures {
            requests,
            rps: requests as f64 / 5.0,
            success,
            latency_ms_p99: p99,
            window_s: 5.0,
        }
    }

    #[test]
    fn a_canary_within_the_thresholds_passes() {
        assert_eq!(
            judge(&analysis(), &figures(100, Some(1.0), Some(20.0))),
            Verdict::Pass
        );
        // Exactly at the thresholds still passes.
        assert_eq!(
            judge(&analysis(), &figures(20, Some(0.99), Some(500.0))),
            Verdict::Pass
        );
        // No latency histogram (no buckets yet): the success rate decides.
        assert_eq!(
            judge(&analysis(), &figures(20, Some(1.0), None)),
            Verdict::Pass
        );
    }

    #[test]
    fn a_broken_threshold_fails_naming_it_and_the_measured_value() {
        assert_eq!(
            judge(&analysis(), &figures(145, Some(0.8), Some(20.0))),
            Verdict::Fail(
                "success rate 80.00% is below spec.analysis.minSuccessRate 99.00% (145 requests over 5.0s)"
                    .into()
            )
        );
        assert_eq!(
            judge(&analysis(), &figures(40, Some(1.0), Some(812.5))),
            Verdict::Fail(
                "p99 latency 812.5ms is above spec.analysis.maxP99Latency 500ms (40 requests over 5.0s)"
                    .into()
            )
        );
        // Only the thresholds set are judged.
        let mut a = analysis();
        a.min_success_rate = None;
        assert_eq!(
            judge(&a, &figures(40, Some(0.1), Some(20.0))),
            Verdict::Pass
        );
    }

    #[test]
    fn too_few_requests_are_no_verdict() {
        assert_eq!(
            judge(&analysis(), &figures(19, Some(0.0), Some(900.0))),
            Verdict::Inconclusive("19 canary requests, spec.analysis.minRequests is 20".into())
        );
        assert!(matches!(
            judge(&analysis(), &figures(20, None, None)),
            Verdict::Inconclusive(_)
        ));
    }
}

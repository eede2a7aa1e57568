//! `weft check` on a running mesh: the supervisor and controller run and are ready,
//! every pod's proxy and app run, each proxy is ready and holds a certificate that is
//! not about to expire, and the processes' clocks agree with this machine's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_core::prom::Scrape;

use super::Report;
use crate::local::scrape::admin_netns;
use crate::local::state::{PodRecord, ProcRecord, State};
use crate::local::{sys, ADMIN_PORT};
use crate::observe::{self, Answer};

/// How long one process may take to answer.
const PER_PROBE: Duration = Duration::from_secs(2);

/// What the running checks accept.
pub struct Bounds {
    /// A proxy certificate must stay valid at least this long.
    pub cert_min_validity: Duration,
    /// The most a process's clock (its HTTP `Date`) may differ from this machine's.
    pub max_clock_skew: Duration,
}

/// Answers of one round of probes: the controller's `/ready`, each pod proxy's
/// `/ready` and `/metrics` (by pod key), and when they were asked.
struct Probes {
    controller: anyhow::Result<Answer>,
    ready: HashMap<String, anyhow::Result<Answer>>,
    metrics: HashMap<String, anyhow::Result<Answer>>,
}

fn probe(state: &State) -> anyhow::Result<Probes> {
    let controller = observe::controller_admin(state);
    let pods: Vec<(String, SocketAddr)> = state
        .pods
        .iter()
        .map(|p| (p.netns.clone(), SocketAddr::from((p.ip, ADMIN_PORT))))
        .collect();
    sys::in_netns(
        admin_netns(state).as_deref(),
        PER_PROBE * 2 + Duration::from_secs(2),
        move || async move {
            let mut set = tokio::task::JoinSet::new();
            for (key, addr) in pods {
                set.spawn(async move {
                    let ready = observe::get(addr, "/ready", PER_PROBE).await;
                    let metrics = observe::get(addr, "/metrics", PER_PROBE).await;
                    (key, ready, metrics)
                });
            }
            let controller = observe::get(controller, "/ready", PER_PROBE).await;
            let (mut ready, mut metrics) = (HashMap::new(), HashMap::new());
            while let Some(Ok((key, r, m))) = set.join_next().await {
                ready.insert(key.clone(), r);
                metrics.insert(key, m);
            }
            Probes {
                controller,
                ready,
                metrics,
            }
        },
    )
}

/// Why an answer is not a 200, for a FAIL line.
fn not_ok(answer: &anyhow::Result<Answer>) -> Option<String> {
    match answer {
        Ok(a) if a.status.is_success() => None,
        Ok(a) => Some(format!("answered {} ({})", a.status, a.body.trim())),
        Err(e) => Some(format!("{e:#}")),
    }
}

fn log_of(p: &ProcRecord) -> String {
    p.log
        .as_ref()
        .map_or("weft up's output".to_owned(), |l| l.display().to_string())
}

/// Checks a process the state file records is running.
fn process(r: &mut Report, who: &str, p: Option<&ProcRecord>, fix: &str) -> bool {
    match p {
        Some(p) if p.is_running() => true,
        Some(p) => {
            r.check(
                false,
                &format!("{who} (pid {}) is not running", p.pid),
                &format!("{fix} (log: {})", log_of(p)),
            );
            false
        }
        None => {
            r.check(
                false,
                &format!("{who}: none recorded"),
                "weft down, then weft up",
            );
            false
        }
    }
}

/// `secs` as a short duration (`23h59m`, `5m`, `42s`).
fn short(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The certificate check of one proxy from its metrics: `Ok(expiry)` or why it fails.
pub fn certificate(scrape: &Scrape, now: SystemTime, min: Duration) -> Result<SystemTime, String> {
    let expiry = scrape.sum("identity_cert_expiration_timestamp_seconds", &[]);
    if expiry <= 0.0 {
        return Err(
            "has no certificate (identity_cert_expiration_timestamp_seconds is 0 or missing)"
                .into(),
        );
    }
    let at = UNIX_EPOCH + Duration::from_secs_f64(expiry);
    let stamp = humantime::format_rfc3339_seconds(at);
    match at.duration_since(now) {
        Err(_) => Err(format!("certificate expired at {stamp}")),
        Ok(left) if left < min => Err(format!(
            "certificate expires at {stamp}, in {} (less than {})",
            short(left.as_secs()),
            humantime::format_duration(min)
        )),
        Ok(_) => Ok(at),
    }
}

/// How far `answer`'s `Date` is from `now`, if it has one.
fn skew(answer: &anyhow::Result<Answer>, now: SystemTime) -> Option<Duration> {
    let date = answer.as_ref().ok()?.date?;
    Some(match date.duration_since(now) {
        Ok(ahead) => ahead,
        Err(behind) => behind.duration(),
    })
}

/// The checks of a running mesh.
pub fn check(r: &mut Report, state: &State, state_dir: &Path, bounds: &Bounds) {
    println!(
        "weft check: the running mesh ({}, {} pods, {} mode)",
        state.mesh_dir.display(),
        state.pods.len(),
        if state.loopback {
            "loopback"
        } else {
            "namespace"
        }
    );
    let logs = state_dir.join("logs");
    process(
        r,
        "weft up (the supervisor that restarts the mesh's processes)",
        state.owner.as_ref(),
        "nothing restarts the mesh's processes without it: weft down, then weft up again",
    );
    if let Some(o) = state.owner.as_ref().filter(|o| o.is_running()) {
        r.check(
            true,
            &format!("weft up (pid {}) supervises the mesh", o.pid),
            "",
        );
    }
    if !state.loopback && !sys::is_root() {
        r.check(
            false,
            "reading the mesh's processes (their admin ports are inside network namespaces)",
            "run weft check as root",
        );
        return;
    }
    let controller_ok = process(
        r,
        "controller",
        state.controller.as_ref(),
        "weft up restarts it after a backoff (1 s, doubling up to 30 s): run weft check again in a moment",
    );
    let probes = match probe(state) {
        Ok(p) => p,
        Err(e) => {
            r.check(
                false,
                &format!("reading the mesh's processes: {e:#}"),
                "weft down, then weft up again",
            );
            return;
        }
    };
    let now = SystemTime::now();
    let admin = observe::controller_admin(state);
    if controller_ok {
        let pid = state.controller.as_ref().map_or(0, |c| c.pid);
        match not_ok(&probes.controller) {
            None => r.check(true, &format!("controller (pid {pid}) is ready (http://{admin}/ready)"), ""),
            Some(why) => r.check(
                false,
                &format!("controller (pid {pid}) is not ready: http://{admin}/ready {why}"),
                &format!(
                    "read its log ({}); proxies cannot renew certificates or learn endpoints without it",
                    logs.join("controller.log").display()
                ),
            ),
        }
    }
    let mut skews: Vec<(String, Duration)> = Vec::new();
    if let Some(s) = skew(&probes.controller, now) {
        skews.push(("controller".into(), s));
    }
    for pod in &state.pods {
        pod_checks(r, pod, &probes, now, bounds);
        if let Some(s) = probes.ready.get(&pod.netns).and_then(|a| skew(a, now)) {
            skews.push((format!("pod {}'s proxy", pod.name), s));
        }
    }
    // One machine, one clock: what can differ is a process's view of it (a frozen or
    // hung process answers with an old Date). HTTP dates have whole seconds.
    let limit = bounds.max_clock_skew + Duration::from_secs(1);
    let off: Vec<String> = skews
        .iter()
        .filter(|(_, s)| *s > limit)
        .map(|(who, s)| format!("{who} {}s", s.as_secs()))
        .collect();
    if skews.is_empty() {
        println!("  note  clock skew not checked: no process sent an HTTP Date header");
    } else {
        r.check(
            off.is_empty(),
            &format!(
                "clock skew: {} process(es) within {} of this machine's clock (their HTTP Date headers){}",
                skews.len(),
                humantime::format_duration(bounds.max_clock_skew),
                if off.is_empty() { String::new() } else { format!("; off: {}", off.join(", ")) }
            ),
            "the processes share this machine's clock: a large skew means a process answered late (hung, stopped) or the clock jumped; check the machine's time sync (timedatectl) and the processes named",
        );
    }
}

fn pod_checks(r: &mut Report, pod: &PodRecord, probes: &Probes, now: SystemTime, bounds: &Bounds) {
    let proxy = pod.procs.iter().find(|p| p.role == "proxy");
    let app = pod.procs.iter().find(|p| p.role == "app");
    let restart_fix = "weft up restarts it after a backoff (1 s, doubling up to 30 s): run weft check again in a moment; if it keeps exiting, read its log";
    let proxy_runs = process(r, &format!("pod {}: proxy", pod.name), proxy, restart_fix);
    let app_runs = process(r, &format!("pod {}: app", pod.name), app, restart_fix);
    if !proxy_runs {
        // Its /ready and /metrics cannot answer: nothing more to say.
        return;
    }
    let mut ok = app_runs;
    let proxy_log = proxy.map_or("its log".to_owned(), log_of);
    let addr = SocketAddr::from((pod.ip, ADMIN_PORT));
    if let Some(why) = probes.ready.get(&pod.netns).and_then(not_ok) {
        ok = false;
        r.check(
            false,
            &format!("pod {}: proxy is not ready: http://{addr}/ready {why}", pod.name),
            &format!(
                "503 means it has no valid certificate (is the controller ready?); no answer means it is not running or hung: read {proxy_log}"
            ),
        );
    }
    let mut valid_until = None;
    match probes.metrics.get(&pod.netns) {
        Some(Ok(a)) if a.status.is_success() => {
            match certificate(&Scrape::parse(&a.body), now, bounds.cert_min_validity) {
                Ok(at) => valid_until = Some(at),
                Err(why) => {
                    ok = false;
                    r.check(
                        false,
                        &format!("pod {}: proxy {why}", pod.name),
                        &format!(
                            "the proxy renews its certificate from the controller at 70 % of its lifetime: check the controller is ready and read {proxy_log}; a restarted proxy gets a new one (kill its pid: weft up starts it again)"
                        ),
                    );
                }
            }
        }
        // Not ready / not running is said above; a /metrics that fails alone:
        other if ok => {
            ok = false;
            let why = match other {
                Some(a) => not_ok(a).unwrap_or_default(),
                None => "not probed".into(),
            };
            r.check(
                false,
                &format!(
                    "pod {}: proxy metrics: http://{addr}/metrics {why}",
                    pod.name
                ),
                &format!("read {proxy_log}"),
            );
        }
        _ => {}
    }
    if ok {
        let left = valid_until
            .and_then(|at| at.duration_since(now).ok())
            .map_or(String::new(), |d| {
                format!(", certificate valid for {}", short(d.as_secs()))
            });
        r.check(
            true,
            &format!("pod {}: proxy and app running, proxy ready{left}", pod.name),
            "",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_must_outlive_the_bound() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs: u64| {
            Scrape::parse(&format!(
                "identity_cert_expiration_timestamp_seconds{{pod=\"web-0\"}} {secs}\n"
            ))
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(
            certificate(&at(1_000_000 + 7200), now, hour),
            Ok(now + Duration::from_secs(7200))
        );
        let e = certificate(&at(1_000_000 + 600), now, hour).unwrap_err();
        assert!(e.starts_with("certificate expires at 1970-01-12T"), "{e}");
        assert!(e.ends_with("in 10m (less than 1h)"), "{e}");
        let e = certificate(&at(999_000), now, hour).unwrap_err();
        assert!(e.starts_with("certificate expired at"), "{e}");
        let e = certificate(&Scrape::parse(""), now, hour).unwrap_err();
        assert!(e.starts_with("has no certificate"), "{e}");
        assert_eq!(short(86_340), "23h59m");
        assert_eq!(short(61), "1m");
    }
}

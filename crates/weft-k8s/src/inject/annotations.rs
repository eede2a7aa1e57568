//! The pod annotations that tune an injection, parsed and checked: a value that does
//! not parse is an error naming the annotation, never a silent default.

use std::collections::BTreeMap;

use weft_core::iptables::PortRange;

use super::InvalidAnnotation;

/// Inbound ports (and ranges) that bypass the proxy: `22,4000-4010`.
pub const SKIP_INBOUND_PORTS: &str = "weft.io/skip-inbound-ports";
/// Outbound ports (and ranges) that bypass the proxy.
pub const SKIP_OUTBOUND_PORTS: &str = "weft.io/skip-outbound-ports";
/// Ports (and ranges) forwarded as opaque TCP without protocol detection, added to the
/// proxy's defaults.
pub const OPAQUE_PORTS: &str = "weft.io/opaque-ports";
pub const PROXY_CPU_REQUEST: &str = "weft.io/proxy-cpu-request";
pub const PROXY_CPU_LIMIT: &str = "weft.io/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST: &str = "weft.io/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT: &str = "weft.io/proxy-memory-limit";
/// The proxy's log filter (`WEFT_LOG`): `info`, `warn,weft_proxy=debug`.
pub const PROXY_LOG_LEVEL: &str = "weft.io/proxy-log-level";

/// The proxy's own opaque ports (`weft-proxy --opaque-ports`' default): the opaque-ports
/// annotation adds to them rather than replacing them, as `weft up` does.
pub const PROXY_DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// Most ports the opaque-ports annotation may name once ranges are expanded (the proxy
/// takes a list of single ports).
pub const MAX_OPAQUE_PORTS: usize = 1024;

/// What the annotations ask for; `None`: the injector's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub skip_inbound: Vec<PortRange>,
    pub skip_outbound: Vec<PortRange>,
    /// Opaque ports besides the proxy's defaults.
    pub opaque: Vec<u16>,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
    pub log_level: Option<String>,
}

impl Settings {
    /// Reads the annotations of a pod.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Settings, InvalidAnnotation> {
        let get = |name: &'static str| annotations.get(name).map(|v| (name, v.as_str()));
        let ports = |name: &'static str| -> Result<Vec<PortRange>, InvalidAnnotation> {
            match get(name) {
                None => Ok(Vec::new()),
                Some((name, value)) => {
                    PortRange::parse_list(value).map_err(|e| invalid(name, value, e.to_string()))
                }
            }
        };
        let opaque = ports(OPAQUE_PORTS)?;
        let count: usize = opaque.iter().map(|r| r.ports().len()).sum();
        if count > MAX_OPAQUE_PORTS {
            let value = &annotations[OPAQUE_PORTS];
            return Err(invalid(
                OPAQUE_PORTS,
                value,
                format!("names {count} ports, more than {MAX_OPAQUE_PORTS}"),
            ));
        }
        let mut settings = Settings {
            skip_inbound: ports(SKIP_INBOUND_PORTS)?,
            skip_outbound: ports(SKIP_OUTBOUND_PORTS)?,
            opaque: opaque.iter().flat_map(PortRange::ports).collect(),
            ..Settings::default()
        };
        let quantity = |name: &'static str| -> Result<Option<(String, f64)>, InvalidAnnotation> {
            match get(name) {
                None => Ok(None),
                Some((name, value)) => match quantity_value(value.trim()) {
                    Some(v) => Ok(Some((value.trim().to_owned(), v))),
                    None => Err(invalid(
                        name,
                        value,
                        "not a quantity (such as 100m, 0.5 or 64Mi)".into(),
                    )),
                },
            }
        };
        for (request, limit) in [
            (PROXY_CPU_REQUEST, PROXY_CPU_LIMIT),
            (PROXY_MEMORY_REQUEST, PROXY_MEMORY_LIMIT),
        ] {
            let (r, l) = (quantity(request)?, quantity(limit)?);
            if let (Some((rv, r)), Some((lv, l))) = (&r, &l) {
                if r > l {
                    return Err(invalid(
                        request,
                        rv,
                        format!("more than {limit} ({lv}); a request must not exceed its limit"),
                    ));
                }
            }
            let (r, l) = (r.map(|q| q.0), l.map(|q| q.0));
            if request == PROXY_CPU_REQUEST {
                (settings.cpu_request, settings.cpu_limit) = (r, l);
            } else {
                (settings.memory_request, settings.memory_limit) = (r, l);
            }
        }
        if let Some((name, value)) = get(PROXY_LOG_LEVEL) {
            check_log_filter(value).map_err(|problem| invalid(name, value, problem))?;
            settings.log_level = Some(value.trim().to_owned());
        }
        Ok(settings)
    }
}

fn invalid(annotation: &'static str, value: &str, problem: String) -> InvalidAnnotation {
    InvalidAnnotation {
        annotation,
        value: value.to_owned(),
        problem,
    }
}

/// The value of a Kubernetes quantity (`100m`, `0.5`, `64Mi`, `1e3`), or `None` when it
/// is not one (or is negative).
pub fn quantity_value(s: &str) -> Option<f64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => {
            let digits = exp.strip_prefix(['e', 'E'])?;
            let digits = digits.strip_prefix('+').unwrap_or(digits);
            let (sign, digits) = match digits.strip_prefix('-') {
                Some(d) => (-1, d),
                None => (1, digits),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(sign * digits.parse::<i32>().ok()?)
        }
    };
    Some(n * factor)
}

/// Checks a log filter of the form the proxy takes (`WEFT_LOG`, tracing's `EnvFilter`),
/// limited to levels and `target=level` directives: what a pod needs, and nothing the
/// proxy would refuse at start (a crash loop is a worse answer than a refused pod).
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    let target = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
    };
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err("empty; name a level (trace, debug, info, warn, error, off)".into());
    }
    for d in directives {
        let ok = match d.split_once('=') {
            None => level(d),
            Some((t, l)) => target(t) && level(l),
        };
        if !ok {
            return Err(format!(
                "{d:?} is not a level (trace, debug, info, warn, error, off) or target=level"
            ));
        }
    }
    Ok(())
}

//! What `weft stat`, `weft edges`, `weft diagnostics` and `weft check` share to look at
//! a running local mesh: resources as Linkerd names them (`deploy/web`, `po/web-0`),
//! the pods behind them, identities, and the controller's admin address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use weft_core::mesh::Mesh;

use crate::fetch;
use crate::local::state::{PodRecord, State};
use crate::local::{
    loopback_ip, sys, CONTROLLER_ADMIN_PORT, HUB_IP, LOOPBACK_BLOCKS, LOOPBACK_BLOCK_SIZE,
};

/// A kind of resource of the local mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResKind {
    /// A workload (Linkerd's deployment).
    Deploy,
    Pod,
    Svc,
}

impl ResKind {
    pub fn short(self) -> &'static str {
        match self {
            ResKind::Deploy => "deploy",
            ResKind::Pod => "po",
            ResKind::Svc => "svc",
        }
    }
}

/// `KIND` or `KIND/NAME`: `deploy/web`, `po/web-0`, `svc/books`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub kind: ResKind,
    pub name: Option<String>,
}

pub const RESOURCE_KINDS: &str =
    "deploy (deployment, deployments), po (pod, pods), svc (service, services)";

/// The kind of a resource word, `None` if it is none.
pub fn res_kind(word: &str) -> Option<ResKind> {
    match word {
        "deploy" | "deployment" | "deployments" => Some(ResKind::Deploy),
        "po" | "pod" | "pods" => Some(ResKind::Pod),
        "svc" | "service" | "services" => Some(ResKind::Svc),
        _ => None,
    }
}

/// Parses `KIND[/NAME]`.
pub fn parse_resource(s: &str) -> Result<Resource, String> {
    let (kind, name) = match s.split_once('/') {
        Some((k, n)) => (k, Some(n)),
        None => (s, None),
    };
    let kind = res_kind(kind).ok_or_else(|| {
        format!("unknown resource kind {kind:?} in {s:?}; valid kinds: {RESOURCE_KINDS}")
    })?;
    match name {
        Some("") => Err(format!("{s:?}: a name must follow the '/'")),
        Some(n) if n.contains('/') => Err(format!("{s:?}: KIND/NAME has one '/'")),
        n => Ok(Resource {
            kind,
            name: n.map(str::to_owned),
        }),
    }
}

impl Resource {
    /// Whether `pod` belongs to this resource (a Service: never; see
    /// [`Resource::service`]). The namespace is `namespace` for names without one.
    pub fn has_pod(&self, pod: &PodRecord, namespace: &str) -> bool {
        let Some(name) = &self.name else {
            return self.kind != ResKind::Svc;
        };
        match self.kind {
            ResKind::Deploy => pod.workload == *name && pod.namespace == namespace,
            ResKind::Pod => pod.name == *name || pod.netns == *name,
            ResKind::Svc => false,
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{n}", self.kind.short()),
            None => f.write_str(self.kind.short()),
        }
    }
}

/// The pod whose address is `ip`.
pub fn pod_by_ip(pods: &[PodRecord], ip: IpAddr) -> Option<&PodRecord> {
    pods.iter().find(|p| IpAddr::V4(p.ip) == ip)
}

/// The pod a metrics `target_addr` (`IP:PORT`) names, if it is one of the mesh's.
pub fn pod_by_target<'a>(pods: &'a [PodRecord], target: &str) -> Option<&'a PodRecord> {
    let addr: SocketAddr = target.parse().ok()?;
    pod_by_ip(pods, addr.ip())
}

/// A pod by its name (`books-0`), its key (`wf-books-0`) or `po/NAME`.
pub fn find_pod<'a>(state: &'a State, name: &str) -> anyhow::Result<&'a PodRecord> {
    let name = name
        .strip_prefix("po/")
        .or_else(|| name.strip_prefix("pod/"))
        .unwrap_or(name);
    state
        .pods
        .iter()
        .find(|p| p.name == name || p.netns == name)
        .with_context(|| {
            let names: Vec<&str> = state.pods.iter().map(|p| p.name.as_str()).collect();
            format!(
                "no pod {name:?} in the mesh (its pods: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })
}

/// The workloads `(namespace, name)` whose identity (in `identities`, as
/// [`workload_identities`] makes them) is `id`, sorted.
pub fn holders_of<'a>(
    id: &str,
    identities: &'a HashMap<(String, String), String>,
) -> Vec<&'a (String, String)> {
    let mut holders: Vec<&(String, String)> = identities
        .iter()
        .filter(|(_, i)| i.as_str() == id)
        .map(|(k, _)| k)
        .collect();
    holders.sort();
    holders
}

/// A pod record for unit tests: `name` of `workload` in `namespace` at `ip`, its
/// network namespace `t-{name}`, no processes.
#[cfg(test)]
pub(crate) fn test_pod(name: &str, workload: &str, namespace: &str, ip: [u8; 4]) -> PodRecord {
    PodRecord {
        name: name.into(),
        workload: workload.into(),
        namespace: namespace.into(),
        index: 0,
        zone: None,
        netns: format!("t-{name}"),
        ip: ip.into(),
        link: String::new(),
        files: Vec::new(),
        procs: Vec::new(),
    }
}

/// The [`holders_of`] an identity as one caller: the first's namespace and every
/// name, `a|b`; `None` without any.
pub fn one_caller(holders: &[&(String, String)]) -> Option<(String, String)> {
    let (ns, _) = holders.first()?;
    Some((
        ns.clone(),
        holders
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join("|"),
    ))
}

/// The identity name (`{sa}.{ns}.serviceaccount.identity.weft.{td}`) of every
/// workload `(namespace, name)` of the mesh directory.
pub fn workload_identities(mesh: Option<&Mesh>) -> HashMap<(String, String), String> {
    mesh.iter()
        .flat_map(|m| {
            m.workloads.iter().map(|w| {
                (
                    (w.namespace.clone(), w.name.clone()),
                    w.identity(&m.trust_domain).dns_name(),
                )
            })
        })
        .collect()
}

/// Where the controller's admin server listens: its recorded command line's
/// `--admin-listen`, else the hub's address (namespace mode) or the loopback block's
/// first (found from a pod's address).
pub fn controller_admin(state: &State) -> SocketAddr {
    if let Some(addr) = state
        .controller
        .as_ref()
        .and_then(|c| admin_listen_of(&sys::cmdline(c.pid)))
    {
        return addr;
    }
    if !state.loopback {
        return SocketAddr::from((HUB_IP, CONTROLLER_ADMIN_PORT));
    }
    let block = state
        .pods
        .first()
        .map(|p| loopback_block_of(p.ip))
        .unwrap_or(0);
    SocketAddr::from((loopback_ip(block, 1), CONTROLLER_ADMIN_PORT))
}

fn admin_listen_of(cmdline: &str) -> Option<SocketAddr> {
    let mut words = cmdline.split(' ');
    while let Some(w) = words.next() {
        if w == "--admin-listen" {
            return words.next()?.parse().ok();
        }
        if let Some(v) = w.strip_prefix("--admin-listen=") {
            return v.parse().ok();
        }
    }
    None
}

/// The loopback block (0-15) an address of 127.18.0.0/16 lies in.
fn loopback_block_of(ip: Ipv4Addr) -> u8 {
    let [_, _, hi, lo] = ip.octets();
    let n = (u32::from(hi) << 8) | u32::from(lo);
    (n / u32::from(LOOPBACK_BLOCK_SIZE)).min(u32::from(LOOPBACK_BLOCKS) - 1) as u8
}

/// One HTTP/1.1 GET answer: status, the `Date` header (when the server sent one) and
/// the body.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub date: Option<SystemTime>,
    pub body: String,
}

/// GETs `http://{addr}{path}` within `limit`, whatever the status.
pub async fn get(addr: SocketAddr, path: &str, limit: Duration) -> anyhow::Result<Answer> {
    let work = async {
        let (head, body) = fetch::exchange(http::Method::GET, addr, path).await?;
        let date = head
            .headers
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        Ok(Answer {
            status: head.status,
            date,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(limit, work)
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within {limit:?}"))?
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7), the only form
/// servers send today; `None` for anything else.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut w = s.split_whitespace();
    let (_day, d, mon, y, hms, gmt) = (
        w.next()?,
        w.next()?,
        w.next()?,
        w.next()?,
        w.next()?,
        w.next()?,
    );
    if gmt != "GMT" || w.next().is_some() {
        return None;
    }
    let day: u32 = d.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == mon)? as u32
        + 1;
    let year: i64 = y.parse().ok()?;
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()? * 86400 + h * 3600 + m * 60 + sec;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_like_linkerds() {
        let r = |s: &str| parse_resource(s);
        assert_eq!(
            r("deploy/web"),
            Ok(Resource {
                kind: ResKind::Deploy,
                name: Some("web".into())
            })
        );
        assert_eq!(r("po").unwrap().kind, ResKind::Pod);
        assert_eq!(r("pods/books-0").unwrap().name.as_deref(), Some("books-0"));
        assert_eq!(r("services").unwrap().kind, ResKind::Svc);
        assert!(r("nodes").unwrap_err().contains("valid kinds: deploy"));
        assert!(r("deploy/").is_err());
        assert!(r("deploy/a/b").is_err());
        assert_eq!(r("deploy/web").unwrap().to_string(), "deploy/web");
    }

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        let t = parse_http_date("Wed, 02 Dec 2026 03:20:24 GMT").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(t).to_string(),
            "2026-12-02T03:20:24Z"
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(parse_http_date(""), None);
    }

    #[test]
    fn the_controllers_admin_address() {
        assert_eq!(
            admin_listen_of(
                "/x/weft-controller --listen 1.2.3.4:8090 --admin-listen 127.18.16.1:9990"
            ),
            Some("127.18.16.1:9990".parse().unwrap())
        );
        assert_eq!(admin_listen_of("weft-controller"), None);
        assert_eq!(loopback_block_of(Ipv4Addr::new(127, 18, 0, 2)), 0);
        assert_eq!(loopback_block_of(Ipv4Addr::new(127, 18, 16, 2)), 1);
        assert_eq!(loopback_block_of(Ipv4Addr::new(127, 18, 255, 255)), 15);
    }
}

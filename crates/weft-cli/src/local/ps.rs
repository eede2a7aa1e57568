//! `weft ps`: the running mesh's pods and controller, one row each.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use clap::ValueEnum;
use serde::Serialize;

use super::control::{PodStatus, Status};
use super::state::{Liveness, PodRecord, ProcRecord, State};
use super::{loopback_ip, LocalArgs, HUB_IP, LOOPBACK_BLOCK_SIZE};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
#[command(after_help = "\
STATE is one of:
  running      its proxy and app run and it passed its start-up checks
  starting     its processes run; start-up checks (proxy ready, ports open) not passed yet
  unready      it passed its checks but its proxy's /ready does not answer now
  restarting   `weft restart` is stopping or starting it
  crashed      its proxy or app exited; weft up restarts it after the backoff
  terminating  beyond its workload's replicas: on its way out
  exited       a process is gone and no weft up runs to restart it
READY: whether it is in the endpoints (takes traffic); `-` when no weft up supervises \
the mesh. RESTARTS: restarts after exits (its proxy's and app's; `weft restart` does \
not count). AGE: since the older of its running processes started.

Examples:
  weft ps
  weft ps -o json | jq '.[] | select(.ready == false) | .name'")]
pub struct PsArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    local: LocalArgs,
}

/// One row of `weft ps` (the JSON field names are stable).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    /// `null` for the controller.
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub state: &'static str,
    /// `null` when no weft up supervises the mesh.
    pub ready: Option<bool>,
    pub restarts: u32,
    pub ip: Ipv4Addr,
    pub zone: Option<String>,
    pub age_seconds: Option<u64>,
    pub procs: Vec<Proc>,
    /// Prometheus' row (`weft up --prometheus`): where the host reaches it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Proc {
    pub role: String,
    pub pid: u32,
    pub running: bool,
    pub restarts: u32,
}

pub fn run(args: PsArgs) -> anyhow::Result<()> {
    let state = args.local.running_mesh("start one with `weft up`")?;
    let status = Status::load(&args.local.state_dir(), &state);
    if status.is_none() {
        match &state.owner {
            Some(o) if o.is_running() => {}
            _ => eprintln!(
                "warning: the mesh's weft up is not running: nothing restarts or checks its pods (`weft down` takes the mesh down)"
            ),
        }
    }
    let rows = rows(&state, status.as_ref());
    match args.output {
        Output::Table => {
            print!("{}", table(&rows));
            if let Some(url) = &state.prometheus_url {
                println!("\nprometheus: {url}");
            }
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    Ok(())
}

/// The controller's row, then one per pod.
pub fn rows(state: &State, status: Option<&Status>) -> Vec<Row> {
    let clock = Clock::now();
    let mut out = Vec::new();
    if let Some(c) = &state.controller {
        let running = c.liveness() == Liveness::Running;
        let ip = status
            .and_then(|s| s.controller_address.split(':').next()?.parse().ok())
            .unwrap_or_else(|| controller_ip(state));
        out.push(Row {
            name: "controller".into(),
            namespace: None,
            workload: None,
            state: match (running, status) {
                (true, _) => "running",
                (false, Some(_)) => "crashed",
                (false, None) => "exited",
            },
            ready: status.map(|s| running && s.controller_ready),
            restarts: c.restarts,
            ip,
            zone: None,
            age_seconds: running.then(|| clock.age(c)).flatten(),
            procs: vec![proc_row(c)],
            url: None,
        });
    }
    if let Some(p) = &state.prometheus {
        out.push(prometheus_row(
            p,
            state.prometheus_url.as_deref(),
            status,
            &clock,
        ));
    }
    for pod in &state.pods {
        let pod_status = status.map(|s| s.pods.get(&pod.netns).cloned().unwrap_or_default());
        out.push(Row {
            name: pod.name.clone(),
            namespace: Some(pod.namespace.clone()),
            workload: Some(pod.workload.clone()),
            state: pod_state(pod, pod_status.as_ref()),
            ready: pod_status.as_ref().map(|s| s.ready),
            restarts: pod.restarts(),
            ip: pod.ip,
            zone: pod.zone.clone(),
            age_seconds: pod
                .procs
                .iter()
                .filter(|p| p.liveness() == Liveness::Running)
                .filter_map(|p| clock.age(p))
                .max(),
            procs: pod.procs.iter().map(proc_row).collect(),
            url: None,
        });
    }
    out
}

/// Prometheus' row (`weft up --prometheus`); its address is the host's, from its URL.
fn prometheus_row(
    p: &ProcRecord,
    url: Option<&str>,
    status: Option<&Status>,
    clock: &Clock,
) -> Row {
    let running = p.liveness() == Liveness::Running;
    let ip = url
        .and_then(|u| {
            u.strip_prefix("http://")?
                .parse::<std::net::SocketAddrV4>()
                .ok()
        })
        .map_or(Ipv4Addr::LOCALHOST, |a| *a.ip());
    Row {
        name: "prometheus".into(),
        namespace: None,
        workload: None,
        state: match (running, status) {
            (true, _) => "running",
            (false, Some(_)) => "crashed",
            (false, None) => "exited",
        },
        ready: None,
        restarts: p.restarts,
        ip,
        zone: None,
        age_seconds: running.then(|| clock.age(p)).flatten(),
        procs: vec![proc_row(p)],
        url: url.map(str::to_owned),
    }
}

fn proc_row(p: &ProcRecord) -> Proc {
    Proc {
        role: p.role.clone(),
        pid: p.pid,
        running: p.liveness() == Liveness::Running,
        restarts: p.restarts,
    }
}

/// A pod's STATE from its processes' liveness and what the supervisor says (`None`:
/// no supervisor).
fn pod_state(pod: &PodRecord, status: Option<&PodStatus>) -> &'static str {
    let running =
        !pod.procs.is_empty() && pod.procs.iter().all(|p| p.liveness() == Liveness::Running);
    let Some(s) = status else {
        return if running { "running" } else { "exited" };
    };
    if s.restarting {
        "restarting"
    } else if !s.wanted {
        "terminating"
    } else if !running {
        if pod.procs.is_empty() {
            "starting"
        } else {
            "crashed"
        }
    } else if s.checked && s.ready {
        "running"
    } else if s.checked {
        "unready"
    } else {
        "starting"
    }
}

/// The controller's address when no status says it: the hub's, or in loopback mode
/// the first of the pods' block.
fn controller_ip(state: &State) -> Ipv4Addr {
    if !state.loopback {
        return HUB_IP;
    }
    let block = state.pods.first().map_or(0, |p| {
        let base = u32::from(Ipv4Addr::new(127, 18, 0, 0));
        ((u32::from(p.ip).saturating_sub(base)) / u32::from(LOOPBACK_BLOCK_SIZE)) as u8
    });
    loopback_ip(block, 1)
}

/// Turns processes' start times (clock ticks after boot) into ages.
struct Clock {
    now: u64,
    boot: Option<u64>,
    ticks: u64,
}

impl Clock {
    fn now() -> Clock {
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        });
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(100);
        Clock {
            now: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            boot,
            ticks,
        }
    }

    /// Seconds since `p` started.
    fn age(&self, p: &ProcRecord) -> Option<u64> {
        let started = self.boot? + p.start_time / self.ticks;
        Some(self.now.saturating_sub(started))
    }
}

/// An age as kubectl shows it: `42s`, `3m12s`, `25m`, `5h10m`, `3d`.
pub fn age(seconds: u64) -> String {
    let d = Duration::from_secs(seconds);
    let (s, m, h) = (d.as_secs(), d.as_secs() / 60, d.as_secs() / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        format!("{m}m{}s", s % 60)
    } else if h < 3 {
        format!("{m}m")
    } else if h < 48 {
        format!("{h}h{}m", m % 60)
    } else {
        format!("{}d", h / 24)
    }
}

pub fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.workload.clone().unwrap_or_else(|| "-".into()),
                r.state.to_owned(),
                match r.ready {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                r.restarts.to_string(),
                r.ip.to_string(),
                r.zone.clone().unwrap_or_else(|| "-".into()),
                r.age_seconds.map_or("-".into(), age),
            ]
        })
        .collect();
    let header = [
        "NAME", "WORKLOAD", "STATE", "READY", "RESTARTS", "IP", "ZONE", "AGE",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(25 * 60 + 3), "25m");
        assert_eq!(age(5 * 3600 + 10 * 60), "5h10m");
        assert_eq!(age(3 * 86400 + 5), "3d");
    }

    fn pod(procs: Vec<ProcRecord>) -> PodRecord {
        PodRecord {
            name: "books-0".into(),
            workload: "books".into(),
            namespace: "default".into(),
            index: 0,
            zone: Some("zone-a".into()),
            netns: "wf-books-0".into(),
            ip: Ipv4Addr::new(198, 18, 0, 2),
            link: "wfv0".into(),
            files: Vec::new(),
            procs,
        }
    }

    #[test]
    fn a_pods_state_follows_its_processes_and_the_supervisor() {
        let me = ProcRecord::of("app", std::process::id(), None);
        let gone = ProcRecord {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        let ready = PodStatus {
            ready: true,
            checked: true,
            wanted: true,
            restart_due: false,
            restarting: false,
        };
        let running = pod(vec![me.clone()]);
        assert_eq!(pod_state(&running, Some(&ready)), "running");
        assert_eq!(pod_state(&running, None), "running");
        let unready = PodStatus {
            ready: false,
            ..ready.clone()
        };
        assert_eq!(pod_state(&running, Some(&unready)), "unready");
        let starting = PodStatus {
            checked: false,
            ..unready.clone()
        };
        assert_eq!(pod_state(&running, Some(&starting)), "starting");
        let crashed = pod(vec![me, gone]);
        assert_eq!(pod_state(&crashed, Some(&starting)), "crashed");
        assert_eq!(pod_state(&crashed, None), "exited");
        let restarting = PodStatus {
            restarting: true,
            ..starting.clone()
        };
        assert_eq!(pod_state(&crashed, Some(&restarting)), "restarting");
        let surplus = PodStatus {
            wanted: false,
            ..ready
        };
        assert_eq!(pod_state(&running, Some(&surplus)), "terminating");
    }
}

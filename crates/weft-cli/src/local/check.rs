//! `weft check`: preflight checks for the local mesh, and checks of the running one
//! ([`running`]), each failure with its fix.

mod running;

use std::path::PathBuf;
use std::time::Duration;

use weft_core::mesh::Mesh;

use super::state::State;
use super::{loopback_ip, sys, LocalArgs};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// A mesh directory to validate as well.
    dir: Option<PathBuf>,
    /// The weft-proxy binary (default: next to this `weft` binary).
    #[arg(long, env = "WEFT_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    /// The weft-controller binary (default: next to this `weft` binary).
    #[arg(long, env = "WEFT_CONTROLLER_BIN")]
    controller_bin: Option<PathBuf>,
    /// Preflight checks only: can `weft up` run here (a running mesh is then a failure:
    /// `weft down` first).
    #[arg(long, conflicts_with = "proxy")]
    pre: bool,
    /// Checks of the running mesh only (controller, every pod's proxy and app,
    /// readiness, certificates, clocks); fails when no mesh is up.
    #[arg(long)]
    proxy: bool,
    /// A proxy certificate that expires sooner than this fails the check.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    cert_min_validity: Duration,
    /// The most a process's clock may differ from this machine's.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_clock_skew: Duration,
    #[command(flatten)]
    local: LocalArgs,
    #[command(flatten)]
    pub kube: crate::check_kube::KubeArgs,
}

pub(crate) struct Report {
    pub(crate) failed: usize,
}

impl Report {
    pub(crate) fn check(&mut self, ok: bool, what: &str, fix: &str) {
        if ok {
            println!("  ok    {what}");
        } else {
            self.failed += 1;
            println!("  FAIL  {what}\n        fix: {fix}");
        }
    }
}

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    args.local.validate()?;
    let mut r = Report { failed: 0 };
    // A mesh whose `weft up` (or detached supervisor) runs: checked as it runs, unless
    // --pre asks whether another could start.
    let up = match State::load(&args.local.state_path()) {
        Ok(Some(state)) if state.owner.as_ref().is_some_and(|o| o.is_running()) => Some(state),
        _ => None,
    };
    let bounds = running::Bounds {
        cert_min_validity: args.cert_min_validity,
        max_clock_skew: args.max_clock_skew,
    };
    if args.proxy {
        // Also a mesh whose `weft up` is gone: the first check says so, the others
        // what still runs.
        match State::load(&args.local.state_path()) {
            Ok(Some(state)) => running::check(&mut r, &state, &args.local.state_dir(), &bounds),
            Ok(None) => r.check(
                false,
                &format!("a local mesh is up ({})", args.local.state_path().display()),
                "weft up DIR (weft check --proxy checks a running mesh)",
            ),
            Err(e) => r.check(
                false,
                &format!("{e:#}"),
                &format!("remove {} by hand", args.local.state_path().display()),
            ),
        }
        return r.finish();
    }
    let running = up.filter(|_| !args.pre);
    println!("weft check: can `weft up` run here?");
    let root = sys::is_root();
    if root {
        r.check(
            cfg!(target_os = "linux") && std::path::Path::new("/proc/self/ns/net").exists(),
            "Linux with network namespaces",
            "run on Linux with CONFIG_NET_NS",
        );
        r.check(true, "running as root", "");
        for (tool, pkg) in [
            ("ip", "iproute2"),
            ("iptables", "iptables"),
            ("iptables-restore", "iptables"),
            ("setpriv", "util-linux"),
            ("unshare", "util-linux"),
            ("mount", "mount"),
        ] {
            r.check(
                sys::which(tool).is_some(),
                &format!("`{tool}` installed"),
                &format!("apt-get install {pkg} (or scripts/setup)"),
            );
        }
    } else {
        println!(
            "  note  not root: `weft up` will run in loopback mode (pods on 127.18.0.0/16, proxies in explicit mode); skipping the checks for network namespaces, ip, iptables and setpriv (run as root for those)"
        );
        let ip = loopback_ip(0, 1);
        let bound = std::net::TcpListener::bind((ip, 0));
        r.check(
            bound.is_ok(),
            &format!("loopback addresses can be bound ({ip})"),
            &format!(
                "the lo interface must hold 127.0.0.0/8 (ip addr show lo): {}",
                bound.err().map(|e| e.to_string()).unwrap_or_default()
            ),
        );
        let state_dir = args.local.state_dir();
        // The directory, or the nearest parent it would be made in.
        let existing = state_dir
            .ancestors()
            .find(|d| d.exists())
            .unwrap_or(std::path::Path::new("/"));
        let writable = nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK);
        r.check(
            writable.is_ok(),
            &format!("state directory {} is writable", state_dir.display()),
            &format!(
                "pass --state-dir (WEFT_STATE_DIR) naming a directory of yours: {}",
                writable.err().map(|e| e.to_string()).unwrap_or_default()
            ),
        );
    }
    let proxy = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("weft-proxy"),
    };
    r.check(
        proxy.is_file(),
        &format!("weft-proxy at {}", proxy.display()),
        "cargo build --release -p weft-proxy, or pass --proxy-bin",
    );
    let controller = match &args.controller_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("weft-controller"),
    };
    r.check(
        controller.is_file(),
        &format!("weft-controller at {}", controller.display()),
        "cargo build --release -p weft-controller, or pass --controller-bin",
    );
    if root && sys::which("ip").is_some() {
        let probe = format!("{}-check-{}", args.local.prefix, std::process::id());
        let nat = sys::run("ip", ["netns", "add", &probe]).and_then(|_| {
            sys::run(
                "ip",
                [
                    "netns", "exec", &probe, "iptables", "-w", "5", "-t", "nat", "-S",
                ],
            )
        });
        let _ = sys::run("ip", ["netns", "delete", &probe]);
        r.check(
            nat.is_ok(),
            "iptables nat table usable in a network namespace",
            &format!(
                "load the kernel's nat support (modprobe iptable_nat or nf_tables): {}",
                nat.err().map(|e| format!("{e:#}")).unwrap_or_default()
            ),
        );
    }
    let hub = args.local.hub();
    if root && running.is_some() {
        println!("  note  network namespace {hub} belongs to the running mesh");
    } else if root {
        r.check(
            !sys::netns_exists(&hub),
            &format!("network namespace {hub} is free"),
            &format!("`weft down` if a mesh is up, else `ip netns delete {hub}`"),
        );
    }
    let state_path = args.local.state_path();
    match State::load(&state_path) {
        Ok(None) => r.check(true, "no mesh recorded as up", ""),
        Ok(Some(state)) if running.is_some() => {
            println!(
                "  note  a mesh is up (weft up pid {}, {}): its checks follow (--pre: preflight only)",
                state.owner.as_ref().map_or(0, |o| o.pid),
                state.mesh_dir.display()
            );
            report_issuer(&args.local.state_dir());
        }
        Ok(Some(state)) => {
            let running = state.owner.as_ref().is_some_and(|o| o.is_running());
            let what = if running {
                format!(
                    "a mesh is up (weft up pid {}, {})",
                    state.owner.as_ref().map_or(0, |o| o.pid),
                    state.mesh_dir.display()
                )
            } else {
                format!(
                    "{} records a mesh from {} (detached, or left by a crashed weft up)",
                    state_path.display(),
                    state.mesh_dir.display()
                )
            };
            r.check(false, &what, "weft down");
            report_issuer(&args.local.state_dir());
        }
        Err(e) => r.check(
            false,
            &format!("{e:#}"),
            &format!("remove {} by hand", state_path.display()),
        ),
    }
    if let Some(dir) = &args.dir {
        match Mesh::load(dir) {
            Ok(mesh) => {
                let pods: u32 = mesh.workloads.iter().map(|w| w.replicas).sum();
                r.check(
                    true,
                    &format!(
                        "{} is a valid mesh: {} workloads, {pods} pods, {} services",
                        dir.display(),
                        mesh.workloads.len(),
                        mesh.services.len()
                    ),
                    "",
                );
                for w in &mesh.warnings {
                    println!("        warning: {w}");
                }
            }
            Err(e) => r.check(
                false,
                &format!(
                    "{} is a valid mesh:\n        {}",
                    dir.display(),
                    e.to_string().replace('\n', "\n        ")
                ),
                "fix the files named above",
            ),
        }
    }
    if let Some(state) = &running {
        running::check(&mut r, state, &args.local.state_dir(), &bounds);
    }
    r.finish()
}

impl Report {
    /// The exit: an error (exit code 1) if any check failed.
    pub(crate) fn finish(&self) -> anyhow::Result<()> {
        if self.failed > 0 {
            anyhow::bail!("{} check(s) failed", self.failed);
        }
        println!("all checks passed");
        Ok(())
    }
}

/// When the running mesh's issuer (STATE/identity/issuer.crt) expires: a note, a
/// warning inside the controller's default warning period.
fn report_issuer(state_dir: &std::path::Path) {
    use weft_controller::identity;
    let path = state_dir.join("identity").join(identity::ISSUER_CERT_FILE);
    match identity::certificate_expiry(&path) {
        Ok((subject, not_after)) => {
            let left = not_after
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            let level = if left < identity::DEFAULT_EXPIRY_WARNING {
                "warn"
            } else {
                "note"
            };
            // weft up makes a fresh anchor and issuer for every run.
            println!(
                "  {level}  the running mesh's issuer {subject} ({}) expires {} (in {} days){}",
                path.display(),
                humantime::format_rfc3339_seconds(not_after),
                left.as_secs() / 86400,
                if level == "warn" {
                    "; weft down and weft up again for a fresh one"
                } else {
                    ""
                }
            );
        }
        Err(identity::CaError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => println!("  note  cannot read the mesh's issuer: {e}"),
    }
}

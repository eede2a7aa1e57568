//! Linux plumbing for the local mesh: running `ip`/`iptables`, code inside a network
//! namespace (a thread that `setns`es), and processes identified by pid + start time.

use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use weft_core::netns;

/// Runs a command to completion; its stderr becomes the error.
pub fn run<I, S>(program: &str, args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_input(program, args, None)
}

/// Runs a command with `input` on its stdin.
pub fn run_with_input<I, S>(program: &str, args: I, input: Option<&str>) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Ok(netns::run(program, args, input)?)
}

/// Where a program is: `PATH`, then the sbin directories `ip` and `iptables` live in.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn netns_exists(ns: &str) -> bool {
    netns::exists(ns)
}

/// Runs `f()` to completion inside the network namespace `ns` (with `None`, loopback
/// mode, in this process's own), on a new OS thread that enters it and builds a
/// current-thread runtime. Gives up after `limit`.
pub fn in_netns<F, Fut, T>(ns: Option<&str>, limit: Duration, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    Ok(netns::in_netns(ns, limit, f)?)
}

/// The sysctls that turn IPv6 off in a network namespace: `all` for the links it
/// has, `default` for links made later.
const DISABLE_IPV6: [&str; 2] = [
    "/proc/sys/net/ipv6/conf/all/disable_ipv6",
    "/proc/sys/net/ipv6/conf/default/disable_ipv6",
];

/// Turns IPv6 off in network namespace `ns` (`net.ipv6.conf.{all,default}.disable_ipv6
/// = 1`, written from a thread inside it) and reads both back. The pods' iptables
/// rules are IPv4 only: with IPv6 on, apps could reach each other over link-local
/// addresses, past the proxies. A kernel without IPv6 has nothing to turn off.
pub fn disable_ipv6(ns: &str) -> anyhow::Result<()> {
    let ns = ns.to_owned();
    let thread = std::thread::Builder::new()
        .name(format!("ipv6 off {ns}"))
        .spawn(move || -> anyhow::Result<()> {
            netns::enter(&ns)?;
            if !Path::new("/proc/sys/net/ipv6").exists() {
                return Ok(());
            }
            for knob in DISABLE_IPV6 {
                std::fs::write(knob, "1")
                    .with_context(|| format!("cannot turn IPv6 off in {ns}: writing {knob}"))?;
                let now = std::fs::read_to_string(knob)
                    .with_context(|| format!("cannot read {knob} in {ns}"))?;
                if now.trim() != "1" {
                    bail!(
                        "IPv6 is still on in {ns}: {knob} is {:?} after writing 1",
                        now.trim()
                    );
                }
            }
            Ok(())
        })
        .context("cannot start a thread")?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Fails if any link of network namespace `ns` has an IPv6 address (checked once its
/// links are up, after [`disable_ipv6`]).
pub fn ensure_no_ipv6(ns: &str) -> anyhow::Result<()> {
    let addrs = run("ip", ["-n", ns, "-6", "-o", "addr", "show"])?;
    if !addrs.trim().is_empty() {
        bail!(
            "network namespace {ns} has IPv6 addresses although IPv6 was turned off:\n{}",
            addrs.trim()
        );
    }
    Ok(())
}

/// What `/proc/{pid}/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    /// Clock ticks after boot: with the pid, it names a process for good.
    pub start_time: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything; fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 5 is pgrp; field 22 is starttime.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Processes (not zombies) whose process group is `pgrp`.
pub fn group_members(pgrp: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.pgrp == pgrp as i32 && s.state != 'Z'))
        .collect()
}

/// The command line of a process, for messages.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The last `lines` lines of a file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

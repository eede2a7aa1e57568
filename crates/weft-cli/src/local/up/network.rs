//! The pods' network: the hub namespace with its bridge, a namespace per pod with its
//! veth, address and the sidecar's iptables rules ([`weft_core::iptables`]), IPv6 off
//! everywhere; in loopback mode only directories and addresses.

use std::path::Path;

use anyhow::{bail, Context as _};
use weft_core::mesh::Workload;

use super::Runner;
use crate::local::state::PodRecord;
use crate::local::sys::{self, set_mode};
use crate::local::{pod_name, BRIDGE, HUB_IP, POD_PREFIX_LEN};

impl Runner {
    /// The hub namespace, `None` in loopback mode.
    pub(super) fn hub_netns(&self) -> Option<String> {
        self.paths
            .loopback
            .is_none()
            .then(|| self.paths.hub.clone())
    }

    /// A pod's network namespace, `None` in loopback mode (`key` is the pod's key).
    pub(super) fn pod_netns<'a>(&self, key: &'a str) -> Option<&'a str> {
        self.paths.loopback.is_none().then_some(key)
    }

    /// Loopback mode: log and endpoints directories; no namespaces, no proxy copy.
    pub(super) fn create_loopback_base(&mut self) -> anyhow::Result<()> {
        let (log_dir, endpoints_dir) =
            (self.paths.log_dir.clone(), self.paths.endpoints_dir.clone());
        self.state
            .files
            .extend([log_dir.clone(), endpoints_dir.clone()]);
        self.save()?;
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        std::fs::create_dir_all(&endpoints_dir)
            .with_context(|| format!("cannot create {}", endpoints_dir.display()))?;
        self.write_pods()
    }

    pub(super) fn create_base(&mut self, proxy_src: &Path) -> anyhow::Result<()> {
        if self.paths.loopback.is_some() {
            return self.create_loopback_base();
        }
        let p = &self.paths;
        let (log_dir, bin_dir, pods_file) = (
            p.log_dir.clone(),
            p.proxy_bin.parent().expect("has a parent").to_owned(),
            p.pods_file.clone(),
        );
        self.state
            .files
            .extend([log_dir.clone(), bin_dir.clone(), pods_file]);
        let hub = self.paths.hub.clone();
        self.state.hub = Some(hub.clone());
        self.save()?;

        std::fs::create_dir_all(&log_dir)?;
        std::fs::create_dir_all(&bin_dir)?;
        set_mode(&bin_dir, 0o755)?;
        // A copy the proxy's UID can surely read and run (the build directory may sit
        // in a home directory it cannot enter).
        std::fs::copy(proxy_src, &self.paths.proxy_bin)
            .with_context(|| format!("cannot copy {}", proxy_src.display()))?;
        set_mode(&self.paths.proxy_bin, 0o755)?;
        if let Some((apps_bin, exe_dir)) = self.paths.apps_bin.clone() {
            self.state.files.push(apps_bin.clone());
            self.save()?;
            std::fs::create_dir_all(&apps_bin)
                .with_context(|| format!("cannot create {}", apps_bin.display()))?;
            set_mode(&apps_bin, 0o755)?;
            for name in ["weft", "weft-demo-app"] {
                let src = exe_dir.join(name);
                if src.is_file() {
                    let dst = apps_bin.join(name);
                    std::fs::copy(&src, &dst)
                        .with_context(|| format!("cannot copy {}", src.display()))?;
                    set_mode(&dst, 0o755)?;
                }
            }
        }

        sys::run("ip", ["netns", "add", &hub])?;
        // IPv6 off before any link exists (pods' traffic is redirected for IPv4 only).
        sys::disable_ipv6(&hub)?;
        ip_batch(
            &hub,
            &format!(
                "link set lo up\nlink add {BRIDGE} type bridge\nlink set {BRIDGE} up\naddr add {HUB_IP}/{POD_PREFIX_LEN} dev {BRIDGE}\n"
            ),
        )?;
        sys::ensure_no_ipv6(&hub)?;
        self.sync_vips()?;
        self.write_pods()?;
        Ok(())
    }

    /// Makes one pod's network: namespace, link, address, rules, hosts file.
    /// Returns its netns name.
    pub(super) fn create_pod(&mut self, w: &Workload, index: u32) -> anyhow::Result<String> {
        let name = pod_name(w, index);
        let netns = format!("{}-{name}", self.paths.prefix);
        let loopback = self.paths.loopback.is_some();
        let etc = Path::new("/etc/netns").join(&netns);
        if !loopback {
            if sys::netns_exists(&netns) {
                bail!("network namespace {netns} exists but was not made by this weft up: remove it with `ip netns delete {netns}`");
            }
            if etc.exists() {
                bail!(
                    "{} exists but was not made by this weft up: remove it",
                    etc.display()
                );
            }
        }
        let pod = PodRecord {
            name: name.clone(),
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            index,
            zone: w.zone.clone(),
            netns: netns.clone(),
            ip: self.alloc_ip()?,
            // Loopback mode: only an address, nothing to make but the record.
            link: if loopback {
                String::new()
            } else {
                self.alloc_link()
            },
            files: if loopback {
                Vec::new()
            } else {
                vec![etc.clone()]
            },
            procs: Vec::new(),
        };
        let (ip, link) = (pod.ip, pod.link.clone());
        self.state.pods.push(pod);
        self.save()?;
        if loopback {
            return Ok(netns);
        }

        let hub = &self.paths.hub;
        sys::run("ip", ["netns", "add", &netns])?;
        // IPv6 off before the pod has links: only IPv4 is redirected to the proxy, so an
        // app reachable over IPv6 (link-local addresses) would bypass the mesh.
        sys::disable_ipv6(&netns)?;
        ip_batch(
            hub,
            &format!(
                "link add {link} type veth peer name eth0 netns {netns}\nlink set {link} master {BRIDGE} up\n"
            ),
        )?;
        ip_batch(
            &netns,
            &format!("link set lo up\naddr add {ip}/{POD_PREFIX_LEN} dev eth0\nlink set eth0 up\n"),
        )?;
        sys::ensure_no_ipv6(&netns)?;
        sys::run_with_input(
            "ip",
            ["netns", "exec", &netns, "iptables-restore", "-w", "5"],
            Some(&weft_core::iptables::redirect_rules(&w.skip_ports)),
        )
        .context("installing the pod's iptables rules")?;
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("hosts"), self.hosts(&w.namespace, &name, ip))?;
        Ok(netns)
    }
}

/// Runs `ip -n NS -batch -` with `commands` (one a line).
fn ip_batch(ns: &str, commands: &str) -> anyhow::Result<()> {
    sys::run_with_input("ip", ["-n", ns, "-batch", "-"], Some(commands))?;
    Ok(())
}

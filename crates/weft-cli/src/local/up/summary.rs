//! What `weft up` says: events as they happen, the mesh's pods, Services and
//! controller (`weft up -d` prints them once), and the live frame the foreground
//! redraws with the golden metrics per workload.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use weft_core::prom::Scrape;

use super::Runner;
use crate::local::state::{PodRecord, ProcRecord};
use crate::local::{scrape, CONTROLLER_PORT, OUTBOUND_PORT};
use crate::stat;

impl Runner {
    /// Prints a line of progress; a terminal's live summary also lists the recent ones.
    pub(super) fn event(&mut self, line: String) {
        println!("{line}");
        self.events.push_back(line);
        while self.events.len() > 10 {
            self.events.pop_front();
        }
    }

    /// A table of pods and Services.
    /// The mesh's pods, Services and controller; with `hints`, how to call across it
    /// and read its metrics (`weft up -d` prints them; the live frame stays within
    /// 80 columns and 24 lines without them).
    pub(super) fn describe(&self, hints: bool) -> String {
        let mut out = self.pods_table();
        self.services_table(&mut out);
        self.controller_line(&mut out);
        if hints {
            self.hints(&mut out);
        }
        out
    }

    /// The pods: name (with its namespace when the mesh has several), zone, address,
    /// status and restarts.
    fn pods_table(&self) -> String {
        // Sized to its content so the live frame fits an 80-column terminal: the pod's
        // workload is in its name, its namespace only when the mesh has several.
        let several_ns = self
            .state
            .pods
            .iter()
            .any(|p| p.namespace != self.state.pods[0].namespace);
        let pod_name = |p: &PodRecord| {
            if several_ns {
                format!("{}/{}", p.namespace, p.name)
            } else {
                p.name.clone()
            }
        };
        let pod_w = width(
            "POD",
            &mut self.state.pods.iter().map(|p| pod_name(p).len()),
        );
        let zone_w = width(
            "ZONE",
            &mut self
                .state
                .pods
                .iter()
                .map(|p| p.zone.as_deref().map_or(1, str::len)),
        );
        let mut out = format!(
            "\n{:<pod_w$}  {:<zone_w$}  {:<15}  {:<8}  RESTARTS\n",
            "POD", "ZONE", "IP", "STATUS"
        );
        for p in &self.state.pods {
            let status = if !p.procs.iter().all(ProcRecord::is_running) {
                "exited"
            } else if self.published.contains(&p.netns) && self.ready.contains(&p.netns) {
                "ready"
            } else if self.ready.contains(&p.netns) {
                "unready"
            } else {
                "start"
            };
            let _ = writeln!(
                out,
                "{:<pod_w$}  {:<zone_w$}  {:<15}  {:<8}  {}",
                pod_name(p),
                p.zone.as_deref().unwrap_or("-"),
                p.ip.to_string(),
                status,
                p.restarts(),
            );
        }
        out
    }

    /// The Services: VIP, ports and how many endpoints take traffic.
    fn services_table(&self, out: &mut String) {
        let services: Vec<(String, String, String, usize)> = self
            .mesh
            .services
            .iter()
            .map(|s| {
                let vip = self
                    .vip(&s.namespace, &s.name)
                    .map_or("-".into(), |v| v.to_string());
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| format!("{}->{}", p.port, p.target_port))
                    .collect();
                let endpoints = self
                    .state
                    .pods
                    .iter()
                    .filter(|p| {
                        self.published.contains(&p.netns)
                            && self.ready.contains(&p.netns)
                            && self
                                .mesh
                                .backends(s)
                                .any(|w| w.name == p.workload && w.namespace == p.namespace)
                    })
                    .count();
                (
                    format!("{}.{}", s.name, s.namespace),
                    vip,
                    ports.join(","),
                    endpoints,
                )
            })
            .collect();
        let svc_w = width("SERVICE", &mut services.iter().map(|s| s.0.len()));
        let ports_w = width("PORTS", &mut services.iter().map(|s| s.2.len()));
        let _ = writeln!(
            out,
            "\n{:<svc_w$}  {:<15}  {:<ports_w$}  ENDPOINTS",
            "SERVICE", "VIP", "PORTS"
        );
        for (name, vip, ports, endpoints) in &services {
            let _ = writeln!(
                out,
                "{name:<svc_w$}  {vip:<15}  {ports:<ports_w$}  {endpoints}"
            );
        }
    }

    /// The controller: address, readiness, pid and restarts.
    fn controller_line(&self, out: &mut String) {
        let controller = self.state.controller.as_ref();
        let running = controller.is_some_and(ProcRecord::is_running);
        let _ = writeln!(
            out,
            "\ncontroller: {}:{CONTROLLER_PORT}  {}  pid {}  restarts {}",
            self.controller_ip(),
            match (running, self.controller_ready) {
                (false, _) => "exited",
                (true, true) => "ready",
                (true, false) => "unready",
            },
            controller.map_or("-".into(), |c| c.pid.to_string()),
            controller.map_or(0, |c| c.restarts)
        );
    }

    /// How to call across the mesh and read its metrics, where its logs and state are
    /// (`weft up -d` prints them; the live frame stays within 80 columns and 24 lines
    /// without them).
    fn hints(&self, out: &mut String) {
        let loopback = self.paths.loopback.is_some();
        if loopback {
            let _ = writeln!(
                out,
                "proxies: http://POD_IP:{OUTBOUND_PORT}   endpoints: {}",
                self.paths.endpoints_dir.display(),
            );
        } else {
            let _ = writeln!(out, "network namespaces: {}-POD", self.paths.prefix);
        }
        let _ = writeln!(
            out,
            "logs: {}   state: {}",
            self.paths.log_dir.display(),
            self.paths.state_path.display()
        );
        if let Some(p) = self.state.pods.first() {
            // A Service the first pod does not serve itself, to call across the mesh.
            let svc = self
                .mesh
                .services
                .iter()
                .find(|s| !self.mesh.backends(s).any(|w| w.name == p.workload))
                .or(self.mesh.services.first());
            let url = svc.map_or("http://SERVICE.NAMESPACE.svc:PORT/".into(), |s| {
                format!("http://{}.{}.svc:{}/", s.name, s.namespace, s.ports[0].port)
            });
            let weft = std::env::current_exe().unwrap_or_else(|_| "weft".into());
            let app = weft.with_file_name("weft-demo-app");
            if loopback {
                let _ = writeln!(
                    out,
                    "call as a pod:    HTTP_PROXY=http://{}:{OUTBOUND_PORT} {} get {url}\nmetrics:          {} stat -A (per workload; `stat svc -A` per Service)",
                    p.ip,
                    app.display(),
                    weft.display(),
                );
                return;
            }
            let _ = writeln!(
                out,
                "call from a pod:  {weft} exec {} -- weft-demo-app get {url}\nmetrics:          {weft} stat -A (per workload; `stat svc -A` per Service)\npods and logs:    {weft} ps; {weft} logs [-f] POD [--proxy]",
                p.name,
                weft = weft.display(),
            );
        }
    }

    /// Reads every pod proxy's /metrics (from inside the hub namespace unless in
    /// loopback mode); pods that do not answer are left out.
    pub(super) async fn scrape(&self) -> HashMap<String, String> {
        scrape::pod_metrics(self.hub_netns(), &self.state.pods)
            .await
            .unwrap_or_default()
    }

    /// Prints the pods and the golden metrics per workload over `window`.
    pub(super) fn summary(
        &self,
        before: &HashMap<String, String>,
        after: &HashMap<String, String>,
        window: Duration,
    ) {
        // The `weft stat deploy -A` view: what each workload's pods served.
        let parse = |m: &HashMap<String, String>| -> HashMap<String, Scrape> {
            m.iter()
                .map(|(k, t)| (k.clone(), Scrape::parse(t)))
                .collect()
        };
        let workloads = self
            .mesh
            .workloads
            .iter()
            .map(|w| (w.namespace.clone(), w.name.clone()))
            .collect();
        let rows = stat::mesh::deploy_rows(
            &workloads,
            &self.state.pods,
            &parse(before),
            &parse(after),
            window,
        );
        let mut out = String::new();
        if self.interactive {
            out.push_str("\x1b[2J\x1b[H");
        } else {
            // Frames in a log or a pipe: each under a line of its own.
            let _ = writeln!(
                out,
                "--- {} ---",
                humantime::format_rfc3339_seconds(SystemTime::now())
            );
        }
        let _ = writeln!(
            out,
            "weft up {}: {} pods, {} services (Ctrl-C stops the mesh)",
            self.paths.mesh_dir.display(),
            self.state.pods.len(),
            self.mesh.services.len()
        );
        out.push_str(&self.describe(false));
        out.push('\n');
        let namespaces = self
            .mesh
            .workloads
            .iter()
            .any(|w| w.namespace != self.mesh.workloads[0].namespace);
        out.push_str(&stat::mesh::table(
            &rows,
            namespaces,
            true,
            "deployments",
            "in the mesh",
        ));
        // A terminal shows the newest event; all of them are in the output above (and
        // in weft-up.log when detached).
        if self.interactive {
            if let Some(e) = self.events.back() {
                let _ = write!(out, "\nlast event: {e}");
            }
        }
        println!("{out}");
    }
}

/// A column's width: its header's or its widest cell's.
fn width(header: &str, cells: &mut dyn Iterator<Item = usize>) -> usize {
    cells.fold(header.len(), usize::max)
}

//! Checks across objects, once every file is parsed: duplicates, the mesh's size,
//! Services' selectors and target ports; and proxy settings.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{ContainerPort, Mesh, ProxySettings, Workload};
use super::parse::Report;
use super::{MAX_PODS, MESH_FILE, PROXY_FLAGS_MANAGED_BY_WEFT_UP, PROXY_PORTS, ZONE_MODES};

impl Mesh {
    pub(super) fn validate(&mut self, report: &mut Report) {
        let file = MESH_FILE;
        let mut seen = BTreeSet::new();
        let mut total: u64 = 0;
        for (i, w) in self.workloads.iter().enumerate() {
            if !seen.insert((&w.namespace, &w.name)) {
                report.error(
                    file,
                    &format!("workloads[{i}] ({})", w.name),
                    format!(
                        "duplicate workload: {}/{} is defined twice",
                        w.namespace, w.name
                    ),
                );
            }
            total += u64::from(w.replicas);
        }
        if total > u64::from(MAX_PODS) {
            report.error(
                file,
                "workloads",
                format!("{total} pods in all; a local mesh runs at most {MAX_PODS}"),
            );
        }
        let mut names = BTreeSet::new();
        for s in &self.services {
            let location = format!("Service {}/{}", s.namespace, s.name);
            if !names.insert((&s.namespace, &s.name)) {
                report.error(
                    &s.file,
                    &location,
                    "duplicate Service: defined twice in this mesh",
                );
            }
            if s.selector.is_empty() {
                report.warn(
                    &s.file,
                    &location,
                    "no spec.selector: the Service has no endpoints",
                );
                continue;
            }
            let backends: Vec<&Workload> = self
                .workloads
                .iter()
                .filter(|w| w.namespace == s.namespace && w.matches(&s.selector))
                .collect();
            if backends.is_empty() {
                report.warn(
                    &s.file,
                    &location,
                    format!(
                        "spec.selector {} matches no workload in namespace {}",
                        selector_text(&s.selector),
                        s.namespace
                    ),
                );
            }
            for (j, p) in s.ports.iter().enumerate() {
                for w in &backends {
                    match w.resolve(&p.target_port) {
                        None => report.error(
                            &s.file,
                            &format!("{location}: spec.ports[{j}].targetPort"),
                            format!(
                                "{} names no port of workload {} (its ports: {})",
                                p.target_port,
                                w.name,
                                port_list(&w.ports)
                            ),
                        ),
                        Some(port) if PROXY_PORTS.iter().any(|(pp, _)| *pp == port) => report
                            .error(
                                &s.file,
                                &format!("{location}: spec.ports[{j}].targetPort"),
                                format!("port {port} conflicts with the proxy's ports"),
                            ),
                        Some(port) if !w.ports.iter().any(|c| c.port == port) => report.warn(
                            &s.file,
                            &format!("{location}: spec.ports[{j}].targetPort"),
                            format!(
                                "port {port} is not among workload {}'s ports ({})",
                                w.name,
                                port_list(&w.ports)
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

/// What is wrong with proxy settings: (field, message) pairs.
pub(super) fn proxy_problems(proxy: &ProxySettings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(mode) = &proxy.zone_mode {
        if !ZONE_MODES.contains(&mode.as_str()) {
            out.push((
                "zoneMode".to_owned(),
                format!(
                    "{mode:?} is not a zone mode (one of {})",
                    ZONE_MODES.join(", ")
                ),
            ));
        }
    }
    for (i, arg) in proxy.args.iter().enumerate() {
        let field = format!("args[{i}]");
        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
        if arg.is_empty() || arg.contains('\0') {
            out.push((
                field,
                "an empty argument (or one with a NUL byte)".to_owned(),
            ));
        } else if flag == "--zone-mode" {
            out.push((field, "--zone-mode: use proxy.zoneMode".to_owned()));
        } else if PROXY_FLAGS_MANAGED_BY_WEFT_UP.contains(&flag) {
            out.push((
                field,
                format!("{flag} is managed by weft up (discovery, identity, listeners, labels); it cannot be given here"),
            ));
        }
    }
    out
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn port_list(ports: &[ContainerPort]) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{} ({n})", p.port),
            None => p.port.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

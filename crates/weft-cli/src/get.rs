//! `weft get routes`: the mesh directory's HTTPRoutes and GRPCRoutes with their parents,
//! hostnames, weighted backends and conditions, checked by the controller's own code
//! (`weft_controller::routes`), so it works with or without a running mesh.
//! `weft get policies`: its policy objects (Server, AuthorizationPolicy,
//! MeshTLSAuthentication, NetworkAuthentication) and their conditions, checked by
//! `weft_controller::policy` the same way.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::ValueEnum;
use weft_controller::policy::{Condition, ObjectReport, PolicyConfig, PolicyIndex};
use weft_controller::routes::table::{ParentReport, RouteReport, TimedCond};
use weft_controller::routes::{status, RouteTable};
use weft_core::mesh::Mesh;

use crate::local::LocalArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// HTTPRoutes and GRPCRoutes.
    Routes,
    /// Servers, AuthorizationPolicies, MeshTLSAuthentications and
    /// NetworkAuthentications.
    Policies,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(clap::Args)]
#[command(after_help = "\
One row per route and Service parent. ACCEPTED and RESOLVED are the route's Accepted \
and ResolvedRefs conditions for that parent (reasons: Accepted, NoMatchingParent, \
UnsupportedValue, Conflicted; ResolvedRefs, BackendNotFound, InvalidKind, \
RefNotPermitted); the messages of false ones follow the table. -o yaml|json prints \
each route's status as Kubernetes shows it. Without a controller's history, a \
condition's lastTransitionTime is when the route's file was last written.

policies: one row per policy object with its Accepted and ResolvedRefs conditions \
(reasons: Accepted, Invalid; ResolvedRefs, TargetNotFound, AuthenticationNotFound, \
InvalidKind) and whether it serves (an invalid object's last valid version keeps \
serving); the messages of false ones follow the table. Table output only.

Examples:
  weft get routes
  weft get routes examples/demo -o yaml
  weft get policies")]
pub struct GetArgs {
    /// What to list.
    #[arg(value_enum)]
    kind: Kind,
    /// The mesh directory [default: the running local mesh's].
    dir: Option<PathBuf>,
    /// Only routes of this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// Service names are `{name}.{namespace}.svc.{cluster-domain}`.
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    #[command(flatten)]
    local: LocalArgs,
}

pub fn run(args: GetArgs) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            args.local
                .running_mesh("give a mesh directory: weft get routes|policies DIR")?
                .mesh_dir
        }
    };
    let text = match args.kind {
        Kind::Routes => {
            let reports = routes(&dir, &args.cluster_domain, args.namespace.as_deref())?;
            match args.output {
                Output::Table => table(&reports),
                Output::Yaml => serde_yaml_ng::to_string(&status::list(reports.iter()))?,
                Output::Json => serde_json::to_string_pretty(&status::list(reports.iter()))? + "\n",
            }
        }
        Kind::Policies => {
            anyhow::ensure!(
                matches!(args.output, Output::Table),
                "weft get policies prints a table only (-o table)"
            );
            policy_table(&policies(&dir, args.namespace.as_deref())?)
        }
    };
    // A reader that stops early (`| head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The policy objects of `dir`, checked as the controller checks them.
fn policies(dir: &Path, namespace: Option<&str>) -> anyhow::Result<Vec<ObjectReport>> {
    let mesh = Mesh::load(dir)
        .map_err(|e| anyhow::anyhow!("the mesh directory {} does not load: {e}", dir.display()))?;
    let empty = PolicyIndex::empty(PolicyConfig::default(), &mesh.trust_domain);
    let index = PolicyIndex::build(&empty, &mesh);
    Ok(index
        .reports()
        .iter()
        .filter(|r| namespace.is_none_or(|ns| r.key.as_ref().is_some_and(|k| k.namespace == ns)))
        .cloned()
        .collect())
}

fn policy_cond(c: &Condition) -> String {
    if c.ok {
        "True".into()
    } else {
        format!("False ({})", c.reason)
    }
}

/// The policy objects' table, then the messages of the conditions that are false.
fn policy_table(reports: &[ObjectReport]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "KIND",
        "ACCEPTED",
        "RESOLVED",
        "SERVING",
    ];
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut notes = Vec::new();
    for r in reports {
        let (namespace, name, kind, what) = match &r.key {
            Some(k) => (
                k.namespace.clone(),
                k.name.clone(),
                k.kind.to_owned(),
                k.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), r.file.clone()),
        };
        let serving = match (r.serving, r.kept) {
            (true, true) => "last valid version",
            (true, false) => "yes",
            (false, _) => "no",
        };
        rows.push([
            namespace,
            name,
            kind,
            policy_cond(&r.accepted),
            r.resolved_refs
                .as_ref()
                .map_or_else(|| "-".into(), policy_cond),
            serving.into(),
        ]);
        let conditions = [
            ("Accepted", Some(&r.accepted)),
            ("ResolvedRefs", r.resolved_refs.as_ref()),
        ];
        for (kind, c) in conditions {
            if let Some(c) = c.filter(|c| !c.ok) {
                notes.push(format!(
                    "{what} ({}): {kind} {}: {}",
                    r.file, c.reason, c.message
                ));
            }
        }
    }
    if rows.is_empty() {
        return "no Servers, AuthorizationPolicies, MeshTLSAuthentications or NetworkAuthentications\n".into();
    }
    columns(header, &rows, &notes)
}

/// The routes of `dir` checked, each condition stamped with its file's modification
/// time.
fn routes(
    dir: &Path,
    cluster_domain: &str,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<RouteReport>> {
    let mesh = Mesh::load(dir)
        .map_err(|e| anyhow::anyhow!("the mesh directory {} does not load: {e}", dir.display()))?;
    let (table, _) = RouteTable::build(
        &RouteTable::empty(cluster_domain),
        &mesh,
        cluster_domain,
        SystemTime::now(),
    );
    for problem in table.problems() {
        eprintln!("warning: {problem}");
    }
    let mut written = BTreeMap::new();
    let mut reports: Vec<RouteReport> = table
        .reports()
        .filter(|r| namespace.is_none_or(|ns| r.key.namespace == ns))
        .cloned()
        .collect();
    for r in &mut reports {
        let mtime = written
            .entry(r.file.clone())
            .or_insert_with(|| {
                std::fs::metadata(dir.join(&r.file))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(k8s_time)
            })
            .clone();
        if let Some(t) = mtime {
            for p in &mut r.parents {
                p.accepted.since = t.clone();
                p.resolved.since = t.clone();
            }
        }
    }
    Ok(reports)
}

fn k8s_time(t: SystemTime) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .ok()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
}

fn cond(t: &TimedCond) -> String {
    if t.cond.ok {
        "True".into()
    } else {
        format!("False ({})", t.cond.reason)
    }
}

fn parent(p: &ParentReport) -> String {
    let mut s = format!("Service {}", p.parent.name);
    if let Some(ns) = &p.parent.namespace {
        s = format!("Service {ns}/{}", p.parent.name);
    }
    if let Some(port) = p.parent.port {
        let _ = write!(s, ":{port}");
    }
    if let Some(section) = &p.parent.section_name {
        let _ = write!(s, " ({section})");
    }
    s
}

fn backends(r: &RouteReport) -> String {
    if r.backends.is_empty() {
        return "(the parent)".into();
    }
    r.backends
        .iter()
        .map(|b| {
            let name = if b.namespace == r.key.namespace {
                b.name.clone()
            } else {
                format!("{}/{}", b.namespace, b.name)
            };
            let port = b.port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{name}{port}={}", b.weight)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The table, then the messages of the conditions that are false.
fn table(reports: &[RouteReport]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "KIND",
        "PARENT",
        "HOSTNAMES",
        "BACKENDS",
        "ACCEPTED",
        "RESOLVED",
    ];
    let mut rows: Vec<[String; 8]> = Vec::new();
    let mut notes = Vec::new();
    for r in reports {
        let hostnames = if r.hostnames.is_empty() {
            "*".to_owned()
        } else {
            r.hostnames.join(",")
        };
        let row = |parent: String, accepted: String, resolved: String| {
            [
                r.key.namespace.clone(),
                r.key.name.clone(),
                r.key.kind.as_str().to_owned(),
                parent,
                hostnames.clone(),
                backends(r),
                accepted,
                resolved,
            ]
        };
        if r.parents.is_empty() {
            rows.push(row("(no Service parent)".into(), "-".into(), "-".into()));
        }
        for p in &r.parents {
            rows.push(row(parent(p), cond(&p.accepted), cond(&p.resolved)));
            for (kind, t) in [("Accepted", &p.accepted), ("ResolvedRefs", &p.resolved)] {
                if !t.cond.ok {
                    let note = format!(
                        "{} ({}): {kind} {}: {}",
                        r.key,
                        parent(p),
                        t.cond.reason,
                        t.cond.message
                    );
                    if !notes.contains(&note) {
                        notes.push(note);
                    }
                }
            }
        }
    }
    if rows.is_empty() {
        return "no HTTPRoutes or GRPCRoutes\n".into();
    }
    columns(header, &rows, &notes)
}

/// `rows` under `header` in left-aligned columns two spaces apart, then `notes` after an
/// empty line (the tables of `weft get routes` and `weft get policies`).
fn columns<const N: usize>(header: [&str; N], rows: &[[String; N]], notes: &[String]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&header.map(str::to_owned));
    for row in rows {
        line(row);
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "{n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "kind: Mesh\nworkloads:\n  - {name: books-v1, ports: [8080], command: [app], labels: {app: books, version: v1}}\n  - {name: books-v2, ports: [8080], command: [app], labels: {app: books, version: v2}}\n";
    const SERVICES: &str = "kind: Service\nmetadata: {name: books}\nspec: {selector: {app: books}, ports: [{port: 80, targetPort: 8080}]}\n---\nkind: Service\nmetadata: {name: books-v1}\nspec: {selector: {app: books, version: v1}, ports: [{port: 80, targetPort: 8080}]}\n";

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str, routes: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("weft-get-routes-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("mesh.yaml"), MESH).unwrap();
        std::fs::write(d.join("services.yaml"), SERVICES).unwrap();
        std::fs::write(d.join("routes.yaml"), routes).unwrap();
        Dir(d)
    }

    const POLICY: &str = "apiVersion: policy.weft.io/v1alpha1\nkind: Server\nmetadata: {name: books-http}\nspec: {podSelector: {matchLabels: {app: books}}, port: 8080}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {name: web-only}\nspec: {identityRefs: [{kind: ServiceAccount, name: web}]}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: books-from-web}\nspec:\n  targetRef: {group: policy.weft.io, kind: Server, name: books-grpc}\n  requiredAuthenticationRefs: [{group: policy.weft.io, kind: MeshTLSAuthentication, name: web-only}]\n";

    #[test]
    fn the_policy_table_shows_each_objects_conditions_and_why_one_is_false() {
        let d = dir("policies", POLICY);
        let reports = policies(&d.0, None).unwrap();
        let text = policy_table(&reports);
        let lines: Vec<&str> = text.lines().collect();
        let row = |name: &str| {
            let line = lines
                .iter()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("no row for {name}:\n{text}"));
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert!(lines[0].starts_with("NAMESPACE  NAME"), "{text}");
        assert_eq!(row("books-http"), "default books-http Server True - yes");
        assert_eq!(
            row("web-only"),
            "default web-only MeshTLSAuthentication True - yes"
        );
        assert_eq!(
            row("books-from-web"),
            "default books-from-web AuthorizationPolicy True False (TargetNotFound) no"
        );
        assert!(
            text.contains("AuthorizationPolicy default/books-from-web (routes.yaml): ResolvedRefs TargetNotFound: "),
            "{text}"
        );
        assert!(policies(&d.0, Some("other")).unwrap().is_empty());
        assert_eq!(
            policy_table(&[]),
            "no Servers, AuthorizationPolicies, MeshTLSAuthentications or NetworkAuthentications\n"
        );
    }

    const CANARY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: books-canary}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: books, port: 80}]\n  rules:\n  - backendRefs: [{name: books-v1, port: 80, weight: 90}, {name: books-v2, port: 80, weight: 10}]\n";

    #[test]
    fn the_table_shows_parents_backends_and_why_a_condition_is_false() {
        let d = dir("table", CANARY);
        let reports = routes(&d.0, "cluster.local", None).unwrap();
        let text = table(&reports);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE  NAME          KIND       PARENT"),
            "{text}"
        );
        assert!(
            lines[1].contains("books-canary  HTTPRoute  Service books:80  *          books-v1:80=90,books-v2:80=10  True      False (BackendNotFound)"),
            "{text}"
        );
        assert!(
            text.contains("HTTPRoute default/books-canary (Service books:80): ResolvedRefs BackendNotFound: backendRef Service default/books-v2 does not exist"),
            "{text}"
        );
        assert!(routes(&d.0, "cluster.local", Some("other"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn yaml_shows_the_status_as_kubernetes_does() {
        let d = dir("yaml", CANARY);
        let reports = routes(&d.0, "cluster.local", None).unwrap();
        let yaml = serde_yaml_ng::to_string(&status::list(reports.iter())).unwrap();
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        let parent = &value["items"][0]["status"]["parents"][0];
        assert_eq!(
            parent["controllerName"].as_str(),
            Some("weft.io/controller")
        );
        assert_eq!(parent["parentRef"]["kind"].as_str(), Some("Service"));
        assert_eq!(parent["parentRef"]["port"].as_i64(), Some(80));
        let conditions = parent["conditions"].as_sequence().unwrap();
        assert_eq!(conditions[0]["type"].as_str(), Some("Accepted"));
        assert_eq!(conditions[0]["status"].as_str(), Some("True"));
        assert_eq!(conditions[0]["observedGeneration"].as_i64(), Some(1));
        assert_eq!(conditions[1]["reason"].as_str(), Some("BackendNotFound"));
        // The file's modification time, in RFC 3339.
        let written = std::fs::metadata(d.0.join("routes.yaml"))
            .unwrap()
            .modified()
            .unwrap();
        let expected = k8s_openapi::jiff::Timestamp::try_from(written).unwrap();
        let shown: k8s_openapi::jiff::Timestamp = conditions[0]["lastTransitionTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(shown.as_second(), expected.as_second());
    }

    /// examples/routes/books-canary.yaml, added to the demo mesh as docs/routes.md says,
    /// is accepted and resolves.
    #[test]
    fn the_example_canary_route_is_accepted_in_the_demo_mesh() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let d =
            std::env::temp_dir().join(format!("weft-get-routes-example-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let _cleanup = Dir(d.clone());
        for file in [
            "examples/demo/mesh.yaml",
            "examples/demo/services.yaml",
            "examples/routes/books-canary.yaml",
        ] {
            let from = root.join(file);
            std::fs::copy(&from, d.join(from.file_name().unwrap())).unwrap();
        }
        let reports = routes(&d, "cluster.local", None).unwrap();
        assert_eq!(reports.len(), 1);
        let text = table(&reports);
        assert!(
            text.contains(
                "Service books:8080  *          books-v1:8080=90,books-v2:8080=10  True      True"
            ),
            "{text}"
        );
    }
}

//! `weft rollout run FILE`: the steps of a Rollout against the running local mesh.
//! Each `setWeight` rewrites the route file's weights (the controller and the proxies
//! follow within a second); each `pause` judges the canary window by window from the
//! proxies' metrics (`weft stat route`'s figures for the canary backend under the
//! route). A failed judgement, or an interrupt, sets the canary back to 0 % at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::signal::unix::{signal, SignalKind};

use super::analysis::{judge, Figures, Verdict};
use super::edit::{self, Weights};
use super::spec::{self, Rollout, RouteRef, Step};
use super::state::{self, Phase, RolloutState};
use crate::local::LocalArgs;
use crate::stat::mesh::Frame;
use crate::stat::route::{route_rows, RouteRow};
use crate::stat::{mesh_state, scrape_mesh};

#[derive(clap::Args)]
#[command(after_help = "\
The Rollout file (docs/rollout.md; examples/rollouts/books.yaml):

  apiVersion: weft.io/v1alpha1
  kind: Rollout
  metadata: {name: books}
  spec:
    route: {name: books-canary}      # an HTTPRoute of the mesh directory (file: optional)
    stableService: books-v1
    canaryService: books-v2
    steps: [{setWeight: 10}, {pause: 30s}, {setWeight: 50}, {pause: 30s}, {setWeight: 100}]
    analysis: {minSuccessRate: 0.99, maxP99Latency: 500ms, window: 10s, minRequests: 20}

Each setWeight writes the stable and canary weights of the route's rules naming both \
(YAML rewritten: the file's comments are lost). During each pause with a canary weight \
above 0 the canary's success rate and p99 are judged every window; a pause without a \
window of minRequests canary requests fails too. A failure, SIGINT or SIGTERM sets the \
canary back to 0 % and exits 1. After the last step the canary gets 100 %. \
`weft rollout status` shows the progress from another shell.")]
pub struct RunArgs {
    /// The Rollout file.
    file: PathBuf,
    #[command(flatten)]
    local: LocalArgs,
}

/// What ended a pause early.
enum Stop {
    /// The analysis failed: why.
    Failed(String),
    /// SIGINT or SIGTERM.
    Interrupted(&'static str),
}

/// The HTTPRoute's file in the mesh directory: the one the Rollout names, or the only
/// file holding the route.
pub fn route_file(mesh_dir: &Path, route: &RouteRef) -> anyhow::Result<PathBuf> {
    let what = format!("HTTPRoute {}/{}", route.namespace, route.name);
    if let Some(file) = &route.file {
        let path = mesh_dir.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("spec.route.file: cannot read {}", path.display()))?;
        if !edit::holds(&text, route) {
            bail!("spec.route: unknown route: no {what} in {}", path.display());
        }
        return Ok(path);
    }
    let entries = std::fs::read_dir(mesh_dir)
        .with_context(|| format!("cannot read the mesh directory {}", mesh_dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| edit::holds(&t, route)))
        .collect();
    found.sort();
    match found.len() {
        0 => bail!(
            "spec.route: unknown route: no {what} in the mesh directory {} (`weft get routes` lists its routes)",
            mesh_dir.display()
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "spec.route: {what} is in several files ({}); name one with spec.route.file",
            found
                .iter()
                .map(|p| spec::shown(p, mesh_dir))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The controller's own check of the route: its stable and canary backends must
/// resolve (an existing Service), or the proxies would answer 500 for their share.
fn check_backends(mesh_dir: &Path, rollout: &Rollout) -> anyhow::Result<()> {
    let Ok(mesh) = weft_core::mesh::Mesh::load(mesh_dir) else {
        // The controller keeps serving the last valid directory; the weights' edit
        // checks the route itself.
        return Ok(());
    };
    let domain = "cluster.local";
    let (table, _) = weft_controller::routes::RouteTable::build(
        &weft_controller::routes::RouteTable::empty(domain),
        &mesh,
        domain,
        std::time::SystemTime::now(),
    );
    let Some(report) = table.reports().find(|r| {
        r.key.kind.as_str() == "HTTPRoute"
            && r.key.namespace == rollout.route.namespace
            && r.key.name == rollout.route.name
    }) else {
        return Ok(());
    };
    for (field, name) in [
        ("spec.stableService", &rollout.stable),
        ("spec.canaryService", &rollout.canary),
    ] {
        if let Some(b) = report.backends.iter().find(|b| &b.name == name) {
            if let Some((reason, message)) = &b.problem {
                bail!(
                    "{field} {name}: HTTPRoute {}/{}'s backend does not resolve: {reason}: {message}",
                    rollout.route.namespace,
                    rollout.route.name
                );
            }
        }
    }
    Ok(())
}

/// What `weft rollout` says when no local mesh is up.
pub const HINT: &str = "weft rollout works on the local mesh: start it with `weft up`";

struct Runner {
    rollout: Rollout,
    local: LocalArgs,
    state_dir: PathBuf,
    route_path: PathBuf,
    /// The route file as messages show it (relative to the mesh directory).
    route_shown: String,
    st: RolloutState,
}

impl Runner {
    fn save(&mut self) {
        if let Err(e) = self.st.save(&self.state_dir) {
            eprintln!("warning: the rollout's state: {e:#}");
        }
    }

    /// Writes `to` into the route file.
    fn set(&mut self, to: Weights) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.route_path)
            .with_context(|| format!("cannot read {}", self.route_path.display()))?;
        let r = &self.rollout;
        let edited =
            edit::set_weights(&text, &r.route, &r.stable, &r.canary, to, &self.route_shown)?;
        edit::write_atomic(&self.route_path, &edited)?;
        self.st.weights = to;
        self.save();
        Ok(())
    }

    fn route_name(&self) -> String {
        format!(
            "HTTPRoute {}/{}",
            self.rollout.route.namespace, self.rollout.route.name
        )
    }

    /// The canary's figures over the window between two rounds of scrapes.
    fn canary(&self, rows: &[RouteRow], elapsed: Duration) -> Figures {
        let route = &self.rollout.route;
        let row = rows.iter().find(|r| {
            r.kind == "HTTPRoute"
                && r.namespace == route.namespace
                && r.name == route.name
                && r.backend.as_deref() == Some(self.rollout.canary.as_str())
        });
        Figures::of(row, elapsed)
    }

    /// Waits `pause`, judging the canary every window when it has traffic to judge.
    async fn pause(
        &mut self,
        pause: Duration,
        stop: &mut Signals,
    ) -> anyhow::Result<Result<(), Stop>> {
        let end = Instant::now() + pause;
        if !self.rollout.analyses() || self.st.weights.canary == 0 {
            return Ok(tokio::select! {
                _ = tokio::time::sleep_until(end.into()) => Ok(()),
                s = stop.next() => Err(Stop::Interrupted(s)),
            });
        }
        let analysis = self.rollout.analysis.clone();
        let mut mesh = mesh_state(&self.local, HINT)?;
        let mut since = scrape_mesh(&mesh).await?;
        let mut since_at = Instant::now();
        let mut judged = false;
        let mut last = String::from("no window ended");
        while Instant::now() < end {
            let wake = (Instant::now() + analysis.window).min(end);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                s = stop.next() => return Ok(Err(Stop::Interrupted(s))),
            }
            // Pods may have come and gone (a scale, a restart): the mesh as it is now.
            mesh = mesh_state(&self.local, HINT).unwrap_or(mesh);
            let after = scrape_mesh(&mesh).await?;
            let elapsed = since_at.elapsed();
            let frame = Frame::between(&since, &after, elapsed);
            let rows = route_rows(&BTreeMap::new(), &mesh.pods, &frame);
            let figures = self.canary(&rows, elapsed);
            let verdict = judge(&analysis, &figures);
            let shown = describe(&figures);
            match verdict {
                Verdict::Pass => {
                    println!("  canary {}: {shown}: ok", self.rollout.canary);
                    judged = true;
                    since = after;
                    since_at = Instant::now();
                    self.st.message = format!("analysis passed: {shown}");
                    self.st.last_analysis = Some(figures);
                    self.save();
                }
                Verdict::Fail(why) => {
                    println!("  canary {}: {shown}: FAILED", self.rollout.canary);
                    self.st.last_analysis = Some(figures);
                    return Ok(Err(Stop::Failed(why)));
                }
                Verdict::Inconclusive(why) => {
                    // The window grows until it holds enough requests.
                    println!("  canary {}: {shown}: waiting ({why})", self.rollout.canary);
                    last = why;
                }
            }
        }
        if judged {
            Ok(Ok(()))
        } else {
            Ok(Err(Stop::Failed(format!(
                "no verdict within the pause of {}: {last}",
                humantime::format_duration(pause)
            ))))
        }
    }
}

/// `98 requests over 5.0s, success 100.00%, p99 12.3ms`.
pub fn describe(f: &Figures) -> String {
    let success = f
        .success
        .map_or("-".to_owned(), |s| format!("{:.2}%", s * 100.0));
    let p99 = f
        .latency_ms_p99
        .map_or("-".to_owned(), |l| format!("{l:.1}ms"));
    format!("{}, success {success}, p99 {p99}", f.basis())
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

fn step_text(step: &Step) -> String {
    match step {
        Step::SetWeight(w) => format!("setWeight: {w}"),
        Step::Pause(d) => format!("pause: {}", humantime::format_duration(*d)),
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let source = args.file.display().to_string();
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {source}"))?;
    let rollout = spec::parse(&text, &source)?;
    let mesh = mesh_state(&args.local, HINT)?;
    let route_path = route_file(&mesh.mesh_dir, &rollout.route)?;
    let route_shown = spec::shown(&route_path, &mesh.mesh_dir);
    let route_text = std::fs::read_to_string(&route_path)
        .with_context(|| format!("cannot read {}", route_path.display()))?;
    // The route must have both backends in a rule before anything is written.
    let initial = edit::weights(
        &route_text,
        &rollout.route,
        &rollout.stable,
        &rollout.canary,
        &route_shown,
    )?;
    check_backends(&mesh.mesh_dir, &rollout)?;
    let state_dir = args.local.state_dir();
    let id = format!("{}/{}", rollout.namespace, rollout.name);
    if let Some(other) = state::load_all(&state_dir)
        .into_iter()
        .find(|s| s.namespace == rollout.namespace && s.name == rollout.name)
    {
        if !other.phase.done() && other.runner_alive() {
            bail!(
                "rollout {id} is already running (weft rollout run, pid {}); `weft rollout status {}` shows it",
                other.pid,
                rollout.name
            );
        }
    }
    let mut stop = Signals::new()?;
    let now = state::now();
    let st = RolloutState {
        name: rollout.name.clone(),
        namespace: rollout.namespace.clone(),
        route: format!("{}/{}", rollout.route.namespace, rollout.route.name),
        file: route_path.clone(),
        stable: rollout.stable.clone(),
        canary: rollout.canary.clone(),
        phase: Phase::Progressing,
        step: 0,
        steps: rollout.steps.len(),
        step_text: rollout.steps.first().map(step_text).unwrap_or_default(),
        weights: initial,
        message: String::new(),
        last_analysis: None,
        pid: std::process::id(),
        started: now,
        updated: now,
    };
    let mut runner = Runner {
        rollout,
        local: args.local.clone(),
        state_dir,
        route_path,
        route_shown,
        st,
    };
    runner.save();
    println!(
        "rollout {id}: {} in {}, stable {}, canary {} (now {})",
        runner.route_name(),
        runner.route_shown,
        runner.rollout.stable,
        runner.rollout.canary,
        initial
    );
    let started = Instant::now();
    let steps = runner.rollout.steps.clone();
    let n = steps.len();
    for (i, step) in steps.iter().enumerate() {
        runner.st.step = i;
        runner.st.step_text = step_text(step);
        runner.save();
        let outcome = match step {
            Step::SetWeight(w) => {
                let to = Weights::canary_share(*w);
                if let Err(e) = runner.set(to) {
                    return fail(
                        &mut runner,
                        &format!("step {}/{n} ({}): {e:#}", i + 1, step_text(step)),
                    );
                }
                println!("step {}/{n}: setWeight {w}: {to}", i + 1);
                Ok(())
            }
            Step::Pause(d) => {
                println!(
                    "step {}/{n}: pause {}{}",
                    i + 1,
                    humantime::format_duration(*d),
                    if runner.rollout.analyses() && runner.st.weights.canary > 0 {
                        ", analysing the canary"
                    } else {
                        ""
                    }
                );
                match runner.pause(*d, &mut stop).await {
                    Ok(o) => o,
                    Err(e) => {
                        return abort(
                            &mut runner,
                            Phase::Failed,
                            &format!("step {}/{n} (pause): {e:#}", i + 1),
                        );
                    }
                }
            }
        };
        match outcome {
            Ok(()) => {}
            Err(Stop::Failed(why)) => {
                let why = format!(
                    "the canary {} failed the analysis at step {}/{n} (canary weight {}): {why}",
                    runner.rollout.canary,
                    i + 1,
                    runner.st.weights.canary
                );
                return abort(&mut runner, Phase::RolledBack, &why);
            }
            Err(Stop::Interrupted(signal)) => {
                return abort(
                    &mut runner,
                    Phase::Aborted,
                    &format!("interrupted by {signal} at step {}/{n}", i + 1),
                );
            }
        }
    }
    let full = Weights::canary_share(100);
    if runner.st.weights != full {
        if let Err(e) = runner.set(full) {
            return fail(&mut runner, &format!("the final promotion to 100 %: {e:#}"));
        }
        println!("promoted: {full}");
    }
    runner.st.step = n;
    runner.st.step_text = "done".into();
    runner.st.phase = Phase::Succeeded;
    runner.st.message = format!(
        "the canary {} has 100 % of {} after {:.1}s",
        runner.rollout.canary,
        runner.route_name(),
        started.elapsed().as_secs_f64()
    );
    runner.save();
    println!("rollout {id} succeeded: {}", runner.st.message);
    Ok(())
}

/// Sets the canary back to 0 % and ends the run with `why` (and whether the rollback
/// itself worked).
fn abort(runner: &mut Runner, phase: Phase, why: &str) -> anyhow::Result<()> {
    let id = format!("{}/{}", runner.rollout.namespace, runner.rollout.name);
    let back = Weights::canary_share(0);
    let result = runner.set(back);
    runner.st.phase = if result.is_ok() { phase } else { Phase::Failed };
    runner.st.message = match &result {
        Ok(()) => format!("{why}; rolled back: {} set to {back}", runner.route_name()),
        Err(e) => format!(
            "{why}; the rollback failed, {} still has {}: {e:#}",
            runner.route_name(),
            runner.st.weights
        ),
    };
    runner.save();
    bail!("rollout {id}: {}", runner.st.message)
}

/// Ends the run after an error writing the weights (no rollback: the file could not be
/// written).
fn fail(runner: &mut Runner, why: &str) -> anyhow::Result<()> {
    let id = format!("{}/{}", runner.rollout.namespace, runner.rollout.name);
    runner.st.phase = Phase::Failed;
    runner.st.message = format!("{why}; {} has {}", runner.route_name(), runner.st.weights);
    runner.save();
    bail!("rollout {id}: {}", runner.st.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, file: Option<&str>) -> RouteRef {
        RouteRef {
            name: name.into(),
            namespace: "default".into(),
            file: file.map(PathBuf::from),
        }
    }

    #[test]
    fn the_route_file_is_found_by_name_or_named() {
        let dir = std::env::temp_dir().join(format!("weft-rollout-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/routes/books-canary.yaml");
        let text = std::fs::read_to_string(example).unwrap();
        std::fs::write(dir.join("canary.yaml"), &text).unwrap();
        std::fs::write(dir.join("services.yaml"), "kind: Service\n").unwrap();
        // Hidden files (a rollout's own temporary file) are not the mesh's.
        std::fs::write(dir.join(".canary.yaml.weft-rollout.tmp"), &text).unwrap();

        let found = route_file(&dir, &route("books-canary", None)).unwrap();
        assert_eq!(found, dir.join("canary.yaml"));
        let named = route_file(&dir, &route("books-canary", Some("canary.yaml"))).unwrap();
        assert_eq!(named, dir.join("canary.yaml"));

        let e = route_file(&dir, &route("books-other", None))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "spec.route: unknown route: no HTTPRoute default/books-other in the mesh directory"
            ),
            "{e}"
        );
        let e = route_file(&dir, &route("books-canary", Some("services.yaml")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("spec.route: unknown route: no HTTPRoute default/books-canary in"),
            "{e}"
        );
        let e = route_file(&dir, &route("books-canary", Some("missing.yaml")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("spec.route.file: cannot read"), "{e}");

        std::fs::write(dir.join("again.yml"), &text).unwrap();
        let e = route_file(&dir, &route("books-canary", None))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "spec.route: HTTPRoute default/books-canary is in several files (again.yml, canary.yaml); name one with spec.route.file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_backend_without_its_service_is_refused_by_the_controllers_check() {
        let dir = std::env::temp_dir().join(format!("weft-rollout-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for (from, to) in [
            ("demo/mesh.yaml", "mesh.yaml"),
            ("demo/services.yaml", "services.yaml"),
        ] {
            std::fs::copy(examples.join(from), dir.join(to)).unwrap();
        }
        let route = std::fs::read_to_string(examples.join("routes/books-canary.yaml")).unwrap();
        std::fs::write(
            dir.join("books-canary.yaml"),
            route.replace(
                "name: books-v2\n          port",
                "name: books-v3\n          port",
            ),
        )
        .unwrap();
        let text = r#"
apiVersion: weft.io/v1alpha1
kind: Rollout
metadata: {name: books}
spec:
  route: {name: books-canary}
  stableService: books-v1
  canaryService: books-v3
  steps: [{setWeight: 50}]
"#;
        let rollout = spec::parse(text, "r.yaml").unwrap();
        let e = check_backends(&dir, &rollout).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.canaryService books-v3: HTTPRoute default/books-canary's backend does not resolve: BackendNotFound"),
            "{e}"
        );
        // With the Service there, it resolves.
        let mut ok = rollout.clone();
        ok.canary = "books-v2".into();
        std::fs::write(dir.join("books-canary.yaml"), &route).unwrap();
        check_backends(&dir, &ok).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

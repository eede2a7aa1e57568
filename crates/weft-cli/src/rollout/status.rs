//! `weft rollout status [NAME]`: a rollout's step, the route's weights as the file has
//! them now, and the stable and canary backends' live figures over a window.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::analysis::Figures;
use super::edit::{self, Weights};
use super::run::{describe, HINT};
use super::spec::RouteRef;
use super::state::{self, Phase, RolloutState};
use crate::local::LocalArgs;
use crate::stat::mesh::Frame;
use crate::stat::route::route_rows;
use crate::stat::{emit, emit_json, mesh_state, scrape_mesh};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
#[command(after_help = "\
Reads the rollouts `weft rollout run` records in the state directory (rollouts/), the \
route file's weights as they are now, and, while the local mesh is up, the stable and \
canary backends' figures over --window from every proxy (as `weft stat route` computes \
them). --watch redraws in place every window until interrupted.")]
pub struct StatusArgs {
    /// The rollout (metadata.name) [default: every rollout recorded].
    name: Option<String>,
    /// The rollout's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The window of the live figures.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Keep refreshing, one window after another, until interrupted.
    #[arg(long)]
    watch: bool,
    /// Output format (json: an array, one object per rollout).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    local: LocalArgs,
}

/// One rollout as `status` shows it.
#[derive(Serialize)]
struct View {
    #[serde(flatten)]
    state: RolloutState,
    /// The run recorded as progressing is gone (killed without a rollback).
    runner_gone: bool,
    /// The weights in the route file now, when it reads.
    route_weights: Option<Weights>,
    /// The backends' figures over the window (`None` without a running mesh).
    stable_live: Option<Figures>,
    canary_live: Option<Figures>,
}

fn selected(args: &StatusArgs) -> anyhow::Result<Vec<RolloutState>> {
    let state_dir = args.local.state_dir();
    let all = state::load_all(&state_dir);
    match &args.name {
        None => Ok(all),
        Some(name) => {
            let one: Vec<RolloutState> = all
                .into_iter()
                .filter(|s| &s.name == name && s.namespace == args.namespace)
                .collect();
            if one.is_empty() {
                bail!(
                    "no rollout {}/{name} recorded in {} (`weft rollout run FILE` starts one; `weft rollout status` lists them)",
                    args.namespace,
                    state::dir(&state_dir).display()
                );
            }
            Ok(one)
        }
    }
}

fn route_ref(s: &RolloutState) -> RouteRef {
    let (namespace, name) = s.route.split_once('/').unwrap_or(("default", &s.route));
    RouteRef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        file: None,
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    args.local.validate()?;
    let interactive = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        // Live figures need the running mesh; without it the recorded state is shown.
        let live = match mesh_state(&args.local, HINT) {
            Ok(mesh) => {
                let before = scrape_mesh(&mesh).await?;
                let at = Instant::now();
                tokio::select! {
                    _ = tokio::time::sleep(args.window) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
                let mesh = mesh_state(&args.local, HINT).unwrap_or(mesh);
                let after = scrape_mesh(&mesh).await?;
                let elapsed = at.elapsed();
                let frame = Frame::between(&before, &after, elapsed);
                Some((route_rows(&BTreeMap::new(), &mesh.pods, &frame), elapsed))
            }
            Err(e) => {
                if first {
                    eprintln!("no live figures: {e:#}");
                }
                None
            }
        };
        // Read after the window, with the route file: what the figures and the
        // weights shown belong to.
        let views: Vec<View> = selected(&args)?
            .into_iter()
            .map(|s| {
                let route = route_ref(&s);
                let route_weights = std::fs::read_to_string(&s.file)
                    .ok()
                    .and_then(|t| edit::weights(&t, &route, &s.stable, &s.canary, "").ok());
                let figures = |backend: &str| {
                    live.as_ref().map(|(rows, elapsed)| {
                        let row = rows.iter().find(|r| {
                            r.kind == "HTTPRoute"
                                && r.namespace == route.namespace
                                && r.name == route.name
                                && r.backend.as_deref() == Some(backend)
                        });
                        Figures::of(row, *elapsed)
                    })
                };
                View {
                    runner_gone: !s.phase.done() && !s.runner_alive(),
                    route_weights,
                    stable_live: figures(&s.stable),
                    canary_live: figures(&s.canary),
                    state: s,
                }
            })
            .collect();
        match args.output {
            Output::Json => emit_json(&views)?,
            Output::Table => {
                let mut out = String::new();
                if args.watch && interactive {
                    // Redraw in place: clear the screen, cursor home.
                    out.push_str("\x1b[2J\x1b[H");
                }
                out.push_str(&text(&views, args.window));
                emit(&out);
            }
        }
        first = false;
        if !args.watch {
            return Ok(());
        }
        if live.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(args.window) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
}

fn text(views: &[View], window: Duration) -> String {
    let mut out = String::new();
    if views.is_empty() {
        out.push_str("(no rollouts recorded: `weft rollout run FILE` starts one)\n");
    }
    for v in views {
        let s = &v.state;
        let phase = match s.phase {
            Phase::Progressing if v.runner_gone => {
                format!(
                    "Progressing, but its weft rollout run (pid {}) is gone",
                    s.pid
                )
            }
            p => format!("{p:?}"),
        };
        let step = if s.step >= s.steps {
            format!("{}/{} done", s.steps, s.steps)
        } else {
            format!("{}/{} ({})", s.step + 1, s.steps, s.step_text)
        };
        out.push_str(&format!(
            "rollout {}/{}: {phase}, step {step}\n  route   HTTPRoute {} ({})\n",
            s.namespace,
            s.name,
            s.route,
            s.file.display()
        ));
        let weights = match v.route_weights {
            Some(w) if w != s.weights => format!(
                "{w} (the file was edited since: the rollout wrote {})",
                s.weights
            ),
            Some(w) => w.to_string(),
            None => format!("{} (the route file does not read now)", s.weights),
        };
        let canary_pct = v
            .route_weights
            .unwrap_or(s.weights)
            .percent()
            .map_or("-".into(), |p| format!("{p:.0}%"));
        out.push_str(&format!("  weights {weights}: canary {canary_pct}\n"));
        if !s.message.is_empty() {
            out.push_str(&format!("  message {}\n", s.message));
        }
        if let Some(f) = &s.last_analysis {
            out.push_str(&format!("  last analysis of the canary: {}\n", describe(f)));
        }
        match (&v.stable_live, &v.canary_live) {
            (Some(stable), Some(canary)) => {
                out.push_str(&format!(
                    "  live, last {}:\n  {:<8} {:<20} {:>8} {:>8} {:>9} {:>10}\n",
                    humantime::format_duration(Duration::from_secs_f64(
                        (window.as_secs_f64() * 10.0).round() / 10.0
                    )),
                    "ROLE",
                    "BACKEND",
                    "REQUESTS",
                    "RPS",
                    "SUCCESS",
                    "P99"
                ));
                for (role, name, f) in
                    [("stable", &s.stable, stable), ("canary", &s.canary, canary)]
                {
                    out.push_str(&format!(
                        "  {:<8} {:<20} {:>8} {:>8.1} {:>9} {:>10}\n",
                        role,
                        name,
                        f.requests,
                        f.rps,
                        f.success
                            .map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
                        f.latency_ms_p99.map_or("-".into(), |v| format!("{v:.1}ms")),
                    ));
                }
            }
            _ => out.push_str("  live    - (no local mesh up)\n"),
        }
    }
    out
}

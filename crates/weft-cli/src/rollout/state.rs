//! A rollout's progress in the mesh's state directory (`rollouts/{namespace}.{name}.json`),
//! written atomically at every change so `weft rollout status` can follow it from
//! another shell.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::analysis::Figures;
use super::edit::Weights;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Setting a weight or pausing, with the analysis running.
    Progressing,
    /// Every step done: the canary has 100 %.
    Succeeded,
    /// The analysis failed: the canary was set back to 0 %.
    RolledBack,
    /// Interrupted: the canary was set back to 0 %.
    Aborted,
    /// Stopped by an error (the route file could not be written, the mesh went away):
    /// the weights are those the message says.
    Failed,
}

impl Phase {
    pub fn done(self) -> bool {
        self != Phase::Progressing
    }
}

/// What `weft rollout status` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutState {
    pub name: String,
    pub namespace: String,
    /// `namespace/name` of the HTTPRoute.
    pub route: String,
    /// The route's file.
    pub file: PathBuf,
    pub stable: String,
    pub canary: String,
    pub phase: Phase,
    /// The step being run (0-based), `steps` once every step is done.
    pub step: usize,
    pub steps: usize,
    /// The step being run, as written (`setWeight: 20`, `pause: 30s`).
    pub step_text: String,
    /// The weights last written to the route file.
    pub weights: Weights,
    /// The last verdict's message, or why the rollout stopped.
    pub message: String,
    /// The canary's figures of the last judgement.
    pub last_analysis: Option<Figures>,
    /// The `weft rollout run` process.
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    pub updated: u64,
}

/// The directory of the rollouts' state files.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("rollouts")
}

pub fn path(state_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir(state_dir).join(format!("{namespace}.{name}.json"))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RolloutState {
    pub fn save(&mut self, state_dir: &Path) -> anyhow::Result<()> {
        self.updated = now();
        let path = path(state_dir, &self.namespace, &self.name);
        let dir = dir(state_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        super::edit::write_atomic(&path, &serde_json::to_string_pretty(self)?)
    }

    /// Whether the `weft rollout run` that writes this is still running.
    pub fn runner_alive(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"rollout"))
    }
}

/// Every rollout recorded under `state_dir`, by namespace and name; files that do not
/// read are reported on stderr and skipped.
pub fn load_all(state_dir: &Path) -> Vec<RolloutState> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<RolloutState> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            match serde_json::from_str(&text) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("warning: {} does not read: {e}", p.display());
                    None
                }
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

//! Taking a mesh down by its state file: what `weft down` does, and what `weft up`
//! does when it stops, fails, or removes pods.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::state::{stop_all, PodRecord, ProcRecord, State};
use super::sys;

/// Time a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Stops every recorded process, deletes the pods' and the hub's namespaces and the
/// recorded files, then the state file. Saves progress as it goes, so it can be run
/// again after an interruption. `reap` collects exited children (foreground `weft up`).
pub fn teardown(state: &mut State, path: &Path, reap: impl FnMut()) -> anyhow::Result<()> {
    let procs: Vec<ProcRecord> = state.procs().cloned().collect();
    stop_all(&procs, STOP_GRACE, reap);
    let mut errors = Vec::new();
    for p in &procs {
        if p.is_running() {
            errors.push(format!("{} (pid {}) is still running", p.role, p.pid));
        }
    }
    for pod in &mut state.pods {
        pod.procs.retain(ProcRecord::is_running);
    }
    state.controller = state.controller.take().filter(ProcRecord::is_running);
    state.prometheus = state.prometheus.take().filter(ProcRecord::is_running);
    let _ = state.save(path);

    let mut kept = Vec::new();
    for pod in std::mem::take(&mut state.pods) {
        if !pod.procs.is_empty() {
            kept.push(pod);
            continue;
        }
        if let Err(e) = remove_pod(&pod, state.loopback) {
            errors.push(format!("{e:#}"));
            kept.push(pod);
        }
    }
    state.pods = kept;
    let _ = state.save(path);

    if let Some(hub) = state.hub.clone() {
        match delete_netns(&hub) {
            Ok(()) => state.hub = None,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // Files last (the state directory may hold the state file itself), deepest first.
    let mut files = std::mem::take(&mut state.files);
    files.sort_by_key(|f| std::cmp::Reverse(f.components().count()));
    let state_dir = path.parent().map(Path::to_owned);
    let mut kept_files = Vec::new();
    for f in files {
        if Some(&f) == state_dir.as_ref() {
            kept_files.push(f);
            continue;
        }
        if let Err(e) = remove_path(&f) {
            errors.push(format!("{e:#}"));
            kept_files.push(f);
        }
    }
    state.files = kept_files;
    // Rollouts' state (`weft rollout`): about this mesh's routes, gone with it.
    if let Some(dir) = &state_dir {
        if let Err(e) = remove_path(&crate::rollout::state::dir(dir)) {
            errors.push(format!("{e:#}"));
        }
    }
    if errors.is_empty() && state.pods.is_empty() && state.hub.is_none() {
        std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .with_context(|| format!("cannot remove {}", path.display()))?;
        for f in &state.files {
            // The state directory, if weft up made it: only when empty.
            let _ = std::fs::remove_dir(f);
        }
        Ok(())
    } else {
        state.save(path)?;
        anyhow::bail!(
            "some of the mesh is left ({} records it; run `weft down` again):\n  {}",
            path.display(),
            errors.join("\n  ")
        )
    }
}

/// Deletes a pod's namespace (its veth pair and iptables rules go with it) and files.
/// A loopback pod has no namespace (its `netns` names none; a namespace of that name
/// would be someone else's).
pub fn remove_pod(pod: &PodRecord, loopback: bool) -> anyhow::Result<()> {
    if !loopback {
        delete_netns(&pod.netns)?;
    }
    for f in &pod.files {
        remove_path(f)?;
    }
    Ok(())
}

fn delete_netns(ns: &str) -> anyhow::Result<()> {
    if sys::netns_exists(ns) {
        sys::run("ip", ["netns", "delete", ns])?;
    }
    Ok(())
}

fn remove_path(path: &Path) -> anyhow::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.with_context(|| format!("cannot remove {}", path.display()))
}

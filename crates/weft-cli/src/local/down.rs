//! `weft down`: undoes what the state file records, also after `weft up` crashed.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::state::State;
use super::teardown::teardown;
use super::{sys, LocalArgs};

#[derive(clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    local: LocalArgs,
}

pub fn run(args: DownArgs) -> anyhow::Result<()> {
    args.local.validate()?;
    let path = args.local.state_path();
    let Some(mut state) = State::load(&path)? else {
        println!(
            "no mesh is up ({} does not exist): nothing to do",
            path.display()
        );
        return Ok(());
    };
    // A loopback mesh (no namespaces) is taken down by the user who made it.
    anyhow::ensure!(
        state.loopback || sys::is_root(),
        "weft down needs root to delete network namespaces and stop the mesh's processes"
    );
    let started = Instant::now();
    // A foreground `weft up` (or a detached mesh's supervisor) takes its own mesh down
    // when asked to stop.
    if let Some(owner) = state.owner.clone() {
        if owner.signal_leader(Signal::SIGTERM) {
            println!(
                "asked weft up (pid {}) to take down {}",
                owner.pid,
                describe(&state)
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && path.exists() && owner.is_running() {
                std::thread::sleep(Duration::from_millis(50));
            }
            match State::load(&path)? {
                None => {
                    println!("mesh down in {:.2}s", started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Some(s) => state = s,
            }
        }
    }
    println!("taking down {}", describe(&state));
    teardown(&mut state, &path, || {})?;
    println!("mesh down in {:.2}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `the mesh from DIR (N pods[, loopback mode])`.
fn describe(state: &State) -> String {
    format!(
        "the mesh from {} ({} pods{})",
        state.mesh_dir.display(),
        state.pods.len(),
        if state.loopback {
            ", loopback mode"
        } else {
            ""
        }
    )
}

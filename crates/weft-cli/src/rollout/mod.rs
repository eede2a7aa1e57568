//! `weft rollout`: progressive delivery on the local mesh without Argo. A small
//! `Rollout` file names an HTTPRoute, its stable and canary backends, steps of weight
//! and pause, and the canary's thresholds; `run` shifts the route's weights step by
//! step, judges the canary from the proxies' own metrics during each pause and rolls
//! back to 0 % when it fails; `status` follows it from another shell (docs/rollout.md).

pub mod analysis;
pub mod edit;
pub mod run;
pub mod spec;
pub mod state;
pub mod status;

use clap::Subcommand;

#[derive(clap::Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Run a Rollout file: shift the route's weights step by step, judge the canary in
    /// each pause, roll back to 0 % when it fails.
    Run(run::RunArgs),
    /// A rollout's step, the route's weights and the live stable/canary figures.
    Status(status::StatusArgs),
}

pub async fn run(args: RolloutArgs) -> anyhow::Result<()> {
    match args.command {
        RolloutCommand::Run(a) => run::run(a).await,
        RolloutCommand::Status(a) => status::run(a).await,
    }
}

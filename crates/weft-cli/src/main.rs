//! `weft`: the command line of the weft service mesh.

mod check_kube;
mod demo;
mod diagnostics;
mod edges;
mod fetch;
mod get;
mod identity;
mod inject;
mod install;
mod load;
mod local;
mod observe;
mod rollout;
mod stat;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "weft service mesh: run the demo, show golden metrics, generate load"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a demo: an app behind a weft-proxy with steady traffic, and its live golden metrics.
    Demo(demo::DemoArgs),
    /// Golden metrics (success rate, RPS, latency percentiles) computed from proxies' /metrics.
    Stat(stat::StatArgs),
    /// Send HTTP requests at a fixed rate and report latency percentiles.
    Load(load::LoadArgs),
    /// Run a mesh directory locally: a network namespace, proxy and command per replica (root).
    Up(local::up::UpArgs),
    /// Take down the local mesh `weft up` started (also after it crashed).
    Down(local::down::DownArgs),
    /// Preflight checks for `weft up` (with --kube: of weft on a Kubernetes cluster), each failure with its fix.
    Check(local::check::CheckArgs),
    /// The mesh's certificate authority: `weft identity init` makes a trust anchor and issuer.
    Identity(identity::IdentityArgs),
    /// The local mesh's pods and controller: state, readiness, restarts, address, zone, age.
    Ps(local::ps::PsArgs),
    /// A local mesh pod's app log (or its proxy's with --proxy); -f follows it.
    Logs(local::logs::LogsArgs),
    /// Run a command in a local mesh pod, as its app runs (network namespace, user).
    Exec(local::exec::ExecArgs),
    /// Restart a local mesh workload's pods one at a time (not counted as crashes).
    Restart(local::control::RestartArgs),
    /// Set a local mesh workload's replicas in mesh.yaml and wait for its pods.
    Scale(local::scale::ScaleArgs),
    /// Who talks to whom in the local mesh, with both identities and whether it is mTLS.
    Edges(edges::EdgesArgs),
    /// Raw diagnostics of the local mesh: `weft diagnostics proxy-metrics POD`.
    Diagnostics(diagnostics::DiagnosticsArgs),
    /// The mesh directory's routes with their parents, backends and status: `weft get routes`.
    Get(get::GetArgs),
    /// Progressive delivery: shift an HTTPRoute's weights to a canary step by step, roll back on failure.
    Rollout(rollout::RolloutArgs),
    /// Add the weft proxy to the pods of Kubernetes YAML (FILE or -), as the injector would; prints YAML.
    Inject(inject::InjectArgs),
    /// Print the Kubernetes manifests: the CRDs (--crds) and the control plane.
    Install(install::InstallArgs),
    /// Print what `weft install` made, for `kubectl delete -f -`.
    Uninstall(install::UninstallArgs),
}

/// Errors are for people: one message with its causes (`error: what: why`), no
/// backtrace even under `RUST_BACKTRACE=1`, unless `WEFT_DEBUG` asks for the details.
fn main() -> std::process::ExitCode {
    quiet_when_stdout_closes();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if std::env::var_os("WEFT_DEBUG").is_some_and(|v| !v.is_empty() && v != "0") {
                eprintln!("\n{error:?}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// A reader that stops early (`weft check | head -1`) ends the command quietly with
/// status 0, as `weft get` and `weft stat` do, instead of a panic: Rust ignores SIGPIPE,
/// so `println!` on a closed pipe panics with `failed printing to stdout: Broken pipe`,
/// and `unsafe_code` is forbidden here, so SIGPIPE cannot be set back to its default
/// (which would also kill `weft up` when a child it writes to exits). The panic hook
/// exits on exactly that panic and leaves every other panic to the default hook.
fn quiet_when_stdout_closes() {
    let closed = format!(
        "failed printing to stdout: {}",
        std::io::Error::from_raw_os_error(nix::libc::EPIPE)
    );
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // (`PanicHookInfo::payload_as_str` is past the MSRV.)
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if message == Some(closed.as_str()) {
            std::process::exit(0);
        }
        default(info)
    }));
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Stat(args) => stat::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Up(args) => local::up::run(args).await,
            Command::Down(args) => local::down::run(args),
            Command::Check(args) if args.kube.kube => check_kube::run(args.kube).await,
            Command::Check(args) => local::check::run(args),
            Command::Identity(args) => identity::run(args),
            Command::Ps(args) => local::ps::run(args),
            Command::Logs(args) => local::logs::run(args),
            Command::Exec(args) => local::exec::run(args),
            Command::Restart(args) => local::control::run_restart(args),
            Command::Scale(args) => local::scale::run(args),
            Command::Edges(args) => edges::run(args).await,
            Command::Diagnostics(args) => diagnostics::run(args).await,
            Command::Get(args) => get::run(args),
            Command::Rollout(args) => rollout::run(args).await,
            Command::Inject(args) => inject::run(args),
            Command::Install(args) => install::run(args),
            Command::Uninstall(args) => install::run_uninstall(args),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `weft` command README.md and docs/ show still parses: the docs cannot
    /// drift from the command line.
    #[test]
    fn every_weft_command_the_docs_show_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let (checked, failed) = weft_test::docs::check_repo_docs(&root, "weft", |args| {
            match Cli::try_parse_from(
                std::iter::once("weft".to_owned()).chain(args.iter().cloned()),
            ) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(()),
                Err(e) => Err(e.kind().to_string()),
            }
        });
        assert!(
            failed.is_empty(),
            "commands in the docs that do not parse:\n{}",
            failed.join("\n")
        );
        assert!(
            checked >= 20,
            "only {checked} weft commands found in the docs"
        );
    }
}

//! `weft exec POD -- CMD ARGS...`: runs a command the way the pod's app runs.

use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;

use anyhow::{anyhow, Context as _};
use tokio::signal::unix::{signal, SignalKind};
use weft_core::mesh::Mesh;

use super::apps::{app_argv, app_env, app_ids, apps_bin_dir, apps_path, PROXY_ENV};
use super::control::find_pod;
use super::{sys, LocalArgs};

#[derive(clap::Args)]
#[command(after_help = "\
Namespace mode (root): CMD runs in the pod's network namespace with its hosts file \
(`ip netns exec`), in a mount namespace of its own where the state directory is hidden, \
as the app's user (`user:` in mesh.yaml, default 2103) without privileges, in the mesh \
directory, with the app's environment (WEFT_POD, WEFT_POD_IP, ..., the workload's env). \
--root runs it as root in the pod's network namespace only (plain `ip netns exec`), e.g. \
to look at the pod's iptables rules.

Loopback mode has no namespace to enter: CMD runs as you, here, with the pod's \
environment (WEFT_LISTEN_ADDR, and HTTP_PROXY = the pod's proxy, so HTTP calls go \
through it as the app's do); a note on stderr says so.

The exit code is CMD's (128 + N when a signal N ended it).

Examples:
  weft exec web-0 -- weft-demo-app get http://books.default.svc:8080/books/dune
  weft exec books-0 -- ip -4 addr show eth0
  weft exec books -- sh            # workload books has one pod
  weft exec --root books-0 -- iptables -t nat -S")]
pub struct ExecArgs {
    /// The pod (`books-0`), or a workload with one pod (`books`).
    pod: String,
    /// Namespace mode: run CMD as root in the pod's network namespace, without the
    /// app's user, mount namespace and environment.
    #[arg(long)]
    root: bool,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
    #[command(flatten)]
    local: LocalArgs,
}

pub fn run(args: ExecArgs) -> anyhow::Result<()> {
    let state = args.local.running_mesh("start one with `weft up`")?;
    let pod = find_pod(&state, &args.pod)?;
    let loopback = state.loopback;
    if !loopback {
        anyhow::ensure!(
            sys::is_root(),
            "weft exec needs root to enter pod {}'s network namespace",
            pod.name
        );
        anyhow::ensure!(
            sys::netns_exists(&pod.netns),
            "pod {}'s network namespace {} does not exist (any more)",
            pod.name,
            pod.netns
        );
    }
    let mut cmd = if args.root {
        anyhow::ensure!(
            !loopback,
            "--root: a loopback mesh's pods have no network namespace to enter"
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns]).args(&args.command);
        cmd
    } else {
        let mesh = Mesh::load(&state.mesh_dir).map_err(|e| {
            anyhow!(
                "{}: cannot read the workload's settings (user, env): the mesh is not valid:\n{e}",
                state.mesh_dir.display()
            )
        })?;
        let w = mesh
            .workload(&pod.namespace, &pod.workload)
            .ok_or_else(|| {
                anyhow!(
                    "workload {} of pod {} is not in {} any more",
                    pod.workload,
                    pod.name,
                    state.mesh_dir.display()
                )
            })?;
        let exe_dir = std::env::current_exe()?
            .parent()
            .map(std::path::Path::to_owned)
            .unwrap_or_default();
        let state_dir = std::path::absolute(args.local.state_dir())?;
        let apps_bin = Some(apps_bin_dir(&state_dir)).filter(|d| !loopback && d.is_dir());
        let mut cmd = if loopback {
            let (program, rest) = args
                .command
                .split_first()
                .ok_or_else(|| anyhow!("no command given"))?;
            eprintln!(
                "note: loopback mode: no network namespace to enter; running {program} as you with pod {}'s environment (WEFT_LISTEN_ADDR={ip}, HTTP_PROXY=http://{ip}:{})",
                pod.name,
                super::OUTBOUND_PORT,
                ip = pod.ip,
            );
            let mut cmd = Command::new(program);
            cmd.args(rest);
            cmd
        } else {
            let (uid, gid) = app_ids(w)?;
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &pod.netns]).args(app_argv(
                &state_dir,
                uid,
                gid,
                &args.command,
            ));
            cmd
        };
        for var in PROXY_ENV {
            cmd.env_remove(var);
        }
        cmd.env("PATH", apps_path(apps_bin.as_deref(), &exe_dir)?)
            .envs(app_env(&pod.name, pod.ip, w, loopback))
            .current_dir(&state.mesh_dir);
        cmd
    };
    // Ctrl-C and Ctrl-\ at the terminal reach CMD (in the same process group); this
    // process waits for CMD's exit code instead of dying first. A handler, not an
    // ignored signal: CMD's dispositions are reset to the defaults when it starts.
    let _interrupt = signal(SignalKind::interrupt());
    let _quit = signal(SignalKind::quit());
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", args.command.join(" ")))?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => 1,
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        exec: ExecArgs,
    }

    fn parse(args: &[&str]) -> (String, bool, Vec<String>) {
        let cli = Cli::try_parse_from(std::iter::once("exec").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        (cli.exec.pod, cli.exec.root, cli.exec.command)
    }

    #[test]
    fn the_command_is_everything_after_the_pod_with_or_without_dashes() {
        let cmd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse(&["books-0", "--", "ls", "-l", "--all"]),
            ("books-0".into(), false, cmd(&["ls", "-l", "--all"]))
        );
        assert_eq!(
            parse(&["books-0", "ip", "-4", "addr"]),
            ("books-0".into(), false, cmd(&["ip", "-4", "addr"]))
        );
        assert_eq!(
            parse(&["--root", "books-0", "--", "id"]),
            ("books-0".into(), true, cmd(&["id"]))
        );
        assert_eq!(
            parse(&["books-0", "--root", "--", "id"]),
            ("books-0".into(), true, cmd(&["id"]))
        );
        // A `--root` of the command's own stays the command's.
        assert_eq!(
            parse(&["books-0", "--", "tool", "--root"]),
            ("books-0".into(), false, cmd(&["tool", "--root"]))
        );
        assert!(Cli::try_parse_from(["exec", "books-0"]).is_err());
    }
}

//! Linux network namespaces by name (`ip netns`, `/run/netns/{name}`): entering one from
//! a thread, running async code inside one, and running the commands that build them.
//! What `weft up` (the local mesh) and the namespace tests (`weft_test::netns`) share;
//! the proxy never enters a namespace (feature `netns`).

use std::ffi::OsStr;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

/// What went wrong, naming the namespace, file or command at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {ns}")]
    Enter { ns: String, source: nix::Error },
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot build a runtime")]
    Runtime(#[source] std::io::Error),
    #[error("work in {place} took over {limit:?}")]
    TookTooLong { place: String, limit: Duration },
    #[error("cannot run {line}")]
    Spawn {
        line: String,
        source: std::io::Error,
    },
    #[error("cannot write to {line}")]
    Input {
        line: String,
        source: std::io::Error,
    },
    #[error("`{line}` failed ({status}): {stderr}")]
    Failed {
        line: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Where `ip netns` keeps the namespace `ns`.
pub fn path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

pub fn exists(ns: &str) -> bool {
    path(ns).exists()
}

/// Moves the calling thread into the network namespace `ns`: sockets it creates
/// afterwards belong there.
pub fn enter(ns: &str) -> Result<(), Error> {
    let path = path(ns);
    let file = File::open(&path).map_err(|source| Error::Open { path, source })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
        ns: ns.to_owned(),
        source,
    })
}

/// A current-thread runtime with timers and I/O, for a thread inside a namespace.
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// Runs `f()` to completion inside the network namespace `ns` (with `None`, in this
/// process's own), on a new OS thread that enters it and builds a current-thread
/// runtime; blocks the caller. Gives up after `limit`.
pub fn in_netns<F, Fut, T>(ns: Option<&str>, limit: Duration, f: F) -> Result<T, Error>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.map(str::to_owned);
    let place = ns
        .as_deref()
        .map_or("this network namespace".to_owned(), |ns| {
            format!("network namespace {ns}")
        });
    let thread = std::thread::Builder::new()
        .name(
            ns.as_deref()
                .map_or("local".into(), |ns| format!("netns {ns}")),
        )
        .spawn(move || -> Result<T, Error> {
            if let Some(ns) = &ns {
                enter(ns)?;
            }
            let rt = current_thread_runtime()?;
            rt.block_on(async move {
                tokio::time::timeout(limit, f())
                    .await
                    .map_err(|_| Error::TookTooLong { place, limit })
            })
        })
        .map_err(Error::Thread)?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs a command (`ip`, `iptables-restore`, ...) to completion with `input` on its
/// stdin; returns its stdout. A failure carries the command line and its stderr.
pub fn run<I, S>(program: &str, args: I, input: Option<&str>) -> Result<String, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = command_line(&cmd);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(source) => return Err(Error::Spawn { line, source }),
    };
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        if let Err(source) = stdin.write_all(input.as_bytes()) {
            return Err(Error::Input { line, source });
        }
    }
    let out = match child.wait_with_output() {
        Ok(out) => out,
        Err(source) => return Err(Error::Spawn { line, source }),
    };
    if !out.status.success() {
        return Err(Error::Failed {
            line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_names_itself_and_says_its_stderr() {
        let e = run("sh", ["-c", "echo oops >&2; exit 3"], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`sh -c echo oops >&2; exit 3` failed (exit status: 3): oops"
        );
        assert_eq!(run("cat", [] as [&str; 0], Some("in")).unwrap(), "in");
    }

    #[test]
    fn code_runs_here_without_a_namespace_and_is_cut_off_at_its_limit() {
        assert_eq!(
            in_netns(None, Duration::from_secs(5), || async { 7 }).unwrap(),
            7
        );
        let e = in_netns(None, Duration::from_millis(10), || {
            tokio::time::sleep(Duration::from_secs(5))
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "work in this network namespace took over 10ms"
        );
    }
}

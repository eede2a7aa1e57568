//! `weft logs [-f] POD [--proxy] [--tail N]`: a pod's app log (or its proxy's).

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::control::find_pod;
use super::state::State;
use super::LocalArgs;

/// How often a followed log is checked for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// How often following checks that the pod (and the mesh) still exist.
const GONE_EVERY: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
#[command(after_help = "\
Logs are files under the state directory ({state}/logs/{pod}.app.log, \
{pod}.proxy.log, controller.log) that weft up appends to across restarts, with a \
`--- weft up: the app exited ...; restart N ---` line before each new process's \
output. -f keeps printing across restarts and ends when the pod or the mesh goes away.

Examples:
  weft logs books-0
  weft logs -f web                 # workload web has one pod
  weft logs books-1 --proxy --tail 20
  weft logs controller")]
pub struct LogsArgs {
    /// The pod (`books-0`), a workload with one pod (`books`), or `controller`.
    pod: String,
    /// Follow: keep printing what is appended (also across restarts).
    #[arg(short = 'f', long)]
    follow: bool,
    /// The pod's proxy's log instead of its app's.
    #[arg(long)]
    proxy: bool,
    /// Only the last N lines (then, with -f, what follows).
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    #[command(flatten)]
    local: LocalArgs,
}

pub fn run(args: LogsArgs) -> anyhow::Result<()> {
    let state = args.local.running_mesh("start one with `weft up`")?;
    let log_dir = args.local.state_dir().join("logs");
    let (what, pod_name, path) =
        if args.pod == "controller" && find_pod(&state, "controller").is_err() {
            anyhow::ensure!(!args.proxy, "--proxy: the controller has no proxy");
            let path = state
                .controller
                .as_ref()
                .and_then(|c| c.log.clone())
                .unwrap_or_else(|| log_dir.join("controller.log"));
            ("the controller".to_owned(), None, path)
        } else {
            let pod = find_pod(&state, &args.pod)?;
            let role = if args.proxy { "proxy" } else { "app" };
            let path = pod
                .procs
                .iter()
                .find(|p| p.role == role)
                .and_then(|p| p.log.clone())
                .unwrap_or_else(|| log_dir.join(format!("{}.{role}.log", pod.name)));
            (
                format!("pod {}'s {role}", pod.name),
                Some(pod.name.clone()),
                path,
            )
        };
    let mut out = std::io::stdout().lock();
    let mut file = match File::open(&path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.follow => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{what} has no log yet ({} does not exist)", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut pos = 0;
    if let Some(f) = &mut file {
        pos = match args.tail {
            Some(n) => tail_start(f, n)?,
            None => 0,
        };
        if !copy_from(f, &mut pos, &mut out)? {
            return Ok(());
        }
    }
    if !args.follow {
        return Ok(());
    }
    follow(
        &args.local.state_path(),
        &path,
        pod_name,
        file,
        pos,
        &mut out,
    )
}

/// Copies `f` from `*pos` to its end to `out`, advancing `pos`. `Ok(false)` when
/// `out` is closed (`weft logs ... | head`): nothing more to do.
fn copy_from(f: &mut File, pos: &mut u64, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    f.seek(SeekFrom::Start(*pos))?;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        *pos += n as u64;
        if out.write_all(&buf[..n]).is_err() {
            return Ok(false);
        }
    }
    Ok(out.flush().is_ok())
}

/// Where the last `lines` lines of `f` begin.
fn tail_start(f: &mut File, lines: usize) -> anyhow::Result<u64> {
    let len = f.seek(SeekFrom::End(0))?;
    if lines == 0 {
        return Ok(len);
    }
    let mut end = len;
    let mut newlines = 0;
    let mut buf = vec![0u8; 64 * 1024];
    // A last line without its newline counts as a line too.
    let mut skip_final = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if skip_final {
                skip_final = false;
                if *b == b'\n' {
                    continue;
                }
            }
            if *b == b'\n' {
                newlines += 1;
                if newlines == lines {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// `-f`: prints what is appended to `path` until the pod (or the mesh) is gone or
/// stdout closes. A log that is replaced or truncated is read again from its start.
fn follow(
    state_path: &Path,
    path: &PathBuf,
    pod: Option<String>,
    mut file: Option<File>,
    mut pos: u64,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let mut inode = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map(|m| m.ino());
    let mut checked = Instant::now();
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        if let Ok(meta) = std::fs::metadata(path) {
            if inode != Some(meta.ino()) || meta.len() < pos {
                // New or truncated: from its start.
                file = File::open(path).ok();
                inode = file
                    .as_ref()
                    .and_then(|f| f.metadata().ok())
                    .map(|m| m.ino());
                pos = 0;
            }
        }
        if let Some(f) = &mut file {
            if !copy_from(f, &mut pos, out)? {
                return Ok(());
            }
        }
        if checked.elapsed() >= GONE_EVERY {
            checked = Instant::now();
            match State::load(state_path) {
                Ok(Some(state)) => {
                    if let Some(pod) = &pod {
                        if !state.pods.iter().any(|p| &p.name == pod) {
                            eprintln!("weft logs: pod {pod} is gone");
                            return Ok(());
                        }
                    }
                }
                _ => {
                    eprintln!("weft logs: the mesh was taken down");
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(text: &str, n: usize) -> String {
        let dir = std::env::temp_dir().join(format!("weft-logs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("t{n}-{}", text.len()));
        std::fs::write(&path, text).unwrap();
        let mut f = File::open(&path).unwrap();
        let start = tail_start(&mut f, n).unwrap() as usize;
        let _ = std::fs::remove_dir_all(&dir);
        text[start..].to_owned()
    }

    #[test]
    fn tail_gives_the_last_lines_with_or_without_a_final_newline() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 0), "");
        assert_eq!(tail_of("", 3), "");
        let long: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail_of(&long, 2), "line 19998\nline 19999\n");
    }
}

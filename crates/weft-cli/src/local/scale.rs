//! `weft scale WORKLOAD N`: sets the workload's `replicas:` in the mesh directory's
//! `mesh.yaml` (that one value: comments, order and layout stay) and waits until the
//! running mesh, which watches the directory, has N ready pods of it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use weft_core::mesh::{Mesh, MESH_FILE};

use super::control::{find_workload, spell, supervisor, Status};
use super::LocalArgs;

#[derive(clap::Args)]
#[command(after_help = "\
Only the number after the workload's `replicas:` changes in mesh.yaml (a line \
`replicas: N` is added after its `name:` when it has none); the running weft up \
(foreground, or the supervisor of `weft up -d`) notices the change within 300 ms and \
starts or removes pods as for any edit of the directory.

Examples:
  weft scale books 3
  weft scale books.shop 0          # workload books of namespace shop")]
pub struct ScaleArgs {
    /// The workload (`NAME`, or `NAME.NAMESPACE`).
    workload: String,
    /// How many replicas it should have.
    replicas: u32,
    /// How long to wait until the mesh has that many ready pods of it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    local: LocalArgs,
}

pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    let state = args.local.running_mesh("start one with `weft up`")?;
    let owner = supervisor(&state)?;
    let dir = state.mesh_dir.clone();
    let mesh = Mesh::load(&dir).map_err(|e| {
        anyhow!(
            "{}: the mesh is not valid now; fix it before scaling:\n{e}",
            dir.display()
        )
    })?;
    let names: Vec<(String, String)> = mesh
        .workloads
        .iter()
        .map(|w| (w.namespace.clone(), w.name.clone()))
        .collect();
    let what = format!("in {}", dir.join(MESH_FILE).display());
    let (namespace, name) = find_workload(&names, &args.workload, &what)?.clone();
    let index = names
        .iter()
        .position(|n| *n == (namespace.clone(), name.clone()))
        .unwrap_or_default();
    let who = spell(&namespace, &name);
    let before = mesh.workloads[index].replicas;
    if before == args.replicas {
        println!("{who} has {before} replicas in mesh.yaml already");
    } else {
        let path = dir.join(MESH_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let edited = set_replicas(&text, index, args.replicas).ok_or_else(|| {
            anyhow!(
                "cannot find where {} sets {who}'s replicas (an unusual layout): set `replicas: {}` there by hand",
                path.display(),
                args.replicas
            )
        })?;
        check_edit(&dir, &mesh, &edited, index, args.replicas)?;
        write_preserving(&path, edited.as_bytes())?;
        println!(
            "{who}: replicas {before} -> {} in {}",
            args.replicas,
            path.display()
        );
    }
    wait(&args, &namespace, &name, &who, owner.pid)
}

/// Waits until the state file records exactly `replicas` pods of the workload and the
/// supervisor says each is ready, printing pods as they come and go.
fn wait(
    args: &ScaleArgs,
    namespace: &str,
    name: &str,
    who: &str,
    owner: u32,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let path = args.local.state_path();
    let mut seen: BTreeSet<(String, bool)> = BTreeSet::new();
    let mut first = true;
    loop {
        let state = args.local.running_mesh("it was taken down")?;
        supervisor(&state)?;
        let status = Status::load(&args.local.state_dir(), &state);
        let pods: Vec<(String, bool)> = state
            .pods
            .iter()
            .filter(|p| p.namespace == namespace && p.workload == name)
            .map(|p| {
                let ready = status
                    .as_ref()
                    .and_then(|s| s.pods.get(&p.netns))
                    .is_some_and(|s| s.ready && s.wanted);
                (p.name.clone(), ready)
            })
            .collect();
        let now: BTreeSet<(String, bool)> = pods.iter().cloned().collect();
        if !first {
            for (pod, ready) in now.difference(&seen) {
                if *ready {
                    println!("  {pod}: ready");
                } else if !seen.iter().any(|(p, _)| p == pod) {
                    println!("  {pod}: started");
                }
            }
            for (pod, _) in seen.difference(&now) {
                if !now.iter().any(|(p, _)| p == pod) {
                    println!("  {pod}: removed");
                }
            }
        }
        first = false;
        seen = now;
        let ready = pods.iter().filter(|(_, r)| *r).count();
        if status.is_some() && pods.len() == args.replicas as usize && ready == pods.len() {
            println!(
                "{who}: {ready}/{} pods ready ({:.1}s)",
                args.replicas,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let last = format!(
            "{ready} of {} pods ready ({})",
            pods.len(),
            pods.iter()
                .map(|(p, r)| format!("{p}: {}", if *r { "ready" } else { "not ready" }))
                .collect::<Vec<_>>()
                .join(", ")
        )
        .replace(" ()", "");
        if started.elapsed() > args.timeout {
            bail!(
                "{who} does not have {} ready pods after {}: {last}; weft up (pid {owner}) says why in its output or {} (and `weft ps`, `weft logs POD`)",
                args.replicas,
                humantime::format_duration(args.timeout),
                path.with_file_name("logs").join("weft-up.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks an edited mesh.yaml: it is a valid mesh with the other files of `dir`, and
/// it differs from `mesh` only in workload `index`'s replicas.
fn check_edit(
    dir: &Path,
    mesh: &Mesh,
    edited: &str,
    index: usize,
    replicas: u32,
) -> anyhow::Result<()> {
    let mut files = vec![(MESH_FILE.to_owned(), edited.to_owned())];
    for path in weft_core::mesh::yaml_files(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
    {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name != MESH_FILE {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            files.push((name, text));
        }
    }
    let new = Mesh::parse(&files)
        .map_err(|e| anyhow!("with {replicas} replicas the mesh is not valid:\n{e}"))?;
    let mut want = mesh.clone();
    want.workloads[index].replicas = replicas;
    anyhow::ensure!(
        new.workloads == want.workloads
            && new.services == want.services
            && new.trust_domain == want.trust_domain,
        "editing mesh.yaml would change more than the replicas (an unusual layout): set `replicas: {replicas}` by hand"
    );
    Ok(())
}

/// Replaces `path`'s content atomically, keeping its mode and owner (a symlink's
/// target is replaced, the link stays).
fn write_preserving(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let real = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let meta = std::fs::metadata(&real)?;
    let tmp_name = format!(
        ".{}.weft-scale",
        real.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let tmp = real.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    let kept = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode()))
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            nix::unistd::chown(
                &tmp,
                Some(nix::unistd::Uid::from_raw(meta.uid())),
                Some(nix::unistd::Gid::from_raw(meta.gid())),
            )
            .or_else(|e| {
                // Not root: the file is ours already, or cannot be given away.
                if meta.uid() == nix::unistd::geteuid().as_raw() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(anyhow::Error::from)
        })
        .and_then(|()| std::fs::rename(&tmp, &real).map_err(anyhow::Error::from));
    if let Err(e) = kept {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", real.display())));
    }
    Ok(())
}

/// A line of text: its byte offset, its content (without the line break).
struct Line<'a> {
    start: usize,
    text: &'a str,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in text.split_inclusive('\n') {
        let body = piece.trim_end_matches('\n').trim_end_matches('\r');
        out.push(Line { start, text: body });
        start += piece.len();
    }
    out
}

fn indent(s: &str) -> usize {
    s.len() - s.trim_start_matches(' ').len()
}

/// Whether a line holds something (not blank, not only a comment).
fn content(s: &str) -> bool {
    let t = s.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// Sets the `replicas:` of item `index` of the top-level `workloads:` sequence in
/// mesh.yaml's `text`, changing nothing else (a missing `replicas:` goes after the
/// item's `name:`). Block items (`- name: books` ...) and flow items (`- {name:
/// books, ...}`) are handled; `None` for layouts it does not know. The caller checks
/// the outcome ([`check_edit`]).
pub fn set_replicas(text: &str, index: usize, replicas: u32) -> Option<String> {
    let lines = lines(text);
    let head = lines.iter().position(|l| {
        l.text
            .strip_prefix("workloads:")
            .is_some_and(|rest| !content(rest) || rest.trim_start().is_empty())
    })?;
    let (items, s) = workload_items(&lines, head)?;
    let (first, end) = *items.get(index)?;
    let line = &lines[first];
    let after_dash = &line.text[s + 1..];
    let col = s + 1 + (after_dash.len() - after_dash.trim_start_matches(' ').len());
    let rest = &line.text[col..];
    let item_end = lines.get(end).map_or(text.len(), |l| l.start);
    let n = replicas.to_string();
    if rest.starts_with('{') {
        return flow(text, line.start + col, item_end, &n);
    }
    // A block mapping: its keys at the column of the first one.
    let (key_col, key_lines): (usize, Vec<(usize, usize)>) = if content(rest) {
        let mut keys = vec![(line.start + col, first)];
        let more =
            (first + 1..end).filter(|i| content(lines[*i].text) && indent(lines[*i].text) == col);
        keys.extend(more.map(|i| (lines[i].start + col, i)));
        (col, keys)
    } else {
        let next = (first + 1..end).find(|i| content(lines[*i].text))?;
        let c = indent(lines[next].text);
        let keys = (next..end)
            .filter(|i| content(lines[*i].text) && indent(lines[*i].text) == c)
            .map(|i| (lines[i].start + c, i))
            .collect();
        (c, keys)
    };
    let mut name_line = None;
    for (at, i) in &key_lines {
        let l = &lines[*i];
        let key_text = &text[*at..l.start + l.text.len()];
        if key_text.starts_with("name:") {
            name_line = Some(*i);
        }
        if let Some(value) = key_text.strip_prefix("replicas:") {
            let from = *at + "replicas:".len() + (value.len() - value.trim_start().len());
            let value = value.trim_start();
            let len = value.find(" #").unwrap_or(value.len());
            let len = value[..len].trim_end().len();
            if len == 0 {
                return None;
            }
            return Some(format!("{}{n}{}", &text[..from], &text[from + len..]));
        }
    }
    // No replicas: a line after the name's.
    let after = name_line?;
    let next_start = lines.get(after + 1).map_or(text.len(), |l| l.start);
    let eol = if text[..next_start].ends_with("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let new_line = format!("{}replicas: {n}", " ".repeat(key_col));
    if next_start == text.len() && !text.ends_with('\n') {
        return Some(format!("{text}{eol}{new_line}"));
    }
    Some(format!(
        "{}{new_line}{eol}{}",
        &text[..next_start],
        &text[next_start..]
    ))
}

/// The items of the `workloads:` sequence whose key is on line `head`: (first line, end
/// line exclusive) each, and the sequence's indent; `None` if it is not a block
/// sequence.
fn workload_items(lines: &[Line], head: usize) -> Option<(Vec<(usize, usize)>, usize)> {
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut seq_indent = None;
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate().skip(head + 1) {
        if !content(line.text) {
            continue;
        }
        let ind = indent(line.text);
        let t = &line.text[ind..];
        let dash = t == "-" || t.starts_with("- ");
        match seq_indent {
            None if dash => {
                seq_indent = Some(ind);
                items.push((i, 0));
            }
            None => return None,
            Some(s) if ind == s && dash => {
                if let Some(last) = items.last_mut() {
                    last.1 = i;
                }
                items.push((i, 0));
            }
            Some(s) if ind <= s => {
                end = i;
                break;
            }
            Some(_) => {}
        }
    }
    if let Some(last) = items.last_mut() {
        last.1 = end;
    }
    Some((items, seq_indent?))
}

/// [`set_replicas`] for a flow mapping `{name: books, replicas: 2, ...}` starting at
/// byte `open` (its `{`) and ending before `end`.
fn flow(text: &str, open: usize, end: usize, n: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut depth = 0;
    let mut quote: Option<u8> = None;
    // Entries at depth 1: (start, end) byte ranges.
    let mut entries = Vec::new();
    let mut entry_start = open + 1;
    let mut i = open;
    while i < end {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == q {
                    if q == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                        i += 1;
                    } else {
                        quote = None;
                    }
                } else if b == b'\\' && q == b'"' {
                    i += 1;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if i > 0 && bytes[i - 1].is_ascii_whitespace() => {
                    while i < end && bytes[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        entries.push((entry_start, i));
                        break;
                    }
                }
                b',' if depth == 1 => {
                    entries.push((entry_start, i));
                    entry_start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    if depth != 0 {
        return None;
    }
    let mut name_end = None;
    for (start, stop) in entries {
        let entry = &text[start..stop];
        let key_at = entry.len() - entry.trim_start().len();
        let entry = entry.trim_start();
        let (key, value) = entry.split_once(':')?;
        let value_at = start + key_at + key.len() + 1;
        let lead = value.len() - value.trim_start().len();
        let trimmed = value.trim();
        match key.trim() {
            "replicas" => {
                let from = value_at + lead;
                return Some(format!(
                    "{}{n}{}",
                    &text[..from],
                    &text[from + trimmed.len()..]
                ));
            }
            "name" => name_end = Some(value_at + lead + trimmed.len()),
            _ => {}
        }
    }
    let at = name_end?;
    Some(format!("{}, replicas: {n}{}", &text[..at], &text[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "# the demo\nkind: Mesh\nworkloads:\n  - name: web   # the front\n    zone: zone-a\n    command: [x]\n  - name: books\n    replicas: 2   # two of them\n    command:\n      - x\n      - \"y\"\n\n  # authors below\n  - name: authors\n    command: [x]\n";

    #[test]
    fn block_items_get_their_replicas_changed_or_added_and_nothing_else() {
        let out = set_replicas(BLOCK, 1, 3).unwrap();
        assert_eq!(out, BLOCK.replace("replicas: 2   #", "replicas: 3   #"));
        let out = set_replicas(BLOCK, 0, 4).unwrap();
        assert_eq!(
            out,
            BLOCK.replace(
                "  - name: web   # the front\n",
                "  - name: web   # the front\n    replicas: 4\n"
            )
        );
        let out = set_replicas(BLOCK, 2, 0).unwrap();
        assert_eq!(
            out,
            BLOCK.replace(
                "  - name: authors\n",
                "  - name: authors\n    replicas: 0\n"
            )
        );
        assert_eq!(set_replicas(BLOCK, 3, 1), None);
        // Items at the key's column, a dash on its own line, no final newline.
        let text =
            "workloads:\n- name: a\n  replicas: 1\n-\n  command: [x]\n  name: b\nservices: []";
        assert_eq!(
            set_replicas(text, 0, 2).unwrap(),
            text.replace("replicas: 1", "replicas: 2")
        );
        assert_eq!(
            set_replicas(text, 1, 2).unwrap(),
            text.replace("  name: b\n", "  name: b\n  replicas: 2\n")
        );
        let last = "workloads:\n  - command: [x]\n    name: b";
        assert_eq!(
            set_replicas(last, 0, 2).unwrap(),
            "workloads:\n  - command: [x]\n    name: b\n    replicas: 2"
        );
    }

    #[test]
    fn flow_items_get_their_replicas_changed_or_added() {
        let text = "kind: Mesh\nworkloads:\n  - {name: books, zone: zone-b, replicas: 2, ports: [8080], command: [x, \"a,b\"]}\n  - {name: idle, ports: [8080],\n     command: [x]}  # idle\n";
        assert_eq!(
            set_replicas(text, 0, 5).unwrap(),
            text.replace("replicas: 2", "replicas: 5")
        );
        assert_eq!(
            set_replicas(text, 1, 3).unwrap(),
            text.replace("{name: idle,", "{name: idle, replicas: 3,")
        );
    }

    #[test]
    fn edits_are_checked_against_the_parsed_mesh() {
        let dir = std::env::temp_dir().join(format!("weft-scale-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MESH_FILE), BLOCK).unwrap();
        let mesh = Mesh::load(&dir).unwrap();
        let edited = set_replicas(BLOCK, 1, 3).unwrap();
        check_edit(&dir, &mesh, &edited, 1, 3).unwrap();
        // An edit that changed something else is refused.
        let wrong = edited.replace("zone: zone-a", "zone: zone-b");
        assert!(check_edit(&dir, &mesh, &wrong, 1, 3).is_err());
        // Too many pods: the mesh's own validation says so.
        let huge = set_replicas(BLOCK, 1, 5000).unwrap();
        assert!(check_edit(&dir, &mesh, &huge, 1, 5000).is_err());
        write_preserving(&dir.join(MESH_FILE), edited.as_bytes()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(MESH_FILE)).unwrap(),
            edited
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

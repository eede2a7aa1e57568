//! Commands shown in the docs, so tests can check each still parses: the docs cannot
//! drift from the command line.

/// Every command line in `markdown`'s fenced code blocks that runs `program` (by bare
/// name or a path ending in `/program`), as its arguments after the program, with the
/// line it came from. In a block that shows prompts (`$ `), only prompted lines count
/// (the rest is output). `sudo`, `VAR=value` assignments, `ip netns exec NAME` and a
/// trailing `# comment` are skipped.
pub fn commands(markdown: &str, program: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            match block.take() {
                Some(lines) => found.extend(block_commands(&lines, program)),
                None => block = Some(Vec::new()),
            }
        } else if let Some(lines) = &mut block {
            lines.push(line);
        }
    }
    found
}

/// Checks every `program` command README.md and docs/*.md under `root` show with
/// `parse` (the program's own argument parser): how many were checked, and each
/// failure as `doc: line: error`.
pub fn check_repo_docs(
    root: &std::path::Path,
    program: &str,
    parse: impl Fn(&[String]) -> Result<(), String>,
) -> (usize, Vec<String>) {
    let mut paths = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "md"))
                .collect()
        })
        .unwrap_or_default();
    docs.sort();
    paths.extend(docs);
    let (mut checked, mut failed) = (0, Vec::new());
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for (line, args) in commands(&text, program) {
            checked += 1;
            if let Err(e) = parse(&args) {
                failed.push(format!("{}: {line}: {e}", path.display()));
            }
        }
    }
    (checked, failed)
}

fn block_commands(lines: &[&str], program: &str) -> Vec<(String, Vec<String>)> {
    let prompted = lines.iter().any(|l| l.trim_start().starts_with("$ "));
    lines
        .iter()
        .filter_map(|line| {
            let line = line.trim();
            let command = if prompted {
                line.strip_prefix("$ ")?
            } else {
                line
            };
            let command = match command.find(" #") {
                Some(i) => &command[..i],
                None => command,
            };
            let mut words = shlex::split(command)?.into_iter().peekable();
            loop {
                match words.peek().map(String::as_str) {
                    Some("sudo") => {}
                    Some(w) if w.contains('=') && !w.starts_with('-') => {}
                    Some("ip") => {
                        let rest: Vec<String> = words.by_ref().skip(1).take(3).collect();
                        if rest.len() < 3 || rest[0] != "netns" || rest[1] != "exec" {
                            return None;
                        }
                        continue;
                    }
                    _ => break,
                }
                words.next();
            }
            let first = words.next()?;
            // Up to a pipe or the next command of the line.
            let args = words
                .take_while(|w| !matches!(w.as_str(), "|" | "||" | "&&" | ";"))
                .collect();
            (first == program || first.ends_with(&format!("/{program}")))
                .then(|| (line.to_owned(), args))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_commands_in_blocks_and_skips_output_prompts_and_wrappers() {
        let md = "text weft up\n```sh\nsudo target/release/weft up examples/demo -d   # detached\nip netns exec wf-web-0 weft-demo-app get http://x/ | grep 200\nHTTP_PROXY=http://1.2.3.4:4140 weft-demo-app get 'http://y/'\n```\n```\n$ weft ps\nweft up: not an input line\n$ weft stat -A\n```\n```yaml\ncommand: [weft-demo-app, serve]\n```\n";
        let weft: Vec<Vec<String>> = commands(md, "weft").into_iter().map(|c| c.1).collect();
        assert_eq!(
            weft,
            vec![
                vec!["up".to_owned(), "examples/demo".into(), "-d".into()],
                vec!["ps".into()],
                vec!["stat".into(), "-A".into()],
            ]
        );
        let app: Vec<Vec<String>> = commands(md, "weft-demo-app")
            .into_iter()
            .map(|c| c.1)
            .collect();
        assert_eq!(
            app,
            vec![
                vec!["get".to_owned(), "http://x/".into()],
                vec!["get".into(), "http://y/".into()],
            ]
        );
    }
}

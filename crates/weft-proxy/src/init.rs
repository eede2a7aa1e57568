//! `weft-proxy init`: installs a pod's iptables rules, the same ones the local mesh
//! installs in its pods (`weft_core::iptables`), before the pod's other containers
//! start. On Kubernetes it is the `weft-init` init container the injector adds (root
//! with NET_ADMIN and NET_RAW, in the pod's network namespace); the proxy image carries
//! it so one image serves both containers.
//!
//! `iptables-restore` replaces the whole nat table, so running it again (a restarted
//! pod's init container) leaves the same rules, never a second copy.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use clap::Parser;
use weft_core::iptables::{PortRange, Redirect, PROXY_UID};

/// Command line of `weft-proxy init`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "weft-proxy init",
    version,
    about = "Install a pod's iptables rules: inbound TCP to the proxy's inbound port (4143), the workload's outbound TCP to its outbound port (4140), except the admin port (4191), the proxy's UID, loopback and skipped ports. Run as root with NET_ADMIN and NET_RAW in the pod's network namespace (Kubernetes: the weft-init init container)."
)]
pub struct InitArgs {
    /// Ports (and ranges: 4000-4010) whose inbound connections go straight to the
    /// workload, comma-separated.
    #[arg(long, env = "WEFT_SKIP_INBOUND_PORTS", value_delimiter = ',')]
    pub skip_inbound_ports: Vec<PortRange>,

    /// Ports (and ranges) whose outbound connections from the workload go straight
    /// out, comma-separated.
    #[arg(long, env = "WEFT_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<PortRange>,

    /// The UID the proxy runs as: its own outbound connections are not redirected.
    #[arg(long, env = "WEFT_PROXY_UID", default_value_t = PROXY_UID)]
    pub proxy_uid: u32,

    /// The `iptables-restore` to run (`iptables-legacy-restore` or
    /// `iptables-nft-restore` to pick a backend).
    #[arg(
        long,
        env = "WEFT_IPTABLES_RESTORE",
        default_value = "iptables-restore"
    )]
    pub iptables_restore: PathBuf,

    /// Print the rules instead of installing them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Why the rules could not be installed, naming the command.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{}: not found; the init container's image needs iptables (Debian: apt-get install iptables), or name another with --iptables-restore", program.display())]
    NotFound { program: PathBuf },
    #[error("cannot run {}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot give the rules to {}", program.display())]
    Input {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{} failed ({status}): {stderr}{hint}", program.display())]
    Failed {
        program: PathBuf,
        status: ExitStatus,
        stderr: String,
        hint: &'static str,
    },
    #[error("cannot write to stdout")]
    Output(#[source] std::io::Error),
}

impl InitArgs {
    /// The rules these flags ask for.
    pub fn redirect(&self) -> Redirect {
        Redirect {
            proxy_uid: self.proxy_uid,
            skip_inbound: self.skip_inbound_ports.clone(),
            skip_outbound: self.skip_outbound_ports.clone(),
        }
    }

    /// Installs the rules (or, with --dry-run, only prints them); says what it did on
    /// `out`.
    pub fn run(&self, out: &mut impl std::io::Write) -> Result<(), InitError> {
        let rules = self.redirect().rules();
        if self.dry_run {
            return out.write_all(rules.as_bytes()).map_err(InitError::Output);
        }
        let program = &self.iptables_restore;
        let mut child = Command::new(program)
            .args(["-w", "5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => InitError::NotFound {
                    program: program.clone(),
                },
                _ => InitError::Spawn {
                    program: program.clone(),
                    source,
                },
            })?;
        let written = child
            .stdin
            .take()
            .map_or(Ok(()), |mut stdin| stdin.write_all(rules.as_bytes()));
        let output = child
            .wait_with_output()
            .map_err(|source| InitError::Spawn {
                program: program.clone(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            let denied = ["Permission denied", "Operation not permitted"]
                .iter()
                .any(|s| stderr.contains(s));
            return Err(InitError::Failed {
                program: program.clone(),
                status: output.status,
                stderr,
                hint: if denied {
                    " (weft-proxy init needs root with NET_ADMIN and NET_RAW)"
                } else {
                    ""
                },
            });
        }
        written.map_err(|source| InitError::Input {
            program: program.clone(),
            source,
        })?;
        writeln!(out, "installed the pod's iptables rules:")
            .and_then(|()| out.write_all(rules.as_bytes()))
            .map_err(InitError::Output)
    }
}

/// `weft-proxy init ARGS`: `args` starts with `init`, as the program's name.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let args = InitArgs::parse_from(args);
    args.run(&mut std::io::stdout().lock())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<InitArgs, clap::Error> {
        InitArgs::try_parse_from(std::iter::once("init").chain(args.iter().copied()))
    }

    #[test]
    fn flags_make_the_rules_and_dry_run_prints_them() {
        let args = parse(&[
            "--skip-inbound-ports",
            "22,4000-4010",
            "--skip-outbound-ports",
            "5432",
            "--proxy-uid",
            "2103",
            "--dry-run",
        ])
        .unwrap();
        let mut out = Vec::new();
        args.run(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, args.redirect().rules());
        for rule in [
            "-A WEFT_INBOUND -p tcp --dport 22 -j RETURN",
            "-A WEFT_INBOUND -p tcp --dport 4000:4010 -j RETURN",
            "-A WEFT_OUTBOUND -p tcp --dport 5432 -j RETURN",
            "-A WEFT_OUTBOUND -m owner --uid-owner 2103 -j RETURN",
        ] {
            assert!(out.lines().any(|l| l == rule), "no {rule:?} in:\n{out}");
        }
        // No flags: the local mesh's rules with no skipped port.
        assert_eq!(
            parse(&[]).unwrap().redirect().rules(),
            weft_core::iptables::redirect_rules(&[])
        );
    }

    #[test]
    fn a_bad_port_is_refused_naming_the_flag() {
        let err = parse(&["--skip-outbound-ports", "5432,abc"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid value 'abc' for '--skip-outbound-ports"),
            "{err}"
        );
        assert!(err.contains("is not a port (1-65535)"), "{err}");
    }

    #[test]
    fn a_missing_iptables_restore_says_what_the_image_needs() {
        let args = parse(&["--iptables-restore", "/nonexistent/iptables-restore"]).unwrap();
        let err = args.run(&mut Vec::new()).unwrap_err().to_string();
        assert_eq!(
            err,
            "/nonexistent/iptables-restore: not found; the init container's image needs iptables (Debian: apt-get install iptables), or name another with --iptables-restore"
        );
    }
}

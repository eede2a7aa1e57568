//! `weft identity`: the mesh's certificate authority material.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use weft_controller::identity::{self, CaError};

#[derive(Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Make a fresh trust anchor (ECDSA P-256, 1 year) and issuer (intermediate CA, 90
    /// days): trust-anchors.pem, issuer.crt and issuer.key (mode 0600) in --dir.
    Init(InitArgs),
}

#[derive(Args)]
struct InitArgs {
    /// Directory to write into (created if missing); weft-controller reads it with
    /// --identity-dir.
    #[arg(long, env = "WEFT_IDENTITY_DIR", default_value = ".weft/identity")]
    dir: PathBuf,

    /// Trust domain of the mesh's identities.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = weft_core::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,

    /// Replace existing files. Proxies that trust only the old anchor will not trust
    /// certificates from the new issuer.
    #[arg(long)]
    force: bool,
}

pub fn run(args: IdentityArgs) -> anyhow::Result<()> {
    match args.command {
        IdentityCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let written = match identity::init(&args.dir, &args.trust_domain, args.force) {
        Ok(w) => w,
        Err(CaError::Exists { path }) => anyhow::bail!(
            "{} already exists; pass --force to replace the trust anchor and issuer (proxies that trust only the old anchor will then refuse new certificates)",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot initialise {}", args.dir.display()))
        }
    };
    let until = |t| humantime::format_rfc3339_seconds(t).to_string();
    println!(
        "wrote {}  trust anchor {}, valid until {}",
        written.anchors.display(),
        written.anchor_subject,
        until(written.anchor_not_after)
    );
    println!(
        "wrote {}  issuer {}, valid until {}",
        written.issuer_cert.display(),
        written.issuer_subject,
        until(written.issuer_not_after)
    );
    println!(
        "wrote {}  the issuer's private key (mode 0600: keep it secret)",
        written.issuer_key.display()
    );
    println!(
        "trust domain {}: proxies trust {} (weft-proxy --trust-anchors), the controller signs with this directory (weft-controller --identity-dir {})",
        args.trust_domain,
        written.anchors.display(),
        args.dir.display()
    );
    Ok(())
}

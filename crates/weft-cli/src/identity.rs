//! `weft identity`: the mesh's certificate authority material.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

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
    /// days): trust-anchors.pem, issuer.crt and issuer.key (mode 0600) in --dir. Keep
    /// the anchor's key with --anchor-key-out to renew the issuer later.
    Init(InitArgs),
    /// Issue a new issuer (new key pair) signed by the trust anchor, replacing
    /// issuer.crt and issuer.key in --out (temporary file + rename each): a running
    /// weft-controller reading that directory switches to it within seconds.
    RotateIssuer(RotateArgs),
    /// Make a new trust anchor (certificate and key) for a trust-anchor rotation; see
    /// docs/identity.md, "Rotation".
    NewAnchor(NewAnchorArgs),
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

    /// Keep the trust anchor's private key in this file (mode 0600), for `weft identity
    /// rotate-issuer`. Store it offline: whoever has it can mint issuers the whole mesh
    /// trusts. Without it the anchor's key is discarded and the issuer cannot be renewed.
    #[arg(long, value_name = "PATH")]
    anchor_key_out: Option<PathBuf>,
}

#[derive(Args)]
struct RotateArgs {
    /// The trust anchor's certificate (PEM, one certificate).
    #[arg(long, value_name = "FILE")]
    anchor_cert: PathBuf,

    /// The trust anchor's private key (from `init --anchor-key-out` or `new-anchor`).
    #[arg(long, value_name = "FILE")]
    anchor_key: PathBuf,

    /// The controller's identity directory (its --identity-dir): issuer.crt and
    /// issuer.key are replaced there. Its trust-anchors.pem must already hold the
    /// anchor (it is written from --anchor-cert if missing).
    #[arg(long, env = "WEFT_IDENTITY_DIR", value_name = "DIR")]
    out: PathBuf,

    /// Lifetime of the new issuer (never past the anchor's end).
    #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
    lifetime: Duration,

    /// Trust domain (in the issuer's subject); read from the anchor's subject if not
    /// given.
    #[arg(long)]
    trust_domain: Option<String>,
}

#[derive(Args)]
struct NewAnchorArgs {
    /// Where to write the anchor's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    cert_out: PathBuf,

    /// Where to write the anchor's private key (mode 0600). Store it offline.
    #[arg(long, value_name = "FILE")]
    key_out: PathBuf,

    /// Trust domain of the mesh's identities.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = weft_core::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,

    /// Lifetime of the anchor.
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    lifetime: Duration,

    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: IdentityArgs) -> anyhow::Result<()> {
    match args.command {
        IdentityCommand::Init(args) => init(args),
        IdentityCommand::RotateIssuer(args) => rotate_issuer(args),
        IdentityCommand::NewAnchor(args) => new_anchor(args),
    }
}

fn until(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn rotate_issuer(args: RotateArgs) -> anyhow::Result<()> {
    let options = identity::RotateOptions {
        lifetime: args.lifetime,
        trust_domain: args.trust_domain,
        ..identity::RotateOptions::new(&args.anchor_cert, &args.anchor_key, &args.out)
    };
    let rotated = identity::rotate_issuer(&options).context("cannot rotate the issuer")?;
    if let Some(path) = &rotated.anchors_written {
        println!(
            "wrote {}  trust anchor {} (the file was missing)",
            path.display(),
            rotated.anchor_subject
        );
    }
    println!(
        "wrote {}  issuer {}, signed by {}, valid until {}",
        rotated.issuer_cert.display(),
        rotated.issuer_subject,
        rotated.anchor_subject,
        until(rotated.issuer_not_after)
    );
    println!(
        "wrote {}  the new issuer's private key (mode 0600)",
        rotated.issuer_key.display()
    );
    println!(
        "a weft-controller with --identity-dir {} signs with the new issuer within seconds (it logs \"identity files changed\"); proxies move to it as they renew their certificates",
        args.out.display()
    );
    Ok(())
}

fn new_anchor(args: NewAnchorArgs) -> anyhow::Result<()> {
    let made = match identity::new_anchor(
        &args.cert_out,
        &args.key_out,
        &args.trust_domain,
        args.lifetime,
        args.force,
    ) {
        Ok(m) => m,
        Err(CaError::Exists { path }) => anyhow::bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        ),
        Err(e) => return Err(e).context("cannot make the trust anchor"),
    };
    println!(
        "wrote {}  trust anchor {}, valid until {}",
        made.cert.display(),
        made.subject,
        until(made.not_after)
    );
    println!(
        "wrote {}  its private key (mode 0600: store it offline)",
        made.key.display()
    );
    println!("next: give every proxy and the controller the bundle old + new anchor, then weft identity rotate-issuer --anchor-cert {} --anchor-key {} (docs/identity.md, Rotation)", made.cert.display(), made.key.display());
    Ok(())
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let options = identity::InitOptions {
        force: args.force,
        anchor_key_out: args.anchor_key_out.clone(),
        ..identity::InitOptions::new(&args.trust_domain)
    };
    let written = match identity::init_with(&args.dir, &options) {
        Ok(w) => w,
        Err(CaError::Exists { path }) => anyhow::bail!(
            "{} already exists; pass --force to replace the trust anchor and issuer (proxies that trust only the old anchor will then refuse new certificates)",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot initialise {}", args.dir.display()))
        }
    };
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
    match &written.anchor_key {
        Some(path) => println!(
            "wrote {}  the trust anchor's private key (mode 0600: store it offline; weft identity rotate-issuer needs it)",
            path.display()
        ),
        None => println!(
            "note: the trust anchor's key was discarded, so this issuer cannot be renewed when it expires; pass --anchor-key-out PATH to keep it"
        ),
    }
    println!(
        "trust domain {}: proxies trust {} (weft-proxy --trust-anchors), the controller signs with this directory (weft-controller --identity-dir {})",
        args.trust_domain,
        written.anchors.display(),
        args.dir.display()
    );
    Ok(())
}

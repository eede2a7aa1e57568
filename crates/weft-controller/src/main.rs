use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use weft_controller::{Config, Controller};

/// weft's control plane. Today: the identity service (the mesh's certificate authority)
/// answering Identity.Certify over gRPC with TLS; other gRPC services answer
/// UNIMPLEMENTED.
///
/// Its own TLS certificate is issued at start-up by its issuer for
/// weft-controller.weft-system.serviceaccount.identity.weft.{trust-domain}; proxies
/// verify it against the trust anchors with that name.
#[derive(Debug, Parser)]
#[command(name = "weft-controller", version)]
struct Args {
    /// Directory with trust-anchors.pem, issuer.crt and issuer.key (made by
    /// `weft identity init`).
    #[arg(long, env = "WEFT_IDENTITY_DIR", value_name = "DIR")]
    identity_dir: PathBuf,

    /// Directory of workload tokens, one file per identity: {DIR}/{namespace}/{service
    /// account}. A Certify request's token must equal the file's content.
    #[arg(long, env = "WEFT_TOKENS_DIR", value_name = "DIR")]
    tokens_dir: PathBuf,

    /// Trust domain of the identities issued.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = weft_core::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,

    /// Lifetime of issued workload certificates (never past the issuer's expiry).
    #[arg(long, env = "WEFT_CERT_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    cert_lifetime: Duration,

    /// gRPC (TLS) listen address.
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:8090")]
    listen: SocketAddr,

    /// Admin listen address (plain HTTP): /metrics, /ready, /live.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "0.0.0.0:9990")]
    admin_listen: SocketAddr,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid log filter {:?}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut controller = Controller::start(Config {
            identity_dir: args.identity_dir,
            tokens_dir: args.tokens_dir,
            trust_domain: args.trust_domain,
            cert_lifetime: args.cert_lifetime,
            listen: args.listen,
            admin_listen: args.admin_listen,
        })
        .await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
            result = controller.wait() => {
                result?;
                anyhow::bail!("the gRPC server stopped unexpectedly");
            }
        }
        controller.shutdown().await?;
        anyhow::Ok(())
    })
}

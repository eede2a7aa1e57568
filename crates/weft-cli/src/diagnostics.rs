//! `weft diagnostics`: raw views of the local mesh's processes, as `linkerd diagnostics`
//! gives them: `proxy-metrics POD` prints that pod's proxy `/metrics` as it is, and
//! `controller-metrics` the controller's.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::local::{scrape, sys, LocalArgs, ADMIN_PORT};
use crate::observe;
use crate::stat::{emit, load_state};

#[derive(clap::Args)]
pub struct DiagnosticsArgs {
    #[command(subcommand)]
    what: What,
    #[command(flatten)]
    local: LocalArgs,
}

#[derive(clap::Subcommand)]
enum What {
    /// Print a pod's proxy /metrics (Prometheus text) as the proxy serves it.
    ProxyMetrics {
        /// The pod: its name (web-0; books.shop-0 outside the default namespace) or
        /// po/NAME.
        pod: String,
    },
    /// Print the controller's /metrics as it serves it.
    ControllerMetrics,
}

/// How long a proxy or the controller may take to answer.
const LIMIT: Duration = Duration::from_secs(3);

pub async fn run(args: DiagnosticsArgs) -> anyhow::Result<()> {
    args.local.validate()?;
    let state = load_state(&args.local)?;
    let (what, addr) = match &args.what {
        What::ProxyMetrics { pod } => {
            let pod = observe::find_pod(&state, pod)?;
            (
                format!("pod {}'s proxy", pod.name),
                SocketAddr::from((pod.ip, ADMIN_PORT)),
            )
        }
        What::ControllerMetrics => (
            "the controller".to_owned(),
            observe::controller_admin(&state),
        ),
    };
    let hub = scrape::admin_netns(&state);
    let answer = tokio::task::spawn_blocking(move || {
        sys::in_netns(hub.as_deref(), LIMIT + Duration::from_secs(1), move || {
            observe::get(addr, "/metrics", LIMIT)
        })
    })
    .await?
    .with_context(|| format!("cannot reach {what}"))?
    .with_context(|| format!("{what} did not answer at {addr} (is it running? `weft check`)"))?;
    if !answer.status.is_success() {
        bail!(
            "{what} answered {} at http://{addr}/metrics: {}",
            answer.status,
            answer.body.trim()
        );
    }
    emit(&answer.body);
    Ok(())
}

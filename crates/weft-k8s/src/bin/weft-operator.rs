//! `weft-operator`: weft's lifecycle operator. It reconciles the cluster's
//! `ControlPlane` (operator.weft.io) into the control plane's objects and restarts the
//! workloads each `DataPlane` selects onto the current proxy after an upgrade (see
//! docs/kubernetes.md, "The operator").

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use weft_controller::lease::{Elector, LeaseConfig};
use weft_k8s::operator::{self, Metrics};

/// weft's lifecycle operator: makes and upgrades the control plane from the cluster's
/// ControlPlane resource and restarts DataPlane-selected workloads onto the current
/// proxy, a few at a time. Talks to the API server with the in-cluster service account
/// or KUBECONFIG; serves /metrics, /ready and /live on --admin-listen.
#[derive(Debug, Parser)]
#[command(name = "weft-operator", version)]
struct Args {
    /// Admin (plain HTTP) listen address: /metrics, /ready, /live.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "0.0.0.0:9990")]
    admin_listen: SocketAddr,

    /// The namespace of the leader-election Lease `weft-operator`: with it, several
    /// replicas may run and only the Lease's holder reconciles (a replica that loses
    /// the Lease exits, to be restarted as a follower). Without it, this process
    /// reconciles at once: run one only.
    #[arg(long, env = "WEFT_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,

    /// This replica's name in the Lease (default: $HOSTNAME, the pod's name, and the
    /// process id).
    #[arg(long, env = "WEFT_LEASE_IDENTITY")]
    lease_identity: Option<String>,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

/// The operator's Lease.
const LEASE_NAME: &str = "weft-operator";

struct Admin {
    registry: Registry,
    ready: Arc<AtomicBool>,
}

impl weft_core::admin::Admin for Admin {
    fn metrics(&self) -> String {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            Ok(()) => out,
            Err(e) => format!("# encoding failed: {e}\n"),
        }
    }

    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("cannot list ControlPlanes and DataPlanes yet (see the log)\n".to_owned())
        }
    }

    fn accept_failed(&self, error: &std::io::Error) {
        tracing::warn!(%error, "admin accept failed");
    }

    fn connection_failed(&self, error: &hyper::Error) {
        tracing::debug!(%error, "admin connection failed");
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("--log {:?}: not a log filter", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // rustls needs one process-wide crypto provider; kube's client uses it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("cannot listen for SIGTERM")?;
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes API (in-cluster or KUBECONFIG)")?;
            let listener = tokio::net::TcpListener::bind(args.admin_listen)
                .await
                .with_context(|| format!("--admin-listen {}: cannot listen", args.admin_listen))?;
            let metrics = Arc::new(Metrics::default());
            let mut registry = Registry::default();
            metrics.register(&mut registry);
            let ready = Arc::new(AtomicBool::new(false));
            tokio::spawn(weft_core::admin::serve(
                listener,
                Arc::new(Admin {
                    registry,
                    ready: ready.clone(),
                }),
            ));
            tracing::info!(admin = %args.admin_listen, "operator running");
            let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
                let _ = stop_tx.send(true);
            });
            let elector = match &args.lease_namespace {
                None => None,
                Some(ns) => {
                    let identity = args.lease_identity.clone().unwrap_or_else(|| {
                        let host = std::env::var("HOSTNAME")
                            .unwrap_or_else(|_| "weft-operator".into());
                        format!("{host}-{:08x}", std::process::id())
                    });
                    let mut config = LeaseConfig::new(ns, &identity);
                    config.name = LEASE_NAME.to_owned();
                    Some(Elector::start(client.clone(), config)?)
                }
            };
            let mut lost = false;
            if let Some(elector) = &elector {
                let mut leader = elector.is_leader();
                tracing::info!(lease = LEASE_NAME, identity = elector.identity(), "waiting to lead");
                tokio::select! {
                    _ = leader.wait_for(|l| *l) => tracing::info!("leading: reconciling"),
                    _ = stop_rx.wait_for(|s| *s) => {}
                }
            }
            if !*stop_rx.borrow() {
                let leader = elector.as_ref().map(Elector::is_leader);
                let lost_tx = std::sync::Arc::new(AtomicBool::new(false));
                let lost_flag = lost_tx.clone();
                let shutdown = async move {
                    let stopped = stop_rx.wait_for(|s| *s);
                    match leader {
                        Some(mut leader) => tokio::select! {
                            _ = stopped => {}
                            _ = leader.wait_for(|l| !*l) => {
                                tracing::warn!("lost the Lease: stopping, to start again as a follower");
                                lost_flag.store(true, Ordering::Relaxed);
                            }
                        },
                        None => {
                            let _ = stopped.await;
                        }
                    }
                };
                operator::run(client, metrics, ready, shutdown).await;
                lost = lost_tx.load(Ordering::Relaxed);
            }
            if let Some(elector) = elector {
                elector.stop().await;
            }
            tracing::info!("operator stopped");
            if lost {
                anyhow::bail!("lost the leader-election Lease {LEASE_NAME}");
            }
            anyhow::Ok(())
        })
}

//! `weft-injector`: weft's sidecar injector, a mutating admission webhook (HTTPS,
//! `POST /inject`) that adds the proxy to pods in namespaces or workloads annotated
//! `weft.io/inject: enabled` (see docs/kubernetes.md, "Injection").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use weft_k8s::inject::{self, InjectConfig, Webhook};

/// weft's sidecar injector: a mutating admission webhook over HTTPS. POST /inject takes
/// an admission.k8s.io/v1 AdmissionReview for a Pod and answers with the JSON patch that
/// adds weft-init (the iptables rules) and the weft-proxy native sidecar; GET /ready,
/// /live and /metrics on the same port. Reads namespaces (get) with the in-cluster
/// service account or KUBECONFIG.
#[derive(Debug, Parser)]
#[command(name = "weft-injector", version)]
struct Args {
    /// HTTPS listen address.
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,

    /// The webhook's certificate chain (PEM), for the name the API server calls
    /// (weft-injector.weft-system.svc). Read again when it or the key changes (a
    /// renewed Secret), within 10 s.
    #[arg(long, env = "WEFT_CERT", value_name = "FILE")]
    cert: PathBuf,

    /// The certificate's private key (PEM).
    #[arg(long, env = "WEFT_KEY", value_name = "FILE")]
    key: PathBuf,

    /// Image of the injected weft-proxy and weft-init containers (entrypoint weft-proxy).
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = inject::DEFAULT_PROXY_IMAGE)]
    proxy_image: String,

    /// imagePullPolicy of the injected containers (Kubernetes' default when unset).
    #[arg(long, env = "WEFT_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: Option<String>,

    /// The controller's identity and destination services, host:port.
    #[arg(long, env = "WEFT_CONTROLLER", default_value = inject::DEFAULT_CONTROLLER)]
    controller: String,

    /// Trust domain of identities.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,

    /// The mesh's trust anchors (PEM bundle, the injector's own mounted copy): each
    /// injected proxy gets them inline as WEFT_TRUST_ANCHORS_PEM and verifies the
    /// controller and its peers with them. Read once at start: restart the injector
    /// after an anchor rotation (and the pods after it).
    #[arg(long, env = "WEFT_TRUST_ANCHORS", value_name = "FILE")]
    trust_anchors: PathBuf,

    /// The proxies' log filter unless a pod's weft.io/proxy-log-level says otherwise.
    #[arg(long, env = "WEFT_PROXY_LOG_LEVEL", default_value = "info")]
    proxy_log_level: String,

    /// The proxies' CPU request unless a pod's weft.io/proxy-cpu-request says otherwise.
    #[arg(long, env = "WEFT_PROXY_CPU_REQUEST", default_value = "100m", value_parser = quantity)]
    proxy_cpu_request: String,

    /// The proxies' CPU limit (none by default: a CPU limit throttles the data path).
    #[arg(long, env = "WEFT_PROXY_CPU_LIMIT", value_parser = quantity)]
    proxy_cpu_limit: Option<String>,

    /// The proxies' memory request.
    #[arg(long, env = "WEFT_PROXY_MEMORY_REQUEST", default_value = "20Mi", value_parser = quantity)]
    proxy_memory_request: String,

    /// The proxies' memory limit.
    #[arg(long, env = "WEFT_PROXY_MEMORY_LIMIT", default_value = "250Mi", value_parser = quantity)]
    proxy_memory_limit: String,

    /// This program's log filter (tracing EnvFilter syntax).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

/// A Kubernetes quantity (`100m`, `0.5`, `64Mi`).
fn quantity(s: &str) -> Result<String, String> {
    match inject::quantity_value(s) {
        Some(_) => Ok(s.to_owned()),
        None => Err(format!(
            "{s:?} is not a quantity (such as 100m, 0.5 or 64Mi)"
        )),
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
    let tls = inject::tls_config(&args.cert, &args.key)?;
    let trust_anchors_pem = inject::read_trust_anchors(&args.trust_anchors)?;
    let config = InjectConfig {
        proxy_image: args.proxy_image,
        image_pull_policy: args.image_pull_policy,
        controller: args.controller,
        trust_domain: args.trust_domain,
        trust_anchors_pem,
        log_level: args.proxy_log_level,
        cpu_request: Some(args.proxy_cpu_request),
        cpu_limit: args.proxy_cpu_limit,
        memory_request: Some(args.proxy_memory_request),
        memory_limit: Some(args.proxy_memory_limit),
        ..InjectConfig::default()
    };
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
                .context("no Kubernetes API to read namespaces from (in-cluster or KUBECONFIG)")?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("--listen {}: cannot listen", args.listen))?;
            tracing::info!(listen = %args.listen, "injector serving");
            let webhook = Arc::new(Webhook::new(config, Some(client)));
            tokio::select! {
                () = inject::serve(listener, tls, webhook) => {}
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
            anyhow::Ok(())
        })
}

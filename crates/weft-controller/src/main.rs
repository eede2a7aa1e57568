use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use weft_controller::destination::LocalSourceConfig;
use weft_controller::identity::{KubeTokensConfig, ReloadOptions};
use weft_controller::kube::KubeSourceConfig;
use weft_controller::lease::{Elector, LeaseConfig};
use weft_controller::policy::{DefaultPolicy, PolicyConfig};
use weft_controller::{Config, Controller, DestinationConfig, SourceConfig, Tokens};

/// weft's control plane, over gRPC with TLS: the identity service (the mesh's
/// certificate authority, Identity.Certify) and, with --mesh-dir or --source kube, the
/// destination service (Destination.Get: each Service's endpoints, streamed as they
/// change, from a mesh directory and the pods file `weft up` writes, or from the
/// Kubernetes API's Services, EndpointSlices, Pods and Nodes). Other gRPC services
/// answer UNIMPLEMENTED.
///
/// Its own TLS certificate is issued at start-up by its issuer for
/// weft-controller.weft-system.serviceaccount.identity.weft.{trust-domain}; proxies
/// verify it against the trust anchors with that name. That identity is never issued
/// through Certify. The destination service answers only callers presenting a mesh
/// workload certificate (the TLS client certificate is optional for Certify).
#[derive(Debug, Parser)]
#[command(name = "weft-controller", version)]
struct Args {
    /// Directory with trust-anchors.pem, issuer.crt and issuer.key (made by
    /// `weft identity init`).
    #[arg(long, env = "WEFT_IDENTITY_DIR", value_name = "DIR")]
    identity_dir: PathBuf,

    /// Directory of workload tokens, one file per identity: {DIR}/{namespace}/{service
    /// account}. A Certify request's token must equal the file's content. Required with
    /// --identity-tokens local.
    #[arg(long, env = "WEFT_TOKENS_DIR", value_name = "DIR")]
    tokens_dir: Option<PathBuf>,

    /// How Certify requests prove their identity: local (a token file in --tokens-dir,
    /// written by `weft up`) or kube (the pod's projected ServiceAccount token for the
    /// audience identity.weft.io, checked with the Kubernetes TokenReview API through
    /// --kubeconfig or in-cluster; the identity issued is the token's ServiceAccount,
    /// never the request's).
    #[arg(
        long,
        env = "WEFT_IDENTITY_TOKENS",
        value_enum,
        default_value = "local"
    )]
    identity_tokens: TokensKind,

    /// With --source kube: the namespace of the leader-election Lease `weft-controller`.
    /// Every replica serves proxies; only the Lease's holder will write status.
    #[arg(long, env = "WEFT_LEASE_NAMESPACE", default_value = "weft-system")]
    lease_namespace: String,

    /// This replica's name in the Lease (default: $HOSTNAME, the pod's name, with a
    /// random suffix).
    #[arg(long, env = "WEFT_LEASE_IDENTITY")]
    lease_identity: Option<String>,

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

    /// Where Services and their endpoints come from: local (--mesh-dir and
    /// --pods-file) or kube (the Kubernetes API: --kubeconfig, else in-cluster, else
    /// $KUBECONFIG or ~/.kube/config; /ready is false until its first full list).
    #[arg(long, env = "WEFT_SOURCE", value_enum, default_value = "local")]
    source: SourceKind,

    /// Kubeconfig file of the Kubernetes API (--source kube, --identity-tokens kube,
    /// the leader-election Lease); without it the pod's
    /// service account is used in a cluster, else $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "WEFT_KUBECONFIG", value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// With --source kube: the destination index is rebuilt at most once per this
    /// interval after a change (changes that come together are one rebuild).
    #[arg(long, env = "WEFT_KUBE_DEBOUNCE", default_value = "50ms", value_parser = humantime::parse_duration)]
    kube_debounce: Duration,

    /// Mesh directory (mesh.yaml with the workloads, Services in other *.yaml files):
    /// turns on the destination service with --source local. Watched; changes apply
    /// within a second, and a directory that does not load is logged while the last
    /// good one keeps serving.
    #[arg(
        long,
        env = "WEFT_MESH_DIR",
        value_name = "DIR",
        requires = "pods_file"
    )]
    mesh_dir: Option<PathBuf>,

    /// Where the mesh's pods run and the Services' addresses (YAML written by `weft
    /// up`); watched like --mesh-dir. A file that does not exist yet means no pods.
    #[arg(
        long,
        env = "WEFT_PODS_FILE",
        value_name = "FILE",
        requires = "mesh_dir"
    )]
    pods_file: Option<PathBuf>,

    /// How often --mesh-dir and --pods-file are checked for changes where inotify cannot
    /// be used (otherwise an inotify event has them checked at once).
    #[arg(long, env = "WEFT_WATCH_INTERVAL", default_value = "20ms", value_parser = humantime::parse_duration)]
    watch_interval: Duration,

    /// Cluster domain of Service names ({name}.{namespace}.svc.{cluster-domain}).
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = weft_controller::destination::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,

    /// Comma-separated ports every workload forwards as opaque TCP (hinted as opaque to
    /// proxies); keep it equal to the proxies' --opaque-ports.
    #[arg(
        long,
        env = "WEFT_OPAQUE_PORTS",
        value_delimiter = ',',
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    opaque_ports: Vec<u16>,

    /// What a workload's port that no Server selects allows, for workloads without the
    /// config.weft.io/default-inbound-policy label: all-unauthenticated (everyone, as
    /// before policy existed), all-authenticated (mesh identities), cluster-authenticated
    /// (mesh identities from --cluster-networks) or deny.
    #[arg(long, env = "WEFT_DEFAULT_INBOUND_POLICY", default_value = "all-unauthenticated", value_parser = str::parse::<DefaultPolicy>)]
    default_inbound_policy: DefaultPolicy,

    /// The networks cluster-authenticated allows callers from (comma-separated CIDRs).
    #[arg(
        long,
        env = "WEFT_CLUSTER_NETWORKS",
        value_delimiter = ',',
        default_value = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,198.18.0.0/15,127.0.0.0/8,fd00::/8,::1/128"
    )]
    cluster_networks: Vec<ipnet::IpNet>,

    /// How often the identity files (--identity-dir) are checked for changes: a new
    /// issuer or trust bundle that loads replaces the current one without a restart;
    /// one that does not is logged and the current issuer keeps signing.
    #[arg(long, env = "WEFT_IDENTITY_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    identity_reload_interval: Duration,

    /// Warn (in the log, daily) when the issuer has less than this left.
    #[arg(long, env = "WEFT_ISSUER_EXPIRY_WARNING", default_value = "30days", value_parser = humantime::parse_duration)]
    issuer_expiry_warning: Duration,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

/// `--identity-tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TokensKind {
    Local,
    Kube,
}

/// `--source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SourceKind {
    Local,
    Kube,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.identity_tokens == TokensKind::Local && args.tokens_dir.is_none() {
        anyhow::bail!("--tokens-dir is required with --identity-tokens local (the default); --identity-tokens kube checks Kubernetes ServiceAccount tokens instead");
    }
    let mut source = match args.source {
        SourceKind::Local => args.mesh_dir.map(|mesh_dir| {
            SourceConfig::Local(LocalSourceConfig {
                mesh_dir,
                pods_file: args.pods_file.unwrap_or_default(),
                watch_interval: args.watch_interval,
            })
        }),
        SourceKind::Kube => {
            if args.mesh_dir.is_some() {
                anyhow::bail!("--mesh-dir and --pods-file are for --source local; --source kube reads the Kubernetes API");
            }
            Some(SourceConfig::Kube(KubeSourceConfig {
                kubeconfig: args.kubeconfig.clone(),
                debounce: args.kube_debounce,
                leader: None,
            }))
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid log filter {:?}", args.log))?;
    // Lines stderr cannot take are dropped, never a panic; colour only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .with_writer(|| weft_core::log::LossyStderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Listened for before anything is served: a SIGTERM that comes as soon as the
        // controller says it serves (a supervisor stopping it at once) must stop it
        // cleanly, not kill it with the default action.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        let reload = ReloadOptions {
            interval: args.identity_reload_interval,
            expiry_warning: args.issuer_expiry_warning,
        };
        let tokens = match args.identity_tokens {
            TokensKind::Local => Tokens::Files,
            TokensKind::Kube => Tokens::Kube {
                client: weft_controller::kube::api_client(args.kubeconfig.as_deref()).await?,
                config: KubeTokensConfig::default(),
            },
        };
        // Several replicas may run against one API server: one leads (writes status).
        let elector = match args.source {
            SourceKind::Local => None,
            SourceKind::Kube => {
                let identity = args.lease_identity.clone().unwrap_or_else(|| {
                    let host =
                        std::env::var("HOSTNAME").unwrap_or_else(|_| "weft-controller".into());
                    format!("{host}-{:08x}", rand::random::<u32>())
                });
                let client = weft_controller::kube::api_client(args.kubeconfig.as_deref()).await?;
                Some(Elector::start(
                    client,
                    LeaseConfig::new(&args.lease_namespace, &identity),
                )?)
            }
        };
        // Only the leader writes route statuses.
        if let (Some(SourceConfig::Kube(k)), Some(e)) = (&mut source, &elector) {
            k.leader = Some(e.is_leader());
        }
        let mut controller = Controller::start_with_tokens(
            Config {
                identity_dir: args.identity_dir,
                tokens_dir: args.tokens_dir.unwrap_or_default(),
                trust_domain: args.trust_domain,
                cert_lifetime: args.cert_lifetime,
                listen: args.listen,
                admin_listen: args.admin_listen,
                destination: source.map(|source| DestinationConfig {
                    source,
                    cluster_domain: args.cluster_domain,
                    opaque_ports: args.opaque_ports,
                    policy: PolicyConfig {
                        default_policy: args.default_inbound_policy,
                        cluster_networks: args.cluster_networks,
                    },
                }),
            },
            reload,
            tokens,
        )
        .await?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
            result = controller.wait() => {
                result?;
                anyhow::bail!("the gRPC server stopped unexpectedly");
            }
        }
        // Step down and release the Lease first: another replica takes over at once.
        if let Some(elector) = elector {
            elector.stop().await;
        }
        controller.shutdown().await?;
        anyhow::Ok(())
    })
}

//! weft's controller: the control plane proxies talk to over gRPC (TLS), with the
//! messages of the linkerd2-proxy-api protocol. It serves the identity service (the
//! mesh's certificate authority, `Identity.Certify`) and, given a destination source,
//! the destination service (`Destination.Get`, endpoints from the `local` source's
//! mesh directory or from the Kubernetes API ([`kube`]), to callers presenting a mesh
//! workload certificate) and the outbound policy service
//! (`OutboundPolicies.Get`/`Watch`: the Services' HTTPRoutes and GRPCRoutes,
//! [`routes`]) and the inbound policy service (`InboundServerPolicies.GetPort`/
//! `WatchPort`: who may call a workload's port, [`policy`]); the other services answer
//! UNIMPLEMENTED. Message sizes, Certify concurrency, connections and HTTP/2 streams are
//! bounded ([`server`]).

pub mod admin;
pub mod destination;
pub mod identity;
pub mod kube;
pub mod lease;
pub mod metrics;
mod objects;
pub mod policy;
pub mod routes;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::identity::{
    Certifier, IdentityFiles, KubeTokens, KubeTokensConfig, LocalTokens, ReloadOptions,
    TokenVerifier,
};
use crate::metrics::Metrics;
use crate::server::ServingCert;

/// What the controller needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Holds `trust-anchors.pem`, `issuer.crt` and `issuer.key`.
    pub identity_dir: PathBuf,
    /// Local-mode tokens, `{dir}/{ns}/{sa}`.
    pub tokens_dir: PathBuf,
    pub trust_domain: String,
    /// Lifetime of issued workload certificates.
    pub cert_lifetime: Duration,
    /// gRPC over TLS.
    pub listen: SocketAddr,
    /// Plain HTTP: `/metrics`, `/ready`, `/live`.
    pub admin_listen: SocketAddr,
    /// The destination service and its source; `None` serves identity only.
    pub destination: Option<DestinationConfig>,
}

/// How Certify requests prove their identity.
#[derive(Clone)]
pub enum Tokens {
    /// Local mode: token files `{Config::tokens_dir}/{ns}/{sa}` written by `weft up`.
    Files,
    /// Kubernetes: projected ServiceAccount tokens, checked with the TokenReview API
    /// ([`identity::KubeTokens`]); the identity is the review's ServiceAccount.
    Kube {
        client: ::kube::Client,
        config: KubeTokensConfig,
    },
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokens::Files => f.write_str("Files"),
            Tokens::Kube { config, .. } => f
                .debug_struct("Kube")
                .field("config", config)
                .finish_non_exhaustive(),
        }
    }
}

/// The destination service's settings.
#[derive(Clone, Debug)]
pub struct DestinationConfig {
    pub source: SourceConfig,
    /// Service names are `{name}.{namespace}.svc.{cluster_domain}`.
    pub cluster_domain: String,
    /// Ports every workload forwards as opaque TCP (as the proxies' `--opaque-ports`).
    pub opaque_ports: Vec<u16>,
    /// Authorization: the default policy and the cluster's networks.
    pub policy: policy::PolicyConfig,
}

/// Where the destination index comes from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A mesh directory and the pods file `weft up` writes.
    Local(destination::LocalSourceConfig),
    /// The Kubernetes API.
    Kube(kube::KubeSourceConfig),
}

impl From<destination::LocalSourceConfig> for SourceConfig {
    fn from(config: destination::LocalSourceConfig) -> Self {
        SourceConfig::Local(config)
    }
}

impl From<kube::KubeSourceConfig> for SourceConfig {
    fn from(config: kube::KubeSourceConfig) -> Self {
        SourceConfig::Kube(config)
    }
}

/// A destination source, loaded or connected.
enum Source {
    // Boxed: a local source holds the whole mesh.
    Local(Box<destination::LocalSource>),
    Kube(kube::KubeSource),
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Ca(#[from] identity::CaError),
    #[error("trust domain: {0}")]
    TrustDomain(#[from] weft_core::identity::IdentityError),
    #[error("the certificate lifetime must be at least one second")]
    Lifetime,
    #[error(transparent)]
    Serving(#[from] server::ServingError),
    #[error(transparent)]
    Source(#[from] destination::SourceError),
    #[error(transparent)]
    Kube(#[from] kube::KubeSourceError),
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the gRPC server task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running controller.
pub struct Controller {
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics: Arc<Metrics>,
    serving: Arc<ServingCert>,
    index: Option<tokio::sync::watch::Receiver<Arc<destination::Index>>>,
    inbound_policy: Option<tokio::sync::watch::Receiver<Arc<policy::serve::Snapshot>>>,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Sender<bool>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Loads and checks the identity files, issues the serving certificate, binds both
    /// listeners and serves. The identity files are watched with the default
    /// [`ReloadOptions`].
    pub async fn start(config: Config) -> Result<Controller, ControllerError> {
        Self::start_with(config, ReloadOptions::default()).await
    }

    /// [`Controller::start`], watching the identity files as `reload` says: a new
    /// issuer (or trust bundle) that loads replaces the current one without a restart.
    pub async fn start_with(
        config: Config,
        reload: ReloadOptions,
    ) -> Result<Controller, ControllerError> {
        Self::start_with_tokens(config, reload, Tokens::Files).await
    }

    /// [`Controller::start_with`], checking Certify's tokens as `tokens` says
    /// (`config.tokens_dir` is read only with [`Tokens::Files`]).
    pub async fn start_with_tokens(
        config: Config,
        reload: ReloadOptions,
        tokens: Tokens,
    ) -> Result<Controller, ControllerError> {
        if config.cert_lifetime < Duration::from_secs(1) {
            return Err(ControllerError::Lifetime);
        }
        let files = IdentityFiles::read(&config.identity_dir);
        let (anchors, issuer) = files.load()?;
        let metrics = Arc::new(Metrics::new());
        let tokens: Arc<dyn TokenVerifier> = match tokens {
            Tokens::Files => Arc::new(LocalTokens::new(&config.tokens_dir)),
            Tokens::Kube { client, config } => Arc::new(KubeTokens::new(
                client,
                config,
                metrics.identity.token_reviews.clone(),
            )),
        };
        let certifier = Arc::new(
            Certifier::new(issuer, &config.trust_domain, tokens)?
                .with_lifetime(config.cert_lifetime)
                .with_metrics(metrics.identity.clone()),
        );
        let serving = ServingCert::new(
            server::controller_identity(&config.trust_domain)?,
            certifier.clone(),
        )?;
        let clients = server::ClientVerifier::new(&anchors)?;
        let tls = serving.server_config(clients.clone())?;
        // The destination source loads before anything listens: a mesh directory that
        // does not load stops the start with its problems (as do unusable Kubernetes
        // API settings; an API server that is down is retried).
        let source = match &config.destination {
            Some(d) => Some(match &d.source {
                SourceConfig::Local(local) => {
                    Source::Local(Box::new(destination::LocalSource::load(
                        local.clone(),
                        &config.trust_domain,
                        &d.opaque_ports,
                    )?))
                }
                SourceConfig::Kube(k) => Source::Kube(
                    kube::KubeSource::connect(k, &config.trust_domain, &d.opaque_ports).await?,
                ),
            }),
            None => None,
        };
        // The kube source is ready when it has listed every kind of object it reflects.
        let ready_at_start = !matches!(source, Some(Source::Kube(_)));

        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ControllerError::Bind { what, addr, source })
        };
        let grpc_listener = bind("gRPC", config.listen).await?;
        let admin_listener = bind("admin", config.admin_listen).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| ControllerError::Bind { what, addr, source })
        };
        let grpc_addr = local(&grpc_listener, "gRPC", config.listen)?;
        let admin_addr = local(&admin_listener, "admin", config.admin_listen)?;

        let ready = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut background = vec![
            tokio::spawn(admin::serve(admin_listener, metrics.clone(), ready.clone())),
            tokio::spawn(serving.clone().renew()),
        ];
        let reissue = serving.clone();
        background.push(tokio::spawn(identity::watch(
            files,
            certifier.clone(),
            reload,
            metrics.identity.clone(),
            move |anchors: &identity::TrustAnchors| {
                match reissue.reissue() {
                    Ok(()) => tracing::info!("serving certificate reissued by the new issuer"),
                    Err(error) => tracing::error!(%error, "cannot reissue the serving certificate"),
                }
                // Client certificates from the new bundle's anchors are accepted.
                if let Err(error) = clients.set_anchors(anchors) {
                    tracing::error!(%error, "cannot verify client certificates with the new trust anchors; keeping the previous ones");
                }
            },
        )));
        let mut index = None;
        let mut policies = None;
        let mut inbound = None;
        let mut inbound_policy = None;
        // The kube source's client and leadership, for the route and policy status
        // writers.
        let mut status_writer = None;
        let destinations = match (source, &config.destination) {
            (Some(source), Some(d)) => {
                let subscribe = match source {
                    Source::Local(source) => {
                        let source = *source;
                        let (publish, subscribe) =
                            tokio::sync::watch::channel(Arc::new(source.index()));
                        metrics
                            .destination
                            .index_timestamp
                            .set(destination::local::unix_now());
                        let (services, pods, ready) = subscribe.borrow().counts();
                        if let SourceConfig::Local(local) = &d.source {
                            tracing::info!(
                                mesh_dir = %local.mesh_dir.display(),
                                pods_file = %local.pods_file.display(),
                                services,
                                pods,
                                ready,
                                "destination service: local source loaded"
                            );
                        }
                        background.push(tokio::spawn(
                            source.watch(publish, metrics.destination.clone()),
                        ));
                        subscribe
                    }
                    Source::Kube(source) => {
                        let leader = match &d.source {
                            SourceConfig::Kube(k) => k.leader.clone(),
                            SourceConfig::Local(_) => None,
                        };
                        status_writer = Some((source.client().clone(), leader));
                        // Pending until the first full list.
                        let (publish, subscribe) = tokio::sync::watch::channel(Arc::new(
                            destination::Index::pending(&config.trust_domain),
                        ));
                        background.push(tokio::spawn(source.run(
                            publish,
                            ready.clone(),
                            metrics.kube.clone(),
                            metrics.destination.clone(),
                        )));
                        subscribe
                    }
                };
                index = Some(subscribe.clone());
                // Routes follow the same index: a reload of the mesh directory is a new
                // route table at once.
                let (first, updates) =
                    routes::serve::snapshot(subscribe.borrow().clone(), &d.cluster_domain);
                routes::serve::log(&updates);
                let (routes_tx, routes_rx) = tokio::sync::watch::channel(Arc::new(first));
                background.push(tokio::spawn(routes::serve::watch(
                    subscribe.clone(),
                    routes_tx,
                    d.cluster_domain.clone(),
                )));
                if let Some((client, leader)) = &status_writer {
                    background.push(tokio::spawn(kube::status::run(
                        client.clone(),
                        routes_rx.clone(),
                        leader.clone(),
                        metrics.kube.clone(),
                    )));
                }
                // Authorization policy follows it too.
                let first = policy::serve::snapshot(subscribe.borrow().clone(), d.policy.clone());
                let (inbound_tx, inbound_rx) = tokio::sync::watch::channel(Arc::new(first));
                background.push(tokio::spawn(policy::serve::watch(
                    subscribe.clone(),
                    inbound_tx,
                )));
                if let Some((client, leader)) = status_writer.take() {
                    background.push(tokio::spawn(kube::policy_status::run(
                        client,
                        inbound_rx.clone(),
                        leader,
                        metrics.kube.clone(),
                    )));
                }
                inbound_policy = Some(inbound_rx.clone());
                inbound = Some(policy::InboundPolicyService::new(
                    inbound_rx,
                    &config.trust_domain,
                    stop.subscribe(),
                ));
                policies = Some(routes::OutboundPolicyService::new(
                    routes_rx,
                    &d.cluster_domain,
                    &config.trust_domain,
                    stop.subscribe(),
                ));
                Some(destination::DestinationService::new(
                    subscribe,
                    &d.cluster_domain,
                    &config.trust_domain,
                    metrics.destination.clone(),
                    stop.subscribe(),
                ))
            }
            _ => None,
        };
        let grpc = tokio::spawn(server::serve(
            grpc_listener,
            tls,
            certifier,
            destinations,
            policies,
            inbound,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        if ready_at_start {
            ready.store(true, Ordering::Release);
        }
        tracing::info!(
            %grpc_addr,
            %admin_addr,
            identity = %serving.identity(),
            trust_anchors = anchors.len(),
            "controller serving"
        );
        Ok(Controller {
            grpc_addr,
            admin_addr,
            metrics,
            serving,
            index,
            inbound_policy,
            ready,
            stop,
            grpc: Some(grpc),
            background,
        })
    }

    /// The gRPC (TLS) address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The controller's own serving certificate.
    pub fn serving_cert(&self) -> &Arc<ServingCert> {
        &self.serving
    }

    /// The destination service's current index (`None` without a destination source).
    pub fn destination_index(&self) -> Option<Arc<destination::Index>> {
        self.index.as_ref().map(|i| i.borrow().clone())
    }

    /// The policy objects' statuses now (empty without a destination source).
    pub fn policy_reports(&self) -> Vec<policy::ObjectReport> {
        self.inbound_policy
            .as_ref()
            .map(|p| p.borrow().policy.reports().to_vec())
            .unwrap_or_default()
    }

    /// Completes when the gRPC server stops (after [`Controller::shutdown`], or if it
    /// fails).
    pub async fn wait(&mut self) -> Result<(), ControllerError> {
        match &mut self.grpc {
            Some(task) => {
                let result = task.await;
                self.grpc = None;
                Ok(result??)
            }
            None => Ok(()),
        }
    }

    /// Stops serving: `/ready` turns 503, the gRPC server stops accepting and finishes
    /// the requests in flight.
    pub async fn shutdown(mut self) -> Result<(), ControllerError> {
        self.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        let result = self.wait().await;
        for task in &self.background {
            task.abort();
        }
        result
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(task) = &self.grpc {
            task.abort();
        }
        for task in &self.background {
            task.abort();
        }
    }
}

//! Proxy settings: command-line flags with `WEFT_*` environment equivalents, and the
//! validated [`Config`] the proxy runs with.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use std::sync::Arc;

use weft_core::identity::Identity;

use crate::balance::{BalanceConfig, ZoneMode};
use crate::certify::{CertifyConfig, TokenSource};
use crate::destination::DestinationConfig;
use crate::endpoints::{EndpointsError, ServiceIndex};
use crate::identity::LocalIdentity;
use crate::retry::{
    BudgetParams, BudgetedPolicy, MethodSet, RequestPolicy, RetryCondition, RetryOn, RetryPolicy,
};

// The workload's labels live with the metrics they label, so `metrics` needs nothing of
// `config` (which needs `certify`, which needs `metrics`).
pub use crate::metrics::WorkloadLabels;

/// `--failfast-timeout`'s default (keep it in step with the flag's).
pub const DEFAULT_FAILFAST_TIMEOUT: Duration = Duration::from_secs(3);
/// `--destination-idle-timeout`'s default (keep it in step with the flag's).
pub const DEFAULT_DESTINATION_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How the proxy learns where a connection was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Connections were redirected by iptables; the destination is `SO_ORIGINAL_DST`.
    Transparent,
    /// No redirection: outbound destinations come from the endpoints file (per-service
    /// listen ports, or the HTTP authority), inbound traffic goes to `--inbound-forward`.
    Explicit,
}

/// Command-line interface of `weft-proxy`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "weft-proxy",
    version,
    about = "weft's sidecar proxy: transparent HTTP/1.1, HTTP/2, gRPC and TCP proxying with golden metrics",
    long_about = None
)]
pub struct Args {
    /// Where outbound traffic (from the local workload) arrives.
    #[arg(long, env = "WEFT_OUTBOUND_LISTEN", default_value = "127.0.0.1:4140")]
    pub outbound_listen: SocketAddr,

    /// Where inbound traffic (to the local workload) arrives.
    #[arg(long, env = "WEFT_INBOUND_LISTEN", default_value = "0.0.0.0:4143")]
    pub inbound_listen: SocketAddr,

    /// Admin server: /metrics, /ready, /live, POST /shutdown (loopback callers only).
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "0.0.0.0:4191")]
    pub admin_listen: SocketAddr,

    /// Who may read `/metrics` on the admin port besides loopback (CIDRs or addresses,
    /// comma-separated): the metrics name identities and topology. Everyone by
    /// default, as Prometheus scrapes pods from anywhere; the local mesh allows its hub
    /// only. `/ready` and `/live` answer everyone; `POST /shutdown` only loopback.
    #[arg(long, env = "WEFT_ADMIN_METRICS_FROM", value_delimiter = ',', default_value = "0.0.0.0/0,::/0", value_parser = parse_network)]
    pub admin_metrics_from: Vec<ipnet::IpNet>,

    /// How destinations are learnt: `transparent` (iptables redirect, needs root to set
    /// up) or `explicit` (endpoints file and --inbound-forward).
    #[arg(long, env = "WEFT_MODE", value_enum, default_value = "transparent")]
    pub mode: Mode,

    /// YAML file of services and their endpoints (static discovery).
    #[arg(long, env = "WEFT_ENDPOINTS")]
    pub endpoints: Option<PathBuf>,

    /// Explicit mode: the local workload's address that inbound traffic is sent to.
    #[arg(long, env = "WEFT_INBOUND_FORWARD")]
    pub inbound_forward: Option<SocketAddr>,

    /// Comma-separated destination ports whose traffic is forwarded as opaque TCP
    /// without protocol detection (server-speaks-first protocols such as MySQL, SMTP).
    #[arg(
        long,
        env = "WEFT_OPAQUE_PORTS",
        value_delimiter = ',',
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    pub opaque_ports: Vec<u16>,

    /// How long to wait for a client's first bytes before treating the connection as
    /// opaque TCP. Long (as Linkerd's 10 s) because HTTP clients open pooled connections
    /// ahead of their first request; server-speaks-first protocols belong in
    /// --opaque-ports instead.
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub detect_timeout: Duration,

    /// Time allowed to open a connection to an upstream endpoint.
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "1s")]
    pub connect_timeout: Duration,

    /// Time allowed for an upstream to answer an HTTP request with response headers,
    /// per attempt (outbound, a timed-out idempotent request may be retried); `0s`
    /// disables the limit.
    #[arg(long, env = "WEFT_RESPONSE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "0s")]
    pub response_timeout: Duration,

    /// Outbound: deadline of a whole request, its retries and response body included;
    /// on expiry the caller gets 504 (gRPC: DEADLINE_EXCEEDED). `0s`: none. A service's
    /// `timeout` in the endpoints file overrides it; a gRPC caller's `grpc-timeout`
    /// shortens it.
    #[arg(long, env = "WEFT_REQUEST_TIMEOUT", value_parser = humantime::parse_duration, default_value = "0s")]
    pub request_timeout: Duration,

    /// Outbound: retries of a request after its first attempt, each to another endpoint
    /// when there is one; `0` turns retrying off. Requests whose connection failed are
    /// always retryable; others as --retry-on and --retry-methods say.
    #[arg(long, env = "WEFT_RETRY_LIMIT", default_value_t = 2)]
    pub retry_limit: u32,

    /// Comma-separated responses that are retried: HTTP statuses (`503`), ranges
    /// (`500-504`), `5xx`, `4xx`, `gateway-error` (502-504), and gRPC status names
    /// (`unavailable`, `resource-exhausted`, ...), which also declare gRPC calls safe
    /// to retry. Empty: retry connect failures only.
    #[arg(long, env = "WEFT_RETRY_ON", default_value = "500,502-504")]
    pub retry_on: String,

    /// Comma-separated HTTP methods retried on a response or a timed-out attempt
    /// (bodies up to 64 KiB).
    #[arg(
        long,
        env = "WEFT_RETRY_METHODS",
        default_value = "GET,HEAD,OPTIONS,TRACE,PUT,DELETE"
    )]
    pub retry_methods: String,

    /// Base of the jittered wait before a retry (doubles per retry, at most 10×).
    #[arg(long, env = "WEFT_RETRY_BACKOFF", value_parser = humantime::parse_duration, default_value = "25ms")]
    pub retry_backoff: Duration,

    /// Retry budget per destination: retries allowed per request over
    /// --retry-budget-ttl (0.2: at most one retry per five requests).
    #[arg(long, env = "WEFT_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,

    /// Retry budget: retries per second allowed on top of the ratio, so that quiet
    /// clients can retry too.
    #[arg(long, env = "WEFT_RETRY_BUDGET_MIN_PER_SECOND", default_value_t = 10)]
    pub retry_budget_min_per_second: u32,

    /// Retry budget: the window over which requests and retries count (1s to 60s).
    #[arg(long, env = "WEFT_RETRY_BUDGET_TTL", value_parser = humantime::parse_duration, default_value = "10s")]
    pub retry_budget_ttl: Duration,

    /// How long in-flight requests may continue after SIGTERM or POST /shutdown.
    #[arg(long, env = "WEFT_DRAIN_GRACE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub drain_grace: Duration,

    /// Most connections (inbound and outbound together) served at once; past it, new
    /// ones wait in the listen queue until one closes. 0: derived from the open file
    /// limit (each proxied connection holds two descriptors).
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// How long an opaque TCP connection may pass no byte either way before the proxy
    /// closes it (0: never).
    #[arg(long, env = "WEFT_TCP_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "1h")]
    pub tcp_idle_timeout: Duration,

    /// Carry HTTP/1 requests to meshed endpoints over one multiplexed HTTP/2
    /// connection per endpoint (Linkerd's `l5d-orig-proto`): one connection and one
    /// handshake per pair of pods, less memory per idle connection and less CPU per
    /// request under load, for up to 0.3 ms more per request at low load, by machine
    /// (docs/proxy.md). Off: HTTP/1 all the way, one upstream connection per
    /// concurrent request.
    #[arg(long, env = "WEFT_H2_BETWEEN_PROXIES", default_value_t = false, action = clap::ArgAction::Set)]
    pub h2_between_proxies: bool,

    /// How long an idle pooled upstream connection is kept.
    #[arg(long, env = "WEFT_POOL_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub pool_idle_timeout: Duration,

    /// How long a request (or connection) to a service with no endpoint to pick waits
    /// for one to arrive; once a service has had none for this long, requests to it
    /// fail at once (503) until one comes (Linkerd's failfast).
    #[arg(long, env = "WEFT_FAILFAST_TIMEOUT", value_parser = humantime::parse_duration, default_value = "3s")]
    pub failfast_timeout: Duration,

    /// HTTP metric series of a route (authority, endpoint, ...) that served no request
    /// for this long are dropped from /metrics (0: kept for the proxy's life).
    #[arg(long, env = "WEFT_METRICS_RETAIN_IDLE", value_parser = humantime::parse_duration, default_value = "10m")]
    pub metrics_retain_idle: Duration,

    /// Most destinations followed through the destination service at once (each one
    /// stream to the controller); past it, the one unused the longest makes room, or
    /// the new one is not followed while all are in use.
    #[arg(long, env = "WEFT_MAX_DESTINATIONS", default_value_t = crate::destination::DEFAULT_MAX_FOLLOWED)]
    pub max_destinations: usize,

    /// How long a destination learnt from the destination service is followed (its
    /// stream kept open) after its last lookup, once no connection uses it.
    #[arg(long, env = "WEFT_DESTINATION_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10m")]
    pub destination_idle_timeout: Duration,

    /// Worker threads; 1 runs a single-threaded runtime (the sidecar default).
    #[arg(long, env = "WEFT_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Workload namespace, added to every metric as `namespace`.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Workload (deployment) name, added to every metric as `deployment`.
    #[arg(long, env = "WEFT_DEPLOYMENT", default_value = "")]
    pub deployment: String,

    /// The zone this workload runs in: traffic stays in it while in-zone endpoints keep
    /// up (zone-aware balancing), and every metric carries it as `zone`.
    #[arg(long, env = "WEFT_ZONE")]
    pub zone: Option<String>,

    /// How endpoints' zones are used once --zone is set: `aware` keeps traffic in the
    /// zone while its load stays inside the --zone-low/--zone-high band and leaves the
    /// zone when its endpoints fail; `unaware` balances over every endpoint (P2C);
    /// `local-only` sends only to in-zone endpoints while the zone has any, failing or
    /// not (Kubernetes topology-hints style).
    #[arg(long, env = "WEFT_ZONE_MODE", value_enum, default_value = "aware")]
    pub zone_mode: ZoneMode,

    /// In-zone load (pending requests per in-zone endpoint) below which other zones'
    /// endpoints are dropped again.
    #[arg(long, env = "WEFT_ZONE_LOW", default_value_t = 0.8)]
    pub zone_low: f64,

    /// In-zone load above which other zones' endpoints are added, one at a time.
    #[arg(long, env = "WEFT_ZONE_HIGH", default_value_t = 2.0)]
    pub zone_high: f64,

    /// Pod (replica) name, added to every metric as `pod`.
    #[arg(long, env = "WEFT_POD", default_value = "")]
    pub pod: String,

    /// The workload whose inbound policy the proxy asks the controller for, as
    /// NAMESPACE:NAME with --namespace (default: --deployment). On Kubernetes the
    /// controller knows each pod as a workload of its own (a Deployment's pods may
    /// differ in labels during a rollout), and the injector sets this to the pod's name.
    #[arg(long, env = "WEFT_POLICY_WORKLOAD")]
    pub policy_workload: Option<String>,

    /// The application's HTTP probes the admin server makes on loopback for the
    /// kubelet, as `GET /app-probe/NAME`: a JSON object such as
    /// {"app/readiness": {"port": 8080, "path": "/ready"}} (`headers`: [[name, value]]).
    /// The injector sets it when it points the pod's probes at the proxy.
    #[arg(long, env = "WEFT_APP_PROBES", value_parser = crate::app_probe::parse)]
    pub app_probes: Option<crate::app_probe::AppProbes>,

    /// Trust anchors (PEM bundle). Setting them turns on mTLS: the proxy makes a key,
    /// obtains a certificate from --controller with --identity-token, and reports ready
    /// only once it has one.
    #[arg(long, env = "WEFT_TRUST_ANCHORS", group = "anchors")]
    pub trust_anchors: Option<PathBuf>,

    /// The trust anchors inline (the PEM bundle itself), instead of --trust-anchors: the
    /// sidecar injector passes them so, with no volume to mount.
    #[arg(
        long,
        env = "WEFT_TRUST_ANCHORS_PEM",
        group = "anchors",
        value_name = "PEM",
        // A PEM bundle begins with `-----`, which clap would take for a flag.
        allow_hyphen_values = true
    )]
    pub trust_anchors_pem: Option<String>,

    /// The controller's identity service, `host:port` (gRPC over TLS).
    #[arg(long, env = "WEFT_CONTROLLER")]
    pub controller: Option<String>,

    /// The controller's identity name, its TLS server name (default:
    /// weft-controller.weft-system.serviceaccount.identity.weft.{trust-domain}).
    #[arg(long, env = "WEFT_CONTROLLER_NAME")]
    pub controller_name: Option<String>,

    /// The controller's destination service, `host:port` (gRPC over TLS, verified with
    /// --trust-anchors and --controller-name; usually the --controller address).
    /// Outbound connections to addresses the endpoints file does not know are resolved
    /// through it (explicit mode: HTTP authorities); the endpoints it streams are
    /// applied as they change, and kept while the controller is unreachable.
    #[arg(long, env = "WEFT_DESTINATION", requires = "anchors")]
    pub destination: Option<String>,

    /// How long connections to a destination met for the first time wait for the
    /// destination service's first answer before going to their original destination.
    #[arg(long, env = "WEFT_DESTINATION_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub destination_wait: Duration,

    /// Who may call the local application when no policy from the controller says
    /// otherwise: without --destination, for every port; with it, until a port's first
    /// policy arrives (after --destination-wait) and for a workload the controller has
    /// no policy for. all-unauthenticated (everyone), all-authenticated (mesh
    /// identities), cluster-authenticated (mesh identities from private networks and
    /// loopback) or deny.
    #[arg(long, env = "WEFT_DEFAULT_INBOUND_POLICY", default_value = "all-unauthenticated", value_parser = str::parse::<crate::inbound::authorize::DefaultPolicy>)]
    pub default_inbound_policy: crate::inbound::authorize::DefaultPolicy,

    /// The mesh's pod networks (CIDRs, comma-separated). With --destination, an
    /// outbound connection to an address in them that the destination service has not
    /// answered for is refused (HTTP 503, `weft-proxy-error: discovery unavailable`)
    /// instead of going out in plaintext: fail closed. Addresses outside them go to
    /// their original destination.
    #[arg(
        long,
        env = "WEFT_MESH_NETWORKS",
        value_delimiter = ',',
        default_value = crate::destination::DestinationConfig::DEFAULT_MESH_NETWORKS,
        value_parser = parse_network
    )]
    pub mesh_networks: Vec<ipnet::IpNet>,

    /// File holding the token that proves this workload's identity to the controller
    /// (read again for every certificate request); `-` reads it once from stdin, up to
    /// its end, and keeps it in memory, so no file the proxy's user can read holds it.
    #[arg(long, env = "WEFT_IDENTITY_TOKEN")]
    pub identity_token: Option<PathBuf>,

    /// The workload's service account; with --namespace and --trust-domain it makes
    /// the proxy's identity.
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,

    /// Trust domain of identities.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = weft_core::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `weft_proxy=debug`.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The validated settings a proxy runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub outbound_listen: SocketAddr,
    pub inbound_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub mode: Mode,
    pub services: ServiceIndex,
    pub inbound_forward: Option<SocketAddr>,
    pub opaque_ports: HashSet<u16>,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Option<Duration>,
    /// Outbound timeouts and retries by default (services may override them), and the
    /// retry budget of destinations that are not services.
    pub request_policy: Arc<BudgetedPolicy>,
    pub drain_grace: Duration,
    /// HTTP/1 to meshed endpoints over HTTP/2 (`--h2-between-proxies`).
    pub h2_between_proxies: bool,
    /// Idle pooled connections, and endpoint pools nothing uses, are dropped after this.
    pub pool_idle_timeout: Duration,
    /// Destinations from the destination service that nothing used for this long are
    /// no longer followed.
    pub destination_idle_timeout: Duration,
    /// How long requests wait for a service with no endpoints (`--failfast-timeout`).
    pub failfast_timeout: Duration,
    /// Most destinations followed at once (`--max-destinations`).
    pub max_destinations: usize,
    /// Idle HTTP route series are dropped after this (`--metrics-retain-idle`).
    pub metrics_retain_idle: Option<Duration>,
    pub labels: WorkloadLabels,
    /// The workload's name in inbound policy requests (`--policy-workload`); `None`:
    /// the deployment's.
    pub policy_workload: Option<String>,
    /// `--app-probes`.
    pub app_probes: Arc<crate::app_probe::AppProbes>,
    /// How services are balanced (zone awareness and its band, ejection, ...).
    pub balance: Arc<BalanceConfig>,
    /// mTLS: this proxy's identity and where it gets its certificate.
    pub identity: Option<IdentityConfig>,
    /// Endpoints from the controller's destination service.
    pub destination: Option<DestinationConfig>,
    /// Who may read `/metrics` from off loopback.
    pub admin_metrics_from: Vec<ipnet::IpNet>,
    /// Most connections served at once (`None`: from the open file limit).
    pub max_connections: Option<usize>,
    /// Opaque TCP connections idle this long are closed.
    pub tcp_idle_timeout: Option<Duration>,
    /// Who may call the application without a policy from the controller.
    pub default_inbound_policy: crate::inbound::authorize::DefaultPolicy,
}

#[derive(Clone, Debug)]
pub struct IdentityConfig {
    pub local: Arc<LocalIdentity>,
    /// `None` when certificates are installed by the embedding program (tests).
    pub certify: Option<CertifyConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Endpoints(#[from] EndpointsError),
    #[error("--inbound-forward is required in explicit mode: inbound traffic needs the local workload's address")]
    MissingInboundForward,
    #[error("--inbound-forward {0} is the inbound listener itself (--inbound-listen {1}): inbound traffic would loop; name the local workload's address")]
    InboundForwardLoop(SocketAddr, SocketAddr),
    #[error("--worker-threads must be at least 1")]
    NoWorkers,
    #[error("{flag}: {problem}")]
    Flag { flag: &'static str, problem: String },
    #[error("the zone band needs 0 <= --zone-low <= --zone-high (got {0} and {1})")]
    ZoneBand(f64, f64),
    #[error(
        "trust anchors (--trust-anchors or --trust-anchors-pem) turn on mTLS, which also need {0}"
    )]
    IdentityIncomplete(&'static str),
    #[error("--identity-token -: cannot read the token from stdin: {0}")]
    TokenStdin(std::io::Error),
    #[error("--identity-token -: stdin held no token")]
    EmptyToken,
    #[error("--destination needs --trust-anchors or --trust-anchors-pem to verify the controller's certificate")]
    DestinationWithoutAnchors,
    #[error("--trust-anchors and --trust-anchors-pem both name trust anchors; give one")]
    TwoAnchorSources,
    #[error("trust anchors from --trust-anchors-pem (WEFT_TRUST_ANCHORS_PEM): {0}")]
    InlineAnchors(String),
    #[error("the proxy's identity: {0}")]
    IdentityName(#[from] weft_core::identity::IdentityError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// The whole of `input` (stdin for `--identity-token -`), which must not be empty.
fn read_token(mut input: impl std::io::Read) -> Result<Vec<u8>, ConfigError> {
    let mut token = Vec::new();
    input
        .read_to_end(&mut token)
        .map_err(ConfigError::TokenStdin)?;
    if token.is_empty() {
        return Err(ConfigError::EmptyToken);
    }
    Ok(token)
}

/// A CIDR (`198.18.0.0/15`), or a single address as its /32 or /128.
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a network (CIDR like 198.18.0.0/15) or an address"))
}

/// The trust anchors, parsed and as the PEM bundle they came in.
struct TrustAnchors {
    roots: Arc<rustls::RootCertStore>,
    pem: Vec<u8>,
}

impl Args {
    /// The trust anchors parsed, with their PEM bundle (which the identity and
    /// destination clients verify the controller with), from whichever of
    /// --trust-anchors and --trust-anchors-pem is given; the file is read once.
    fn anchors(&self) -> Result<Option<TrustAnchors>, ConfigError> {
        match (&self.trust_anchors, &self.trust_anchors_pem) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ConfigError::TwoAnchorSources),
            (Some(path), None) => {
                let pem = std::fs::read(path).map_err(|source| {
                    crate::identity::IdentityError::ReadAnchors {
                        path: path.clone(),
                        source,
                    }
                })?;
                let roots = crate::identity::anchors_from_pem(&pem).map_err(|problem| {
                    crate::identity::IdentityError::BadAnchors {
                        path: path.clone(),
                        problem,
                    }
                })?;
                Ok(Some(TrustAnchors { roots, pem }))
            }
            (None, Some(pem)) => {
                let pem = pem.as_bytes().to_vec();
                let roots =
                    crate::identity::anchors_from_pem(&pem).map_err(ConfigError::InlineAnchors)?;
                Ok(Some(TrustAnchors { roots, pem }))
            }
        }
    }

    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.worker_threads == 0 {
            return Err(ConfigError::NoWorkers);
        }
        if !(self.zone_low >= 0.0 && self.zone_low <= self.zone_high) {
            return Err(ConfigError::ZoneBand(self.zone_low, self.zone_high));
        }
        let balance = Arc::new(BalanceConfig {
            zone: self
                .zone
                .as_deref()
                .filter(|z| !z.is_empty())
                .map(Into::into),
            zone_mode: self.zone_mode,
            zone_low: self.zone_low,
            zone_high: self.zone_high,
            ..BalanceConfig::default()
        });
        let request_policy = Arc::new(BudgetedPolicy::new(self.request_policy()?));
        let services = match &self.endpoints {
            Some(path) => ServiceIndex::load_with(path, balance.clone())?,
            None => ServiceIndex::default(),
        };
        if self.mode == Mode::Explicit && self.inbound_forward.is_none() {
            return Err(ConfigError::MissingInboundForward);
        }
        if let Some(forward) = self.inbound_forward {
            let listen = self.inbound_listen;
            let same_ip = listen.ip() == forward.ip()
                || (listen.ip().is_unspecified()
                    && (forward.ip().is_loopback() || forward.ip().is_unspecified()));
            if listen.port() == forward.port() && same_ip {
                return Err(ConfigError::InboundForwardLoop(forward, listen));
            }
        }
        let anchors = self.anchors()?;
        let identity = match &anchors {
            None => None,
            Some(TrustAnchors {
                roots,
                pem: anchors_pem,
            }) => {
                let controller = self
                    .controller
                    .clone()
                    .ok_or(ConfigError::IdentityIncomplete("--controller"))?;
                let token = match self.identity_token.as_deref() {
                    None => return Err(ConfigError::IdentityIncomplete("--identity-token")),
                    Some(path) if path == std::path::Path::new("-") => {
                        TokenSource::Inline(read_token(std::io::stdin().lock())?.into())
                    }
                    Some(path) => TokenSource::File(path.to_owned()),
                };
                let name =
                    Identity::new(&self.service_account, &self.namespace, &self.trust_domain)?;
                let controller_name = match &self.controller_name {
                    Some(n) => n.clone(),
                    None => Identity::new("weft-controller", "weft-system", &self.trust_domain)?
                        .dns_name(),
                };
                Some(IdentityConfig {
                    local: LocalIdentity::new(name, roots.clone())?,
                    certify: Some(CertifyConfig {
                        controller,
                        controller_name,
                        token,
                        anchors_pem: anchors_pem.clone(),
                    }),
                })
            }
        };
        let destination = match (&self.destination, anchors) {
            (
                Some(controller),
                Some(TrustAnchors {
                    pem: anchors_pem, ..
                }),
            ) => Some(DestinationConfig {
                controller: controller.clone(),
                controller_name: match &self.controller_name {
                    Some(n) => n.clone(),
                    None => Identity::new("weft-controller", "weft-system", &self.trust_domain)?
                        .dns_name(),
                },
                anchors_pem,
                first_update: self.destination_wait,
                mesh_networks: self.mesh_networks.clone(),
            }),
            (Some(_), None) => return Err(ConfigError::DestinationWithoutAnchors),
            (None, _) => None,
        };
        Ok(Config {
            outbound_listen: self.outbound_listen,
            inbound_listen: self.inbound_listen,
            admin_listen: self.admin_listen,
            admin_metrics_from: self.admin_metrics_from,
            max_connections: (self.max_connections > 0).then_some(self.max_connections),
            tcp_idle_timeout: (!self.tcp_idle_timeout.is_zero()).then_some(self.tcp_idle_timeout),
            default_inbound_policy: self.default_inbound_policy,
            mode: self.mode,
            services,
            inbound_forward: self.inbound_forward,
            opaque_ports: self.opaque_ports.into_iter().collect(),
            detect_timeout: self.detect_timeout,
            connect_timeout: self.connect_timeout,
            response_timeout: (!self.response_timeout.is_zero()).then_some(self.response_timeout),
            request_policy,
            drain_grace: self.drain_grace,
            h2_between_proxies: self.h2_between_proxies,
            pool_idle_timeout: self.pool_idle_timeout,
            destination_idle_timeout: self.destination_idle_timeout,
            failfast_timeout: self.failfast_timeout,
            max_destinations: self.max_destinations,
            metrics_retain_idle: (!self.metrics_retain_idle.is_zero())
                .then_some(self.metrics_retain_idle),
            policy_workload: self.policy_workload.filter(|w| !w.is_empty()),
            app_probes: Arc::new(self.app_probes.unwrap_or_default()),
            labels: WorkloadLabels {
                namespace: self.namespace,
                deployment: self.deployment,
                pod: self.pod,
                zone: self.zone.unwrap_or_default(),
            },
            balance,
            identity,
            destination,
        })
    }
}

impl Args {
    /// The outbound timeouts and retries the flags ask for.
    fn request_policy(&self) -> Result<RequestPolicy, ConfigError> {
        let flag = |flag, problem| ConfigError::Flag { flag, problem };
        let on = self
            .retry_on
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(str::parse::<RetryCondition>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| flag("--retry-on", e))?;
        let methods = MethodSet::parse(
            self.retry_methods
                .split(',')
                .filter(|m| !m.trim().is_empty()),
        )
        .map_err(|e| flag("--retry-methods", e))?;
        let budget = BudgetParams {
            ratio: self.retry_budget_ratio,
            min_per_second: self.retry_budget_min_per_second,
            ttl: self.retry_budget_ttl,
        };
        budget.validate().map_err(|(field, problem)| {
            let name = match field {
                "ratio" => "--retry-budget-ratio",
                _ => "--retry-budget-ttl",
            };
            flag(name, problem)
        })?;
        Ok(RequestPolicy {
            timeout: (!self.request_timeout.is_zero()).then_some(self.request_timeout),
            retry: RetryPolicy {
                limit: self.retry_limit,
                on: RetryOn::new(&on),
                methods,
                // Each attempt has --response-timeout.
                attempt_timeout: None,
                backoff: self.retry_backoff,
                budget,
            },
        })
    }
}

impl Config {
    /// Settings for a proxy in explicit mode on ephemeral loopback ports, forwarding
    /// inbound traffic to `inbound_forward`. Used by tests and local runs.
    pub fn explicit(inbound_forward: SocketAddr) -> Self {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        Config {
            outbound_listen: loopback,
            inbound_listen: loopback,
            admin_listen: loopback,
            mode: Mode::Explicit,
            services: ServiceIndex::default(),
            inbound_forward: Some(inbound_forward),
            opaque_ports: HashSet::new(),
            detect_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            response_timeout: None,
            request_policy: Arc::new(BudgetedPolicy::new(RequestPolicy::default())),
            drain_grace: Duration::from_secs(10),
            h2_between_proxies: false,
            pool_idle_timeout: Duration::from_secs(60),
            destination_idle_timeout: DEFAULT_DESTINATION_IDLE_TIMEOUT,
            failfast_timeout: DEFAULT_FAILFAST_TIMEOUT,
            max_destinations: crate::destination::DEFAULT_MAX_FOLLOWED,
            metrics_retain_idle: Some(Duration::from_secs(600)),
            labels: WorkloadLabels::default(),
            policy_workload: None,
            app_probes: Arc::default(),
            balance: Arc::default(),
            identity: None,
            destination: None,
            admin_metrics_from: Vec::new(),
            max_connections: None,
            tcp_idle_timeout: Some(Duration::from_secs(3600)),
            default_inbound_policy: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("weft-proxy").chain(args.iter().copied()))
    }

    fn anchor_pem() -> String {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    const MTLS: [&str; 6] = [
        "--controller",
        "198.18.0.1:8080",
        "--identity-token",
        "/var/run/secrets/tokens/weft-identity",
        "--destination",
        "198.18.0.1:8090",
    ];

    #[test]
    fn trust_anchors_come_from_a_file_or_inline_but_not_both() {
        let pem = anchor_pem();
        let dir = std::env::temp_dir().join(format!("weft-proxy-anchors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("anchors.pem");
        std::fs::write(&file, &pem).unwrap();
        let bad_file = dir.join("bad.pem");
        std::fs::write(&bad_file, "not a certificate\n").unwrap();
        let file_arg = file.to_str().unwrap();
        let bad_arg = bad_file.to_str().unwrap();

        let from_file = parse(&[&["--trust-anchors", file_arg][..], &MTLS].concat())
            .unwrap()
            .into_config();
        let inline = parse(&[&["--trust-anchors-pem", pem.as_str()][..], &MTLS].concat())
            .unwrap()
            .into_config();
        let bad_from_file = parse(&[
            "--trust-anchors",
            bad_arg,
            "--controller",
            "198.18.0.1:8080",
        ])
        .unwrap()
        .into_config();
        let both = parse(&[
            "--trust-anchors",
            file_arg,
            "--trust-anchors-pem",
            pem.as_str(),
        ]);
        std::fs::remove_dir_all(&dir).unwrap();

        for config in [from_file.unwrap(), inline.unwrap()] {
            let identity = config.identity.expect("mTLS is on");
            let certify = identity.certify.expect("certificates from the controller");
            assert_eq!(certify.anchors_pem, pem.as_bytes());
            assert_eq!(certify.controller, "198.18.0.1:8080");
            let destination = config.destination.expect("destination service");
            assert_eq!(destination.anchors_pem, pem.as_bytes());
        }

        // The same parsing for both sources; each error names its source.
        let err = bad_from_file.unwrap_err().to_string();
        assert_eq!(
            err,
            format!("trust anchors {bad_arg}: no certificate in the bundle")
        );
        let err = parse(&[
            "--trust-anchors-pem",
            "not a certificate",
            "--controller",
            "198.18.0.1:8080",
        ])
        .unwrap()
        .into_config()
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "trust anchors from --trust-anchors-pem (WEFT_TRUST_ANCHORS_PEM): no certificate in the bundle"
        );
        let truncated = &pem[..pem.len() / 2];
        let err = parse(&[
            "--trust-anchors-pem",
            truncated,
            "--controller",
            "198.18.0.1:8080",
        ])
        .unwrap()
        .into_config()
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("trust anchors from --trust-anchors-pem (WEFT_TRUST_ANCHORS_PEM): not a PEM certificate bundle"),
            "{err}"
        );

        // Exclusive: on the command line (or from the environment) clap refuses both,
        // and a config built otherwise is refused too.
        let err = both.unwrap_err().to_string();
        assert!(err.contains("--trust-anchors <TRUST_ANCHORS>"), "{err}");
        assert!(err.contains("cannot be used with"), "{err}");
        assert!(err.contains("--trust-anchors-pem <PEM>"), "{err}");
        let mut args = parse(&["--trust-anchors-pem", pem.as_str()]).unwrap();
        args.trust_anchors = Some(file);
        assert!(matches!(
            args.into_config(),
            Err(ConfigError::TwoAnchorSources)
        ));

        // --destination needs anchors from either source.
        let err = parse(&["--destination", "198.18.0.1:8090"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--trust-anchors <TRUST_ANCHORS>|--trust-anchors-pem <PEM>"),
            "{err}"
        );
    }

    #[test]
    fn identity_token_from_stdin_is_read_whole_and_must_not_be_empty() {
        let token = b"abc\ndef\n".as_slice();
        assert_eq!(read_token(token).unwrap(), token);
        assert_eq!(
            read_token(b"".as_slice()).unwrap_err().to_string(),
            "--identity-token -: stdin held no token"
        );
        let source = TokenSource::Inline(b"secret".as_slice().into());
        assert_eq!(format!("{source:?}"), "Inline(6 bytes)");
    }

    #[test]
    fn zone_mode_flag_sets_the_balancer_and_refuses_unknown_modes() {
        let config = parse(&["--zone", "zone-a"]).unwrap().into_config().unwrap();
        assert_eq!(config.balance.zone_mode, ZoneMode::Aware);
        for (flag, mode) in [
            ("aware", ZoneMode::Aware),
            ("unaware", ZoneMode::Unaware),
            ("local-only", ZoneMode::LocalOnly),
        ] {
            let config = parse(&["--zone", "zone-a", "--zone-mode", flag])
                .unwrap()
                .into_config()
                .unwrap();
            assert_eq!(config.balance.zone_mode, mode);
            assert_eq!(config.balance.zone.as_deref(), Some("zone-a"));
            assert_eq!(mode.to_string(), flag);
        }
        let err = parse(&["--zone-mode", "nearby"]).unwrap_err().to_string();
        assert!(
            err.contains("invalid value 'nearby' for '--zone-mode"),
            "{err}"
        );
        assert!(err.contains("aware, unaware, local-only"), "{err}");
    }

    #[test]
    fn retry_flags_make_the_default_request_policy() {
        let config = parse(&[]).unwrap().into_config().unwrap();
        let policy = &config.request_policy.policy;
        assert_eq!(policy.timeout, None);
        assert_eq!(policy.retry, RetryPolicy::default());
        assert_eq!(
            policy.retry.methods.to_string(),
            "GET,HEAD,OPTIONS,TRACE,PUT,DELETE"
        );

        let config = parse(&[
            "--request-timeout",
            "3s",
            "--retry-limit",
            "1",
            "--retry-on",
            "gateway-error,unavailable",
            "--retry-methods",
            "GET,POST",
            "--retry-backoff",
            "0s",
            "--retry-budget-ratio",
            "0.5",
            "--retry-budget-min-per-second",
            "2",
            "--retry-budget-ttl",
            "5s",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        let p = &config.request_policy.policy;
        assert_eq!(p.timeout, Some(Duration::from_secs(3)));
        assert_eq!(p.retry.limit, 1);
        assert!(p.retry.on.http_status(http::StatusCode::BAD_GATEWAY));
        assert!(!p
            .retry
            .on
            .http_status(http::StatusCode::INTERNAL_SERVER_ERROR));
        assert!(p.retry.on.grpc_status(14));
        assert!(p.retry.methods.contains(&http::Method::POST));
        assert_eq!(p.retry.backoff, Duration::ZERO);
        assert_eq!(
            p.retry.budget,
            BudgetParams {
                ratio: 0.5,
                min_per_second: 2,
                ttl: Duration::from_secs(5)
            }
        );
        // An empty --retry-on retries connect failures only.
        let config = parse(&["--retry-on", ""]).unwrap().into_config().unwrap();
        assert!(!config.request_policy.policy.retry.on.has_http());
    }

    #[test]
    fn an_inbound_forward_to_the_inbound_listener_is_refused() {
        let err = |args: &[&str]| parse(args).unwrap().into_config().unwrap_err().to_string();
        assert_eq!(
            err(&[
                "--mode",
                "explicit",
                "--inbound-listen",
                "127.18.0.3:4143",
                "--inbound-forward",
                "127.18.0.3:4143"
            ]),
            "--inbound-forward 127.18.0.3:4143 is the inbound listener itself (--inbound-listen 127.18.0.3:4143): inbound traffic would loop; name the local workload's address"
        );
        // The default listener (0.0.0.0:4143) takes loopback connections too.
        assert!(
            err(&["--mode", "explicit", "--inbound-forward", "127.0.0.1:4143"])
                .starts_with("--inbound-forward 127.0.0.1:4143 is the inbound listener itself")
        );
        // Another address or port is the workload's.
        for forward in ["127.18.0.3:8080", "127.18.0.4:4143"] {
            let config = parse(&[
                "--mode",
                "explicit",
                "--inbound-listen",
                "127.18.0.3:4143",
                "--inbound-forward",
                forward,
            ])
            .unwrap()
            .into_config()
            .unwrap();
            assert_eq!(config.inbound_forward, Some(forward.parse().unwrap()));
        }
    }

    #[test]
    fn bad_retry_flags_are_refused_naming_the_flag() {
        let err = |args: &[&str]| parse(args).unwrap().into_config().unwrap_err().to_string();
        assert_eq!(
            err(&["--retry-on", "5xx,50x"]),
            "--retry-on: \"50x\" is not a retry condition: expected an HTTP status (503), a range (500-504), 5xx, 4xx, gateway-error or a gRPC status name (unavailable, resource-exhausted, ...)"
        );
        assert!(err(&["--retry-methods", "GET,CONNECT"]).starts_with("--retry-methods: CONNECT"));
        assert_eq!(
            err(&["--retry-budget-ratio=-1"]),
            "--retry-budget-ratio: must be a number ≥ 0 (retries per request), got -1"
        );
        assert_eq!(
            err(&["--retry-budget-ttl", "5m"]),
            "--retry-budget-ttl: must be from 1s to 60s, got 5m"
        );
        let e = parse(&["--request-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid value 'soon' for '--request-timeout"),
            "{e}"
        );
    }

    #[test]
    fn destination_idle_timeout_flag_defaults_to_ten_minutes() {
        let config = parse(&[]).unwrap().into_config().unwrap();
        assert_eq!(
            config.destination_idle_timeout,
            DEFAULT_DESTINATION_IDLE_TIMEOUT
        );
        assert_eq!(
            Config::explicit(([127, 0, 0, 1], 1).into()).destination_idle_timeout,
            Duration::from_secs(600)
        );
        let config = parse(&["--destination-idle-timeout", "90s"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.destination_idle_timeout, Duration::from_secs(90));
    }
}

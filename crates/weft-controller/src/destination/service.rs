//! `Destination.Get` served with tonic: one task per stream follows the index and sends
//! what changed for its target. Only mesh workloads are served: the caller must have
//! presented a client certificate naming a workload identity of the mesh's trust
//! domain (verified against the trust anchors by the TLS server), else UNAUTHENTICATED.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use linkerd2_proxy_api::destination as api;
use linkerd2_proxy_api::destination::destination_server::{Destination, DestinationServer};
use linkerd2_proxy_api::destination::update::Update as Kind;
use tokio::sync::{mpsc, watch};
use weft_core::identity::Identity;

use super::{Endpoint, Index, Protocol, Resolution, Target};
use crate::metrics::{DestinationMetrics, UpdateLabels};

/// Updates queued per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 16;

/// The largest Destination request decoded (a path and a context token); larger ones
/// are refused with OUT_OF_RANGE from their gRPC frame header, before being buffered.
pub const MAX_DESTINATION_MESSAGE: usize = 16 * 1024;

type UpdateStream = Pin<Box<dyn Stream<Item = Result<api::Update, tonic::Status>> + Send>>;

/// The gRPC destination service.
#[derive(Clone)]
pub struct DestinationService {
    index: watch::Receiver<Arc<Index>>,
    cluster_domain: Arc<str>,
    /// Callers must hold a workload certificate of this trust domain.
    trust_domain: Arc<str>,
    metrics: DestinationMetrics,
    /// Ends every stream (so a graceful shutdown does not wait on them forever).
    stop: watch::Receiver<bool>,
}

impl DestinationService {
    /// Serves `index` to callers presenting a workload certificate of `trust_domain`.
    pub fn new(
        index: watch::Receiver<Arc<Index>>,
        cluster_domain: &str,
        trust_domain: &str,
        metrics: DestinationMetrics,
        stop: watch::Receiver<bool>,
    ) -> DestinationService {
        DestinationService {
            index,
            cluster_domain: cluster_domain.into(),
            trust_domain: trust_domain.into(),
            metrics,
            stop,
        }
    }

    /// The service ready to add to a tonic server (requests up to
    /// [`MAX_DESTINATION_MESSAGE`]).
    pub fn into_server(self) -> DestinationServer<DestinationService> {
        DestinationServer::new(self).max_decoding_message_size(MAX_DESTINATION_MESSAGE)
    }

    /// The mesh workload calling, from the client certificate it presented in the TLS
    /// handshake (already verified against the trust anchors there).
    fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_deref().and_then(|c| c.first()) else {
            return Err(tonic::Status::unauthenticated(format!(
                "a mesh client certificate is required: the destination service answers only proxies presenting their workload certificate (an identity of trust domain {:?}) in the TLS handshake",
                self.trust_domain
            )));
        };
        match Identity::from_certificate(leaf) {
            Some(id) if id.trust_domain() == &*self.trust_domain => Ok(id),
            named => Err(tonic::Status::unauthenticated(format!(
                "a mesh client certificate is required: the client certificate names {}, not a workload identity of trust domain {:?}",
                named.map_or_else(|| "no weft identity".to_owned(), |id| id.dns_name()),
                self.trust_domain
            ))),
        }
    }
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = UpdateStream;
    type GetProfileStream =
        Pin<Box<dyn Stream<Item = Result<api::DestinationProfile, tonic::Status>> + Send>>;

    async fn get(
        &self,
        request: tonic::Request<api::GetDestination>,
    ) -> Result<tonic::Response<UpdateStream>, tonic::Status> {
        let client = self.authenticate(&request)?;
        let remote = request.remote_addr();
        let dst = request.into_inner();
        if !matches!(dst.scheme.as_str(), "" | "k8s") {
            return Err(tonic::Status::invalid_argument(format!(
                "scheme {:?} is not served: use \"k8s\" (or none)",
                dst.scheme
            )));
        }
        let target = Target::parse(&dst.path, &self.cluster_domain)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        tracing::debug!(?remote, %client, %target, "Destination.Get stream opened");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(follow(
            target,
            self.index.clone(),
            tx,
            self.metrics.clone(),
            self.stop.clone(),
        ));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|update| (Ok(update), rx))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn get_profile(
        &self,
        request: tonic::Request<api::GetDestination>,
    ) -> Result<tonic::Response<Self::GetProfileStream>, tonic::Status> {
        self.authenticate(&request)?;
        Err(tonic::Status::unimplemented(
            "Destination.GetProfile is not implemented by weft-controller yet (no service profiles); use Destination.Get for endpoints",
        ))
    }
}

/// Counts an open stream while it lives.
struct StreamGuard(DestinationMetrics);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.dec();
    }
}

/// Sends `target`'s updates until the client goes away or the controller stops.
async fn follow(
    target: Target,
    mut index: watch::Receiver<Arc<Index>>,
    tx: mpsc::Sender<api::Update>,
    metrics: DestinationMetrics,
    mut stop: watch::Receiver<bool>,
) {
    metrics.streams.inc();
    let _guard = StreamGuard(metrics.clone());
    let mut sent = Sent::Nothing;
    loop {
        let current = index.borrow_and_update().clone();
        // A source that has not listed everything yet (the kube source before its
        // first full list) says nothing rather than "no such destination": to the
        // proxy, silence is discovery unavailable, and it fails closed.
        let resolution = if current.is_pending() {
            None
        } else {
            Some(current.resolve(&target))
        };
        for update in resolution.map(|r| sent.advance(r)).unwrap_or_default() {
            let kind = match &update.update {
                Some(Kind::Add(_)) => "add",
                Some(Kind::Remove(_)) => "remove",
                _ => "no_endpoints",
            };
            if tx.send(update).await.is_err() {
                tracing::debug!(%target, "Destination.Get stream closed by the client");
                return;
            }
            metrics.updates.get_or_create(&UpdateLabels { kind }).inc();
        }
        tokio::select! {
            changed = index.changed() => if changed.is_err() { return },
            _ = tx.closed() => {
                tracing::debug!(%target, "Destination.Get stream closed by the client");
                return;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// What the client has been told so far.
#[derive(Debug, Default, PartialEq)]
pub(crate) enum Sent {
    #[default]
    Nothing,
    NoEndpoints {
        exists: bool,
    },
    Endpoints(BTreeMap<SocketAddr, Endpoint>),
}

impl Sent {
    /// The updates that take the client from what it was told to `resolution`: new or
    /// changed endpoints are added before gone ones are removed (so the set is never
    /// empty in between); an empty set is `NoEndpoints { exists: true }`, an unknown
    /// target `NoEndpoints { exists: false }`. Nothing when nothing changed.
    pub(crate) fn advance(&mut self, resolution: Resolution) -> Vec<api::Update> {
        let (labels, next) = match resolution {
            Resolution::Unknown => return self.no_endpoints(false),
            Resolution::Service {
                namespace,
                name,
                endpoints,
            } => {
                if endpoints.is_empty() {
                    return self.no_endpoints(true);
                }
                let labels = HashMap::from([
                    ("namespace".to_owned(), namespace),
                    ("service".to_owned(), name),
                ]);
                (labels, endpoints)
            }
            Resolution::Pod(endpoint) => {
                (HashMap::new(), BTreeMap::from([(endpoint.addr, endpoint)]))
            }
        };
        let empty = BTreeMap::new();
        let previous = match &*self {
            Sent::Endpoints(p) => p,
            _ => &empty,
        };
        let added: Vec<api::WeightedAddr> = next
            .values()
            .filter(|e| previous.get(&e.addr) != Some(*e))
            .map(weighted_addr)
            .collect();
        let removed: Vec<linkerd2_proxy_api::net::TcpAddress> = previous
            .keys()
            .filter(|a| !next.contains_key(a))
            .map(|a| (*a).into())
            .collect();
        let mut updates = Vec::new();
        if !added.is_empty() {
            updates.push(api::Update {
                update: Some(Kind::Add(api::WeightedAddrSet {
                    addrs: added,
                    metric_labels: labels,
                })),
            });
        }
        if !removed.is_empty() {
            updates.push(api::Update {
                update: Some(Kind::Remove(api::AddrSet { addrs: removed })),
            });
        }
        *self = Sent::Endpoints(next);
        updates
    }

    fn no_endpoints(&mut self, exists: bool) -> Vec<api::Update> {
        if *self == (Sent::NoEndpoints { exists }) {
            return Vec::new();
        }
        *self = Sent::NoEndpoints { exists };
        vec![api::Update {
            update: Some(Kind::NoEndpoints(api::NoEndpoints { exists })),
        }]
    }
}

/// An endpoint as the protocol carries it (labels as Linkerd names them).
fn weighted_addr(e: &Endpoint) -> api::WeightedAddr {
    let labels = HashMap::from([
        ("pod".to_owned(), e.pod.clone()),
        ("namespace".to_owned(), e.namespace.clone()),
        ("deployment".to_owned(), e.workload.clone()),
        ("serviceaccount".to_owned(), e.service_account.clone()),
        // Always present, empty when unknown (as Linkerd does).
        ("zone".to_owned(), e.zone.clone().unwrap_or_default()),
    ]);
    let tls_identity = e.identity.as_ref().map(|name| {
        let name = api::tls_identity::DnsLikeIdentity { name: name.clone() };
        api::TlsIdentity {
            strategy: Some(api::tls_identity::Strategy::DnsLikeIdentity(name.clone())),
            server_name: Some(name),
        }
    });
    let protocol = match e.protocol {
        Protocol::Http => Some(api::protocol_hint::Protocol::H2(api::protocol_hint::H2 {})),
        Protocol::Opaque => Some(api::protocol_hint::Protocol::Opaque(
            api::protocol_hint::Opaque {},
        )),
        Protocol::Unknown => None,
    };
    api::WeightedAddr {
        addr: Some(e.addr.into()),
        weight: e.weight,
        metric_labels: labels,
        tls_identity,
        // No opaque transport: weft's inbound proxy does not speak Linkerd's transport
        // header, so it is not advertised.
        protocol_hint: protocol.map(|p| api::ProtocolHint {
            protocol: Some(p),
            opaque_transport: None,
        }),
        authority_override: None,
        http2: None,
        resource_ref: None,
    }
}

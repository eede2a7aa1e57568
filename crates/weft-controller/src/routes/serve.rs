//! `io.linkerd.proxy.outbound.OutboundPolicies` served with tonic: `Get` answers a
//! Service port's [`OutboundPolicy`] once, `Watch` streams it (the current one first,
//! then each one that differs). The target is named as `Destination.Get` names it
//! (`books.default.svc.cluster.local:8080`, or the Service's virtual IP and port);
//! the caller's namespace (for consumer routes) is the one of the workload
//! certificate it presented, which it must present as for the destination service.
//!
//! The messages are weft's extension of the policy ([`OutboundPolicyExt`]: the
//! policy, plus the `URLRewrite` and `RequestMirror` filters at a tag linkerd's
//! message does not use), served on the protocol's own path
//! (`/io.linkerd.proxy.outbound.OutboundPolicies/Watch`, `/Get`) by a service built
//! by hand ([`OutboundPoliciesExtServer`]: tonic's generated server is typed to
//! linkerd's message). A Linkerd proxy decodes them as `OutboundPolicy` and skips the
//! extension; weft's proxies read it.
//!
//! [`watch`] keeps the route table current: each new destination index (the mesh
//! directory reloaded) is followed by a new table within the same poll.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::Stream;
use linkerd2_proxy_api::outbound::{self, traffic_spec};
use tokio::sync::{mpsc, watch};
use tonic::codegen::{BoxFuture, StdError};
use weft_core::identity::Identity;
use weft_core::outbound_ext::OutboundPolicyExt;

use super::table::{RouteTable, TableUpdate};
use crate::destination::{Index, Resolution, Target};

/// Policies queued per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 4;

/// The largest request decoded (a target and a workload name).
pub const MAX_POLICY_MESSAGE: usize = 16 * 1024;

/// The destination index and the routes built from it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub index: Arc<Index>,
    /// Shared while only pods change, so streams see at once that their policy did not.
    pub table: Arc<RouteTable>,
}

type PolicyStream = Pin<Box<dyn Stream<Item = Result<OutboundPolicyExt, tonic::Status>> + Send>>;

/// The protocol's service name and methods.
const SERVICE_NAME: &str = "io.linkerd.proxy.outbound.OutboundPolicies";
const GET_PATH: &str = "/io.linkerd.proxy.outbound.OutboundPolicies/Get";
const WATCH_PATH: &str = "/io.linkerd.proxy.outbound.OutboundPolicies/Watch";

/// The gRPC OutboundPolicies service.
#[derive(Clone)]
pub struct OutboundPolicyService {
    routes: watch::Receiver<Arc<Snapshot>>,
    cluster_domain: Arc<str>,
    trust_domain: Arc<str>,
    stop: watch::Receiver<bool>,
}

/// The first snapshot of `index` (its objects that cannot be routes are logged).
pub fn snapshot(index: Arc<Index>, cluster_domain: &str) -> (Snapshot, Vec<TableUpdate>) {
    let (table, updates) = RouteTable::build(
        &RouteTable::empty(cluster_domain),
        index.mesh(),
        cluster_domain,
        SystemTime::now(),
    );
    for problem in table.problems() {
        tracing::warn!(%problem, "route not applied");
    }
    (
        Snapshot {
            index,
            table: Arc::new(table),
        },
        updates,
    )
}

/// Follows the destination index forever (until the task is dropped), publishing a
/// new route table for each new index, and logging the conditions that changed.
pub async fn watch(
    mut index: watch::Receiver<Arc<Index>>,
    publish: watch::Sender<Arc<Snapshot>>,
    cluster_domain: String,
) {
    loop {
        if index.changed().await.is_err() {
            return;
        }
        let next = index.borrow_and_update().clone();
        let previous = publish.borrow().clone();
        if next.mesh() == previous.index.mesh() {
            // Only pods changed: the same routes, the new index (for Service addresses).
            let table = previous.table.clone();
            publish.send_replace(Arc::new(Snapshot { index: next, table }));
            continue;
        }
        let (table, updates) = RouteTable::build(
            &previous.table,
            next.mesh(),
            &cluster_domain,
            SystemTime::now(),
        );
        log(&updates);
        for problem in table.problems() {
            if !previous.table.problems().any(|p| p == problem) {
                tracing::warn!(%problem, "route not applied");
            }
        }
        if table != *previous.table {
            let (routes, serving) = table.counts();
            tracing::info!(routes, serving, "route table updated");
        }
        publish.send_replace(Arc::new(Snapshot {
            index: next,
            table: Arc::new(table),
        }));
    }
}

/// One line per condition that changed: failures as warnings.
pub fn log(updates: &[TableUpdate]) {
    for u in updates {
        let kept = u
            .kept
            .map(|g| format!("generation {g}"))
            .unwrap_or_else(|| "none".into());
        if u.cond.ok {
            tracing::info!(route = %u.route, file = %u.file, parent = %u.parent, condition = %u.condition, reason = %u.cond.reason, "route condition is true");
        } else {
            tracing::warn!(route = %u.route, file = %u.file, parent = %u.parent, condition = %u.condition, reason = %u.cond.reason, problem = %u.cond.message, serving = %kept, "route condition is false");
        }
    }
}

impl OutboundPolicyService {
    pub fn new(
        routes: watch::Receiver<Arc<Snapshot>>,
        cluster_domain: &str,
        trust_domain: &str,
        stop: watch::Receiver<bool>,
    ) -> OutboundPolicyService {
        OutboundPolicyService {
            routes,
            cluster_domain: cluster_domain.into(),
            trust_domain: trust_domain.into(),
            stop,
        }
    }

    /// The service ready to add to a tonic server.
    pub fn into_server(self) -> OutboundPoliciesExtServer {
        OutboundPoliciesExtServer {
            inner: Arc::new(self),
        }
    }

    /// The calling workload, from its client certificate (verified in the handshake).
    fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
        let certs = request.peer_certs();
        let leaf = certs.as_deref().and_then(|c| c.first());
        match leaf.and_then(|l| Identity::from_certificate(l)) {
            Some(id) if id.trust_domain() == &*self.trust_domain => Ok(id),
            _ => Err(tonic::Status::unauthenticated(format!(
                "a mesh client certificate is required: the outbound policy service answers only proxies presenting their workload certificate (an identity of trust domain {:?}) in the TLS handshake",
                self.trust_domain
            ))),
        }
    }

    /// The Service port a request names: `(namespace, name, port)`.
    fn target(&self, spec: &outbound::TrafficSpec) -> Result<(String, String, u16), tonic::Status> {
        let target = match &spec.target {
            Some(traffic_spec::Target::Authority(a)) => Target::parse(a, &self.cluster_domain)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?,
            Some(traffic_spec::Target::Addr(addr)) => Target::Addr(
                SocketAddr::try_from(*addr)
                    .map_err(|e| tonic::Status::invalid_argument(format!("target address: {e}")))?,
            ),
            None => {
                return Err(tonic::Status::invalid_argument(
                    "no target: give an authority (NAME.NAMESPACE.svc.CLUSTER-DOMAIN:PORT) or a Service address",
                ))
            }
        };
        let port = match &target {
            Target::Service { port, .. } => *port,
            Target::Addr(a) => a.port(),
        };
        match self.routes.borrow().index.resolve(&target) {
            Resolution::Service {
                namespace, name, ..
            } => Ok((namespace, name, port)),
            _ => Err(not_found(&target)),
        }
    }
}

fn not_found(target: &impl std::fmt::Display) -> tonic::Status {
    tonic::Status::not_found(format!(
        "{target} is not a Service port of the mesh: no outbound policy (use the original destination)"
    ))
}

impl OutboundPolicyService {
    /// `Get`: the target's current policy.
    pub async fn get(
        &self,
        request: tonic::Request<outbound::TrafficSpec>,
    ) -> Result<tonic::Response<OutboundPolicyExt>, tonic::Status> {
        let caller = self.authenticate(&request)?;
        let (namespace, name, port) = self.target(request.get_ref())?;
        let routes = self.routes.borrow().clone();
        routes
            .table
            .policy_ext(&namespace, &name, port, caller.namespace())
            .map(tonic::Response::new)
            .ok_or_else(|| not_found(&format!("{name}.{namespace}.svc:{port}")))
    }

    /// `Watch`: the target's policy, then each one that differs.
    pub async fn watch(
        &self,
        request: tonic::Request<outbound::TrafficSpec>,
    ) -> Result<tonic::Response<PolicyStream>, tonic::Status> {
        let caller = self.authenticate(&request)?;
        let (namespace, name, port) = self.target(request.get_ref())?;
        let caller = caller.namespace().to_owned();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(follow(
            (namespace, name, port),
            caller,
            self.routes.clone(),
            tx,
            self.stop.clone(),
        ));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Sends the target's policy whenever it changes, until the client goes away, the
/// Service port does, or the controller stops.
async fn follow(
    (namespace, name, port): (String, String, u16),
    caller: String,
    mut routes: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Result<OutboundPolicyExt, tonic::Status>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sent: Option<OutboundPolicyExt> = None;
    let mut seen: Option<Arc<RouteTable>> = None;
    loop {
        let table = routes.borrow_and_update().table.clone();
        // Only pods changed (the same table): nothing to compute.
        let unchanged = seen.as_ref().is_some_and(|t| Arc::ptr_eq(t, &table));
        let policy = if unchanged {
            sent.clone()
        } else {
            table.policy_ext(&namespace, &name, port, &caller)
        };
        seen = Some(table);
        match policy {
            None => {
                let _ = tx
                    .send(Err(not_found(&format!("{name}.{namespace}.svc:{port}"))))
                    .await;
                return;
            }
            Some(p) if sent.as_ref() != Some(&p) => {
                if tx.send(Ok(p.clone())).await.is_err() {
                    return;
                }
                sent = Some(p);
            }
            Some(_) => {}
        }
        tokio::select! {
            changed = routes.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `io.linkerd.proxy.outbound.OutboundPolicies` answering [`OutboundPolicyExt`] (what
/// tonic would generate for it, by hand: its generated server is typed to linkerd's
/// `OutboundPolicy`). Requests larger than [`MAX_POLICY_MESSAGE`] are refused.
#[derive(Clone)]
pub struct OutboundPoliciesExtServer {
    inner: Arc<OutboundPolicyService>,
}

impl tonic::server::NamedService for OutboundPoliciesExtServer {
    const NAME: &'static str = SERVICE_NAME;
}

struct GetMethod(Arc<OutboundPolicyService>);

impl tonic::server::UnaryService<outbound::TrafficSpec> for GetMethod {
    type Response = OutboundPolicyExt;
    type Future = BoxFuture<tonic::Response<OutboundPolicyExt>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<outbound::TrafficSpec>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.get(request).await })
    }
}

struct WatchMethod(Arc<OutboundPolicyService>);

impl tonic::server::ServerStreamingService<outbound::TrafficSpec> for WatchMethod {
    type Response = OutboundPolicyExt;
    type ResponseStream = PolicyStream;
    type Future = BoxFuture<tonic::Response<PolicyStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<outbound::TrafficSpec>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.watch(request).await })
    }
}

fn grpc() -> tonic::server::Grpc<tonic_prost::ProstCodec<OutboundPolicyExt, outbound::TrafficSpec>>
{
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
        .apply_max_message_size_config(Some(MAX_POLICY_MESSAGE), None)
}

impl<B> tonic::codegen::Service<::http::Request<B>> for OutboundPoliciesExtServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = ::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ::http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path() {
            GET_PATH => Box::pin(async move { Ok(grpc().unary(GetMethod(inner), req).await) }),
            WATCH_PATH => {
                Box::pin(async move { Ok(grpc().server_streaming(WatchMethod(inner), req).await) })
            }
            _ => Box::pin(async move { Ok(tonic::Status::unimplemented("").into_http()) }),
        }
    }
}

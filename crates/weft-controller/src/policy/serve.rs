//! `io.linkerd.proxy.inbound.InboundServerPolicies` served with tonic: `GetPort`
//! answers a workload port's [`inbound::Server`] once, `WatchPort` streams it (the
//! current one first, then each one that differs).
//!
//! The workload is named `NAMESPACE:NAME` (the workload's name in `mesh.yaml`, the
//! proxy's `--namespace` and `--deployment`), and the caller must be that workload:
//! its client certificate must name the workload's namespace and service account
//! (`PERMISSION_DENIED` otherwise), so that a proxy cannot read another workload's
//! policy.
//!
//! [`watch`] keeps the index current: each new destination index whose mesh directory
//! changed is a new policy index within the same poll, and the objects whose status
//! changed are logged.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use linkerd2_proxy_api::inbound;
use linkerd2_proxy_api::inbound::inbound_server_policies_server::{
    InboundServerPolicies, InboundServerPoliciesServer,
};
use tokio::sync::{mpsc, watch};
use weft_core::identity::Identity;

use super::{ObjectReport, PolicyConfig, PolicyIndex};
use crate::destination::Index;

/// Policies queued per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 4;

/// The largest request decoded (a workload name and a port).
pub const MAX_INBOUND_POLICY_MESSAGE: usize = 4 * 1024;

/// The destination index and the policies built from it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub index: Arc<Index>,
    pub policy: PolicyIndex,
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<inbound::Server, tonic::Status>> + Send>>;

/// The first snapshot of `index`, logged.
pub fn snapshot(index: Arc<Index>, config: PolicyConfig) -> Snapshot {
    let empty = PolicyIndex::empty(config, &index.mesh().trust_domain);
    let policy = PolicyIndex::build(&empty, index.mesh());
    log(&policy.changes(&empty));
    Snapshot { index, policy }
}

/// Follows the destination index until the task is dropped, publishing a new policy
/// index for each new mesh directory.
pub async fn watch(mut index: watch::Receiver<Arc<Index>>, publish: watch::Sender<Arc<Snapshot>>) {
    loop {
        if index.changed().await.is_err() {
            return;
        }
        let next = index.borrow_and_update().clone();
        let previous = publish.borrow().clone();
        let policy = if next.mesh() == previous.index.mesh() {
            previous.policy.clone()
        } else {
            let policy = PolicyIndex::build(&previous.policy, next.mesh());
            log(&policy.changes(&previous.policy));
            policy
        };
        publish.send_replace(Arc::new(Snapshot {
            index: next,
            policy,
        }));
    }
}

/// One line per object whose status changed: failures as warnings.
pub fn log(reports: &[&ObjectReport]) {
    for r in reports {
        let object = r
            .key
            .as_ref()
            .map(|k| k.to_string())
            .unwrap_or_else(|| "(unnamed)".into());
        let serving = match (r.serving, r.kept) {
            (true, true) => "the last valid version",
            (true, false) => "this version",
            (false, _) => "none",
        };
        let failed = std::iter::once(("Accepted", &r.accepted))
            .chain(r.resolved_refs.iter().map(|c| ("ResolvedRefs", c)))
            .find(|(_, c)| !c.ok);
        match failed {
            None => {
                tracing::info!(%object, file = %r.file, "policy object accepted")
            }
            Some((condition, c)) => {
                tracing::warn!(%object, file = %r.file, condition, reason = c.reason, message = %c.message, serving, "policy object refused")
            }
        }
    }
}

/// The gRPC InboundServerPolicies service.
#[derive(Clone)]
pub struct InboundPolicyService {
    policies: watch::Receiver<Arc<Snapshot>>,
    trust_domain: Arc<str>,
    stop: watch::Receiver<bool>,
}

impl InboundPolicyService {
    pub fn new(
        policies: watch::Receiver<Arc<Snapshot>>,
        trust_domain: &str,
        stop: watch::Receiver<bool>,
    ) -> InboundPolicyService {
        InboundPolicyService {
            policies,
            trust_domain: trust_domain.into(),
            stop,
        }
    }

    /// The service ready to add to a tonic server.
    pub fn into_server(self) -> InboundServerPoliciesServer<InboundPolicyService> {
        InboundServerPoliciesServer::new(self).max_decoding_message_size(MAX_INBOUND_POLICY_MESSAGE)
    }

    /// The caller, by its client certificate, and the workload and port it asks for,
    /// which must be its own.
    fn check<T>(
        &self,
        request: &tonic::Request<T>,
        spec: &inbound::PortSpec,
    ) -> Result<(String, String, u16), tonic::Status> {
        let certs = request.peer_certs();
        let leaf = certs.as_deref().and_then(|c| c.first());
        let caller = match leaf.and_then(|l| Identity::from_certificate(l)) {
            Some(id) if id.trust_domain() == &*self.trust_domain => id,
            _ => {
                return Err(tonic::Status::unauthenticated(format!(
                    "a mesh client certificate is required: the inbound policy service answers only proxies presenting their workload certificate (an identity of trust domain {:?})",
                    self.trust_domain
                )))
            }
        };
        let Some((namespace, name)) = spec.workload.split_once(':') else {
            return Err(tonic::Status::invalid_argument(format!(
                "workload {:?}: expected NAMESPACE:NAME (the proxy's --namespace and --deployment)",
                spec.workload
            )));
        };
        let port = u16::try_from(spec.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "port {} is not a port (1-65535)",
                    spec.port
                ))
            })?;
        let snapshot = self.policies.borrow().clone();
        let Some(workload) = snapshot.index.mesh().workload(namespace, name) else {
            return Err(tonic::Status::not_found(format!(
                "no workload {name} in namespace {namespace} (a mesh directory's workload, or on Kubernetes a running pod)"
            )));
        };
        if caller.namespace() != workload.namespace
            || caller.service_account() != workload.service_account
        {
            return Err(tonic::Status::permission_denied(format!(
                "{caller} asks for the inbound policy of workload {namespace}:{name}, whose identity is service account {} of namespace {}: a proxy reads only its own workload's policy",
                workload.service_account, workload.namespace
            )));
        }
        Ok((namespace.to_owned(), name.to_owned(), port))
    }
}

/// The Server of `port` of workload `namespace/name` in `snapshot`, if the workload
/// is still in the mesh.
fn server(snapshot: &Snapshot, namespace: &str, name: &str, port: u16) -> Option<inbound::Server> {
    let workload = snapshot.index.mesh().workload(namespace, name)?;
    Some(snapshot.policy.server(workload, port))
}

fn gone(namespace: &str, name: &str) -> tonic::Status {
    tonic::Status::not_found(format!(
        "workload {name} of namespace {namespace} is gone (from the mesh directory, or on Kubernetes the pod)"
    ))
}

#[tonic::async_trait]
impl InboundServerPolicies for InboundPolicyService {
    type WatchPortStream = ServerStream;

    async fn get_port(
        &self,
        request: tonic::Request<inbound::PortSpec>,
    ) -> Result<tonic::Response<inbound::Server>, tonic::Status> {
        let (namespace, name, port) = self.check(&request, request.get_ref())?;
        let snapshot = self.policies.borrow().clone();
        server(&snapshot, &namespace, &name, port)
            .map(tonic::Response::new)
            .ok_or_else(|| gone(&namespace, &name))
    }

    async fn watch_port(
        &self,
        request: tonic::Request<inbound::PortSpec>,
    ) -> Result<tonic::Response<ServerStream>, tonic::Status> {
        let target = self.check(&request, request.get_ref())?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(follow(target, self.policies.clone(), tx, self.stop.clone()));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Sends the port's Server whenever it changes, until the client goes away, the
/// workload does, or the controller stops.
async fn follow(
    (namespace, name, port): (String, String, u16),
    mut policies: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Result<inbound::Server, tonic::Status>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sent: Option<inbound::Server> = None;
    loop {
        let snapshot = policies.borrow_and_update().clone();
        match server(&snapshot, &namespace, &name, port) {
            None => {
                let _ = tx.send(Err(gone(&namespace, &name))).await;
                return;
            }
            Some(s) if sent.as_ref() != Some(&s) => {
                if tx.send(Ok(s.clone())).await.is_err() {
                    return;
                }
                sent = Some(s);
            }
            Some(_) => {}
        }
        tokio::select! {
            changed = policies.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

//! The inbound policy client: each port of the application the proxy has met, its
//! [`PortPolicy`] followed from the controller's `InboundServerPolicies.WatchPort`
//! stream (over the destination service's connection), for the [`super::authorize`]
//! step.
//!
//! The proxy names its workload `NAMESPACE:NAME` (its `--namespace`, and
//! `--policy-workload` or else `--deployment`: on Kubernetes the pod's name); the
//! controller answers only a proxy whose certificate is that workload's.
//!
//! - **No controller** (no `--destination`), or no workload name: every port has the
//!   proxy's `--default-inbound-policy` (all-unauthenticated unless set).
//! - **Before a port's first policy**: connections and requests wait for it up to
//!   `--destination-wait` (1 s); past that, or when the stream fails before a first
//!   policy, the proxy's `--default-inbound-policy` applies until a policy arrives (so
//!   `--default-inbound-policy deny` fails closed).
//! - **The controller has no policy for the workload** (NotFound, PermissionDenied,
//!   an old controller: Unimplemented): the proxy's default, logged; asked again with
//!   backoff (except Unimplemented).
//! - **A policy the proxy cannot read** is refused whole and the last valid one stays;
//!   a lost stream keeps the policy in force until a new stream's first message.
//! - At most [`MAX_PORTS`] ports are followed; connections to more are denied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use linkerd2_proxy_api::inbound::PortSpec;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::authorize::{DefaultPolicy, PortPolicy};
use crate::backoff::Backoff;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most ports followed at once.
pub const MAX_PORTS: usize = 1024;

/// A port's policy as known now.
#[derive(Clone, Debug)]
enum State {
    /// Nothing from the controller yet.
    Pending,
    /// The controller's policy.
    Policy(Arc<PortPolicy>),
    /// The controller has none (or could not be asked before a first policy): the
    /// proxy's default.
    Fallback,
}

struct Port {
    state: watch::Receiver<State>,
    /// Set once a caller waited `first_update` in vain: the next ones do not wait.
    waited: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Port {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The inbound policies of the application's ports.
pub struct InboundPolicies {
    /// The controller's client and the workload's name, when both are known.
    source: Option<(InboundServerPoliciesClient<Channel>, String)>,
    fallback: Arc<PortPolicy>,
    deny: Arc<PortPolicy>,
    first_update: Duration,
    ports: Mutex<HashMap<u16, Port>>,
}

impl std::fmt::Debug for InboundPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundPolicies")
            .field("workload", &self.source.as_ref().map(|(_, w)| w))
            .finish_non_exhaustive()
    }
}

/// A port's policy, current whenever it is read.
pub struct PolicyWatch {
    state: Option<watch::Receiver<State>>,
    fallback: Arc<PortPolicy>,
}

impl PolicyWatch {
    /// The policy in force now.
    pub fn current(&self) -> Arc<PortPolicy> {
        match self.state.as_ref().map(|s| s.borrow().clone()) {
            Some(State::Policy(p)) => p,
            _ => self.fallback.clone(),
        }
    }

    /// Completes when the policy in force changed (never, without a controller).
    pub async fn changed(&mut self) {
        match &mut self.state {
            Some(state) => {
                if state.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl InboundPolicies {
    /// Policies from the controller over `channel` for `workload` (`NAMESPACE:NAME`),
    /// `default` where it has none; without either, `default` for every port.
    pub fn new(
        channel: Option<Channel>,
        workload: Option<String>,
        default: DefaultPolicy,
        first_update: Duration,
    ) -> InboundPolicies {
        InboundPolicies {
            source: channel
                .zip(workload)
                .map(|(c, w)| (InboundServerPoliciesClient::new(c), w)),
            fallback: Arc::new(PortPolicy::default_policy(default)),
            deny: Arc::new(PortPolicy::default_policy(DefaultPolicy::Deny)),
            first_update,
            ports: Mutex::new(HashMap::new()),
        }
    }

    /// The policy of `port`, followed from the controller from the first call on; the
    /// first call waits for the controller's first answer (up to `first_update`).
    pub async fn port(&self, port: u16) -> PolicyWatch {
        let Some((client, workload)) = &self.source else {
            return PolicyWatch {
                state: None,
                fallback: self.fallback.clone(),
            };
        };
        let (mut state, waited) = {
            let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = ports.get(&port) {
                (p.state.clone(), p.waited.clone())
            } else if ports.len() >= MAX_PORTS {
                tracing::warn!(port, limit = MAX_PORTS, "too many ports followed: denied");
                return PolicyWatch {
                    state: None,
                    fallback: self.deny.clone(),
                };
            } else {
                let (tx, rx) = watch::channel(State::Pending);
                let task = tokio::spawn(follow(client.clone(), workload.clone(), port, tx));
                let waited = Arc::new(AtomicBool::new(false));
                ports.insert(
                    port,
                    Port {
                        state: rx.clone(),
                        waited: waited.clone(),
                        task,
                    },
                );
                (rx, waited)
            }
        };
        if matches!(*state.borrow(), State::Pending) && !waited.load(Ordering::Relaxed) {
            let first = tokio::time::timeout(
                self.first_update,
                state.wait_for(|s| !matches!(s, State::Pending)),
            )
            .await;
            if first.is_err() {
                waited.store(true, Ordering::Relaxed);
                tracing::warn!(port, fallback = %self.fallback.server_name.0, "no inbound policy from the controller yet: the proxy's default policy applies until one arrives");
            }
        }
        state.mark_unchanged();
        PolicyWatch {
            state: Some(state),
            fallback: self.fallback.clone(),
        }
    }
}

/// Follows `port`'s policy until the task is aborted (or the controller lacks the
/// service).
async fn follow(
    mut client: InboundServerPoliciesClient<Channel>,
    workload: String,
    port: u16,
    state: watch::Sender<State>,
) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let settle = |state: &watch::Sender<State>| {
        state.send_if_modified(|s| {
            let pending = matches!(s, State::Pending);
            if pending {
                *s = State::Fallback;
            }
            pending
        });
    };
    loop {
        let spec = PortSpec {
            workload: workload.clone(),
            port: u32::from(port),
        };
        let ended = match client.watch_port(spec).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(server)) => {
                            backoff.reset();
                            match PortPolicy::from_server(server) {
                                Ok(policy) => {
                                    tracing::debug!(port, server = %policy.server_name.0, authorizations = policy.authorizations.len(), "inbound policy updated");
                                    state.send_replace(State::Policy(Arc::new(policy)));
                                }
                                Err(error) => {
                                    tracing::warn!(port, %error, "inbound policy refused; the last valid one stays in force");
                                    settle(&state);
                                }
                            }
                        }
                        Ok(None) => break "the controller ended the stream".to_owned(),
                        Err(status) => break status.to_string(),
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    port,
                    "the controller serves no inbound policy: the proxy's default policy applies"
                );
                settle(&state);
                return;
            }
            Err(status) => {
                if matches!(
                    status.code(),
                    tonic::Code::NotFound
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                        | tonic::Code::Unauthenticated
                ) {
                    tracing::warn!(port, %workload, error = %status, "no inbound policy for this workload: the proxy's default policy applies");
                }
                status.to_string()
            }
        };
        settle(&state);
        let wait = backoff.next_wait();
        tracing::debug!(port, error = %ended, retry_in = ?wait, "inbound policy stream lost; keeping the policy in force");
        tokio::time::sleep(wait).await;
    }
}

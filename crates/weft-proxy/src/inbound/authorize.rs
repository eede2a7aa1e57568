//! The inbound path's **authorize** step, after mTLS termination: may this caller (its
//! address, and its identity when it came over mTLS) reach this port of the
//! application? Asked per request for HTTP and per connection for opaque TCP, of the
//! port's [`PortPolicy`]: the controller's `Server` message for the port
//! ([`super::policy`] follows it), or the proxy's `--default-inbound-policy`.
//!
//! An authorization allows a caller when its address is in one of its networks (and
//! in none of that network's exceptions) and its authentication is met: anyone
//! (unauthenticated), or mTLS with an identity it names exactly or by suffix (an empty
//! suffix: any identity). A port with no authorization allows nobody.
//!
//! Denied HTTP is answered 403 with `weft-proxy-error` naming the reason, denied gRPC
//! with `grpc-status: 7` (PERMISSION_DENIED), and a denied TCP connection is closed;
//! each decision counts in `inbound_{http,tcp}_authz_{allow,deny}_total`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ::http::StatusCode;
use ipnet::IpNet;
use linkerd2_proxy_api::inbound::{self, authn};
use linkerd2_proxy_api::meta;
use prometheus_client::metrics::counter::Counter;

use crate::http::{ConnContext, ProxyError};
use crate::metrics::{AuthzLabels, Str};
use crate::Shared;

/// gRPC's PERMISSION_DENIED.
const GRPC_PERMISSION_DENIED: u16 = 7;

pub use weft_core::policy::DefaultPolicy;

/// The networks `cluster-authenticated` allows on the proxy's side (the controller's
/// `--cluster-networks` default).
pub const CLUSTER_NETWORKS: [&str; 8] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "127.0.0.0/8",
    "fd00::/8",
    "::1/128",
];

/// Who may call one port: its Server and that Server's authorizations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    /// `server` (a Server object) or `default` (a default policy).
    pub server_kind: Str,
    /// The Server's name, or the default policy's.
    pub server_name: Str,
    pub authorizations: Vec<Authorization>,
}

/// One way to be allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// `authorizationpolicy` or `default`.
    pub kind: Str,
    pub name: Str,
    pub networks: Vec<Network>,
    pub authentication: Authentication,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Anyone, with or without mTLS.
    Unauthenticated,
    /// Any mTLS caller.
    AnyMeshTls,
    /// mTLS callers with one of these identities, or one ending with one of these
    /// suffixes (label by label; an empty suffix is any identity).
    Identities {
        names: HashSet<String>,
        suffixes: Vec<Vec<String>>,
    },
}

impl Authentication {
    fn allows(&self, client_id: Option<&str>) -> bool {
        match (self, client_id) {
            (Authentication::Unauthenticated, _) => true,
            (_, None) => false,
            (Authentication::AnyMeshTls, Some(_)) => true,
            (Authentication::Identities { names, suffixes }, Some(id)) => {
                names.contains(id)
                    || suffixes.iter().any(|suffix| {
                        let labels: Vec<&str> = id.split('.').collect();
                        suffix.len() <= labels.len()
                            && labels[labels.len() - suffix.len()..]
                                .iter()
                                .zip(suffix)
                                .all(|(l, s)| l == s)
                    })
            }
        }
    }
}

/// Why a caller was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unauthorized: no authorization of {server_kind} {server_name} allows {caller} from {ip} to port {port}")]
pub struct Denied {
    pub server_kind: std::sync::Arc<str>,
    pub server_name: std::sync::Arc<str>,
    /// `identity X` or `an unauthenticated caller`.
    pub caller: String,
    pub ip: IpAddr,
    pub port: u16,
}

impl PortPolicy {
    /// A default policy.
    pub fn default_policy(policy: DefaultPolicy) -> PortPolicy {
        let everywhere = || {
            ["0.0.0.0/0", "::/0"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .map(|net| Network {
                    net,
                    except: Vec::new(),
                })
                .collect()
        };
        let (networks, authentication) = match policy {
            DefaultPolicy::Deny => {
                return PortPolicy {
                    server_kind: "default".into(),
                    server_name: policy.as_str().into(),
                    authorizations: Vec::new(),
                }
            }
            DefaultPolicy::AllUnauthenticated => (everywhere(), Authentication::Unauthenticated),
            DefaultPolicy::AllAuthenticated => (everywhere(), Authentication::AnyMeshTls),
            DefaultPolicy::ClusterAuthenticated => (
                CLUSTER_NETWORKS
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .map(|net| Network {
                        net,
                        except: Vec::new(),
                    })
                    .collect(),
                Authentication::AnyMeshTls,
            ),
        };
        PortPolicy {
            server_kind: "default".into(),
            server_name: policy.as_str().into(),
            authorizations: vec![Authorization {
                kind: "default".into(),
                name: policy.as_str().into(),
                networks,
                authentication,
            }],
        }
    }

    /// Reads the controller's Server message whole: one the proxy cannot apply is
    /// refused (the caller keeps the last valid one).
    pub fn from_server(server: inbound::Server) -> Result<PortPolicy, String> {
        let label = |labels: &std::collections::HashMap<String, String>, key: &str| {
            Str(labels.get(key).map(String::as_str).unwrap_or("").into())
        };
        let authorizations = server
            .authorizations
            .into_iter()
            .enumerate()
            .map(|(i, a)| authorization(a).map_err(|e| format!("authorizations[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(PortPolicy {
            server_kind: label(&server.labels, "kind"),
            server_name: label(&server.labels, "name"),
            authorizations,
        })
    }

    /// The authorization that allows a caller from `ip` with `client_id` (its mTLS
    /// identity, `None` for plaintext) on `port`, or why none does.
    pub fn authorize(
        &self,
        ip: IpAddr,
        client_id: Option<&str>,
        port: u16,
    ) -> Result<&Authorization, Denied> {
        self.authorizations
            .iter()
            .find(|a| {
                a.networks.iter().any(|n| n.contains(ip)) && a.authentication.allows(client_id)
            })
            .ok_or_else(|| Denied {
                server_kind: self.server_kind.0.clone(),
                server_name: self.server_name.0.clone(),
                caller: match client_id {
                    Some(id) => format!("identity {id}"),
                    None => "an unauthenticated caller".to_owned(),
                },
                ip,
                port,
            })
    }
}

fn authorization(a: inbound::Authz) -> Result<Authorization, String> {
    let (kind, name) = match a.metadata.and_then(|m| m.kind) {
        Some(meta::metadata::Kind::Default(name)) => ("default".to_owned(), name),
        Some(meta::metadata::Kind::Resource(r)) => (r.kind.to_ascii_lowercase(), r.name),
        None => (
            a.labels.get("kind").cloned().unwrap_or_default(),
            a.labels.get("name").cloned().unwrap_or_default(),
        ),
    };
    let net = |n: Option<linkerd2_proxy_api::net::IpNetwork>| -> Result<IpNet, String> {
        n.ok_or_else(|| "a network without an address".to_owned())
            .and_then(|n| IpNet::try_from(n).map_err(|e| format!("network: {e}")))
    };
    let networks = a
        .networks
        .into_iter()
        .map(|n| {
            Ok(Network {
                net: net(n.net)?,
                except: n
                    .except
                    .into_iter()
                    .map(|e| net(Some(e)))
                    .collect::<Result<_, String>>()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let authentication = match a.authentication.and_then(|a| a.permit) {
        Some(authn::Permit::Unauthenticated(_)) => Authentication::Unauthenticated,
        Some(authn::Permit::MeshTls(tls)) => match tls.clients {
            Some(authn::permit_mesh_tls::Clients::Unauthenticated(_)) => Authentication::AnyMeshTls,
            Some(authn::permit_mesh_tls::Clients::Identities(ids)) => Authentication::Identities {
                names: ids.identities.into_iter().map(|i| i.name).collect(),
                suffixes: ids.suffixes.into_iter().map(|s| s.parts).collect(),
            },
            None => return Err("meshTLS without clients".to_owned()),
        },
        None => return Err("no authentication".to_owned()),
    };
    Ok(Authorization {
        kind: Str(kind.into()),
        name: Str(name.into()),
        networks,
        authentication,
    })
}

/// The decision of `policy` for a caller on `port`, and the counter it is counted in.
fn decision(
    shared: &Shared,
    http: bool,
    policy: &PortPolicy,
    ip: IpAddr,
    client_id: Option<&str>,
    port: u16,
) -> (Result<(), Denied>, Counter) {
    let decision = policy.authorize(ip, client_id, port);
    let (authz_kind, authz_name) = match &decision {
        Ok(a) => (a.kind.clone(), a.name.clone()),
        Err(_) => (Str::empty(), Str::empty()),
    };
    let counter = shared.metrics.authz.counter(
        http,
        decision.is_ok(),
        &AuthzLabels {
            srv_kind: policy.server_kind.clone(),
            srv_name: policy.server_name.clone(),
            authz_kind,
            authz_name,
            target_port: port,
        },
    );
    (decision.map(|_| ()), counter)
}

/// Counts the decision of `policy` for a caller on `port` and gives it.
fn decide(
    shared: &Shared,
    http: bool,
    policy: &PortPolicy,
    ip: IpAddr,
    client_id: Option<&str>,
    port: u16,
) -> Result<(), Denied> {
    let (decision, counter) = decision(shared, http, policy, ip, client_id, port);
    counter.inc();
    decision
}

/// A connection's last HTTP decision: the same policy gives its requests the same
/// answer, without labelling and looking up the counter again.
pub(crate) struct Cached {
    policy: Arc<PortPolicy>,
    decision: Result<(), Denied>,
    counter: Counter,
}

/// Authorizes an opaque TCP connection's caller, counted.
pub(crate) fn tcp(
    shared: &Shared,
    policy: &PortPolicy,
    ip: IpAddr,
    client_id: Option<&str>,
    port: u16,
) -> Result<(), Denied> {
    decide(shared, false, policy, ip, client_id, port)
}

/// Authorizes one HTTP request of the connection `ctx`: the proxy's answer when it is
/// denied (403, or PERMISSION_DENIED to gRPC callers).
pub(crate) async fn http(ctx: &ConnContext) -> Result<(), ProxyError> {
    let crate::Destination::Addr(addr) = &ctx.destination else {
        return Ok(());
    };
    let port = addr.port();
    let policy = ctx.shared.inbound_policy.port(port).await.current();
    let decided = {
        let mut cache = ctx.authz_cache.lock().unwrap_or_else(|e| e.into_inner());
        match &*cache {
            Some(c) if Arc::ptr_eq(&c.policy, &policy) => {
                c.counter.inc();
                c.decision.clone()
            }
            _ => {
                let client_id = (!ctx.client_id.0.is_empty()).then_some(&*ctx.client_id.0);
                let (decision, counter) =
                    decision(&ctx.shared, true, &policy, ctx.client.ip(), client_id, port);
                counter.inc();
                *cache = Some(Cached {
                    policy,
                    decision: decision.clone(),
                    counter,
                });
                decision
            }
        }
    };
    decided.map_err(|denied| {
        tracing::info!(client = %ctx.client, reason = %denied, "request denied");
        ProxyError::new(StatusCode::FORBIDDEN, "unauthorized", denied.to_string())
            .with_grpc_code(GRPC_PERMISSION_DENIED)
    })
}

#[cfg(test)]
mod tests;

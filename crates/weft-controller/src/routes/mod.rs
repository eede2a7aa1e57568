//! Routes: the mesh directory's `HTTPRoute`s and `GRPCRoute`s
//! (`gateway.networking.k8s.io/v1`) whose parentRef is a Service (GAMMA), checked as a
//! Gateway API controller checks them and served to proxies through
//! `io.linkerd.proxy.outbound.OutboundPolicies` (`Get` and `Watch`).
//!
//! - [`parse`]: the objects into the gateway-api crate's types, strictly (unknown
//!   fields refused, with the file, object and field).
//! - [`check`]: one route against the Services and ReferenceGrants: its status per
//!   parent (`Accepted`, `ResolvedRefs` with the standard reasons).
//! - [`messages`]: its rules as the protocol carries them.
//! - [`table`]: every route at one moment: conflicts between routes, precedence, the
//!   last valid version of a route that became invalid (it keeps serving), status
//!   times and generations, and the [`OutboundPolicy`] of a Service for a caller.
//! - [`serve`]: the gRPC service.
//!
//! `weft get routes` shows the same statuses, computed by the same code.
//!
//! [`OutboundPolicy`]: linkerd2_proxy_api::outbound::OutboundPolicy

pub mod check;
pub mod messages;
pub mod parse;
pub mod serve;
pub mod status;
pub mod table;

pub use check::{Backend, Checked, Cond, ParentStatus};
pub use serve::OutboundPolicyService;
pub use table::{RouteTable, TableUpdate};

use std::fmt;

/// The `controllerName` of the statuses weft writes.
pub const CONTROLLER_NAME: &str = "weft.io/controller";

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Which kind of route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// A route's identity: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// A `parentRefs[]` entry as written (defaults not applied).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub port: Option<i32>,
    pub section_name: Option<String>,
}

impl ParentRef {
    /// Whether it names a Service (group `""` or `core`, kind `Service`): the mesh's
    /// parents. Others (Gateways, by default) are for a gateway's controller: weft
    /// writes no status for them.
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), Some("" | "core"))
            && self.kind.as_deref() == Some("Service")
    }

    /// The parent's namespace: its own, or the route's.
    pub fn namespace_or<'a>(&'a self, route_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(route_namespace)
    }
}

impl fmt::Display for ParentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.as_deref().unwrap_or("Gateway");
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{}", self.name)?,
            None => write!(f, "{kind} {}", self.name)?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(section) = &self.section_name {
            write!(f, " ({section})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

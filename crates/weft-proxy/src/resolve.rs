//! Resolution: where a connection or request goes (a service, an address, or not
//! known yet) and the endpoint for it, with the rules that refuse a destination
//! (loops to the proxy's own listeners, the mesh's pod network without discovery).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::balance::Picked;
use crate::endpoints::{Service, ServiceIndex};
use crate::Shared;

impl Shared {
    /// The endpoint for the next request (or connection) to `destination`, and its
    /// service name if it has one.
    pub fn resolve<'a>(
        &'a self,
        destination: &'a Destination,
        authority: &str,
    ) -> Result<Resolved, ResolveError> {
        let discovered = match (destination, &self.destinations) {
            (Destination::ByAuthority, Some(d))
                if self.config.services.by_authority(authority).is_none() =>
            {
                d.cached_authority(authority).map(Destination::Service)
            }
            _ => None,
        };
        // Explicit mode's fail-closed rule: an address literal in the mesh's pod
        // network that the controller has not answered for is refused, as in
        // `connection` for transparent destinations.
        if let (Destination::ByAuthority, None, Some(d), Some(config)) = (
            destination,
            &discovered,
            &self.destinations,
            &self.config.destination,
        ) {
            if let Ok(addr) = authority.parse::<SocketAddr>() {
                if config.in_mesh_network(addr.ip())
                    && self.config.services.by_authority(authority).is_none()
                    && !d.known_outside(authority)
                {
                    return Err(ResolveError::DiscoveryUnavailable(addr));
                }
            }
        }
        let resolved = discovered
            .as_ref()
            .unwrap_or(destination)
            .resolve(&self.config.services, authority)?;
        if self.is_own_listener(resolved.addr) {
            return Err(ResolveError::Loop(resolved.addr));
        }
        Ok(resolved)
    }

    /// [`Shared::resolve`], but a service with no endpoint to pick is waited for, within
    /// the failfast timeout ([`Service::pick_or_wait`]).
    pub async fn resolve_or_wait(
        &self,
        destination: &Destination,
        authority: &str,
    ) -> Result<Resolved, ResolveError> {
        match self.resolve(destination, authority) {
            Err(ResolveError::NoEndpoints(service)) => {
                match service.pick_or_wait(self.config.failfast_timeout).await {
                    Some(picked) if self.is_own_listener(picked.addr()) => {
                        Err(ResolveError::Loop(picked.addr()))
                    }
                    Some(picked) => Ok(Resolved {
                        addr: picked.addr(),
                        service: Some(service),
                        picked: Some(picked),
                    }),
                    None => Err(ResolveError::NoEndpoints(service)),
                }
            }
            other => other,
        }
    }

    /// Explicit mode: looks an authority the endpoints file does not know up in the
    /// destination service (waiting for its first answer, within bounds), so that
    /// [`Shared::resolve`] finds it. Does nothing otherwise.
    pub async fn discover(&self, destination: &Destination, authority: &str) {
        if let (Destination::ByAuthority, Some(d)) = (destination, &self.destinations) {
            if self.known_service(authority).is_none() {
                d.resolve_authority(authority).await;
            }
        }
    }

    /// The service `authority` names as far as it is known now, without waiting: the
    /// endpoints file's, else the destination service's answer already at hand.
    pub fn known_service(&self, authority: &str) -> Option<Arc<Service>> {
        self.config
            .services
            .by_authority(authority)
            .or_else(|| self.destinations.as_ref()?.cached_authority(authority))
    }

    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        self.listening.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip() || (l.ip().is_unspecified() && addr.ip().is_loopback()))
        })
    }
}

/// Where a connection or request is going.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A known service: balanced over its endpoints.
    Service(Arc<Service>),
    /// A single address (the original destination, or the local workload).
    Addr(SocketAddr),
    /// Unknown until an HTTP request names it (explicit outbound listener).
    ByAuthority,
    /// An address in the mesh's pod network the destination service has not answered
    /// for: refused rather than reached without mTLS.
    Unavailable(SocketAddr),
}

/// Where one request (or connection) goes.
#[derive(Debug)]
pub struct Resolved {
    pub addr: SocketAddr,
    pub service: Option<Arc<Service>>,
    /// The balancer's pick, to report the outcome on (none for a single address).
    pub picked: Option<Picked>,
}

impl Resolved {
    pub fn zone(&self) -> Option<&Arc<str>> {
        self.picked.as_ref().and_then(|p| p.zone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("service {} has no endpoints", .0.name())]
    NoEndpoints(Arc<Service>),
    #[error("no service is known for authority {0:?}")]
    UnknownAuthority(String),
    #[error("{0} is this proxy's own listener: the request would loop")]
    Loop(SocketAddr),
    #[error("{0} is in the mesh's pod network but the destination service has not said how to reach it (is the controller up?): refused rather than sent without mTLS")]
    DiscoveryUnavailable(SocketAddr),
}

impl Destination {
    /// The endpoint for the next request (or connection), and the service name if the
    /// destination is a service.
    pub fn resolve<'a>(
        &'a self,
        services: &'a ServiceIndex,
        authority: &str,
    ) -> Result<Resolved, ResolveError> {
        let single = |addr| Resolved {
            addr,
            service: None,
            picked: None,
        };
        let service = match self {
            Destination::Addr(addr) => return Ok(single(*addr)),
            Destination::Unavailable(addr) => {
                return Err(ResolveError::DiscoveryUnavailable(*addr))
            }
            Destination::Service(service) => service.clone(),
            Destination::ByAuthority => match services.by_authority(authority) {
                Some(service) => service,
                None => {
                    return authority
                        .parse::<SocketAddr>()
                        .map(single)
                        .map_err(|_| ResolveError::UnknownAuthority(authority.to_owned()))
                }
            },
        };
        match service.pick() {
            Some(picked) => Ok(Resolved {
                addr: picked.addr(),
                service: Some(service),
                picked: Some(picked),
            }),
            None => Err(ResolveError::NoEndpoints(service)),
        }
    }
}

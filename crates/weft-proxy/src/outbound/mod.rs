//! The outbound path: connections from the local workload, top to bottom.
//!
//! 1. **Destination** ([`destination`]): the original destination (transparent mode)
//!    known from the endpoints file as a service or an address, the service of a
//!    service listener, or, in explicit mode, whatever each HTTP request names.
//! 2. **Discovery** ([`discover`]): an address the endpoints file does not know is
//!    looked up in the destination service (a Service VIP, a pod); fail closed for the
//!    mesh's pod network.
//! 3. **Protocol**: opaque ports are forwarded as TCP; anything else is detected.
//! 4. **Forward** ([`crate::accept::dispatch`]): TCP to one endpoint, or HTTP request by
//!    request down [`http`].

pub(crate) mod http;
pub(crate) mod mirror;
mod route;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::accept::{self, Accepted, Serving, SrcCounters};
use crate::destination::Lookup;
use crate::detect::{self, Protocol};
use crate::drain::Watch;
use crate::endpoints::Service;
use crate::io::CountingIo;
use crate::metrics::{Direction, Tls};
use crate::{Config, Destination, Mode, Shared};

/// The prelude of one connection from the local workload: what serves it, or `None`
/// when it is closed before that ([`accept::Serving`]); `service` is set when it came
/// to a service listener (explicit mode).
pub(crate) async fn connection(
    socket: TcpStream,
    client: SocketAddr,
    service: Option<Arc<Service>>,
    shared: Arc<Shared>,
    watch: Watch,
) -> Option<Serving> {
    let config = &shared.config;
    let destination = destination(&socket, service, config);
    let destination = discover(&shared, destination).await;
    // Labelled once it is known whether the connection is mTLS (outbound: never, the
    // workload speaks plaintext to its proxy).
    let mut io = CountingIo::unlabelled(socket);
    let counters = SrcCounters::new(&shared, Direction::Outbound);
    let peer = Accepted {
        client,
        direction: Direction::Outbound,
        destination,
        tls: Tls::NoIdentity,
        client_id: None,
    };
    let protocol = if peer.is_opaque(config) {
        (Protocol::Opaque, bytes::Bytes::new())
    } else {
        match detect::detect(&mut io, config.detect_timeout).await {
            Ok(d) if !d.closed => (d.protocol, d.prefix),
            closed_or_failed => {
                // Still a connection that was opened: count it.
                io.label(counters.plain());
                if let Err(error) = closed_or_failed {
                    tracing::debug!(%client, %error, "connection failed during protocol detection");
                }
                return None;
            }
        }
    };
    io.label(counters.plain());
    let (protocol, prefix) = protocol;
    Some(accept::dispatch(io, protocol, prefix, peer, shared, watch))
}

/// Where a connection from the local workload goes, as far as the proxy knows without
/// asking the destination service.
fn destination(socket: &TcpStream, service: Option<Arc<Service>>, config: &Config) -> Destination {
    if let Some(service) = service {
        return Destination::Service(service);
    }
    let target = match config.mode {
        Mode::Transparent => accept::original_dst(socket).0,
        Mode::Explicit => None,
    };
    match target {
        Some(addr) => match config.services.by_address(addr) {
            Some(service) => Destination::Service(service),
            None => Destination::Addr(addr),
        },
        None => Destination::ByAuthority,
    }
}

/// An original destination the endpoints file does not know: the destination service
/// may (a Service VIP, a pod). Fail closed: an address in the mesh's pod network is
/// never reached in plaintext because the destination service could not say whether
/// (and as whom) it is meshed.
async fn discover(shared: &Shared, destination: Destination) -> Destination {
    let (Destination::Addr(addr), Some(d)) = (&destination, &shared.destinations) else {
        return destination;
    };
    match d.resolve_addr(*addr).await {
        Lookup::Service(service) => Destination::Service(service),
        Lookup::Unanswered
            if shared
                .config
                .destination
                .as_ref()
                .is_some_and(|c| c.in_mesh_network(addr.ip())) =>
        {
            Destination::Unavailable(*addr)
        }
        Lookup::Unanswered | Lookup::Unknown => destination,
    }
}

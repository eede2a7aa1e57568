//! The inbound path: connections from callers to the local application, top to bottom.
//!
//! 1. **Destination** ([`destination`]): the original destination, which must be an
//!    address of this pod (the proxy is no relay), or `--inbound-forward`.
//! 2. **Protocol**: opaque ports are forwarded as TCP (but still looked at for mTLS
//!    from meshed callers); anything else is detected.
//! 3. **mTLS** ([`terminate`]): TLS addressed to this proxy's identity is terminated,
//!    the caller's identity taken from its certificate, and what it carries detected
//!    again; TLS for anyone else (the application's own) passes through untouched.
//! 4. **Authorize** ([`authorize`], the port's policy from [`policy`]): an opaque TCP
//!    connection's caller (address, identity) once, when it is accepted, and again
//!    whenever the port's policy changes (a connection no longer allowed is closed);
//!    HTTP callers request by request in [`http`].
//! 5. **Forward** ([`crate::accept::dispatch`]): TCP to the application, or HTTP request
//!    by request down [`http`].

pub mod authorize;
pub(crate) mod http;
pub mod policy;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::accept::{self, Accepted, Serving, SrcCounters};
use crate::detect::{self, Protocol};
use crate::drain::Watch;
use crate::identity::{self, LocalIdentity};
use crate::io::{CountingIo, PrefixedIo};
use crate::metrics::{Direction, Str, Tls};
use crate::{tls, Config, Destination, Mode, Shared};

/// The prelude of one connection from a caller: what serves it, or `None` when it is
/// closed before that ([`accept::Serving`]).
pub(crate) async fn connection(
    socket: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    watch: Watch,
) -> Option<Serving> {
    let config = &shared.config;
    let destination = match destination(&socket, config) {
        Ok(addr) => Destination::Addr(addr),
        Err(refused) => {
            shared.metrics.refused(Direction::Inbound, refused.reason());
            tracing::warn!(%client, reason = %refused, "connection refused");
            return None;
        }
    };
    // Labelled once it is known whether the connection is mTLS.
    let mut io = CountingIo::unlabelled(socket);
    let counters = SrcCounters::new(&shared, Direction::Inbound);
    let peer = Accepted {
        client,
        direction: Direction::Inbound,
        destination,
        tls: Tls::NoIdentity,
        client_id: None,
    };

    // Opaque ports skip protocol detection, except that a proxy with an identity still
    // looks for mTLS from meshed callers (who speak first). A silent plaintext caller
    // then waits --detect-timeout, as with Linkerd; server-speaks-first ports used by
    // unmeshed callers belong in the iptables skip ports.
    let local = shared.identity.clone();
    let opaque = peer.is_opaque(config);
    if opaque && local.is_none() {
        io.label(counters.plain());
        return forward(
            io,
            Protocol::Opaque,
            bytes::Bytes::new(),
            peer,
            shared,
            watch,
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + config.detect_timeout;
    let detected = match detect::detect(&mut io, config.detect_timeout).await {
        Ok(d) if !d.closed => d,
        closed_or_failed => {
            // Still a connection that was opened: count it.
            io.label(counters.plain());
            if let Err(error) = closed_or_failed {
                tracing::debug!(%client, %error, "connection failed during protocol detection");
            }
            return None;
        }
    };
    let (protocol, prefix) = (detected.protocol, detected.prefix);
    if let Some(local) =
        local.filter(|_| protocol == Protocol::Opaque && tls::looks_like_tls(&prefix))
    {
        // Boxed: plaintext connections' preludes (held while they wait for a first
        // byte, up to --detect-timeout) need not carry the handshake's size.
        let tls = mtls(io, prefix, local, peer, shared, watch, deadline);
        return Box::pin(tls).await;
    }
    let protocol = if opaque { Protocol::Opaque } else { protocol };
    io.label(counters.plain());
    forward(io, protocol, prefix, peer, shared, watch).await
}

/// A TLS connection: passed through when it is for someone else (the application's
/// own TLS), else mTLS terminated and what it carries detected and forwarded.
async fn mtls(
    mut io: CountingIo<TcpStream>,
    prefix: bytes::Bytes,
    local: Arc<LocalIdentity>,
    peer: Accepted,
    shared: Arc<Shared>,
    watch: Watch,
    deadline: tokio::time::Instant,
) -> Option<Serving> {
    let client = peer.client;
    let counters = SrcCounters::new(&shared, Direction::Inbound);
    let hello = match tls::read_client_hello(&mut io, prefix, deadline).await {
        Ok(hello) => hello,
        Err(error) => {
            io.label(counters.plain());
            tracing::debug!(%client, %error, "connection failed while reading a ClientHello");
            return None;
        }
    };
    if hello.server_name.as_deref() != Some(local.name().dns_name().as_str()) {
        // TLS for someone else (the application's own): passed through untouched.
        io.label(counters.plain());
        return forward(io, Protocol::Opaque, hello.prefix, peer, shared, watch).await;
    }
    // Labelled with the caller's identity once the handshake proved it; a
    // handshake that fails still counts, without one.
    io.label_on_drop(counters.of(Tls::Yes, Str::empty()));
    let io = PrefixedIo::new(hello.prefix, io);
    let (mut stream, client_id) = terminate(io, &local, &peer, &shared, deadline).await?;
    stream
        .get_mut()
        .0
        .get_mut()
        .label(counters.of(Tls::Yes, Str(client_id.dns_name().into())));
    let peer = Accepted {
        tls: Tls::Yes,
        client_id: Some(client_id),
        ..peer
    };
    // Boxed: a pointer for the steps after the handshake to hand down, and a stream
    // of its own size in the serving future.
    detect_and_forward(Box::new(stream), peer, shared, watch).await
}

/// Detection again on a decrypted stream (opaque ports are not), then [`forward`].
async fn detect_and_forward<I>(
    mut io: I,
    peer: Accepted,
    shared: Arc<Shared>,
    watch: Watch,
) -> Option<Serving>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (protocol, prefix) = if peer.is_opaque(&shared.config) {
        (Protocol::Opaque, bytes::Bytes::new())
    } else {
        match detect::detect(&mut io, shared.config.detect_timeout).await {
            Ok(d) if d.closed => return None,
            Ok(d) => (d.protocol, d.prefix),
            Err(error) => {
                tracing::debug!(client = %peer.client, %error, "connection failed during protocol detection");
                return None;
            }
        }
    };
    forward(io, protocol, prefix, peer, shared, watch).await
}

/// Authorizes an opaque TCP connection (HTTP is authorized request by request) and
/// forwards it. An allowed TCP connection stays open while the port's policy allows
/// it: a change that no longer does closes it.
async fn forward<I>(
    io: I,
    protocol: Protocol,
    prefix: bytes::Bytes,
    peer: Accepted,
    shared: Arc<Shared>,
    watch: Watch,
) -> Option<Serving>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (Protocol::Opaque, Destination::Addr(addr)) = (protocol, &peer.destination) else {
        return Some(accept::dispatch(io, protocol, prefix, peer, shared, watch));
    };
    let port = addr.port();
    let ip = peer.client.ip();
    let client = peer.client;
    let client_id = peer.client_id.as_ref().map(|id| id.dns_name());
    let mut policy = shared.inbound_policy.port(port).await;
    if let Err(denied) = authorize::tcp(&shared, &policy.current(), ip, client_id.as_deref(), port)
    {
        tracing::info!(%client, reason = %denied, "TCP connection denied: closed");
        return None;
    }
    let mut forwarding = accept::dispatch(io, protocol, prefix, peer, shared, watch);
    Some(Box::pin(async move {
        loop {
            tokio::select! {
                () = &mut forwarding => return,
                () = policy.changed() => {
                    if let Err(denied) = policy.current().authorize(ip, client_id.as_deref(), port) {
                        tracing::info!(%client, reason = %denied, "TCP connection no longer authorized: closed");
                        return;
                    }
                }
            }
        }
    }))
}

/// The mTLS handshake with a meshed caller, within the detection deadline: the stream
/// and the caller's identity, or `None` (counted and logged) when the caller's
/// certificate is refused.
async fn terminate(
    io: PrefixedIo<CountingIo<TcpStream>>,
    local: &LocalIdentity,
    peer: &Accepted,
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Option<(
    TlsStream<PrefixedIo<CountingIo<TcpStream>>>,
    weft_core::identity::Identity,
)> {
    let client = peer.client;
    let acceptor = tokio_rustls::TlsAcceptor::from(local.server_config());
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            shared.metrics.tls_handshake_error(Direction::Inbound);
            tracing::info!(%client, %error, "mTLS handshake refused");
            return None;
        }
        Err(_) => {
            shared.metrics.tls_handshake_error(Direction::Inbound);
            tracing::info!(%client, "mTLS handshake timed out");
            return None;
        }
    };
    let client_id = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(identity::peer_identity);
    // The anchor signed it, but it must also name a workload of this mesh: a
    // certificate the CA issued for something else proves no caller identity.
    let trust_domain = local.name().trust_domain();
    let Some(client_id) = client_id.filter(|id| id.trust_domain() == trust_domain) else {
        shared.metrics.tls_handshake_error(Direction::Inbound);
        tracing::info!(%client, %trust_domain, "mTLS refused: the client certificate names no identity of this trust domain");
        return None;
    };
    Some((stream, client_id))
}

/// Why an accepted connection is closed without being forwarded.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("inbound connection has no original destination and no --inbound-forward is set")]
    NoDestination,
    /// The inbound proxy forwards only to its own pod: anything else would make it an
    /// open relay (a caller reaching another pod as if it were this one).
    #[error("inbound connection for {0}, which is not an address of this pod: not relayed")]
    NotLocal(SocketAddr),
}

impl Refused {
    fn reason(&self) -> &'static str {
        match self {
            Refused::NoDestination => "no_destination",
            Refused::NotLocal(_) => "not_local",
        }
    }
}

/// Whether `ip` is one of this host's (this pod's) own addresses: the kernel lets a
/// socket bind only to those (anything else is `EADDRNOTAVAIL`).
fn is_local_address(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The local application's address for a connection from a caller.
fn destination(socket: &TcpStream, config: &Config) -> Result<SocketAddr, Refused> {
    let target = match config.mode {
        Mode::Transparent => match accept::original_dst(socket) {
            // Redirected to the address it arrived on (the usual case), or to another
            // of the pod's own addresses.
            (Some(orig), local)
                if local.is_some_and(|l| l.ip() == orig.ip()) || is_local_address(orig.ip()) =>
            {
                Some(orig)
            }
            (Some(orig), _) => return Err(Refused::NotLocal(orig)),
            (None, _) => config.inbound_forward,
        },
        Mode::Explicit => config.inbound_forward,
    };
    target.ok_or(Refused::NoDestination)
}

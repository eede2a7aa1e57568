//! Opaque TCP forwarding: bytes both ways, half-close honoured, one endpoint per
//! connection.

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use weft_core::identity::Identity;

use crate::io::PrefixedIo;
use crate::upstream::Connector;

/// Forwards `client` (whose first bytes, `prefix`, were read during detection) to
/// `endpoint` until both sides have closed.
/// `server` is the endpoint's identity when it is meshed (the connection uses mTLS).
pub async fn forward<I>(
    client: I,
    prefix: Bytes,
    endpoint: SocketAddr,
    server: Option<&Identity>,
    connector: &Connector,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = match connector.connect(endpoint, server).await {
        Ok(io) => io,
        Err(error) => {
            // Closing the client connection is all a TCP proxy can say.
            tracing::info!(%endpoint, %error, "TCP connection refused upstream");
            return;
        }
    };
    let mut client = PrefixedIo::new(prefix, client);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::debug!(%endpoint, sent, received, "TCP connection closed"),
        Err(error) => tracing::debug!(%endpoint, %error, "TCP connection ended with an error"),
    }
}

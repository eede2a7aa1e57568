//! Opaque TCP forwarding: bytes both ways, half-close honoured, one endpoint per
//! connection.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::balance::Outcome;
use crate::io::PrefixedIo;
use crate::upstream::Connector;
use crate::Resolved;

/// Forwards `client` (whose first bytes, `prefix`, were read during detection) to the
/// resolved endpoint until both sides have closed. The connection counts as pending on
/// the endpoint until it ends, and uses mTLS when the endpoint has an identity.
pub async fn forward<I>(client: I, prefix: Bytes, resolved: Resolved, connector: &Connector)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let endpoint = resolved.addr;
    let mut picked = resolved.picked;
    let server = picked.as_ref().and_then(|p| p.identity());
    let connected = connector.connect(endpoint, server).await;
    if let Some(p) = picked.as_mut() {
        p.report(if connected.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
    }
    let mut upstream = match connected {
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
    drop(picked);
}

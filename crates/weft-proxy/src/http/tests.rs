//! Size checks on what every connection holds for its whole life (ztunnel does the
//! same): a connection's task is allocated at its future's size, and hyper keeps room
//! for a request's future for as long as the request is in flight. An mTLS handshake
//! inlined into every inbound connection's future once made each 16.7 KB (20 KiB
//! allocated, plaintext connections included); docs/reliability.md, "Memory per
//! connection", has the breakdown. The bounds hold for debug and release builds
//! (release futures are smaller).

use std::mem::size_of;

use tokio::net::TcpStream;

use crate::io::{CountingIo, PrefixedIo};

/// The size of the future `f` returns, from its type alone.
fn returned_4<F, A, B, C, D, R>(_: &F) -> usize
where
    F: FnOnce(A, B, C, D) -> R,
{
    size_of::<R>()
}

fn returned_5<F, A, B, C, D, E, R>(_: &F) -> usize
where
    F: FnOnce(A, B, C, D, E) -> R,
{
    size_of::<R>()
}

#[test]
fn per_connection_futures_stay_small() {
    type Plain = PrefixedIo<CountingIo<TcpStream>>;
    // (what, its size, the bound): the bounds are a little above today's sizes
    // (debug: 3,064, 2,248, 1,232, 3,160, 5,456 and 80 bytes).
    let sizes = [
        (
            "an inbound connection's task",
            returned_4(&crate::inbound::connection),
            4096,
        ),
        (
            "an outbound connection's task",
            returned_5(&crate::outbound::connection),
            4096,
        ),
        (
            "serving HTTP on a connection",
            returned_4(&super::serve::<Plain>),
            2048,
        ),
        (
            "an inbound request",
            returned_4(&crate::inbound::http::forward),
            4096,
        ),
        (
            "an outbound request",
            returned_4(&crate::outbound::http::forward),
            8192,
        ),
        (
            "an upstream connection's stream",
            size_of::<crate::upstream::UpstreamIo>(),
            128,
        ),
    ];
    for (what, size, bound) in sizes {
        assert!(
            size <= bound,
            "{what}: {size} bytes, more than {bound} (docs/reliability.md, \"Memory per connection\")"
        );
    }
}

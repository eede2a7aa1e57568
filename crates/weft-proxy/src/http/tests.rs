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

fn returned_6<F, A, B, C, D, E, G, R>(_: &F) -> usize
where
    F: FnOnce(A, B, C, D, E, G) -> R,
{
    size_of::<R>()
}

#[test]
fn per_connection_futures_stay_small() {
    type Plain = PrefixedIo<CountingIo<TcpStream>>;
    type Http1 = super::Serve<
        hyper::server::conn::http1::UpgradeableConnection<
            hyper_util::rt::TokioIo<Plain>,
            super::PathService,
        >,
    >;
    // (what, its size, the bound): the bounds are a little above today's sizes
    // (debug: 72, 1,680, 904, 808, 3,160, 5,456 and 80 bytes). The task and the
    // serving future are what an idle connection holds; the preludes live only until
    // the connection is served.
    let sizes = [
        (
            "a connection's task (what it holds for the connection's life)",
            returned_6(&crate::accept::connection),
            128,
        ),
        (
            "an inbound connection's prelude",
            returned_4(&crate::inbound::connection),
            2048,
        ),
        (
            "an outbound connection's prelude",
            returned_5(&crate::outbound::connection),
            2048,
        ),
        (
            "serving HTTP/1 on a plaintext connection (boxed; held for its life)",
            size_of::<Http1>(),
            1024,
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

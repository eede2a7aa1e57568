//! Reading a TLS ClientHello's server name (SNI) during detection: arbitrary bytes,
//! the first part as the bytes detection already read, the rest from the connection.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weft_proxy::tls::{looks_like_tls, read_client_hello};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(data.len());
    let (prefix, rest) = data.split_at(split);
    let _ = looks_like_tls(data);
    let mut io = rest;
    let info = runtime()
        .block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            read_client_hello(&mut io, Bytes::copy_from_slice(prefix), deadline).await
        })
        .expect("reading from memory does not fail");
    // Every byte read is kept, in order, to be replayed.
    assert!(data.starts_with(&info.prefix), "bytes lost or changed");
    assert!(info.prefix.len() >= prefix.len());
    if let Some(name) = info.server_name {
        assert!(!name.is_empty());
    }
});

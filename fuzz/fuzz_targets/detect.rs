//! Protocol detection on the first bytes of an accepted connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::detect::{after_silence, classify, Protocol, MAX_DETECT};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let got = classify(data);
    let silent = after_silence(data);
    assert_ne!(silent, Protocol::Http2, "silence never makes HTTP/2");

    // A (prefix of the) HTTP/2 preface is never HTTP/1: it waits, then is HTTP/2.
    let n = data.len().min(H2_PREFACE.len());
    if n > 0 && data[..n] == H2_PREFACE[..n] {
        if n < H2_PREFACE.len() {
            assert_eq!(got, None, "a preface prefix waits for more");
        } else {
            assert_eq!(got, Some(Protocol::Http2));
        }
    }
    // Bounded: with MAX_DETECT bytes detection has decided (it never waits for more).
    if data.len() >= MAX_DETECT {
        assert!(got.is_some(), "undecided after {} bytes", data.len());
    } else if !data.is_empty() {
        let mut long = data.to_vec();
        long.resize(MAX_DETECT, data[data.len() - 1]);
        assert!(
            classify(&long).is_some(),
            "undecided after MAX_DETECT bytes"
        );
    }
    // Once decided, the decision is the one every longer buffer could also get: at
    // least, HTTP/2 and HTTP/1 never turn into each other by appending bytes.
    if let Some(p @ (Protocol::Http1 | Protocol::Http2)) = got {
        let mut more = data.to_vec();
        more.extend_from_slice(b"\r\n\r\n");
        assert_eq!(classify(&more), Some(p));
    }
});

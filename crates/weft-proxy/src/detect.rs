//! Protocol detection: the HTTP/2 connection preface, an HTTP/1 request line, or else
//! opaque TCP. Detection reads at most [`MAX_DETECT`] bytes and waits at most the
//! configured timeout, so server-speaks-first protocols fall through to TCP.
//!
//! Bytes that start like an HTTP request (a standard method and a space) are HTTP even
//! when the rest of the line is malformed, cut short or too long: the HTTP server then
//! refuses them with a 4xx. Forwarding them as opaque TCP would hand the application a
//! request the proxy never saw (no metrics, and no HTTP policy).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest request line we wait for; longer first lines are treated as opaque TCP.
pub const MAX_DETECT: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

/// What detection found, and the bytes it consumed (to be replayed).
pub struct Detected {
    pub protocol: Protocol,
    pub prefix: Bytes,
    /// The client closed the connection before sending anything.
    pub closed: bool,
}

/// Reads from `io` until the protocol is known, the client stops sending for
/// `timeout`, or [`MAX_DETECT`] bytes arrived.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<Detected> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(protocol) = classify(&buf) {
            return Ok(Detected {
                protocol,
                prefix: buf.freeze(),
                closed: false,
            });
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) => {
                return Ok(Detected {
                    protocol: Protocol::Opaque,
                    closed: buf.is_empty(),
                    prefix: buf.freeze(),
                })
            }
            // The client waits for the server to speak first (or stopped half-way
            // through a request head).
            Err(_) => {
                return Ok(Detected {
                    protocol: after_silence(&buf),
                    closed: false,
                    prefix: buf.freeze(),
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// `None` while more bytes are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Protocol::Http2)
        } else {
            None
        };
    }
    let line = request_line(buf);
    match (starts_like_http(buf), line) {
        (_, LineCheck::Valid) => Some(Protocol::Http1),
        // Too short to tell.
        (None, _) => None,
        // A standard method: malformed or too long, it is still HTTP (a 4xx).
        (Some(true), LineCheck::Incomplete) if buf.len() < MAX_DETECT => None,
        (Some(true), _) => Some(Protocol::Http1),
        (Some(false), LineCheck::Invalid) => Some(Protocol::Opaque),
        (Some(false), LineCheck::Incomplete) if buf.len() >= MAX_DETECT => Some(Protocol::Opaque),
        (Some(false), LineCheck::Incomplete) => None,
    }
}

/// The standard methods (RFC 9110 §9 and PATCH), each followed by a space.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];
/// `Some(true)` when `buf` starts with a standard method and a space, `Some(false)`
/// when it cannot, `None` while too short to tell.
fn starts_like_http(buf: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for m in METHODS {
        if buf.starts_with(m) {
            return Some(true);
        }
        undecided |= m.starts_with(buf);
    }
    (!undecided).then_some(false)
}

/// What to make of bytes a client sent before falling silent (the detect timeout):
/// the start of an HTTP request stays HTTP (the HTTP server bounds how long a request
/// head may take), anything else is opaque.
pub fn after_silence(buf: &[u8]) -> Protocol {
    if starts_like_http(buf) == Some(true) {
        Protocol::Http1
    } else {
        Protocol::Opaque
    }
}

enum LineCheck {
    Valid,
    Invalid,
    Incomplete,
}

/// Checks `METHOD SP request-target SP HTTP/1.x CRLF` as far as the bytes go.
fn request_line(buf: &[u8]) -> LineCheck {
    let mut parts = 0; // 0 = method, 1 = target, 2 = version
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        match parts {
            0 if b == b' ' && i > 0 => {
                parts = 1;
                start = i + 1;
            }
            0 if !is_token(b) => return LineCheck::Invalid,
            1 if b == b' ' && i > start => {
                parts = 2;
                start = i + 1;
            }
            1 if b.is_ascii_control() || b == b' ' => return LineCheck::Invalid,
            2 if b == b'\r' || b == b'\n' => {
                let version = &buf[start..i];
                return if version == b"HTTP/1.1" || version == b"HTTP/1.0" {
                    LineCheck::Valid
                } else {
                    LineCheck::Invalid
                };
            }
            2 => {
                let seen = &buf[start..=i];
                if seen.len() > 8 || !b"HTTP/1.1".starts_with(&seen[..seen.len().min(7)]) {
                    return LineCheck::Invalid;
                }
            }
            _ => {}
        }
    }
    LineCheck::Incomplete
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_protocols() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(
            classify(b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(b"GET / HTT"), None);
        assert_eq!(classify(b"GET /"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"hello world\n"), Some(Protocol::Opaque));
        // An extension method in a valid line is HTTP; junk after an unknown word is not.
        assert_eq!(classify(b"PROPFIND / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GETTING / FTP\r\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn malformed_http_stays_http() {
        // A standard method and a space: the HTTP server answers 4xx; never opaque.
        assert_eq!(classify(b"GET / SMTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET /a\x01b HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST  / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(
            classify(b"DELETE / HTTP/1.1 extra\r\n"),
            Some(Protocol::Http1)
        );
        // Still waiting for the line's end.
        assert_eq!(classify(b"GET /incomplete"), None);
        assert_eq!(classify(b"GE"), None);
    }

    #[test]
    fn long_lines() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_DETECT, b'a');
        assert_eq!(
            classify(&line),
            Some(Protocol::Http1),
            "an HTTP server's 414"
        );
        let mut line = b"XYZZY /".to_vec();
        line.resize(MAX_DETECT, b'a');
        assert_eq!(classify(&line), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn a_request_head_cut_short_stays_http() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET /slow")
            .await
            .unwrap();
        let d = detect(&mut server, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(d.protocol, Protocol::Http1);
        assert_eq!(&d.prefix[..], b"GET /slow");
    }

    #[tokio::test]
    async fn silent_clients_time_out_to_opaque() {
        let (_client, mut server) = tokio::io::duplex(64);
        let d = detect(&mut server, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(d.protocol, Protocol::Opaque);
        assert!(!d.closed, "a silent client is not a closed one");
    }

    #[tokio::test]
    async fn closed_clients_are_reported() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let d = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert!(d.closed);
    }

    #[tokio::test]
    async fn detection_keeps_the_bytes_it_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let d = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d.protocol, Protocol::Http1);
        assert_eq!(&d.prefix[..], b"GET / HTTP/1.1\r\nHost: a\r\n");
    }
}

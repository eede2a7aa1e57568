//! Writes the generated seed inputs under fuzz/corpus/: real ClientHellos (rustls, as a
//! meshed proxy sends them), a real CSR (rcgen, as the proxy makes it) in DER and PEM,
//! and a real workload certificate. Run: `cargo run --manifest-path fuzz/seeds/Cargo.toml`
//! (its own tiny crate, so the fuzz targets' build needs neither rcgen nor a client).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::ServerName;

const DNS: &str = "web.default.serviceaccount.identity.weft.cluster.local";
const SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/web";

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn client_hello(server_name: ServerName<'static>, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn main() {
    let sni = ServerName::try_from(DNS).unwrap();
    let hello = client_hello(sni.clone(), &[b"h2", b"http/1.1"]);
    // client_hello's input: a split byte (how much detection already read), then bytes.
    for (name, split) in [
        ("hello-sni-0", 0u8),
        ("hello-sni-5", 5),
        ("hello-sni-100", 100),
    ] {
        let mut input = vec![split];
        input.extend_from_slice(&hello);
        write("client_hello", name, &input);
    }
    let no_sni = client_hello(ServerName::try_from("198.18.0.10").unwrap(), &[]);
    let mut input = vec![5u8];
    input.extend_from_slice(&no_sni);
    write("client_hello", "hello-ip-no-sni", &input);
    write("detect", "tls-client-hello", &hello[..hello.len().min(64)]);

    let params = || {
        let mut p = CertificateParams::new(vec![DNS.to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(SPIFFE.try_into().unwrap()));
        p
    };
    let key = KeyPair::generate().unwrap();
    let csr = params().serialize_request(&key).unwrap();
    write("csr", "csr-der", csr.der());
    write("csr", "csr-pem", csr.pem().unwrap().as_bytes());
    let wrong = CertificateParams::new(vec![
        "api.default.serviceaccount.identity.weft.cluster.local".to_owned(),
    ])
    .unwrap()
    .serialize_request(&key)
    .unwrap();
    write("csr", "csr-other-name", wrong.der());

    let cert = params().self_signed(&key).unwrap();
    write("peer_cert", "leaf-der", cert.der());
    let plain = CertificateParams::new(vec!["example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    write("peer_cert", "not-weft-der", plain.der());
}

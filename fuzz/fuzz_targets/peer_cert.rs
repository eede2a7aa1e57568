//! The weft identity a peer's certificate names (DNS SAN), as the proxy reads it from
//! the certificate a TLS peer presented.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::CertificateDer;
use weft_core::identity::Identity;
use weft_proxy::identity::peer_identity;

fuzz_target!(|data: &[u8]| {
    if let Some(id) = peer_identity(&CertificateDer::from(data)) {
        let back: Identity = id.dns_name().parse().expect("own DNS name parses");
        assert_eq!(back, id);
    }
});

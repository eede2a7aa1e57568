//! Workload identity names: the DNS form (TLS SNI, certificate SAN) parsed from
//! arbitrary text, and identities made from arbitrary parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_core::identity::Identity;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<Identity>() {
        // The name is the identity's one spelling.
        assert_eq!(id.dns_name(), text);
        assert_eq!(id.to_string(), text);
        assert!(id.spiffe_id().starts_with("spiffe://"));
    }
    // `sa NUL ns NUL trust-domain`: whatever `new` accepts round-trips through its names.
    let mut parts = text.splitn(3, '\0');
    let (Some(sa), Some(ns), Some(td)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    if let Ok(id) = Identity::new(sa, ns, td) {
        let back: Identity = id.dns_name().parse().expect("own DNS name parses");
        assert_eq!(back, id);
        assert_eq!(id.spiffe_id(), format!("spiffe://{td}/ns/{ns}/sa/{sa}"));
    }
});

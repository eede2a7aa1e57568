//! The controller's check of the CSR an `Identity.Certify` request carries (DER or
//! PEM), for a fixed identity.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_controller::identity::check_csr;
use weft_core::identity::Identity;

fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| Identity::new("web", "default", "cluster.local").expect("identity"))
}

fuzz_target!(|data: &[u8]| {
    let _ = check_csr(identity(), data);
});

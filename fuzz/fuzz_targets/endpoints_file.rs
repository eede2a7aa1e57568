//! The proxy's static endpoints file (`--endpoints`), from arbitrary text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use weft_proxy::endpoints::ServiceIndex;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ServiceIndex::parse(Path::new("endpoints.yaml"), text) {
        Ok(index) => {
            for service in index.services() {
                let _ = service.endpoints();
                let _ = service.is_opaque();
                let _ = service.pick();
            }
            let _ = index.listeners();
            let _ = index.by_authority("web.default.svc:8080");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

//! A mesh directory: `mesh.yaml` (workloads) and a file of Services, from arbitrary
//! text (the input is `mesh.yaml NUL services.yaml`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_core::mesh::{Mesh, MESH_FILE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mesh, services) = text.split_once('\0').unwrap_or((text, ""));
    let files = [
        (MESH_FILE.to_owned(), mesh.to_owned()),
        ("services.yaml".to_owned(), services.to_owned()),
    ];
    match Mesh::parse(&files) {
        Ok(mesh) => {
            for w in &mesh.workloads {
                // Validated at load: these must not panic.
                let id = w.identity(&mesh.trust_domain);
                assert!(id.dns_name().ends_with(&mesh.trust_domain));
                let _ = w.proxy.flags();
                let _ = mesh.workload(&w.namespace, &w.name).expect("own workload");
            }
            for s in &mesh.services {
                for w in mesh.backends(s) {
                    for p in &s.ports {
                        let _ = w.resolve(&p.target_port);
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

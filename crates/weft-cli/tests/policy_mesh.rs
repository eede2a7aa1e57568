//! The mesh-wide default inbound policy on a local mesh (root, namespaces): `mesh.yaml`'s
//! `policy.default` reaches the controller, so a workload's port that no Server selects
//! allows what it says, and `weft up --default-inbound-policy` overrides it.

#![cfg(target_os = "linux")]

use std::process::Output;

mod common;
use common::{require_root, MeshEnv as _, NsEnv};

common::ns_env!(Env, "q");

/// books serves; client calls nothing by itself (the test calls from its pod).
fn mesh_yaml(policy: &str) -> String {
    format!(
        r#"kind: Mesh
{policy}workloads:
  - name: client
    ports: [8080]
    command: [weft-demo-app, serve, --name, client, --port, "8080"]
  - name: books
    ports: [8080]
    command: [weft-demo-app, serve, --name, books, --port, "8080"]
"#
    )
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: books}
spec:
  selector: {app: books}
  ports: [{port: 8080}]
"#;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Env {
    fn up(&self, flags: &[&str]) {
        let mut args = vec!["up", "-d"];
        args.extend(flags);
        args.push(self.dir.to_str().unwrap());
        let out = self.run(&args);
        assert!(out.status.success(), "weft up -d failed: {}", text(&out));
    }

    fn down(&self) {
        let out = self.run(&["down"]);
        assert!(out.status.success(), "weft down failed: {}", text(&out));
    }

    /// GET books from `netns`: the status and body as `weft-demo-app get` prints them.
    fn get_books(&self, netns: &str, url: &str) -> String {
        let out = NsEnv::get_in(netns, url);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn the_mesh_default_inbound_policy_reaches_the_controller_and_the_flag_overrides_it() {
    require_root!();
    let env = Env::new("a");
    env.write("mesh.yaml", &mesh_yaml("policy: {default: deny}\n"));
    env.write("services.yaml", SERVICES);

    // policy.default: deny: even a meshed caller is refused.
    env.up(&[]);
    let client = env.netns("client-0");
    let got = env.get_books(&client, "http://books:8080/");
    assert!(got.starts_with("403 "), "{got}");
    assert!(got.contains("of default deny"), "{got}");
    env.down();

    // The flag wins over mesh.yaml: all-authenticated lets the meshed client in and
    // keeps an unmeshed caller (the hub, plaintext to the pod) out.
    env.up(&["--default-inbound-policy", "all-authenticated"]);
    let got = env.get_books(&client, "http://books:8080/");
    assert!(got.starts_with("200 "), "{got}");
    let books = env.pod_ip("books-0").expect("books-0's address");
    let hub = format!("{}-hub", env.prefix);
    let got = env.get_books(&hub, &format!("http://{books}:8080/"));
    assert!(got.starts_with("403 "), "{got}");
    assert!(got.contains("of default all-authenticated"), "{got}");
    env.down();
}

//! What the controller's Kubernetes tests share: kubectl on the runtime's blocking side
//! (the controller's streams keep being read meanwhile) and the policy CRDs.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use weft_test::kube::KubeApi;

/// kubectl `args`; panics with the command and kubectl's error.
pub fn kubectl(api: &KubeApi, args: &[&str]) -> String {
    tokio::task::block_in_place(|| api.kubectl(args))
        .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", args.join(" ")))
}

/// `kubectl apply -f -` of `yaml`.
pub fn apply(api: &KubeApi, yaml: &str) {
    tokio::task::block_in_place(|| api.apply(yaml));
}

/// Waits until CRD `name` is served, within kubectl wait's default 30 s.
pub fn established(api: &KubeApi, name: &str) {
    tokio::task::block_in_place(|| api.wait_established(name, Duration::from_secs(30)));
}

/// The policy CRDs of the chart, applied and established.
pub fn policy_crds(api: &KubeApi) {
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/weft/crds");
    for kind in [
        "servers",
        "authorizationpolicies",
        "meshtlsauthentications",
        "networkauthentications",
    ] {
        let file = crds.join(format!("{kind}.policy.weft.io.yaml"));
        kubectl(api, &["apply", "-f", file.to_str().unwrap()]);
        established(api, &format!("{kind}.policy.weft.io"));
    }
}

//! `weft check --kube`: weft on a Kubernetes cluster, one line per check, each failure
//! with its fix (like `linkerd check`): the API server, weft's CRDs, the injector's
//! MutatingWebhookConfiguration, the control plane's Deployments and the controller's
//! `/ready`.

use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use weft_k8s::crd;
use weft_k8s::install::{CONTROLLER, DEFAULT_NAMESPACE, INJECTOR};

use crate::local::check::Report;

#[derive(clap::Args)]
pub struct KubeArgs {
    /// Check weft on the Kubernetes cluster of the kubeconfig instead of the local mesh.
    #[arg(long, conflicts_with_all = ["pre", "proxy", "dir"])]
    pub kube: bool,
    /// The kubeconfig (with --kube; default: in-cluster, then $KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long, requires = "kube")]
    kubeconfig: Option<PathBuf>,
    /// The control plane's namespace (with --kube).
    #[arg(short = 'n', long, default_value = DEFAULT_NAMESPACE)]
    namespace: String,
}

/// The fix for missing or outdated CRDs.
const APPLY_CRDS: &str = "weft install --crds | kubectl apply -f -";

pub async fn run(args: KubeArgs) -> anyhow::Result<()> {
    let mut r = Report { failed: 0 };
    println!("weft check: weft on Kubernetes");
    let client = match weft_controller::kube::api_client(args.kubeconfig.as_deref()).await {
        Ok(client) => client,
        Err(e) => {
            r.check(
                false,
                &format!("Kubernetes API client: {e}"),
                "pass --kubeconfig FILE, or set $KUBECONFIG",
            );
            return r.finish();
        }
    };
    match client.apiserver_version().await {
        Ok(v) => r.check(
            true,
            &format!(
                "Kubernetes API server reachable (version {})",
                v.git_version
            ),
            "",
        ),
        Err(e) => {
            r.check(
                false,
                &format!("Kubernetes API server reachable: {e}"),
                "check the kubeconfig's server and credentials (kubectl version)",
            );
            println!("  note  the other checks need the API server: skipped");
            return r.finish();
        }
    }
    check_crds(&mut r, &client).await;
    check_webhook(&mut r, &client, &args.namespace).await;
    let controller_available = check_deployment(&mut r, &client, &args.namespace, CONTROLLER).await;
    check_deployment(&mut r, &client, &args.namespace, INJECTOR).await;
    if controller_available {
        check_controller_ready(&mut r, &client, &args.namespace).await;
    } else {
        println!("  note  the controller's /ready: skipped (its Deployment is not available)");
    }
    r.finish()
}

/// Each of this weft's CRDs: installed, Established, serving this weft's versions with
/// this weft's schemas.
async fn check_crds(r: &mut Report, client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for ours in crd::all() {
        let name = ours.metadata.name.clone().unwrap_or_default();
        let theirs = match api.get_opt(&name).await {
            Ok(Some(theirs)) => theirs,
            Ok(None) => {
                r.check(false, &format!("CRD {name} installed"), APPLY_CRDS);
                continue;
            }
            Err(e) => {
                r.check(
                    false,
                    &format!("CRD {name} readable: {e}"),
                    "kubectl auth can-i get customresourcedefinitions",
                );
                continue;
            }
        };
        let established = theirs
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if !established {
            r.check(
                false,
                &format!("CRD {name} Established"),
                &format!("kubectl describe crd {name} (its conditions say why)"),
            );
            continue;
        }
        match schema_difference(&ours, &theirs) {
            None => {
                let versions: Vec<&str> =
                    ours.spec.versions.iter().map(|v| v.name.as_str()).collect();
                r.check(
                    true,
                    &format!(
                        "CRD {name} installed, Established, this weft's schema ({})",
                        versions.join(", ")
                    ),
                    "",
                );
            }
            Some(difference) => r.check(
                false,
                &format!("CRD {name} matches this weft's schema: {difference}"),
                APPLY_CRDS,
            ),
        }
    }
}

/// How the cluster's CRD differs from this weft's: a version it does not serve, or a
/// version's schema that is not this weft's.
fn schema_difference(
    ours: &CustomResourceDefinition,
    theirs: &CustomResourceDefinition,
) -> Option<String> {
    for version in &ours.spec.versions {
        let Some(served) = theirs.spec.versions.iter().find(|v| v.name == version.name) else {
            return Some(format!("version {} missing", version.name));
        };
        if !served.served {
            return Some(format!("version {} not served", version.name));
        }
        let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
            v.schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(serde_json::to_value)
                .transpose()
                .ok()
                .flatten()
        };
        if schema(version) != schema(served) {
            return Some(format!(
                "version {}'s schema differs (another weft's CRDs)",
                version.name
            ));
        }
    }
    None
}

/// The injector's MutatingWebhookConfiguration, each webhook with a caBundle.
async fn check_webhook(r: &mut Report, client: &Client, ns: &str) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("MutatingWebhookConfiguration {INJECTOR}");
    match api.get_opt(INJECTOR).await {
        Ok(Some(config)) => {
            let webhooks = config.webhooks.unwrap_or_default();
            let missing: Vec<&str> = webhooks
                .iter()
                .filter(|w| {
                    w.client_config
                        .ca_bundle
                        .as_ref()
                        .is_none_or(|b| b.0.is_empty())
                })
                .map(|w| w.name.as_str())
                .collect();
            r.check(
                !webhooks.is_empty() && missing.is_empty(),
                &if webhooks.is_empty() {
                    format!("{what} has webhooks (it has none)")
                } else if missing.is_empty() {
                    format!("{what} present with a caBundle")
                } else {
                    format!("{what} has a caBundle (missing in {})", missing.join(", "))
                },
                &format!(
                    "weft install -n {ns} --webhook-ca-bundle CA.crt | kubectl apply -f - (the CA of the {} Secret's certificate)",
                    weft_k8s::install::INJECTOR_TLS_SECRET
                ),
            );
        }
        Ok(None) => r.check(
            false,
            &format!("{what} present"),
            &format!("weft install -n {ns} --webhook-ca-bundle CA.crt | kubectl apply -f -"),
        ),
        Err(e) => r.check(
            false,
            &format!("{what} readable: {e}"),
            "kubectl auth can-i get mutatingwebhookconfigurations",
        ),
    }
}

/// A control-plane Deployment in `ns`, Available; whether it is.
async fn check_deployment(r: &mut Report, client: &Client, ns: &str, name: &str) -> bool {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let what = format!("Deployment {ns}/{name}");
    match api.get_opt(name).await {
        Ok(Some(d)) => {
            let status = d.status.unwrap_or_default();
            let available = status.conditions.as_ref().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Available" && c.status == "True")
            });
            let wanted = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            r.check(
                available,
                &format!(
                    "{what} available ({} of {wanted} ready)",
                    status.ready_replicas.unwrap_or(0)
                ),
                &format!("kubectl -n {ns} describe deployment {name}; kubectl -n {ns} logs deployment/{name}"),
            );
            available
        }
        Ok(None) => {
            r.check(
                false,
                &format!("{what} present"),
                &format!("weft install -n {ns} | kubectl apply -f -"),
            );
            false
        }
        Err(e) => {
            r.check(
                false,
                &format!("{what} readable: {e}"),
                &format!("kubectl -n {ns} auth can-i get deployments"),
            );
            false
        }
    }
}

/// The controller's `/ready` through the API server's proxy to its Service's admin
/// port; a note when the API server cannot reach it (the pod network is not reachable
/// from outside the cluster, or no proxy rights).
async fn check_controller_ready(r: &mut Report, client: &Client, ns: &str) {
    let path = format!("/api/v1/namespaces/{ns}/services/http:{CONTROLLER}:admin/proxy/ready");
    let request = match http::Request::get(&path).body(Vec::new()) {
        Ok(request) => request,
        Err(e) => {
            println!("  note  the controller's /ready: skipped ({e})");
            return;
        }
    };
    match client.request_text(request).await {
        Ok(_) => r.check(
            true,
            &format!("the controller's /ready (Service {ns}/{CONTROLLER}, port admin)"),
            "",
        ),
        Err(e) => println!(
            "  note  the controller's /ready: skipped, not reachable from outside the cluster through the API server's proxy ({e}); its Deployment's readiness probe calls it"
        ),
    }
}

//! `weft check --kube`: weft on a Kubernetes cluster, one line per check, each failure
//! with its fix (like `linkerd check`): the API server, weft's CRDs, the `ControlPlane`
//! resource (when the operator manages the control plane), the injector's
//! MutatingWebhookConfiguration, the control plane's Deployments and the controller's
//! `/ready`, the identity Secrets (issuer and injector certificate valid, chaining to the
//! trust anchors), and the meshed pods' proxies (they trust the current anchors).

use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use weft_controller::identity::{
    Issuer, TrustAnchors, ANCHORS_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE,
};
use weft_k8s::crd;
use weft_k8s::crd::common::ConditionStatus;
use weft_k8s::crd::operator::ControlPlane;
use weft_k8s::inject::{INJECTED_ANNOTATION, PROXY_CONTAINER};
use weft_k8s::install::{
    CONTROLLER, DEFAULT_NAMESPACE, IDENTITY_SECRET, INJECTOR, INJECTOR_TLS_SECRET,
};
use weft_k8s::operator::manifests::OPERATOR;

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
    check_control_plane_resource(&mut r, &client).await;
    check_webhook(&mut r, &client, &args.namespace).await;
    let controller_available = check_deployment(&mut r, &client, &args.namespace, CONTROLLER).await;
    check_deployment(&mut r, &client, &args.namespace, INJECTOR).await;
    if controller_available {
        check_controller_ready(&mut r, &client, &args.namespace).await;
    } else {
        println!("  note  the controller's /ready: skipped (its Deployment is not available)");
    }
    if let Some(anchors) = check_identity(&mut r, &client, &args.namespace).await {
        check_proxies(&mut r, &client, &anchors).await;
    }
    r.finish()
}

/// How long an issuer or serving certificate must still be valid to pass.
const MIN_VALIDITY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The cluster's `ControlPlane` (the oldest, which the operator follows): Ready, and
/// why not. A note when there is none (the control plane installed without the
/// operator).
async fn check_control_plane_resource(r: &mut Report, client: &Client) {
    let api: Api<ControlPlane> = Api::all(client.clone());
    let list = match api.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            println!("  note  ControlPlane resources: not readable ({e})");
            return;
        }
    };
    let Some(cp) = list.iter().min_by_key(|cp| {
        (
            cp.metadata.creation_timestamp.clone().map(|t| t.0),
            cp.metadata.name.clone(),
        )
    }) else {
        println!("  note  no ControlPlane resource (a control plane installed without the operator is checked below)");
        return;
    };
    let name = cp.metadata.name.clone().unwrap_or_default();
    let status = cp.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let fix = format!(
        "kubectl describe controlplane {name}; kubectl -n {OPERATOR} logs deployment/{OPERATOR}"
    );
    match ready {
        Some(c) if c.status == ConditionStatus::True => r.check(
            true,
            &format!(
                "ControlPlane {name} ready ({})",
                status.current_version.as_deref().unwrap_or("?")
            ),
            "",
        ),
        Some(c) => r.check(
            false,
            &format!("ControlPlane {name} ready: {} ({})", c.reason, c.message),
            &fix,
        ),
        None => r.check(
            false,
            &format!("ControlPlane {name} ready: no status yet (is the operator running?)"),
            &fix,
        ),
    }
}

fn secret_data(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret.data.as_ref()?.get(key).map(|b| b.0.clone())
}

fn days_left(t: std::time::SystemTime) -> String {
    let left = t
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    format!(
        "until {}, {} days left",
        humantime::format_rfc3339_seconds(t),
        left.as_secs() / 86_400
    )
}

/// The identity Secrets: the issuer chains to the trust anchors, both it and the
/// injector's certificate are valid for a week more. The anchors (PEM) when readable.
async fn check_identity(r: &mut Report, client: &Client, ns: &str) -> Option<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let fix_identity = "the operator keeps it (kubectl describe controlplane); without the operator: weft identity init, then kubectl create secret generic weft-identity (docs/kubernetes.md)";
    let identity = match api.get_opt(IDENTITY_SECRET).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            r.check(
                false,
                &format!("Secret {ns}/{IDENTITY_SECRET} present"),
                fix_identity,
            );
            return None;
        }
        Err(e) => {
            println!("  note  the identity Secrets: not readable ({e}); skipped");
            return None;
        }
    };
    let (Some(anchors), Some(cert), Some(key)) = (
        secret_data(&identity, ANCHORS_FILE),
        secret_data(&identity, ISSUER_CERT_FILE),
        secret_data(&identity, ISSUER_KEY_FILE),
    ) else {
        r.check(
            false,
            &format!("Secret {ns}/{IDENTITY_SECRET} has {ANCHORS_FILE}, {ISSUER_CERT_FILE} and {ISSUER_KEY_FILE}"),
            fix_identity,
        );
        return None;
    };
    let origin =
        |key: &str| std::path::PathBuf::from(format!("Secret {ns}/{IDENTITY_SECRET} {key}"));
    let issuer = TrustAnchors::from_pem(&anchors, &origin(ANCHORS_FILE)).and_then(|parsed| {
        Issuer::from_pem(
            &cert,
            &origin(ISSUER_CERT_FILE),
            &key,
            &origin(ISSUER_KEY_FILE),
            &parsed,
        )
    });
    match issuer {
        Ok(issuer) => {
            let enough = issuer
                .not_after()
                .duration_since(std::time::SystemTime::now())
                .is_ok_and(|left| left >= MIN_VALIDITY);
            r.check(
                enough,
                &format!(
                    "the issuer {} chains to the trust anchors, valid {}",
                    issuer.subject(),
                    days_left(issuer.not_after())
                ),
                "renew it: the operator does after two thirds of its life; without it, weft identity rotate-issuer (docs/identity.md)",
            );
        }
        Err(e) => r.check(false, &format!("the issuer: {e}"), fix_identity),
    }
    match api.get_opt(INJECTOR_TLS_SECRET).await {
        Ok(Some(tls)) => {
            let what = format!("Secret {ns}/{INJECTOR_TLS_SECRET}");
            match secret_data(&tls, "tls.crt")
                .ok_or_else(|| format!("{what} has no tls.crt"))
                .and_then(|pem| {
                    weft_controller::identity::pem_not_after(&pem, std::path::Path::new(&what))
                        .map_err(|e| e.to_string())
                }) {
                Ok(not_after) => r.check(
                    not_after
                        .duration_since(std::time::SystemTime::now())
                        .is_ok_and(|left| left >= MIN_VALIDITY),
                    &format!("the injector's certificate valid {}", days_left(not_after)),
                    "the operator renews it; without it, replace the Secret (the injector reloads it)",
                ),
                Err(e) => r.check(false, &format!("the injector's certificate: {e}"), "replace the Secret"),
            }
        }
        Ok(None) => r.check(
            false,
            &format!("Secret {ns}/{INJECTOR_TLS_SECRET} present"),
            "the operator makes it; without it, kubectl create secret tls weft-injector-tls (docs/kubernetes.md)",
        ),
        Err(e) => println!("  note  Secret {ns}/{INJECTOR_TLS_SECRET}: not readable ({e})"),
    }
    Some(String::from_utf8_lossy(&anchors).into_owned())
}

/// The meshed pods (annotated `weft.io/injected`): their proxies trust the control
/// plane's anchors (`WEFT_TRUST_ANCHORS_PEM`), else they cannot verify the controller
/// nor their peers after a rotation.
async fn check_proxies(r: &mut Report, client: &Client, anchors: &str) {
    let api: Api<Pod> = Api::all(client.clone());
    let pods = match api.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            println!("  note  meshed pods: not listable ({e}); skipped");
            return;
        }
    };
    let mut meshed = 0;
    let mut stale = Vec::new();
    for pod in &pods {
        let injected = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
        if !injected {
            continue;
        }
        meshed += 1;
        let trusted = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
            })
            .filter(|c| c.name == PROXY_CONTAINER)
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == "WEFT_TRUST_ANCHORS_PEM")
            .and_then(|e| e.value.as_deref());
        if trusted.map(str::trim) != Some(anchors.trim()) {
            stale.push(format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    if meshed == 0 {
        println!("  note  no meshed pods (none annotated {INJECTED_ANNOTATION})");
        return;
    }
    let shown: Vec<&str> = stale.iter().take(5).map(String::as_str).collect();
    r.check(
        stale.is_empty(),
        &if stale.is_empty() {
            format!("{meshed} meshed pods' proxies trust the control plane's anchors")
        } else {
            format!(
                "{} of {meshed} meshed pods' proxies trust other anchors: {}{}",
                stale.len(),
                shown.join(", "),
                if stale.len() > shown.len() { ", ..." } else { "" }
            )
        },
        "restart them (kubectl rollout restart, or a DataPlane): the injector gives new pods the current anchors",
    );
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

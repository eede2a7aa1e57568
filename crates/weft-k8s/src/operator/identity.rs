//! The control plane's identity Secrets, kept by the operator:
//!
//! - `weft-trust-anchor` (`kubernetes.io/tls`): the trust anchor the operator made when
//!   the `ControlPlane` names none, with its key, to sign issuers with;
//! - `weft-identity`: `trust-anchors.pem`, `issuer.crt` and `issuer.key`, as the
//!   controller reads them (`--identity-dir`). An issuer the operator signed is renewed
//!   after two thirds of its life; one given in `trustAnchor.issuerSecret` is copied;
//! - `weft-injector-tls` (`kubernetes.io/tls`): the injector's serving certificate for
//!   `weft-injector.<namespace>.svc`, signed by the issuer (the webhook's `caBundle` is
//!   the trust anchors), renewed likewise and whenever the issuer changes.
//!
//! Private keys stay in Secrets of the control plane's namespace: the operator reads
//! and writes them through the API and never logs them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::{Api, Client};
use weft_controller::identity::{
    self as ca, Issuer, TrustAnchors, ANCHORS_FILE, ANCHOR_LIFETIME, ISSUER_CERT_FILE,
    ISSUER_KEY_FILE, ISSUER_LIFETIME,
};

use super::OperatorError;
use crate::crd::operator::TrustAnchorRef;
use crate::install::{Manifest, IDENTITY_SECRET, INJECTOR, INJECTOR_TLS_SECRET};

/// The Secret holding the trust anchor the operator made.
pub const ANCHOR_SECRET: &str = "weft-trust-anchor";
/// When the operator replaces a certificate it signed (RFC 3339).
pub const RENEW_AFTER: &str = "operator.weft.io/renew-after";
/// Lifetime of the injector's serving certificate.
pub const INJECTOR_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// What the identity step decided.
pub(crate) struct Identity {
    /// The trust anchors (PEM): the controller's bundle and the webhook's `caBundle`.
    pub anchors_pem: String,
    /// The Secrets to apply.
    pub secrets: Vec<Manifest>,
    /// What changed, for the log.
    pub changes: Vec<&'static str>,
}

fn data(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
}

fn renew_after(secret: &Secret) -> Option<SystemTime> {
    let text = secret.metadata.annotations.as_ref()?.get(RENEW_AFTER)?;
    humantime::parse_rfc3339(text).ok()
}

/// Two thirds of the way from now to `not_after`.
fn renewal(not_after: SystemTime) -> String {
    let now = SystemTime::now();
    let left = not_after.duration_since(now).unwrap_or_default();
    humantime::format_rfc3339_seconds(now + left * 2 / 3).to_string()
}

fn due(secret: &Secret) -> bool {
    renew_after(secret).is_none_or(|t| t <= SystemTime::now())
}

fn secret_manifest(
    name: &str,
    namespace: &str,
    type_: Option<&str>,
    entries: &[(&str, &[u8])],
    renew: Option<String>,
) -> Result<Manifest, OperatorError> {
    let mut labels = BTreeMap::from([(
        crate::crd::PART_OF.0.to_owned(),
        crate::crd::PART_OF.1.to_owned(),
    )]);
    labels.insert("app.kubernetes.io/name".to_owned(), name.to_owned());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: renew.map(|t| BTreeMap::from([(RENEW_AFTER.to_owned(), t)])),
            ..Default::default()
        },
        type_: type_.map(str::to_owned),
        data: Some(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    Manifest::of(&secret).map_err(|e| OperatorError::Identity(e.to_string()))
}

async fn get_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, OperatorError> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(OperatorError::kube(format!(
            "reading Secret {namespace}/{name}"
        )))
}

fn identity_error(e: ca::CaError) -> OperatorError {
    OperatorError::Identity(e.to_string())
}

/// The trust anchors' PEM and, when at hand, the anchor's key.
async fn trust_anchor(
    client: &Client,
    given: Option<&TrustAnchorRef>,
    namespace: &str,
    trust_domain: &str,
    secrets: &mut Vec<Manifest>,
    changes: &mut Vec<&'static str>,
) -> Result<(String, Option<String>), OperatorError> {
    let Some(given) = given else {
        if let Some(secret) = get_secret(client, namespace, ANCHOR_SECRET).await? {
            if let (Some(cert), Some(key)) = (data(&secret, "tls.crt"), data(&secret, "tls.key")) {
                let origin = format!("Secret {namespace}/{ANCHOR_SECRET} tls.crt");
                TrustAnchors::from_pem(&cert, Path::new(&origin)).map_err(identity_error)?;
                let cert = String::from_utf8_lossy(&cert).into_owned();
                let key = String::from_utf8_lossy(&key).into_owned();
                secrets.push(secret_manifest(
                    ANCHOR_SECRET,
                    namespace,
                    Some("kubernetes.io/tls"),
                    &[("tls.crt", cert.as_bytes()), ("tls.key", key.as_bytes())],
                    None,
                )?);
                return Ok((cert, Some(key)));
            }
        }
        let anchor =
            ca::make_trust_anchor(trust_domain, ANCHOR_LIFETIME).map_err(identity_error)?;
        changes.push("made a trust anchor");
        secrets.push(secret_manifest(
            ANCHOR_SECRET,
            namespace,
            Some("kubernetes.io/tls"),
            &[
                ("tls.crt", anchor.cert_pem.as_bytes()),
                ("tls.key", anchor.key_pem.as_bytes()),
            ],
            None,
        )?);
        return Ok((anchor.cert_pem, Some(anchor.key_pem)));
    };
    let (pem, key, origin) = match (&given.secret, &given.config_map) {
        (Some(r), _) => {
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            let key = r.key.as_deref().unwrap_or("ca.crt");
            let secret = get_secret(client, ns, &r.name).await?.ok_or_else(|| {
                OperatorError::Input(format!(
                    "spec.trustAnchor.secret: Secret {ns}/{} does not exist",
                    r.name
                ))
            })?;
            let pem = data(&secret, key).ok_or_else(|| {
                OperatorError::Input(format!(
                    "spec.trustAnchor.secret: Secret {ns}/{} has no key {key:?}",
                    r.name
                ))
            })?;
            let anchor_key =
                data(&secret, "tls.key").map(|k| String::from_utf8_lossy(&k).into_owned());
            (pem, anchor_key, format!("Secret {ns}/{} {key}", r.name))
        }
        (None, Some(r)) => {
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            let key = r.key.as_deref().unwrap_or("ca-bundle.crt");
            let map = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await
                .map_err(OperatorError::kube(format!(
                    "reading ConfigMap {ns}/{}",
                    r.name
                )))?
                .ok_or_else(|| {
                    OperatorError::Input(format!(
                        "spec.trustAnchor.configMap: ConfigMap {ns}/{} does not exist",
                        r.name
                    ))
                })?;
            let pem = map
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
                .ok_or_else(|| {
                    OperatorError::Input(format!(
                        "spec.trustAnchor.configMap: ConfigMap {ns}/{} has no key {key:?}",
                        r.name
                    ))
                })?;
            (
                pem.into_bytes(),
                None,
                format!("ConfigMap {ns}/{} {key}", r.name),
            )
        }
        (None, None) => {
            return Err(OperatorError::Input(
                "spec.trustAnchor: give a secret or a configMap".into(),
            ))
        }
    };
    TrustAnchors::from_pem(&pem, Path::new(&origin)).map_err(identity_error)?;
    Ok((String::from_utf8_lossy(&pem).into_owned(), key))
}

/// Decides the identity Secrets of a control plane in `namespace`.
pub(crate) async fn identity(
    client: &Client,
    given: Option<&TrustAnchorRef>,
    namespace: &str,
    trust_domain: &str,
) -> Result<Identity, OperatorError> {
    let mut secrets = Vec::new();
    let mut changes = Vec::new();
    let (anchors_pem, anchor_key) = trust_anchor(
        client,
        given,
        namespace,
        trust_domain,
        &mut secrets,
        &mut changes,
    )
    .await?;
    let anchors = TrustAnchors::from_pem(anchors_pem.as_bytes(), Path::new("the trust anchors"))
        .map_err(identity_error)?;

    // The issuer: given, kept, or signed now.
    let existing = get_secret(client, namespace, IDENTITY_SECRET).await?;
    let (issuer_cert, issuer_key, renew) = match given.and_then(|g| g.issuer_secret.as_deref()) {
        Some(name) => {
            let secret = get_secret(client, namespace, name).await?.ok_or_else(|| {
                OperatorError::Input(format!(
                    "spec.trustAnchor.issuerSecret: Secret {namespace}/{name} does not exist"
                ))
            })?;
            let (Some(cert), Some(key)) = (data(&secret, "tls.crt"), data(&secret, "tls.key"))
            else {
                return Err(OperatorError::Input(format!(
                        "spec.trustAnchor.issuerSecret: Secret {namespace}/{name} needs tls.crt and tls.key"
                    )));
            };
            let origin = format!("Secret {namespace}/{name}");
            Issuer::from_pem(
                &cert,
                Path::new(&format!("{origin} tls.crt")),
                &key,
                Path::new(&format!("{origin} tls.key")),
                &anchors,
            )
            .map_err(identity_error)?;
            (cert, key, None)
        }
        None => {
            let kept = existing.as_ref().filter(|s| !due(s)).and_then(|s| {
                let same_anchors = data(s, ANCHORS_FILE)? == anchors_pem.as_bytes();
                let cert = data(s, ISSUER_CERT_FILE)?;
                let key = data(s, ISSUER_KEY_FILE)?;
                let valid = Issuer::from_pem(
                    &cert,
                    Path::new(ISSUER_CERT_FILE),
                    &key,
                    Path::new(ISSUER_KEY_FILE),
                    &anchors,
                )
                .is_ok();
                (same_anchors && valid).then(|| {
                    let renew = s.metadata.annotations.as_ref()?.get(RENEW_AFTER).cloned();
                    Some((cert, key, renew))
                })?
            });
            match kept {
                Some(kept) => kept,
                None => {
                    let Some(anchor_key) = &anchor_key else {
                        return Err(OperatorError::Input(
                                "spec.trustAnchor: the anchor comes without its key (tls.key in its Secret), so the operator cannot sign an issuer; give spec.trustAnchor.issuerSecret, a kubernetes.io/tls Secret with an issuer the anchor signed".into(),
                            ));
                    };
                    let origin = Path::new("the trust anchor");
                    let issuer = ca::sign_issuer(
                        anchors_pem.as_bytes(),
                        origin,
                        anchor_key,
                        origin,
                        None,
                        ISSUER_LIFETIME,
                    )
                    .map_err(identity_error)?;
                    changes.push("signed an issuer");
                    (
                        issuer.cert_pem.into_bytes(),
                        issuer.key_pem.into_bytes(),
                        Some(renewal(issuer.not_after)),
                    )
                }
            }
        }
    };
    secrets.push(secret_manifest(
        IDENTITY_SECRET,
        namespace,
        None,
        &[
            (ANCHORS_FILE, anchors_pem.as_bytes()),
            (ISSUER_CERT_FILE, &issuer_cert),
            (ISSUER_KEY_FILE, &issuer_key),
        ],
        renew,
    )?);

    // The injector's serving certificate, signed by the issuer.
    let names = vec![
        format!("{INJECTOR}.{namespace}.svc"),
        format!("{INJECTOR}.{namespace}.svc.cluster.local"),
    ];
    let current = get_secret(client, namespace, INJECTOR_TLS_SECRET).await?;
    let kept = current.as_ref().filter(|s| !due(s)).and_then(|s| {
        let same_issuer = data(s, "ca.crt")? == issuer_cert;
        let cert = data(s, "tls.crt")?;
        let key = data(s, "tls.key")?;
        let renew = s.metadata.annotations.as_ref()?.get(RENEW_AFTER).cloned();
        same_issuer.then_some((cert, key, renew))
    });
    let (tls_cert, tls_key, tls_renew) = match kept {
        Some((cert, key, renew)) => (cert, key, renew),
        None => {
            let server = ca::sign_server(
                &String::from_utf8_lossy(&issuer_cert),
                &String::from_utf8_lossy(&issuer_key),
                Path::new("the issuer"),
                &names,
                INJECTOR_CERT_LIFETIME,
            )
            .map_err(identity_error)?;
            changes.push("signed the injector's certificate");
            (
                server.cert_pem.into_bytes(),
                server.key_pem.into_bytes(),
                Some(renewal(server.not_after)),
            )
        }
    };
    secrets.push(secret_manifest(
        INJECTOR_TLS_SECRET,
        namespace,
        Some("kubernetes.io/tls"),
        &[
            ("tls.crt", &tls_cert),
            ("tls.key", &tls_key),
            ("ca.crt", &issuer_cert),
        ],
        tls_renew,
    )?);
    Ok(Identity {
        anchors_pem,
        secrets,
        changes,
    })
}

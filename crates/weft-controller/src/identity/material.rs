//! The CA's material in memory, for whoever keeps it somewhere other than files (the
//! Kubernetes operator keeps it in Secrets): a fresh trust anchor, an issuer signed by
//! an anchor whose key is at hand, and a TLS server certificate signed by the issuer
//! (the sidecar injector's). [`super::init`] and [`super::rotate_issuer`] write the same
//! material to files.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::ca::*;

/// A certificate (PEM; a chain for a server certificate) and its private key (PKCS#8
/// PEM).
#[derive(Clone)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's subject (`CN=...`).
    pub subject: String,
    /// The certificate's end (whole seconds).
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Material")
            .field("subject", &self.subject)
            .field("not_after", &rfc3339(self.not_after))
            .finish()
    }
}

/// A fresh self-signed trust anchor for `trust_domain` (ECDSA P-256).
pub fn make_trust_anchor(trust_domain: &str, lifetime: Duration) -> Result<Material, CaError> {
    weft_core::identity::Identity::new("weft", "weft", trust_domain)?;
    let (anchor, key_pem, not_after) = make_anchor(trust_domain, SystemTime::now(), lifetime)?;
    Ok(Material {
        cert_pem: anchor.pem(),
        key_pem,
        subject: format!("CN={}", anchor_cn(trust_domain)),
        not_after: truncate_to_seconds(not_after),
    })
}

/// A new issuer (fresh key) signed by the trust anchor `anchor_pem` (one certificate)
/// with its key `anchor_key_pem`, valid for `lifetime` but never past the anchor's end.
/// Checks that the anchor is valid now and that the key is the anchor's. The trust
/// domain is read from the anchor's subject (`CN=root.identity.weft.TD`) unless given.
/// `origin` and `key_origin` name the anchor and its key in errors.
pub fn sign_issuer(
    anchor_pem: &[u8],
    origin: &Path,
    anchor_key_pem: &str,
    key_origin: &Path,
    trust_domain: Option<&str>,
    lifetime: Duration,
) -> Result<Material, CaError> {
    let anchor = TrustAnchors::from_pem(anchor_pem, origin)?;
    if anchor.len() != 1 {
        return Err(invalid(
            origin,
            format!(
                "holds {} certificates; name the one trust anchor whose key is given",
                anchor.len()
            ),
        ));
    }
    let record = &anchor.anchors[0];
    if record.expired {
        return Err(invalid(
            origin,
            format!(
                "the trust anchor {} is not valid now (it ends {}); make a new one (weft identity new-anchor)",
                record.subject,
                rfc3339(record.not_after)
            ),
        ));
    }
    let key = KeyPair::from_pem(anchor_key_pem).map_err(|e| {
        invalid(
            key_origin,
            format!("is not a PEM private key weft can use (PKCS#8 expected): {e}"),
        )
    })?;
    let (_, parsed) = X509Certificate::from_der(&record.der)
        .map_err(|e| invalid(origin, format!("does not parse as X.509: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(invalid(
            key_origin,
            format!(
                "this key does not belong to the trust anchor {} in {} (the public keys differ)",
                record.subject,
                origin.display()
            ),
        ));
    }
    let trust_domain = match trust_domain {
        Some(td) => td.to_owned(),
        None => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .and_then(|cn| cn.strip_prefix("root.identity.weft."))
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid(
                    origin,
                    format!(
                        "the trust domain cannot be read from the anchor's subject {} (CN=root.identity.weft.TD expected); name it",
                        record.subject
                    ),
                )
            })?,
    };
    weft_core::identity::Identity::new("weft", "weft", &trust_domain)?;
    let signer = rcgen::Issuer::from_ca_cert_der(&record.der, key)
        .map_err(|e| invalid(origin, format!("unusable as an issuer: {e}")))?;
    let now = SystemTime::now();
    let not_after = (now + lifetime).min(record.not_after);
    let (cert_pem, key_pem) = make_issuer(&signer, &trust_domain, now, not_after)?;
    // What the controller will check, checked here first.
    Issuer::from_pem(
        cert_pem.as_bytes(),
        origin,
        key_pem.as_bytes(),
        origin,
        &anchor,
    )?;
    Ok(Material {
        cert_pem,
        key_pem,
        subject: format!("CN={}", issuer_cn(&trust_domain)),
        not_after: truncate_to_seconds(not_after),
    })
}

/// A TLS server certificate for `dns_names` (the first is the subject's CN), signed by
/// the issuer `issuer_pem` with its key `issuer_key_pem`, valid for `lifetime` but never
/// past the issuer's end. The certificate PEM is the chain: the server's certificate,
/// then the issuer's, so a client trusting the anchor verifies it.
pub fn sign_server(
    issuer_pem: &str,
    issuer_key_pem: &str,
    origin: &Path,
    dns_names: &[String],
    lifetime: Duration,
) -> Result<Material, CaError> {
    let Some(first) = dns_names.first() else {
        return Err(invalid(origin, "no DNS name to certify"));
    };
    let issuer_der = CertificateDer::from_pem_slice(issuer_pem.as_bytes()).map_err(|e| {
        invalid(
            origin,
            format!("holds no PEM certificate (expected -----BEGIN CERTIFICATE-----): {e}"),
        )
    })?;
    let (_, parsed) = X509Certificate::from_der(&issuer_der)
        .map_err(|e| invalid(origin, format!("does not parse as X.509: {e}")))?;
    let (_, issuer_not_after) = validity(&parsed);
    let key = KeyPair::from_pem(issuer_key_pem).map_err(|e| {
        invalid(
            origin,
            format!(
                "the issuer's key is not a PEM private key weft can use (PKCS#8 expected): {e}"
            ),
        )
    })?;
    let signer = rcgen::Issuer::from_ca_cert_der(&issuer_der, key)
        .map_err(|e| invalid(origin, format!("unusable as an issuer: {e}")))?;
    let now = SystemTime::now();
    let not_after = (now + lifetime).min(issuer_not_after);
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(first);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.subject_alt_names = dns_names
        .iter()
        .map(|name| {
            name.as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| invalid(origin, format!("{name:?} is not a DNS name: {e}")))
        })
        .collect::<Result<_, _>>()?;
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    let key = generate("server key")?;
    let key_pem = key.serialize_pem();
    let cert = params
        .signed_by(&key, &signer)
        .map_err(|source| CaError::Generate {
            what: "server certificate",
            source,
        })?;
    let issuer_block = pem_block(&issuer_der);
    Ok(Material {
        cert_pem: format!("{}{issuer_block}", cert.pem()),
        key_pem,
        subject: format!("CN={first}"),
        not_after: truncate_to_seconds(not_after),
    })
}

/// The end of the first certificate in `pem`; `origin` names it in errors.
pub fn pem_not_after(pem: &[u8], origin: &Path) -> Result<SystemTime, CaError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| {
        invalid(
            origin,
            format!("holds no PEM certificate (expected -----BEGIN CERTIFICATE-----): {e}"),
        )
    })?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| invalid(origin, format!("does not parse as X.509: {e}")))?;
    Ok(validity(&cert).1)
}

fn pem_block(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    #[test]
    fn an_anchor_signs_an_issuer_which_signs_a_server_certificate() {
        let anchor = make_trust_anchor("cluster.local", ANCHOR_LIFETIME).unwrap();
        let origin = Path::new("test anchor");
        let issuer = sign_issuer(
            anchor.cert_pem.as_bytes(),
            origin,
            &anchor.key_pem,
            origin,
            None,
            ISSUER_LIFETIME,
        )
        .unwrap();
        assert_eq!(issuer.subject, "CN=identity.weft.cluster.local");
        assert!(issuer.not_after <= anchor.not_after);
        let names = vec!["weft-injector.weft-system.svc".to_owned()];
        let server = sign_server(
            &issuer.cert_pem,
            &issuer.key_pem,
            origin,
            &names,
            Duration::from_secs(3600),
        )
        .unwrap();
        // The chain: the server's certificate, then the issuer's.
        let chain: Vec<_> = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(chain.len(), 2);
        let issuer_der = CertificateDer::from_pem_slice(issuer.cert_pem.as_bytes()).unwrap();
        assert_eq!(chain[1], issuer_der);
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        assert!(!leaf.is_ca());
        assert_eq!(
            pem_not_after(server.cert_pem.as_bytes(), origin).unwrap(),
            server.not_after
        );
        // A TLS client trusting the anchor accepts the chain for the name.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(anchor.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from(names[0].clone()).unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
    }

    #[test]
    fn another_anchors_key_is_refused() {
        let a = make_trust_anchor("cluster.local", ANCHOR_LIFETIME).unwrap();
        let b = make_trust_anchor("cluster.local", ANCHOR_LIFETIME).unwrap();
        let err = sign_issuer(
            a.cert_pem.as_bytes(),
            Path::new("secret weft-system/anchor ca.crt"),
            &b.key_pem,
            Path::new("secret weft-system/anchor tls.key"),
            None,
            ISSUER_LIFETIME,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("secret weft-system/anchor tls.key") && err.contains("does not belong"),
            "{err}"
        );
        let err = sign_server(
            &a.cert_pem,
            &a.key_pem,
            Path::new("x"),
            &[],
            ISSUER_LIFETIME,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no DNS name"), "{err}");
    }
}

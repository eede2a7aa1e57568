//! Rotations: a new trust anchor beside the old one, and a new issuer signed by an
//! anchor of the bundle, each written atomically with the old material kept until the
//! new one is in use everywhere.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::ca::*;

/// What [`new_anchor`] wrote.
#[derive(Clone, Debug)]
pub struct NewAnchor {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub subject: String,
    pub not_after: SystemTime,
}

/// Makes a new trust anchor (for an anchor rotation): its certificate at `cert_out`
/// (PEM, 0644) and its private key at `key_out` (PKCS#8 PEM, 0600). Refuses to replace
/// either unless `force`.
pub fn new_anchor(
    cert_out: &Path,
    key_out: &Path,
    trust_domain: &str,
    lifetime: Duration,
    force: bool,
) -> Result<NewAnchor, CaError> {
    weft_core::identity::Identity::new("weft", "weft", trust_domain)?;
    if !force {
        for path in [cert_out, key_out] {
            if path.exists() {
                return Err(CaError::Exists {
                    path: path.to_owned(),
                });
            }
        }
    }
    let now = SystemTime::now();
    let (anchor, key_pem, not_after) = make_anchor(trust_domain, now, lifetime)?;
    create_parent(key_out)?;
    create_parent(cert_out)?;
    write_file(key_out, key_pem.as_bytes(), 0o600)?;
    write_file(cert_out, anchor.pem().as_bytes(), 0o644)?;
    Ok(NewAnchor {
        cert: cert_out.to_owned(),
        key: key_out.to_owned(),
        subject: format!("CN={}", anchor_cn(trust_domain)),
        not_after: truncate_to_seconds(not_after),
    })
}

/// What [`rotate_issuer`] does.
#[derive(Clone, Debug)]
pub struct RotateOptions {
    /// The trust anchor to sign with (PEM, one certificate).
    pub anchor_cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub anchor_key: PathBuf,
    /// The controller's identity directory: `issuer.crt` and `issuer.key` are replaced
    /// there; `trust-anchors.pem` is written if missing and must otherwise hold the
    /// anchor.
    pub out_dir: PathBuf,
    pub lifetime: Duration,
    /// The trust domain (in the issuer's subject); `None` takes it from the anchor's
    /// subject (`CN=root.identity.weft.{td}`).
    pub trust_domain: Option<String>,
}

impl RotateOptions {
    pub fn new(anchor_cert: &Path, anchor_key: &Path, out_dir: &Path) -> RotateOptions {
        RotateOptions {
            anchor_cert: anchor_cert.to_owned(),
            anchor_key: anchor_key.to_owned(),
            out_dir: out_dir.to_owned(),
            lifetime: ISSUER_LIFETIME,
            trust_domain: None,
        }
    }
}

/// What [`rotate_issuer`] wrote.
#[derive(Clone, Debug)]
pub struct Rotated {
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    pub issuer_subject: String,
    pub issuer_not_after: SystemTime,
    pub anchor_subject: String,
    /// `trust-anchors.pem`, when it was missing and written with the anchor.
    pub anchors_written: Option<PathBuf>,
}

/// Issues a new issuer (new key pair) signed by the trust anchor `anchor_cert` /
/// `anchor_key` and replaces `issuer.crt` and `issuer.key` in `out_dir`, each through a
/// temporary file and a rename, so a running controller picks them up. Checks first
/// that the key belongs to the anchor and that the controller's `trust-anchors.pem`
/// (if present) holds the anchor: otherwise the controller would refuse the new issuer.
pub fn rotate_issuer(options: &RotateOptions) -> Result<Rotated, CaError> {
    let cert_path = &options.anchor_cert;
    let key_path = &options.anchor_key;
    let anchor = TrustAnchors::load(cert_path)?;
    if anchor.len() != 1 {
        return Err(invalid(
            cert_path,
            format!(
                "holds {} certificates; name the one trust anchor whose key is {}",
                anchor.len(),
                key_path.display()
            ),
        ));
    }
    let record = &anchor.anchors[0];
    if record.expired {
        return Err(invalid(
            cert_path,
            format!(
                "the trust anchor {} is not valid now (it ends {}); make a new one (weft identity new-anchor)",
                record.subject,
                rfc3339(record.not_after)
            ),
        ));
    }
    let key_text = String::from_utf8(read(key_path)?)
        .map_err(|_| invalid(key_path, "is not a PEM file (not text)"))?;
    let key = KeyPair::from_pem(&key_text).map_err(|e| {
        invalid(
            key_path,
            format!("is not a PEM private key weft can use (PKCS#8 expected): {e}"),
        )
    })?;
    let (_, parsed) = X509Certificate::from_der(&record.der)
        .map_err(|e| invalid(cert_path, format!("does not parse as X.509: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(invalid(
            key_path,
            format!(
                "this key does not belong to the trust anchor {} in {} (the public keys differ)",
                record.subject,
                cert_path.display()
            ),
        ));
    }
    let trust_domain = match &options.trust_domain {
        Some(td) => td.clone(),
        None => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .and_then(|cn| cn.strip_prefix("root.identity.weft."))
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid(
                    cert_path,
                    format!(
                        "the trust domain cannot be read from the anchor's subject {} (CN=root.identity.weft.TD expected); name it",
                        record.subject
                    ),
                )
            })?,
    };
    weft_core::identity::Identity::new("weft", "weft", &trust_domain)?;
    let anchor_not_after = record.not_after;
    let signer = rcgen::Issuer::from_ca_cert_der(&record.der, key)
        .map_err(|e| invalid(cert_path, format!("unusable as an issuer: {e}")))?;

    let dir = &options.out_dir;
    let anchors_path = dir.join(ANCHORS_FILE);
    let anchors_written = if anchors_path.exists() {
        let bundle = TrustAnchors::load(&anchors_path)?;
        if !bundle.certificates().any(|c| *c == record.der) {
            return Err(invalid(
                &anchors_path,
                format!(
                    "does not hold the trust anchor {} of {}: the controller would refuse an issuer it signs. Add the anchor to the bundle first (and give the bundle to every proxy), then rotate the issuer",
                    record.subject,
                    cert_path.display()
                ),
            ));
        }
        None
    } else {
        Some(anchors_path.clone())
    };

    let now = SystemTime::now();
    let not_after = (now + options.lifetime).min(anchor_not_after);
    let (issuer_pem, key_pem) = make_issuer(&signer, &trust_domain, now, not_after)?;
    // What the controller will check, checked here first.
    let issuer_cert = dir.join(ISSUER_CERT_FILE);
    let issuer_key = dir.join(ISSUER_KEY_FILE);
    Issuer::from_pem(
        issuer_pem.as_bytes(),
        &issuer_cert,
        key_pem.as_bytes(),
        &issuer_key,
        &anchor,
    )?;
    fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_owned(),
        source,
    })?;
    if let Some(path) = &anchors_written {
        write_file(path, anchor.pem().as_bytes(), 0o644)?;
    }
    // The key first: a controller that reads the pair between the two renames sees a
    // key that does not match its certificate, and waits for the pair to settle.
    write_file(&issuer_key, key_pem.as_bytes(), 0o600)?;
    write_file(&issuer_cert, issuer_pem.as_bytes(), 0o644)?;
    Ok(Rotated {
        issuer_cert,
        issuer_key,
        issuer_subject: format!("CN={}", issuer_cn(&trust_domain)),
        issuer_not_after: truncate_to_seconds(not_after),
        anchor_subject: record.subject.clone(),
        anchors_written,
    })
}

/// The subject and end of the certificate in a PEM file (the first one): what `weft
/// check` reports of a running mesh's issuer.
pub fn certificate_expiry(path: &Path) -> Result<(String, SystemTime), CaError> {
    let pem = read(path)?;
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| {
        invalid(
            path,
            format!("holds no PEM certificate (expected -----BEGIN CERTIFICATE-----): {e}"),
        )
    })?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| invalid(path, format!("does not parse as X.509: {e}")))?;
    let (_, not_after) = validity(&cert);
    Ok((cert.subject().to_string(), not_after))
}

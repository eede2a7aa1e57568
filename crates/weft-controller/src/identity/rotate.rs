//! Rotations: a new trust anchor beside the old one, and a new issuer signed by an
//! anchor of the bundle, each written atomically with the old material kept until the
//! new one is in use everywhere.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::ca::*;
use super::material::sign_issuer;

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
    let anchor_pem = read(cert_path)?;
    let key_text = String::from_utf8(read(key_path)?)
        .map_err(|_| invalid(key_path, "is not a PEM file (not text)"))?;
    let issuer = sign_issuer(
        &anchor_pem,
        cert_path,
        &key_text,
        key_path,
        options.trust_domain.as_deref(),
        options.lifetime,
    )?;
    let anchor = TrustAnchors::from_pem(&anchor_pem, cert_path)?;
    let record = &anchor.anchors[0];

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

    let issuer_cert = dir.join(ISSUER_CERT_FILE);
    let issuer_key = dir.join(ISSUER_KEY_FILE);
    fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_owned(),
        source,
    })?;
    if let Some(path) = &anchors_written {
        write_file(path, anchor.pem().as_bytes(), 0o644)?;
    }
    // The key first: a controller that reads the pair between the two renames sees a
    // key that does not match its certificate, and waits for the pair to settle.
    write_file(&issuer_key, issuer.key_pem.as_bytes(), 0o600)?;
    write_file(&issuer_cert, issuer.cert_pem.as_bytes(), 0o644)?;
    Ok(Rotated {
        issuer_cert,
        issuer_key,
        issuer_subject: issuer.subject,
        issuer_not_after: issuer.not_after,
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

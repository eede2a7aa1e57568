//! The certificate authority's material: trust anchors (self-signed roots, a PEM bundle
//! that may hold several during a rotation) and the issuer (an intermediate CA signed
//! by one of them, with its ECDSA P-256 key), loaded from files and checked, or made
//! fresh by [`init`].

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

/// File names inside the identity directory.
pub const ANCHORS_FILE: &str = "trust-anchors.pem";
pub const ISSUER_CERT_FILE: &str = "issuer.crt";
pub const ISSUER_KEY_FILE: &str = "issuer.key";

/// Lifetime of a trust anchor made by [`init`]: one year. Proxies carry the anchor, so
/// replacing it is a rotation (a bundle with both anchors while proxies switch).
pub const ANCHOR_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of an issuer made by [`init`] or [`rotate_issuer`]: 90 days (never past the
/// anchor's end). Only the controller holds it; [`rotate_issuer`] replaces its files and
/// the running controller picks them up.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// How far back `not_before` is set, for clocks that lag a little.
pub(crate) const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path} already exists; refusing to overwrite it (force replaces the trust anchor and issuer)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid trust domain: {0}")]
    TrustDomain(#[from] weft_core::identity::IdentityError),
    #[error("cannot make the {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
}

pub(super) fn invalid(path: &Path, problem: impl Into<String>) -> CaError {
    CaError::Invalid {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn unix(t: i64) -> SystemTime {
    if t >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
    }
}

/// A certificate's validity window.
pub(super) fn validity(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let v = cert.validity();
    (
        unix(v.not_before.timestamp()),
        unix(v.not_after.timestamp()),
    )
}

/// Why a certificate is not valid at `now`, if it is not.
pub(super) fn outside_validity(cert: &X509Certificate<'_>, now: SystemTime) -> Option<String> {
    let (not_before, not_after) = validity(cert);
    if now < not_before {
        Some(format!("is not valid before {}", rfc3339(not_before)))
    } else if now > not_after {
        Some(format!("expired at {}", rfc3339(not_after)))
    } else {
        None
    }
}

/// A random positive 128-bit serial number.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

pub(super) struct Anchor {
    pub(super) der: CertificateDer<'static>,
    pub(super) subject: String,
    pub(super) not_after: SystemTime,
    pub(super) expired: bool,
}

/// The trust anchors: every identity in the mesh chains to one of them.
pub struct TrustAnchors {
    path: PathBuf,
    pub(super) anchors: Vec<Anchor>,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("path", &self.path)
            .field(
                "subjects",
                &self.anchors.iter().map(|a| &a.subject).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TrustAnchors {
    /// Reads a PEM bundle of one or more self-signed CA certificates. Expired anchors
    /// are kept (and logged) so a bundle that still lists a retired anchor loads; the
    /// issuer must chain to an unexpired one.
    pub fn load(path: &Path) -> Result<TrustAnchors, CaError> {
        Self::from_pem(&read(path)?, path)
    }

    /// Parses a PEM bundle; `origin` names it in errors.
    pub fn from_pem(pem: &[u8], origin: &Path) -> Result<TrustAnchors, CaError> {
        let now = SystemTime::now();
        let mut anchors = Vec::new();
        for (i, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let n = i + 1;
            let der = der
                .map_err(|e| invalid(origin, format!("certificate #{n} is not valid PEM: {e}")))?;
            let (rest, cert) = X509Certificate::from_der(&der).map_err(|e| {
                invalid(
                    origin,
                    format!("certificate #{n} does not parse as X.509: {e}"),
                )
            })?;
            if !rest.is_empty() {
                return Err(invalid(
                    origin,
                    format!("certificate #{n} has trailing bytes after its DER"),
                ));
            }
            let subject = cert.subject().to_string();
            if !cert.is_ca() {
                return Err(invalid(
                    origin,
                    format!("certificate #{n} ({subject}) is not a CA certificate (basicConstraints CA:TRUE missing)"),
                ));
            }
            if cert.subject().as_raw() != cert.issuer().as_raw()
                || cert.verify_signature(None).is_err()
            {
                return Err(invalid(
                    origin,
                    format!("certificate #{n} ({subject}) is not self-signed; a trust anchor must be a root certificate"),
                ));
            }
            let (_, not_after) = validity(&cert);
            let expired = match outside_validity(&cert, now) {
                Some(why) => {
                    tracing::warn!(path = %origin.display(), anchor = %subject, "trust anchor #{n} {why}");
                    true
                }
                None => false,
            };
            anchors.push(Anchor {
                der: der.into_owned(),
                subject,
                not_after,
                expired,
            });
        }
        if anchors.is_empty() {
            return Err(invalid(
                origin,
                "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            ));
        }
        Ok(TrustAnchors {
            path: origin.to_owned(),
            anchors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// The anchors' DER certificates, in bundle order.
    pub fn certificates(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.anchors.iter().map(|a| &a.der)
    }

    /// The bundle as PEM.
    pub fn pem(&self) -> String {
        self.anchors.iter().map(|a| pem_cert(&a.der)).collect()
    }

    /// The anchors as a rustls root store (for verifying peers).
    pub fn root_store(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        let (_added, _ignored) = roots.add_parsable_certificates(self.certificates().cloned());
        Arc::new(roots)
    }
}

pub(crate) fn pem_cert(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The issuer: the intermediate CA the controller signs workload certificates with.
pub struct Issuer {
    der: CertificateDer<'static>,
    signer: rcgen::Issuer<'static, KeyPair>,
    subject: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.subject)
            .field("not_after", &rfc3339(self.not_after))
            .finish()
    }
}

impl Issuer {
    /// Loads the issuer certificate (PEM) and its private key (PEM, PKCS#8) and checks
    /// them: the key is ECDSA P-256 and belongs to the certificate, the certificate is
    /// a CA that is valid now and is signed by one of `anchors`.
    pub fn load(cert: &Path, key: &Path, anchors: &TrustAnchors) -> Result<Issuer, CaError> {
        Self::from_pem(&read(cert)?, cert, &read(key)?, key, anchors)
    }

    /// As [`Issuer::load`], from bytes; the paths name the inputs in errors.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
        anchors: &TrustAnchors,
    ) -> Result<Issuer, CaError> {
        let der = CertificateDer::from_pem_slice(cert_pem).map_err(|e| {
            invalid(
                cert_path,
                format!("holds no PEM certificate (expected -----BEGIN CERTIFICATE-----): {e}"),
            )
        })?;
        let key_text = std::str::from_utf8(key_pem)
            .map_err(|_| invalid(key_path, "is not a PEM file (not text)"))?;
        let key = KeyPair::from_pem(key_text).map_err(|e| {
            invalid(
                key_path,
                format!("is not a PEM private key weft can use (PKCS#8 ECDSA P-256 expected): {e}"),
            )
        })?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(invalid(
                key_path,
                format!(
                    "the issuer key is {}; weft issuers use ECDSA P-256",
                    algorithm_name(key.algorithm())
                ),
            ));
        }
        let (subject, not_after) = {
            let (rest, cert) = X509Certificate::from_der(&der)
                .map_err(|e| invalid(cert_path, format!("does not parse as X.509: {e}")))?;
            if !rest.is_empty() {
                return Err(invalid(cert_path, "has trailing bytes after its DER"));
            }
            let subject = cert.subject().to_string();
            if !cert.is_ca() {
                return Err(invalid(
                    cert_path,
                    format!("{subject} is not a CA certificate (basicConstraints CA:TRUE missing)"),
                ));
            }
            if let Ok(Some(ku)) = cert.key_usage() {
                if !ku.value.key_cert_sign() {
                    return Err(invalid(
                        cert_path,
                        format!("{subject} may not sign certificates (keyUsage lacks keyCertSign)"),
                    ));
                }
            }
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(invalid(
                    key_path,
                    format!(
                        "this key does not belong to the issuer certificate {} (the public keys differ)",
                        cert_path.display()
                    ),
                ));
            }
            let now = SystemTime::now();
            if let Some(why) = outside_validity(&cert, now) {
                return Err(invalid(cert_path, format!("the issuer {subject} {why}")));
            }
            chains_to(&cert, anchors).map_err(|problem| invalid(cert_path, problem))?;
            let (_, not_after) = validity(&cert);
            (subject, not_after)
        };
        let signer = rcgen::Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| invalid(cert_path, format!("unusable as an issuer: {e}")))?;
        Ok(Issuer {
            der: der.into_owned(),
            signer,
            subject,
            not_after,
        })
    }

    /// The issuer certificate (DER): the intermediate sent along with every leaf.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the issuer expires; leaves never outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub(crate) fn signer(&self) -> &rcgen::Issuer<'static, KeyPair> {
        &self.signer
    }
}

/// Checks that `cert` is signed by one of the unexpired anchors.
pub(super) fn chains_to(cert: &X509Certificate<'_>, anchors: &TrustAnchors) -> Result<(), String> {
    let mut expired_match = None;
    for anchor in &anchors.anchors {
        let Ok((_, parsed)) = X509Certificate::from_der(&anchor.der) else {
            continue;
        };
        if parsed.subject().as_raw() != cert.issuer().as_raw()
            || cert.verify_signature(Some(parsed.public_key())).is_err()
        {
            continue;
        }
        if anchor.expired {
            expired_match = Some(anchor);
            continue;
        }
        return Ok(());
    }
    match expired_match {
        Some(anchor) => Err(format!(
            "the issuer is signed by trust anchor {}, which expired at {}",
            anchor.subject,
            rfc3339(anchor.not_after)
        )),
        None => Err(format!(
            "the issuer {} (issued by {}) is not signed by any of the {} trust anchor(s) in {}",
            cert.subject(),
            cert.issuer(),
            anchors.len(),
            anchors.path.display()
        )),
    }
}

pub(super) fn algorithm_name(alg: &rcgen::SignatureAlgorithm) -> &'static str {
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256"
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384"
    } else if alg == &rcgen::PKCS_ED25519 {
        "Ed25519"
    } else {
        "RSA or another algorithm"
    }
}

/// What [`init`] makes.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub trust_domain: String,
    /// Replace existing files.
    pub force: bool,
    pub anchor_lifetime: Duration,
    pub issuer_lifetime: Duration,
    /// Where to keep the trust anchor's private key (PKCS#8 PEM, mode 0600), so the
    /// issuer can be renewed later ([`rotate_issuer`]). `None` discards it: the issuer
    /// can then never be renewed under this anchor.
    pub anchor_key_out: Option<PathBuf>,
}

impl InitOptions {
    pub fn new(trust_domain: &str) -> InitOptions {
        InitOptions {
            trust_domain: trust_domain.to_owned(),
            force: false,
            anchor_lifetime: ANCHOR_LIFETIME,
            issuer_lifetime: ISSUER_LIFETIME,
            anchor_key_out: None,
        }
    }
}

/// What [`init`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub anchors: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    /// The trust anchor's private key, if it was kept.
    pub anchor_key: Option<PathBuf>,
    pub anchor_subject: String,
    pub anchor_not_after: SystemTime,
    pub issuer_subject: String,
    pub issuer_not_after: SystemTime,
}

/// Makes a fresh trust anchor and issuer in `dir` (created if missing):
/// `trust-anchors.pem`, `issuer.crt` and `issuer.key` (mode 0600). Refuses to replace
/// existing files unless `force`. The anchor's key is discarded; use [`init_with`] and
/// [`InitOptions::anchor_key_out`] to keep it.
pub fn init(dir: &Path, trust_domain: &str, force: bool) -> Result<Written, CaError> {
    init_with(
        dir,
        &InitOptions {
            force,
            ..InitOptions::new(trust_domain)
        },
    )
}

/// [`init`] with every option.
pub fn init_with(dir: &Path, options: &InitOptions) -> Result<Written, CaError> {
    let td = &options.trust_domain;
    // The same rules as identities' trust domains.
    weft_core::identity::Identity::new("weft", "weft", td)?;
    let anchors_path = dir.join(ANCHORS_FILE);
    let cert_path = dir.join(ISSUER_CERT_FILE);
    let key_path = dir.join(ISSUER_KEY_FILE);
    if !options.force {
        for path in [Some(&anchors_path), Some(&cert_path), Some(&key_path)]
            .into_iter()
            .chain([options.anchor_key_out.as_ref()])
            .flatten()
        {
            if path.exists() {
                return Err(CaError::Exists { path: path.clone() });
            }
        }
    }

    let now = SystemTime::now();
    let (anchor, anchor_key_pem, anchor_not_after) = make_anchor(td, now, options.anchor_lifetime)?;
    let issuer_not_after = (now + options.issuer_lifetime).min(anchor_not_after);
    let (issuer_pem, key_pem) = make_issuer(&anchor, td, now, issuer_not_after)?;

    fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_owned(),
        source,
    })?;
    if let Some(path) = &options.anchor_key_out {
        create_parent(path)?;
        write_file(path, anchor_key_pem.as_bytes(), 0o600)?;
    }
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, issuer_pem.as_bytes(), 0o644)?;
    write_file(&anchors_path, anchor.pem().as_bytes(), 0o644)?;
    Ok(Written {
        anchors: anchors_path,
        issuer_cert: cert_path,
        issuer_key: key_path,
        anchor_key: options.anchor_key_out.clone(),
        anchor_subject: format!("CN={}", anchor_cn(td)),
        anchor_not_after: truncate_to_seconds(anchor_not_after),
        issuer_subject: format!("CN={}", issuer_cn(td)),
        issuer_not_after: truncate_to_seconds(issuer_not_after),
    })
}

pub(super) fn anchor_cn(td: &str) -> String {
    format!("root.identity.weft.{td}")
}

pub(super) fn issuer_cn(td: &str) -> String {
    format!("identity.weft.{td}")
}

pub(super) fn generate(what: &'static str) -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CaError::Generate { what, source })
}

pub(super) fn create_parent(path: &Path) -> Result<(), CaError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            fs::create_dir_all(parent).map_err(|source| CaError::Write {
                path: parent.to_owned(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// A self-signed trust anchor: the anchor, its key (PEM) and its end.
pub(super) fn make_anchor(
    td: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(CertifiedIssuer<'static, KeyPair>, String, SystemTime), CaError> {
    let not_after = now + lifetime;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&anchor_cn(td));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    let key = generate("trust anchor key")?;
    let key_pem = key.serialize_pem();
    let anchor = CertifiedIssuer::self_signed(params, key).map_err(|source| CaError::Generate {
        what: "trust anchor",
        source,
    })?;
    Ok((anchor, key_pem, not_after))
}

/// An issuer signed by `anchor` with a fresh key: (certificate PEM, key PEM).
pub(super) fn make_issuer(
    anchor: &rcgen::Issuer<'_, KeyPair>,
    td: &str,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<(String, String), CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&issuer_cn(td));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    let key = generate("issuer key")?;
    let key_pem = key.serialize_pem();
    let cert = params
        .signed_by(&key, anchor)
        .map_err(|source| CaError::Generate {
            what: "issuer",
            source,
        })?;
    Ok((cert.pem(), key_pem))
}

pub(super) fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes `data` to `path` through a temporary file in the same directory, created
/// with `mode`, then renamed over `path`: readers see the old file or the new one,
/// and a key file is never readable by others, not even briefly.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    let written = file
        .write_all(data)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

pub(super) fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

//! Certify: checks a workload's request (identity name, token, CSR) and signs its leaf
//! certificate with the issuer.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateSigningRequestDer;
use weft_core::identity::Identity;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519, OID_SIG_ED448,
};
use x509_parser::prelude::FromDer as _;

use super::ca::{random_serial, rfc3339, Issuer, BACKDATE};
use super::token::{TokenError, TokenVerifier};
use crate::metrics::{CertifyLabels, IdentityMetrics};
use crate::server::{CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT};

/// Lifetime of workload certificates unless configured otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Certify requests checked at once unless configured otherwise; more are refused at
/// once with RESOURCE_EXHAUSTED (the proxy retries with backoff), never queued.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// An issued certificate.
#[derive(Clone, Debug)]
pub struct Certified {
    /// The leaf certificate (DER).
    pub leaf: Vec<u8>,
    /// The chain from the leaf up to (not including) the trust anchor: the issuer (DER).
    pub intermediates: Vec<Vec<u8>>,
    /// The leaf's `notAfter`.
    pub valid_until: SystemTime,
}

/// Why a Certify request was refused. Each maps to a gRPC status
/// ([`CertifyError::code`]) and a `result` label ([`CertifyError::result`]).
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("invalid identity {name:?}: {source}")]
    BadName {
        name: String,
        source: weft_core::identity::IdentityError,
    },
    #[error("identity {name} is in trust domain {theirs:?}; this controller issues for {ours:?}")]
    OtherTrustDomain {
        name: String,
        theirs: String,
        ours: String,
    },
    #[error("token refused: {0}")]
    Token(TokenError),
    #[error("the CSR is not for {identity}: {problem}")]
    WrongIdentity { identity: String, problem: String },
    #[error("identity {name} is reserved for the controller (service account {CONTROLLER_SERVICE_ACCOUNT} in namespace {CONTROLLER_NAMESPACE}): Certify never issues it to a workload")]
    Reserved { name: String },
    #[error("the identity service is busy: {limit} Certify requests are being checked (the limit); retry shortly")]
    Busy { limit: usize },
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("the CSR's signature does not verify with its own public key ({0})")]
    BadSignature(String),
    #[error("unsupported key in the CSR: {0}; weft certifies ECDSA P-256 keys only")]
    UnsupportedKey(String),
    #[error("the issuer expired at {0}; the controller needs a new issuer")]
    IssuerExpired(String),
    #[error("cannot sign the certificate: {0}")]
    Sign(rcgen::Error),
}

impl CertifyError {
    /// The gRPC status code the refusal is answered with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            CertifyError::BadName { .. }
            | CertifyError::OtherTrustDomain { .. }
            | CertifyError::MalformedCsr(_)
            | CertifyError::BadSignature(_)
            | CertifyError::UnsupportedKey(_) => Code::InvalidArgument,
            CertifyError::Token(TokenError::Unavailable { .. }) => Code::Unavailable,
            CertifyError::Token(TokenError::OtherIdentity { .. }) => Code::PermissionDenied,
            CertifyError::Token(_) => Code::Unauthenticated,
            CertifyError::WrongIdentity { .. } | CertifyError::Reserved { .. } => {
                Code::PermissionDenied
            }
            CertifyError::Busy { .. } => Code::ResourceExhausted,
            CertifyError::IssuerExpired(_) => Code::Unavailable,
            CertifyError::Sign(_) => Code::Internal,
        }
    }

    /// The `result` label of `weft_controller_identity_certify_total`.
    pub fn result(&self) -> &'static str {
        match self {
            CertifyError::BadName { .. } | CertifyError::OtherTrustDomain { .. } => "bad_name",
            CertifyError::Token(TokenError::Unavailable { .. }) => "token_check_failed",
            CertifyError::Token(TokenError::OtherIdentity { .. }) => "wrong_identity",
            CertifyError::Token(_) => "bad_token",
            CertifyError::WrongIdentity { .. } => "wrong_identity",
            CertifyError::Reserved { .. } => "reserved",
            CertifyError::Busy { .. } => "overloaded",
            CertifyError::MalformedCsr(_) => "malformed_csr",
            CertifyError::BadSignature(_) => "bad_signature",
            CertifyError::UnsupportedKey(_) => "unsupported_key",
            CertifyError::IssuerExpired(_) => "issuer_expired",
            CertifyError::Sign(_) => "internal",
        }
    }
}

impl From<CertifyError> for tonic::Status {
    fn from(e: CertifyError) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Signs workload certificates for requests that prove their identity.
pub struct Certifier {
    /// Replaced when the controller reloads its issuer files ([`Certifier::set_issuer`]).
    issuer: RwLock<Arc<Issuer>>,
    trust_domain: String,
    lifetime: Duration,
    tokens: Arc<dyn TokenVerifier>,
    metrics: IdentityMetrics,
    /// Permits for requests being checked ([`Certifier::with_max_in_flight`]).
    in_flight: Arc<tokio::sync::Semaphore>,
    max_in_flight: usize,
}

impl std::fmt::Debug for Certifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certifier")
            .field("issuer", &self.issuer())
            .field("trust_domain", &self.trust_domain)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Certifier {
    /// A certifier for identities in `trust_domain`, with the default lifetime.
    pub fn new(
        issuer: Issuer,
        trust_domain: &str,
        tokens: Arc<dyn TokenVerifier>,
    ) -> Result<Certifier, weft_core::identity::IdentityError> {
        Identity::new("weft", "weft", trust_domain)?;
        Ok(Certifier {
            issuer: RwLock::new(Arc::new(issuer)),
            trust_domain: trust_domain.to_owned(),
            lifetime: DEFAULT_LIFETIME,
            tokens,
            metrics: IdentityMetrics::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        })
    }

    /// Sets the lifetime of issued certificates.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Certifier {
        self.lifetime = lifetime;
        self
    }

    /// Counts results in `metrics` (the default ones are not registered anywhere).
    pub fn with_metrics(mut self, metrics: IdentityMetrics) -> Certifier {
        self.metrics = metrics;
        self.export_issuer_expiry();
        self
    }

    /// The issuer signing now.
    pub fn issuer(&self) -> Arc<Issuer> {
        self.issuer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Signs with `issuer` from now on (requests being signed finish with the old one).
    pub fn set_issuer(&self, issuer: Issuer) {
        *self.issuer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(issuer);
        self.export_issuer_expiry();
    }

    fn export_issuer_expiry(&self) {
        let expiry = self
            .issuer()
            .not_after()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.metrics.issuer_expiration.set(expiry);
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// At most `limit` requests are checked at once; more are refused with
    /// [`CertifyError::Busy`] (RESOURCE_EXHAUSTED) without waiting.
    pub fn with_max_in_flight(mut self, limit: usize) -> Certifier {
        let limit = limit.max(1);
        self.in_flight = Arc::new(tokio::sync::Semaphore::new(limit));
        self.max_in_flight = limit;
        self
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Handles one request: `identity_name` is the DNS form of the identity asked for,
    /// `token` proves it, `csr` is a PKCS#10 request (DER, or PEM) for an ECDSA P-256
    /// key naming exactly that identity.
    pub async fn certify(
        &self,
        identity_name: &str,
        token: &[u8],
        csr: &[u8],
    ) -> Result<Certified, CertifyError> {
        // Beyond the limit the request is refused at once: queueing would let callers
        // pile up work (and memory) faster than it is done.
        let result = match self.in_flight.clone().try_acquire_owned() {
            Ok(_permit) => self.check_and_sign(identity_name, token, csr).await,
            Err(_) => Err(CertifyError::Busy {
                limit: self.max_in_flight,
            }),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.result(),
        };
        self.metrics
            .certify
            .get_or_create(&CertifyLabels { result: label })
            .inc();
        match &result {
            Ok(c) => tracing::info!(
                identity = identity_name,
                valid_until = %rfc3339(c.valid_until),
                "certificate issued"
            ),
            Err(error) => tracing::info!(
                identity = identity_name,
                result = label,
                %error,
                "certificate refused"
            ),
        }
        result
    }

    async fn check_and_sign(
        &self,
        identity_name: &str,
        token: &[u8],
        csr: &[u8],
    ) -> Result<Certified, CertifyError> {
        let identity: Identity = identity_name
            .parse()
            .map_err(|source| CertifyError::BadName {
                name: identity_name.to_owned(),
                source,
            })?;
        if identity.trust_domain() != self.trust_domain {
            return Err(CertifyError::OtherTrustDomain {
                name: identity_name.to_owned(),
                theirs: identity.trust_domain().to_owned(),
                ours: self.trust_domain.clone(),
            });
        }
        // The controller serves TLS with this identity: a workload holding it could
        // pose as the controller (or be taken for it by proxies), whatever its token.
        if identity.namespace() == CONTROLLER_NAMESPACE
            && identity.service_account() == CONTROLLER_SERVICE_ACCOUNT
        {
            return Err(CertifyError::Reserved {
                name: identity.dns_name(),
            });
        }
        self.tokens
            .verify(&identity, token)
            .await
            .map_err(CertifyError::Token)?;
        let key = check_csr(&identity, csr)?;
        self.sign(&identity, &key)
    }

    /// Issues a certificate for `identity` and a key held by the caller itself (the
    /// controller's own serving certificate): no token, no CSR.
    pub fn issue(
        &self,
        identity: &Identity,
        key: &impl PublicKeyData,
    ) -> Result<Certified, CertifyError> {
        self.sign(identity, key)
    }

    fn sign(
        &self,
        identity: &Identity,
        key: &impl PublicKeyData,
    ) -> Result<Certified, CertifyError> {
        let now = SystemTime::now();
        let issuer = self.issuer();
        let issuer_end = issuer.not_after();
        if issuer_end <= now {
            return Err(CertifyError::IssuerExpired(rfc3339(issuer_end)));
        }
        // X.509 times have whole seconds; a leaf never outlives its issuer.
        let not_after = truncate_to_seconds((now + self.lifetime).min(issuer_end));
        let dns = identity.dns_name();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns.clone());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(dns.try_into().map_err(CertifyError::Sign)?),
            SanType::URI(
                identity
                    .spiffe_id()
                    .try_into()
                    .map_err(CertifyError::Sign)?,
            ),
        ];
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let leaf = params
            .signed_by(key, issuer.signer())
            .map_err(CertifyError::Sign)?;
        Ok(Certified {
            leaf: leaf.der().to_vec(),
            intermediates: vec![issuer.certificate().to_vec()],
            valid_until: not_after,
        })
    }
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Parses and checks a CSR (DER, or PEM) for `identity`: an ECDSA P-256 key, a valid
/// signature, and the identity's names as its only SANs; returns its public key. Public
/// for the fuzz targets (`fuzz/`); `Certifier::issue` calls it on every request.
pub fn check_csr(
    identity: &Identity,
    csr: &[u8],
) -> Result<rcgen::SubjectPublicKeyInfo, CertifyError> {
    let malformed = |m: String| CertifyError::MalformedCsr(m);
    if csr.is_empty() {
        return Err(malformed("the request carries no CSR".into()));
    }
    // DER is what proxies send; PEM is accepted too (the protocol's comments say PEM).
    let pem_der;
    let der: &[u8] = if csr.starts_with(b"-----BEGIN") {
        pem_der = CertificateSigningRequestDer::from_pem_slice(csr)
            .map_err(|e| malformed(format!("PEM without a CERTIFICATE REQUEST block ({e})")))?;
        pem_der.as_ref()
    } else {
        csr
    };
    let (rest, req) = X509CertificationRequest::from_der(der).map_err(|e| {
        malformed(format!(
            "{} bytes that do not parse as a PKCS#10 certification request ({e})",
            der.len()
        ))
    })?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} trailing bytes after the certification request",
            rest.len()
        )));
    }

    let spki = &req.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    if *alg != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CertifyError::UnsupportedKey(key_name(alg, None)));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| Oid::try_from(p.clone()).ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CertifyError::UnsupportedKey(key_name(alg, curve.as_ref())));
    }
    req.verify_signature()
        .map_err(|e| CertifyError::BadSignature(e.to_string()))?;

    check_names(identity, &req)?;

    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CertifyError::UnsupportedKey(format!("ECDSA P-256 key not usable ({e})")))
}

/// The CSR's subject alternative names must be the identity's DNS name, optionally
/// with its SPIFFE ID, and nothing else. (Its subject is ignored: the leaf's is set
/// here.)
fn check_names(
    identity: &Identity,
    req: &X509CertificationRequest<'_>,
) -> Result<(), CertifyError> {
    let dns = identity.dns_name();
    let spiffe = identity.spiffe_id();
    let mut names_dns = false;
    let mut other = Vec::new();
    for ext in req.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) if d.eq_ignore_ascii_case(&dns) => names_dns = true,
                        GeneralName::URI(u) if *u == spiffe => {}
                        other_name => other.push(describe(other_name)),
                    }
                }
            }
            ParsedExtension::ParseError { error } => {
                return Err(CertifyError::MalformedCsr(format!(
                    "a requested extension does not parse ({error})"
                )))
            }
            // Key usages, basic constraints and the like are decided here, not by
            // the request.
            _ => {}
        }
    }
    if !other.is_empty() {
        return Err(CertifyError::WrongIdentity {
            identity: dns,
            problem: format!(
                "it asks for {}, but only DNS:{} and URI:{} may be named",
                other.join(", "),
                identity.dns_name(),
                spiffe
            ),
        });
    }
    if !names_dns {
        return Err(CertifyError::WrongIdentity {
            identity: dns.clone(),
            problem: format!("it does not name DNS:{dns} in its subject alternative names"),
        });
    }
    Ok(())
}

fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => match ip.len() {
            4 => format!(
                "IP:{}",
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
            ),
            16 => format!(
                "IP:{}",
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
            ),
            _ => "an IP address".into(),
        },
        GeneralName::DirectoryName(n) => format!("dirName:{n}"),
        _ => "another kind of name".into(),
    }
}

fn key_name(alg: &Oid<'_>, curve: Option<&Oid<'_>>) -> String {
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        match curve {
            Some(c) if *c == OID_NIST_EC_P384 => "the key is ECDSA P-384".into(),
            Some(c) => format!("the key is ECDSA on curve {c}"),
            None => "the key is ECDSA without a named curve".into(),
        }
    } else if *alg == OID_SIG_ED25519 {
        "the key is Ed25519".into()
    } else if *alg == OID_SIG_ED448 {
        "the key is Ed448".into()
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        "the key is RSA".into()
    } else {
        format!("the key's algorithm is {alg}")
    }
}

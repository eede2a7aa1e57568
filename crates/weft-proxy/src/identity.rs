//! The proxy's own identity: a key pair made in memory (it never leaves the process),
//! the certificate the controller issued for it, and the TLS settings built on both.
//! Certificates are swapped in place on renewal; new handshakes use the newest one.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use weft_core::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read trust anchors {path}: {source}")]
    ReadAnchors {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("trust anchors {path}: {problem}")]
    BadAnchors {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error("cannot make a key pair: {0}")]
    KeyGen(rcgen::Error),
    #[error("cannot build a certificate signing request for {name}: {source}")]
    Csr { name: String, source: rcgen::Error },
    #[error("the issued certificate is not usable: {0}")]
    BadCertificate(String),
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// Parses a PEM bundle of trust anchors (several during an anchor rotation).
pub fn load_anchors(path: &std::path::Path) -> Result<Arc<RootCertStore>, IdentityError> {
    let pem = std::fs::read(path).map_err(|source| IdentityError::ReadAnchors {
        path: path.to_owned(),
        source,
    })?;
    anchors_from_pem(&pem).map_err(|problem| IdentityError::BadAnchors {
        path: path.to_owned(),
        problem,
    })
}

pub fn anchors_from_pem(pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in the bundle".into());
    }
    Ok(Arc::new(roots))
}

/// This proxy's identity and TLS settings.
pub struct LocalIdentity {
    name: Identity,
    server_name: ServerName<'static>,
    key: Arc<dyn SigningKey>,
    csr: Vec<u8>,
    current: RwLock<Option<Current>>,
    roots: Arc<RootCertStore>,
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
}

#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    expiry: SystemTime,
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("name", &self.name.dns_name())
            .finish()
    }
}

impl LocalIdentity {
    /// Makes a fresh ECDSA P-256 key pair and the CSR for `name`.
    pub fn new(
        name: Identity,
        roots: Arc<RootCertStore>,
    ) -> Result<Arc<LocalIdentity>, IdentityError> {
        let key_pair = KeyPair::generate().map_err(IdentityError::KeyGen)?;
        let dns = name.dns_name();
        let mut params =
            CertificateParams::new(vec![dns.clone()]).map_err(|source| IdentityError::Csr {
                name: dns.clone(),
                source,
            })?;
        let uri = name
            .spiffe_id()
            .try_into()
            .map_err(|source| IdentityError::Csr {
                name: dns.clone(),
                source,
            })?;
        params.subject_alt_names.push(SanType::URI(uri));
        let csr = params
            .serialize_request(&key_pair)
            .map_err(|source| IdentityError::Csr {
                name: dns.clone(),
                source,
            })?
            .der()
            .to_vec();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let key = provider::sign::any_ecdsa_type(&key_der)?;
        let server_name = ServerName::try_from(dns.clone())
            .map_err(|e| IdentityError::BadCertificate(format!("{dns} is not a DNS name: {e}")))?;

        let crypto = Arc::new(provider::default_provider());
        let resolver = Arc::new(Resolver::default());
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), crypto.clone())
                .build()
                .map_err(|e| IdentityError::BadCertificate(format!("client verifier: {e}")))?;
        let mut server_config = ServerConfig::builder_with_provider(crypto.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(resolver.clone());
        // No session resumption: every handshake verifies the peer's current
        // certificate (expiry, trust anchors), and connections are pooled anyway.
        server_config.send_tls13_tickets = 0;
        server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), crypto.clone())
                .build()
                .map_err(|e| IdentityError::BadCertificate(format!("server verifier: {e}")))?;
        let mut client_config = ClientConfig::builder_with_provider(crypto)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            // WebPKI checks the chain to an anchor and that the certificate names exactly
            // the server identity the connection is made for (the TLS server name).
            .with_webpki_verifier(server_verifier)
            .with_client_cert_resolver(resolver.clone());
        client_config.resumption = rustls::client::Resumption::disabled();

        let identity = Arc::new(LocalIdentity {
            name,
            server_name,
            key,
            csr,
            current: RwLock::new(None),
            roots,
            server_config: Arc::new(server_config),
            client_config: Arc::new(client_config),
        });
        resolver.set_owner(&identity);
        Ok(identity)
    }

    pub fn name(&self) -> &Identity {
        &self.name
    }

    /// The DER certificate signing request for this identity.
    pub fn csr(&self) -> &[u8] {
        &self.csr
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// Installs a certificate issued for this identity's key; it must name this
    /// identity and chain to the trust anchors. Returns its expiry.
    pub fn set_certificate(
        &self,
        leaf: Vec<u8>,
        intermediates: Vec<Vec<u8>>,
    ) -> Result<SystemTime, IdentityError> {
        let leaf = CertificateDer::from(leaf);
        let chain: Vec<CertificateDer<'static>> = intermediates
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| IdentityError::BadCertificate(format!("leaf does not parse: {e}")))?;
        let expiry = SystemTime::UNIX_EPOCH
            + Duration::from_secs(parsed.validity().not_after.timestamp().max(0) as u64);
        // Verify as a peer would: the chain to an anchor, and the name.
        let verifier = WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            Arc::new(provider::default_provider()),
        )
        .build()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        verifier
            .verify_server_cert(&leaf, &chain, &self.server_name, &[], UnixTime::now())
            .map_err(|e| {
                IdentityError::BadCertificate(format!("does not verify for {}: {e}", self.name))
            })?;
        let mut certs = vec![leaf];
        certs.extend(chain);
        let key = Arc::new(CertifiedKey::new(certs, self.key.clone()));
        key.keys_match().map_err(|e| {
            IdentityError::BadCertificate(format!("not issued for this proxy's key: {e}"))
        })?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Current { key, expiry });
        Ok(expiry)
    }

    /// Whether a certificate is installed (the proxy is not ready before).
    /// Whether the proxy holds a certificate that is valid now (an expired one, when
    /// renewal keeps failing, makes every mTLS handshake fail: not ready).
    pub fn is_ready(&self) -> bool {
        self.expiry().is_some_and(|e| e > SystemTime::now())
    }

    pub fn expiry(&self) -> Option<SystemTime> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.expiry)
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.key.clone())
    }

    /// Settings for terminating mTLS from meshed clients.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config.clone()
    }

    /// Settings for originating mTLS to a meshed server.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config.clone()
    }
}

/// Hands out the current certificate for both roles.
#[derive(Default, Debug)]
struct Resolver {
    owner: RwLock<std::sync::Weak<LocalIdentity>>,
}

impl Resolver {
    fn set_owner(&self, owner: &Arc<LocalIdentity>) {
        *self.owner.write().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(owner);
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.owner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()?
            .certified_key()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// The weft identity named by a peer's certificate (its DNS SAN), if any.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<Identity> {
    Identity::from_certificate(cert)
}

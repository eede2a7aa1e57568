//! A test certificate authority: a trust anchor and an issuer made in memory, signing
//! proxies' CSRs the way the controller does, plus raw TLS clients with deliberately bad
//! certificates for refusal tests.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use rustls::{ClientConfig, RootCertStore};
use weft_core::identity::Identity;
use weft_proxy::identity::{anchors_from_pem, LocalIdentity};

/// A trust anchor with one issuer under it.
pub struct TestCa {
    anchor: CertifiedIssuer<'static, KeyPair>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new("weft test")
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut anchor = CertificateParams::default();
        anchor.distinguished_name = dn(&format!("{name} trust anchor"));
        anchor.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        anchor.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let anchor = CertifiedIssuer::self_signed(anchor, KeyPair::generate().expect("key"))
            .expect("anchor");
        let mut issuer = CertificateParams::default();
        issuer.distinguished_name = dn(&format!("{name} issuer"));
        issuer.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        issuer.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::signed_by(issuer, KeyPair::generate().expect("key"), &anchor)
            .expect("issuer");
        TestCa { anchor, issuer }
    }

    pub fn anchors_pem(&self) -> String {
        self.anchor.pem()
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        anchors_from_pem(self.anchors_pem().as_bytes()).expect("test anchor")
    }

    /// A proxy identity trusting this CA, with a certificate valid for `lifetime`.
    pub fn identity(
        &self,
        service_account: &str,
        namespace: &str,
        lifetime: Duration,
    ) -> Arc<LocalIdentity> {
        let name = Identity::new(service_account, namespace, "cluster.local")
            .expect("valid test identity");
        let local = LocalIdentity::new(name, self.roots()).expect("identity");
        self.certify(&local, lifetime);
        local
    }

    /// Signs `local`'s CSR as the controller would and installs the certificate.
    pub fn certify(&self, local: &LocalIdentity, lifetime: Duration) {
        let csr = CertificateSigningRequestDer::from(local.csr().to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&csr).expect("proxy CSR parses");
        leaf_params(
            &mut csr.params,
            SystemTime::now() - Duration::from_secs(60),
            SystemTime::now() + lifetime,
        );
        let leaf = csr.signed_by(&self.issuer).expect("sign leaf");
        local
            .set_certificate(leaf.der().to_vec(), vec![self.issuer.der().to_vec()])
            .expect("certificate installs");
    }

    /// TLS client settings presenting a certificate for `name` from this CA, valid
    /// between the given times, and trusting `trust` for the server.
    pub fn raw_client(
        &self,
        name: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
        trust: Arc<RootCertStore>,
    ) -> ClientConfig {
        self.raw_client_named(&name.dns_name(), not_before, not_after, trust)
    }

    /// Like [`TestCa::raw_client`], for any DNS name (not necessarily a mesh identity).
    pub fn raw_client_named(
        &self,
        dns_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
        trust: Arc<RootCertStore>,
    ) -> ClientConfig {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![dns_name.to_owned()]).expect("params");
        leaf_params(&mut params, not_before, not_after);
        let leaf = params.signed_by(&key, &self.issuer).expect("sign");
        let chain = vec![
            leaf.der().clone(),
            CertificateDer::from(self.issuer.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(trust)
            .with_client_auth_cert(chain, key)
            .expect("client cert")
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf_params(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    // The CSR's names are kept (the proxy asked for its DNS and SPIFFE names).
    if params.subject_alt_names.is_empty() {
        params
            .subject_alt_names
            .push(SanType::DnsName("invalid".try_into().expect("ia5")));
    }
}

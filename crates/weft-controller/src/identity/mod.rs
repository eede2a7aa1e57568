//! The identity service: the mesh's certificate authority.
//!
//! A trust anchor (self-signed root) signs the issuer (intermediate CA, held by the
//! controller); the issuer signs workload leaf certificates on `Identity.Certify`
//! requests that prove their identity with a token and carry a CSR for exactly that
//! identity (`{sa}.{ns}.serviceaccount.identity.weft.{trust-domain}` as DNS SAN,
//! `spiffe://{trust-domain}/ns/{ns}/sa/{sa}` as URI SAN).

mod ca;
mod certify;
mod kube_token;
mod material;
mod reload;
mod rotate;
pub(crate) use reload::watch;
mod service;
mod token;

pub use ca::{
    init, init_with, CaError, InitOptions, Issuer, TrustAnchors, Written, ANCHORS_FILE,
    ANCHOR_LIFETIME, ISSUER_CERT_FILE, ISSUER_KEY_FILE, ISSUER_LIFETIME,
};
pub use certify::{check_csr, Certified, Certifier, CertifyError, DEFAULT_LIFETIME};
pub use kube_token::{
    KubeTokens, KubeTokensConfig, DEFAULT_REVIEW_CACHE_SIZE, DEFAULT_REVIEW_CACHE_TTL,
    DEFAULT_REVIEW_TIMEOUT,
};
pub use material::{make_trust_anchor, pem_not_after, sign_issuer, sign_server, Material};
pub use reload::{IdentityFiles, ReloadOptions, DEFAULT_EXPIRY_WARNING, DEFAULT_RELOAD_INTERVAL};
pub use rotate::{
    certificate_expiry, new_anchor, rotate_issuer, NewAnchor, RotateOptions, Rotated,
};
pub use service::{IdentityService, MAX_CERTIFY_MESSAGE};
pub use token::{
    token_path, write_token, LocalTokens, TokenError, TokenVerifier, VerifyFuture, WriteTokenError,
};

/// A fresh, empty directory under the system's temporary directory (tests only).
#[cfg(test)]
pub(crate) fn test_dir(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "weft-controller-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test directory");
    dir
}

#[cfg(test)]
mod tests;

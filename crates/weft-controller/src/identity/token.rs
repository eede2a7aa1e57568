//! Tokens proving a workload's identity to the identity service. Local mode: a tokens
//! directory with one file per workload identity, `{dir}/{ns}/{sa}`, holding a random
//! token (written by `weft up`, read by the workload's proxy). On Kubernetes,
//! [`super::KubeTokens`] checks projected ServiceAccount tokens with TokenReview.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use subtle::ConstantTimeEq as _;
use weft_core::identity::Identity;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the request carries no token")]
    Missing,
    #[error("no token is registered for {identity}")]
    Unknown { identity: String },
    #[error("the token does not match the one registered for {identity}")]
    Mismatch { identity: String },
    /// The token does not authenticate anyone (Kubernetes: expired, for another
    /// audience, malformed; `reason` is the TokenReview's error).
    #[error("the token does not authenticate: {reason}")]
    Rejected { reason: String },
    /// The token is valid but proves another identity than the one asked for.
    #[error("the token proves {proven}, not {identity}: a workload obtains only its own identity")]
    OtherIdentity { identity: String, proven: String },
    /// The verifier itself failed (not the caller's fault).
    #[error("cannot check the token of {identity}: {reason}")]
    Unavailable { identity: String, reason: String },
}

pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TokenError>> + Send + 'a>>;

/// Checks that a token proves an identity.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify<'a>(&'a self, identity: &'a Identity, token: &'a [u8]) -> VerifyFuture<'a>;
}

/// Local mode: tokens are files `{dir}/{ns}/{sa}`.
#[derive(Clone, Debug)]
pub struct LocalTokens {
    dir: PathBuf,
}

impl LocalTokens {
    pub fn new(dir: impl Into<PathBuf>) -> LocalTokens {
        LocalTokens { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The file holding the token of service account `sa` in namespace `ns`.
pub fn token_path(dir: &Path, namespace: &str, service_account: &str) -> PathBuf {
    dir.join(namespace).join(service_account)
}

/// Surrounding whitespace is not part of a token (a file written with `echo` ends in a
/// newline).
fn trim(token: &[u8]) -> &[u8] {
    token.trim_ascii()
}

impl TokenVerifier for LocalTokens {
    fn verify<'a>(&'a self, identity: &'a Identity, token: &'a [u8]) -> VerifyFuture<'a> {
        Box::pin(async move {
            let presented = trim(token);
            if presented.is_empty() {
                return Err(TokenError::Missing);
            }
            // The identity was parsed, so namespace and service account are DNS labels:
            // the path cannot leave the tokens directory.
            let path = token_path(&self.dir, identity.namespace(), identity.service_account());
            let registered = match tokio::fs::read(&path).await {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::debug!(path = %path.display(), "no token file");
                    return Err(TokenError::Unknown {
                        identity: identity.dns_name(),
                    });
                }
                Err(e) => {
                    return Err(TokenError::Unavailable {
                        identity: identity.dns_name(),
                        reason: format!("reading {}: {e}", path.display()),
                    })
                }
            };
            let registered = trim(&registered);
            if registered.is_empty() {
                return Err(TokenError::Unknown {
                    identity: identity.dns_name(),
                });
            }
            // Constant time in the contents; tokens made here all have the same length.
            if bool::from(registered.ct_eq(presented)) {
                Ok(())
            } else {
                Err(TokenError::Mismatch {
                    identity: identity.dns_name(),
                })
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteTokenError {
    #[error(transparent)]
    Name(#[from] weft_core::identity::IdentityError),
    #[error("cannot write the token file: {0}")]
    Write(#[from] super::ca::CaError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates (or replaces) the token file of `(namespace, service_account)` with a fresh
/// random token (32 bytes, hex), mode 0600; returns the file and the token.
pub fn write_token(
    dir: &Path,
    namespace: &str,
    service_account: &str,
) -> Result<(PathBuf, String), WriteTokenError> {
    // Names are checked as identities are, so they are safe path components.
    Identity::new(
        service_account,
        namespace,
        weft_core::identity::DEFAULT_TRUST_DOMAIN,
    )?;
    let ns_dir = dir.join(namespace);
    std::fs::create_dir_all(&ns_dir).map_err(|source| WriteTokenError::Dir {
        path: ns_dir.clone(),
        source,
    })?;
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = token_path(dir, namespace, service_account);
    super::ca::write_file(&path, token.as_bytes(), 0o600)?;
    Ok((path, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_checked_against_their_file() {
        let dir = tempdir();
        let (path, token) = write_token(&dir, "shop", "books").unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let tokens = LocalTokens::new(&dir);
        let books = Identity::new("books", "shop", "cluster.local").unwrap();
        tokens.verify(&books, token.as_bytes()).await.unwrap();
        // A trailing newline is not part of the token.
        tokens
            .verify(&books, format!("{token}\n").as_bytes())
            .await
            .unwrap();
        assert!(matches!(
            tokens.verify(&books, b"nope").await,
            Err(TokenError::Mismatch { .. })
        ));
        assert!(matches!(
            tokens.verify(&books, b"").await,
            Err(TokenError::Missing)
        ));
        let other = Identity::new("web", "shop", "cluster.local").unwrap();
        assert!(matches!(
            tokens.verify(&other, token.as_bytes()).await,
            Err(TokenError::Unknown { .. })
        ));
        // A second token replaces the first.
        let (_, second) = write_token(&dir, "shop", "books").unwrap();
        assert_ne!(second, token);
        assert!(tokens.verify(&books, token.as_bytes()).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_names_must_be_labels() {
        let dir = tempdir();
        assert!(write_token(&dir, "..", "books").is_err());
        assert!(write_token(&dir, "shop", "a/b").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        crate::identity::test_dir("tokens")
    }
}

//! Kubernetes mode: a Certify request's token is a projected ServiceAccount token for
//! the audience [`KUBE_TOKEN_AUDIENCE`], and the API server says whose it is
//! (`authentication.k8s.io/v1` TokenReview). The identity proven is the review's user,
//! `system:serviceaccount:{ns}:{sa}`, never anything the request says: a request for
//! another identity than the review's is refused (PERMISSION_DENIED, naming both).
//!
//! Accepted reviews are kept briefly (by the token's SHA-256, until the token expires
//! and at most [`KubeTokensConfig::cache_ttl`]), so a proxy's retries and the many
//! proxies of a restarted node do not each cost a review; refusals are not kept. The
//! cache is bounded ([`KubeTokensConfig::cache_size`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use weft_core::identity::{Identity, KUBE_TOKEN_AUDIENCE};

use super::token::{TokenError, TokenVerifier, VerifyFuture};
use crate::metrics::CertifyLabels;

/// How long an accepted review is kept unless configured otherwise.
pub const DEFAULT_REVIEW_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most accepted reviews kept unless configured otherwise.
pub const DEFAULT_REVIEW_CACHE_SIZE: usize = 10_000;
/// How long a TokenReview may take unless configured otherwise: under the proxy's own
/// Certify timeout (5 s), so the proxy hears UNAVAILABLE rather than a timeout.
pub const DEFAULT_REVIEW_TIMEOUT: Duration = Duration::from_secs(4);

/// The user name prefix of ServiceAccounts in a TokenReview.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

/// Settings of [`KubeTokens`].
#[derive(Clone, Debug)]
pub struct KubeTokensConfig {
    /// The audience tokens must be for (the injector's projected volume asks for it).
    pub audience: String,
    /// A review that takes longer is answered UNAVAILABLE.
    pub timeout: Duration,
    /// Longest time an accepted review is reused (never past the token's `exp`).
    pub cache_ttl: Duration,
    /// Most accepted reviews kept.
    pub cache_size: usize,
}

impl Default for KubeTokensConfig {
    fn default() -> KubeTokensConfig {
        KubeTokensConfig {
            audience: KUBE_TOKEN_AUDIENCE.to_owned(),
            timeout: DEFAULT_REVIEW_TIMEOUT,
            cache_ttl: DEFAULT_REVIEW_CACHE_TTL,
            cache_size: DEFAULT_REVIEW_CACHE_SIZE,
        }
    }
}

/// The ServiceAccount a token belongs to, as the API server said.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Proven {
    namespace: String,
    service_account: String,
}

#[derive(Debug)]
struct Cached {
    proven: Proven,
    until: Instant,
}

/// Checks tokens with the Kubernetes API's TokenReview.
pub struct KubeTokens {
    api: kube::Api<TokenReview>,
    config: KubeTokensConfig,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// `weft_controller_identity_token_reviews_total{result}`.
    reviews: Family<CertifyLabels, Counter>,
}

impl std::fmt::Debug for KubeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokens")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one review said (also the `result` label of the reviews metric).
enum Outcome {
    Authenticated(Proven),
    Refused(TokenError),
}

impl KubeTokens {
    /// Reviews with `client` (its credentials need `create` on
    /// `tokenreviews.authentication.k8s.io`), counting each check in `reviews` by
    /// result: `authenticated`, `cached`, `unauthenticated` or `error` (the API could not
    /// answer).
    pub fn new(
        client: kube::Client,
        config: KubeTokensConfig,
        reviews: Family<CertifyLabels, Counter>,
    ) -> KubeTokens {
        KubeTokens {
            api: kube::Api::all(client),
            config,
            cache: Mutex::new(HashMap::new()),
            reviews,
        }
    }

    /// Accepted reviews kept now (expired ones included until they are swept).
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn count(&self, result: &'static str) {
        self.reviews.get_or_create(&CertifyLabels { result }).inc();
    }

    fn lookup(&self, key: &[u8; 32]) -> Option<Proven> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(key) {
            Some(c) if c.until > Instant::now() => Some(c.proven.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: [u8; 32], proven: Proven, token: &str) {
        let Some(left) = token_lifetime_left(token) else {
            return;
        };
        let ttl = left.min(self.config.cache_ttl);
        if ttl.is_zero() || self.config.cache_size == 0 {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.config.cache_size && !cache.contains_key(&key) {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= self.config.cache_size {
                // Full of live entries: the one that would go first makes room.
                if let Some(first) = cache.iter().min_by_key(|(_, c)| c.until).map(|(k, _)| *k) {
                    cache.remove(&first);
                }
            }
        }
        cache.insert(
            key,
            Cached {
                proven,
                until: now + ttl,
            },
        );
    }

    /// Asks the API server whose `token` is.
    async fn review(&self, identity: &Identity, token: &str) -> Outcome {
        let unavailable = |reason: String| {
            Outcome::Refused(TokenError::Unavailable {
                identity: identity.dns_name(),
                reason,
            })
        };
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.config.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = tokio::time::timeout(
            self.config.timeout,
            self.api.create(&PostParams::default(), &request),
        )
        .await;
        let review = match answer {
            Err(_) => {
                return unavailable(format!(
                    "the Kubernetes API did not answer the TokenReview within {:?}",
                    self.config.timeout
                ))
            }
            Ok(Err(kube::Error::Api(status))) => {
                let hint = if status.is_forbidden() {
                    "; the controller's ServiceAccount needs create on tokenreviews.authentication.k8s.io (ClusterRole system:auth-delegator)"
                } else {
                    ""
                };
                return unavailable(format!(
                    "the Kubernetes API refused the TokenReview ({} {}: {}){hint}",
                    status.code, status.reason, status.message
                ));
            }
            Ok(Err(error)) => {
                return unavailable(format!(
                    "the Kubernetes API is unreachable for the TokenReview: {error}"
                ))
            }
            Ok(Ok(review)) => review,
        };
        match proven(review.status.unwrap_or_default(), &self.config.audience) {
            Ok(proven) => Outcome::Authenticated(proven),
            Err(e) => Outcome::Refused(e),
        }
    }
}

/// The ServiceAccount a review's status proves, or why it proves none.
fn proven(status: TokenReviewStatus, audience: &str) -> Result<Proven, TokenError> {
    if status.authenticated != Some(true) {
        let reason = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the API server did not authenticate it".to_owned());
        return Err(TokenError::Rejected { reason });
    }
    // A review asked for audiences must name one back; otherwise the authenticator
    // did not check them and the token may be for anything.
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(TokenError::Rejected {
            reason: format!(
                "the API server accepted it without confirming the audience {audience:?} (status.audiences: {audiences:?})"
            ),
        });
    }
    let user = status.user.and_then(|u| u.username).unwrap_or_default();
    let parsed = user
        .strip_prefix(SERVICE_ACCOUNT_USER)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
    match parsed {
        Some((ns, sa)) => Ok(Proven {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        }),
        None => Err(TokenError::Rejected {
            reason: format!("it authenticates {user:?}, which is not a ServiceAccount"),
        }),
    }
}

/// How long the token (a JWT) is still valid, from its `exp` claim; `None` when it
/// does not say. Read only after the API server accepted the token, to bound how long
/// that answer is reused: nothing here trusts the claim otherwise.
fn token_lifetime_left(token: &str) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
    exp.duration_since(SystemTime::now()).ok()
}

fn describe(proven: &Proven, trust_domain: &str) -> String {
    match Identity::new(&proven.service_account, &proven.namespace, trust_domain) {
        Ok(id) => format!(
            "ServiceAccount {}/{} ({})",
            proven.namespace,
            proven.service_account,
            id.dns_name()
        ),
        Err(_) => format!(
            "ServiceAccount {}/{}",
            proven.namespace, proven.service_account
        ),
    }
}

impl TokenVerifier for KubeTokens {
    fn verify<'a>(&'a self, identity: &'a Identity, token: &'a [u8]) -> VerifyFuture<'a> {
        Box::pin(async move {
            let token = token.trim_ascii();
            if token.is_empty() {
                return Err(TokenError::Missing);
            }
            let Ok(text) = std::str::from_utf8(token) else {
                self.count("unauthenticated");
                return Err(TokenError::Rejected {
                    reason: "the token is not text (a ServiceAccount token is a JWT)".into(),
                });
            };
            let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token)
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]);
            let proven = match self.lookup(&key) {
                Some(p) => {
                    self.count("cached");
                    p
                }
                None => match self.review(identity, text).await {
                    Outcome::Authenticated(p) => {
                        self.count("authenticated");
                        self.remember(key, p.clone(), text);
                        p
                    }
                    Outcome::Refused(e) => {
                        self.count(match e {
                            TokenError::Unavailable { .. } => "error",
                            _ => "unauthenticated",
                        });
                        return Err(e);
                    }
                },
            };
            if proven.namespace == identity.namespace()
                && proven.service_account == identity.service_account()
            {
                Ok(())
            } else {
                Err(TokenError::OtherIdentity {
                    identity: identity.dns_name(),
                    proven: describe(&proven, identity.trust_domain()),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, user: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn the_review_user_is_the_identity() {
        let aud = KUBE_TOKEN_AUDIENCE;
        assert_eq!(
            proven(
                status(true, "system:serviceaccount:shop:books", &[aud]),
                aud
            )
            .unwrap(),
            Proven {
                namespace: "shop".into(),
                service_account: "books".into()
            }
        );
        // Not a ServiceAccount, or a malformed one.
        for user in [
            "weft-test-admin",
            "system:serviceaccount:shop",
            "system:serviceaccount::books",
            "system:serviceaccount:shop:books:x",
            "system:node:n1",
        ] {
            let e = proven(status(true, user, &[aud]), aud).unwrap_err();
            assert!(
                e.to_string().contains("not a ServiceAccount"),
                "{user}: {e}"
            );
        }
        // The audience must come back.
        let e = proven(status(true, "system:serviceaccount:shop:books", &[]), aud).unwrap_err();
        assert!(e.to_string().contains("identity.weft.io"), "{e}");
        // Unauthenticated: the review's error, else a default.
        let mut refused = status(false, "", &[]);
        refused.error = Some("token has expired".into());
        assert_eq!(
            proven(refused, aud).unwrap_err().to_string(),
            "the token does not authenticate: token has expired"
        );
        let e = proven(TokenReviewStatus::default(), aud).unwrap_err();
        assert!(e.to_string().contains("did not authenticate"), "{e}");
    }

    #[test]
    fn the_cache_lifetime_is_the_tokens_exp() {
        let jwt = |claims: &str| {
            let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            format!("{}.{}.sig", b(r#"{"alg":"ES256"}"#), b(claims))
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let left = token_lifetime_left(&jwt(&format!(r#"{{"exp":{}}}"#, now + 30))).unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(25));
        assert_eq!(
            token_lifetime_left(&jwt(&format!(r#"{{"exp":{}}}"#, now - 5))),
            None
        );
        assert_eq!(token_lifetime_left(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(token_lifetime_left("garbage"), None);
        assert_eq!(token_lifetime_left("a.%%%.c"), None);
    }
}

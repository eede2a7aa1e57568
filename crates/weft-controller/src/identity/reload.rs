//! The controller's identity files, watched: when `trust-anchors.pem`, `issuer.crt` or
//! `issuer.key` change (`weft identity rotate-issuer`, an anchor rotation's bundle), the
//! new files are checked as at start-up and the certifier signs with the new issuer from
//! then on. Files that do not load are logged, naming the file and the problem, and
//! the current issuer keeps signing. The issuer's approaching expiry is warned about.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::ca::{rfc3339, CaError, Issuer, TrustAnchors};
use super::{Certifier, ANCHORS_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE};
use crate::metrics::{CertifyLabels, IdentityMetrics};

/// How often the identity files are read for changes unless configured otherwise.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// An issuer with less than this left is warned about unless configured otherwise.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the warning about an expiring issuer is repeated.
const WARN_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How the identity files are watched.
#[derive(Clone, Debug)]
pub struct ReloadOptions {
    /// How often the files are read; a change is loaded once two reads in a row agree
    /// (so the pair issuer.crt + issuer.key is never taken half-replaced).
    pub interval: Duration,
    /// Warn (log, repeated daily) when the issuer has less than this left.
    pub expiry_warning: Duration,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions {
            interval: DEFAULT_RELOAD_INTERVAL,
            expiry_warning: DEFAULT_EXPIRY_WARNING,
        }
    }
}

/// One file's content, or why it could not be read.
type Content = Result<Vec<u8>, (io::ErrorKind, String)>;

/// The identity files of a directory, as read at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFiles {
    dir: PathBuf,
    anchors: Content,
    cert: Content,
    key: Content,
}

impl IdentityFiles {
    /// Reads `trust-anchors.pem`, `issuer.crt` and `issuer.key` in `dir` (blocking).
    pub fn read(dir: &Path) -> IdentityFiles {
        let read = |name| std::fs::read(dir.join(name)).map_err(|e| (e.kind(), e.to_string()));
        IdentityFiles {
            dir: dir.to_owned(),
            anchors: read(ANCHORS_FILE),
            cert: read(ISSUER_CERT_FILE),
            key: read(ISSUER_KEY_FILE),
        }
    }

    /// Checks them as the controller does at start-up: the anchors, and the issuer
    /// (its key, validity, and signature by an unexpired anchor).
    pub fn load(&self) -> Result<(TrustAnchors, Issuer), CaError> {
        let content = |c: &Content, name: &str| {
            let path = self.dir.join(name);
            match c {
                Ok(bytes) => Ok((bytes.clone(), path)),
                Err((kind, message)) => Err(CaError::Read {
                    path,
                    source: io::Error::new(*kind, message.clone()),
                }),
            }
        };
        let (anchors_pem, anchors_path) = content(&self.anchors, ANCHORS_FILE)?;
        let anchors = TrustAnchors::from_pem(&anchors_pem, &anchors_path)?;
        let (cert_pem, cert_path) = content(&self.cert, ISSUER_CERT_FILE)?;
        let (key_pem, key_path) = content(&self.key, ISSUER_KEY_FILE)?;
        let issuer = Issuer::from_pem(&cert_pem, &cert_path, &key_pem, &key_path, &anchors)?;
        Ok((anchors, issuer))
    }
}

/// Warns if `issuer` has less than `threshold` left; returns whether it did.
pub(crate) fn warn_if_expiring(issuer: &Issuer, threshold: Duration) -> bool {
    let remaining = issuer
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    if remaining >= threshold {
        return false;
    }
    tracing::warn!(
        issuer = issuer.subject(),
        expires = %rfc3339(issuer.not_after()),
        expires_in = %humantime::format_duration(Duration::from_secs(remaining.as_secs())),
        "the issuer expires soon; renew it (weft identity rotate-issuer) and the controller picks it up"
    );
    true
}

/// Watches the files `loaded` were read from, forever (abort the task to stop): a
/// change that loads replaces `certifier`'s issuer and calls `changed` with the trust
/// anchors loaded; one that does
/// not is logged once and counted, and the current issuer keeps signing.
pub(crate) async fn watch(
    loaded: IdentityFiles,
    certifier: Arc<Certifier>,
    options: ReloadOptions,
    metrics: IdentityMetrics,
    changed: impl Fn(&TrustAnchors) + Send + 'static,
) {
    let dir = loaded.dir.clone();
    let mut loaded = loaded;
    let mut previous = loaded.clone();
    let mut refused: Option<IdentityFiles> = None;
    let mut warned = warn_if_expiring(&certifier.issuer(), options.expiry_warning)
        .then(tokio::time::Instant::now);
    let interval = options.interval.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(interval).await;
        let read_dir = dir.clone();
        let now = match tokio::task::spawn_blocking(move || IdentityFiles::read(&read_dir)).await {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(%error, "cannot read the identity files");
                continue;
            }
        };
        let settled = now == previous;
        previous = now.clone();
        if now != loaded && settled && refused.as_ref() != Some(&now) {
            match now.load() {
                Ok((anchors, issuer)) => {
                    tracing::info!(
                        dir = %dir.display(),
                        issuer = issuer.subject(),
                        expires = %rfc3339(issuer.not_after()),
                        trust_anchors = anchors.len(),
                        "identity files changed: signing with the issuer loaded from them"
                    );
                    certifier.set_issuer(issuer);
                    changed(&anchors);
                    metrics
                        .reloads
                        .get_or_create(&CertifyLabels { result: "ok" })
                        .inc();
                    loaded = now;
                    refused = None;
                    warned = None;
                }
                Err(error) => {
                    tracing::error!(
                        %error,
                        issuer = certifier.issuer().subject(),
                        "identity files changed but do not load; still signing with the current issuer"
                    );
                    metrics
                        .reloads
                        .get_or_create(&CertifyLabels { result: "error" })
                        .inc();
                    refused = Some(now);
                }
            }
        }
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY)
            && warn_if_expiring(&certifier.issuer(), options.expiry_warning)
        {
            warned = Some(tokio::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{init_with, test_dir, InitOptions};

    #[test]
    fn an_issuer_inside_the_warning_period_is_warned_about() {
        let dir = test_dir("reload-warn");
        init_with(
            &dir,
            &InitOptions {
                issuer_lifetime: Duration::from_secs(10 * 24 * 3600),
                ..InitOptions::new("cluster.local")
            },
        )
        .unwrap();
        let (_, issuer) = IdentityFiles::read(&dir).load().unwrap();
        assert!(warn_if_expiring(&issuer, DEFAULT_EXPIRY_WARNING));
        assert!(!warn_if_expiring(
            &issuer,
            Duration::from_secs(9 * 24 * 3600)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_that_do_not_load_are_named_with_their_problem() {
        let dir = test_dir("reload-bad");
        init_with(&dir, &InitOptions::new("cluster.local")).unwrap();
        let good = IdentityFiles::read(&dir);
        std::fs::remove_file(dir.join(ISSUER_KEY_FILE)).unwrap();
        let missing = IdentityFiles::read(&dir);
        assert_ne!(missing, good);
        let err = missing.load().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read {}",
                dir.join(ISSUER_KEY_FILE).display()
            )),
            "{err}"
        );
        std::fs::write(dir.join(ANCHORS_FILE), "junk").unwrap();
        let err = IdentityFiles::read(&dir).load().unwrap_err().to_string();
        assert!(
            err.starts_with(&dir.join(ANCHORS_FILE).display().to_string())
                && err.contains("holds no PEM certificate"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

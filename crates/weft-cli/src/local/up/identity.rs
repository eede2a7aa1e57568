//! The mesh's identity material: a fresh trust anchor and issuer for every `weft up`
//! (root's alone), the public copy of the anchors the proxies read, and one token per
//! service account, which each proxy gets on its stdin.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context as _;
use weft_core::mesh::Workload;

use super::Runner;
use crate::local::sys::set_mode;

impl Runner {
    /// Makes the mesh's identity: a fresh trust anchor and issuer (root's alone), the
    /// copy of the trust anchors the proxies read, and a token per service account.
    pub(super) fn make_identity(&mut self) -> anyhow::Result<()> {
        let (identity_dir, tokens_dir) = (
            self.paths.identity_dir.clone(),
            self.paths.tokens_dir.clone(),
        );
        let anchors_copy = self.paths.anchors.clone();
        self.state.files.extend([
            identity_dir.clone(),
            tokens_dir.clone(),
            anchors_copy.clone(),
        ]);
        self.save()?;
        weft_controller::identity::init(&identity_dir, &self.mesh.trust_domain, true)
            .with_context(|| {
                format!(
                    "cannot make the mesh's identity in {}",
                    identity_dir.display()
                )
            })?;
        // Identity files are root's alone (the issuer key mints any identity); the
        // proxies read a copy of the trust anchors, which are public.
        set_mode(&identity_dir, 0o700)?;
        for entry in std::fs::read_dir(&identity_dir)
            .with_context(|| format!("cannot read {}", identity_dir.display()))?
        {
            let path = entry?.path();
            if path.is_file() {
                set_mode(&path, 0o600)?;
            }
        }
        copy_public(
            &identity_dir.join(weft_controller::identity::ANCHORS_FILE),
            &anchors_copy,
        )?;
        std::fs::create_dir_all(&tokens_dir)?;
        set_mode(&tokens_dir, 0o700)?;
        self.write_tokens()?;
        Ok(())
    }

    /// A token file for every service account of the mesh that has none yet, readable
    /// by root only: the controller reads them, and `weft up` hands each proxy its own
    /// token on stdin (all proxies share UID 2102, so a token file that one proxy could
    /// read, every proxy could).
    pub(super) fn write_tokens(&self) -> anyhow::Result<()> {
        let mut done = HashSet::new();
        for w in &self.mesh.workloads {
            if !done.insert((w.namespace.clone(), w.service_account.clone())) {
                continue;
            }
            let path = weft_controller::identity::token_path(
                &self.paths.tokens_dir,
                &w.namespace,
                &w.service_account,
            );
            if path.exists() {
                continue;
            }
            let (path, _) = weft_controller::identity::write_token(
                &self.paths.tokens_dir,
                &w.namespace,
                &w.service_account,
            )
            .with_context(|| format!("cannot write the token of workload {}", w.name))?;
            if let Some(ns_dir) = path.parent() {
                set_mode(ns_dir, 0o700)?;
            }
            set_mode(&path, 0o600)?;
        }
        Ok(())
    }

    /// The token of `w`'s service account, for its proxy's stdin.
    pub(super) fn token(&self, w: &Workload) -> anyhow::Result<Vec<u8>> {
        let path = weft_controller::identity::token_path(
            &self.paths.tokens_dir,
            &w.namespace,
            &w.service_account,
        );
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Copies `from` to `to` readable by everyone (0644).
pub(super) fn copy_public(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o644)
}

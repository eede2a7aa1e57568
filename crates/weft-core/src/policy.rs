//! The default inbound policies: what a workload's port that no Server selects allows.
//! One vocabulary for the controller (`--default-inbound-policy`, a workload's label),
//! the proxy (its own `--default-inbound-policy`, before the controller answers) and
//! `mesh.yaml`'s `policy.default`.

use std::fmt;
use std::str::FromStr;

/// What a port no Server selects allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DefaultPolicy {
    /// Everyone, meshed or not (the behaviour before policy existed).
    #[default]
    AllUnauthenticated,
    /// Callers with a mesh identity (mTLS), from anywhere.
    AllAuthenticated,
    /// Callers with a mesh identity, from the cluster's networks.
    ClusterAuthenticated,
    /// Nobody.
    Deny,
}

impl DefaultPolicy {
    pub const ALL: [DefaultPolicy; 4] = [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterAuthenticated,
        DefaultPolicy::Deny,
    ];

    /// Their names, in the order of [`DefaultPolicy::ALL`].
    pub const NAMES: [&'static str; 4] = [
        "all-unauthenticated",
        "all-authenticated",
        "cluster-authenticated",
        "deny",
    ];

    pub const fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DefaultPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a default policy: one of {}",
                    Self::NAMES.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_to_their_policy() {
        for p in DefaultPolicy::ALL {
            assert_eq!(p.as_str().parse::<DefaultPolicy>(), Ok(p));
        }
        assert_eq!(
            "allow".parse::<DefaultPolicy>().unwrap_err(),
            "\"allow\" is not a default policy: one of all-unauthenticated, all-authenticated, cluster-authenticated, deny"
        );
    }
}

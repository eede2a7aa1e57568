//! Workload identities: `{sa}.{ns}.serviceaccount.identity.weft.{trust-domain}` as the
//! DNS name (TLS SNI, certificate DNS SAN) and `spiffe://{trust-domain}/ns/{ns}/sa/{sa}`
//! as the URI SAN.

use std::fmt;
use std::str::FromStr;

/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The audience of the projected ServiceAccount tokens a proxy proves its identity with
/// on Kubernetes: the injector's projected volume asks for it, and the controller's
/// TokenReview requires it (a token made for another audience, such as the API server's
/// own, is refused).
pub const KUBE_TOKEN_AUDIENCE: &str = "identity.weft.io";

const MARKER: &str = ".serviceaccount.identity.weft.";

/// A workload's identity: its service account in a namespace, in a trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    service_account: String,
    namespace: String,
    trust_domain: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{what} {value:?} is not a DNS label (lowercase letters, digits and '-', 1-63 characters, starting and ending alphanumeric)")]
    BadLabel { what: &'static str, value: String },
    #[error("trust domain {0:?} is not a DNS name")]
    BadTrustDomain(String),
    #[error("{0:?} is not a weft identity name ({{sa}}.{{ns}}.serviceaccount.identity.weft.{{trust-domain}})")]
    NotAnIdentity(String),
}

impl Identity {
    /// The weft identity a certificate (DER) names in its DNS subject alternative
    /// name, if any: who a peer is, once its certificate chain has been verified.
    pub fn from_certificate(der: &[u8]) -> Option<Identity> {
        let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = parsed.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(dns) => dns.parse().ok(),
            _ => None,
        })
    }

    pub fn new(
        service_account: &str,
        namespace: &str,
        trust_domain: &str,
    ) -> Result<Identity, IdentityError> {
        check_label("service account", service_account)?;
        check_label("namespace", namespace)?;
        if trust_domain.is_empty()
            || trust_domain
                .split('.')
                .any(|l| check_label("trust domain label", l).is_err())
        {
            return Err(IdentityError::BadTrustDomain(trust_domain.to_owned()));
        }
        Ok(Identity {
            service_account: service_account.to_owned(),
            namespace: namespace.to_owned(),
            trust_domain: trust_domain.to_owned(),
        })
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// `{sa}.{ns}.serviceaccount.identity.weft.{trust-domain}`: the TLS server name and
    /// the certificate's DNS SAN.
    pub fn dns_name(&self) -> String {
        format!(
            "{}.{}{MARKER}{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }

    /// `spiffe://{trust-domain}/ns/{ns}/sa/{sa}`: the certificate's URI SAN.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dns_name())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// Parses the DNS form.
    fn from_str(name: &str) -> Result<Identity, IdentityError> {
        let not = || IdentityError::NotAnIdentity(name.to_owned());
        let (workload, trust_domain) = name.split_once(MARKER).ok_or_else(not)?;
        let (sa, ns) = workload.split_once('.').ok_or_else(not)?;
        Identity::new(sa, ns, trust_domain)
    }
}

fn check_label(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadLabel {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let id = Identity::new("books", "shop", DEFAULT_TRUST_DOMAIN).unwrap();
        assert_eq!(
            id.dns_name(),
            "books.shop.serviceaccount.identity.weft.cluster.local"
        );
        assert_eq!(id.spiffe_id(), "spiffe://cluster.local/ns/shop/sa/books");
        assert_eq!(id.dns_name().parse::<Identity>().unwrap(), id);
    }

    #[test]
    fn bad_names_are_refused_with_the_part_at_fault() {
        let err = Identity::new("Books", "shop", "cluster.local").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("service account \"Books\" is not a DNS label"));
        assert!(matches!(
            Identity::new("a", "b", "bad..domain"),
            Err(IdentityError::BadTrustDomain(_))
        ));
        assert!(matches!(
            "books.shop.svc.cluster.local".parse::<Identity>(),
            Err(IdentityError::NotAnIdentity(_))
        ));
        assert!("a.b.c.serviceaccount.identity.weft.cluster.local"
            .parse::<Identity>()
            .is_err());
    }
}

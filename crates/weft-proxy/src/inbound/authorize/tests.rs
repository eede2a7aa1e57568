//! The authorization decision: networks and their exceptions, identities by name and
//! suffix, the default policies, and the controller's messages read whole.

use std::collections::HashMap;
use std::net::IpAddr;

use linkerd2_proxy_api::inbound::{self, authn};
use linkerd2_proxy_api::meta;

use super::{Authentication, DefaultPolicy, PortPolicy};

const WEB: &str = "web.default.serviceaccount.identity.weft.cluster.local";
const BOOKS: &str = "books.default.serviceaccount.identity.weft.cluster.local";
const OTHER_NS: &str = "web.shop.serviceaccount.identity.weft.cluster.local";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> linkerd2_proxy_api::net::IpNetwork {
    s.parse::<ipnet::IpNet>().unwrap().into()
}

/// A Server message as the controller sends it: `books-http`, one policy allowing
/// `identities`/`suffixes` from 198.18.0.0/15 except 198.18.0.1.
fn server(identities: &[&str], suffixes: &[&[&str]]) -> inbound::Server {
    use authn::permit_mesh_tls::{Clients, PermitClientIdentities};
    inbound::Server {
        protocol: None,
        server_ips: Vec::new(),
        authorizations: vec![inbound::Authz {
            networks: vec![inbound::Network {
                net: Some(net("198.18.0.0/15")),
                except: vec![net("198.18.0.1/32")],
            }],
            authentication: Some(inbound::Authn {
                permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
                    clients: Some(Clients::Identities(PermitClientIdentities {
                        identities: identities
                            .iter()
                            .map(|i| inbound::Identity {
                                name: (*i).to_owned(),
                            })
                            .collect(),
                        suffixes: suffixes
                            .iter()
                            .map(|s| inbound::IdentitySuffix {
                                parts: s.iter().map(|p| (*p).to_owned()).collect(),
                            })
                            .collect(),
                    })),
                })),
            }),
            labels: HashMap::new(),
            metadata: Some(meta::Metadata {
                kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                    group: "policy.weft.io".into(),
                    kind: "AuthorizationPolicy".into(),
                    name: "books-from-web".into(),
                    namespace: "default".into(),
                    section: String::new(),
                    port: 0,
                })),
            }),
        }],
        labels: HashMap::from([
            ("kind".to_owned(), "server".to_owned()),
            ("name".to_owned(), "books-http".to_owned()),
        ]),
    }
}

#[test]
fn a_named_identity_from_an_allowed_network_is_allowed() {
    let policy = PortPolicy::from_server(server(&[WEB], &[])).unwrap();
    let allowed = policy.authorize(ip("198.18.0.7"), Some(WEB), 8080).unwrap();
    assert_eq!(&*allowed.name.0, "books-from-web");
    assert_eq!(&*allowed.kind.0, "authorizationpolicy");
    assert_eq!(&*policy.server_name.0, "books-http");
}

#[test]
fn a_wrong_identity_an_unmeshed_caller_and_an_excepted_address_are_denied() {
    let policy = PortPolicy::from_server(server(&[WEB], &[])).unwrap();
    let denied = policy
        .authorize(ip("198.18.0.7"), Some(BOOKS), 8080)
        .unwrap_err();
    assert_eq!(
        denied.to_string(),
        format!("unauthorized: no authorization of server books-http allows identity {BOOKS} from 198.18.0.7 to port 8080")
    );
    let denied = policy.authorize(ip("198.18.0.7"), None, 8080).unwrap_err();
    assert!(denied.to_string().contains("an unauthenticated caller"));
    // The network's exception, and an address outside it.
    assert!(policy.authorize(ip("198.18.0.1"), Some(WEB), 8080).is_err());
    assert!(policy.authorize(ip("10.0.0.1"), Some(WEB), 8080).is_err());
}

#[test]
fn suffixes_match_whole_labels() {
    let ns: &[&str] = &[
        "default",
        "serviceaccount",
        "identity",
        "weft",
        "cluster",
        "local",
    ];
    let policy = PortPolicy::from_server(server(&[], &[ns])).unwrap();
    assert!(policy.authorize(ip("198.18.0.7"), Some(WEB), 80).is_ok());
    assert!(policy.authorize(ip("198.18.0.7"), Some(BOOKS), 80).is_ok());
    assert!(policy
        .authorize(ip("198.18.0.7"), Some(OTHER_NS), 80)
        .is_err());
    // "efault..." is not a label suffix of "default...".
    let partial: &[&str] = &[
        "efault",
        "serviceaccount",
        "identity",
        "weft",
        "cluster",
        "local",
    ];
    let policy = PortPolicy::from_server(server(&[], &[partial])).unwrap();
    assert!(policy.authorize(ip("198.18.0.7"), Some(WEB), 80).is_err());
    // The empty suffix: any identity, but still mTLS.
    let policy = PortPolicy::from_server(server(&[], &[&[]])).unwrap();
    assert!(policy
        .authorize(ip("198.18.0.7"), Some(OTHER_NS), 80)
        .is_ok());
    assert!(policy.authorize(ip("198.18.0.7"), None, 80).is_err());
}

#[test]
fn the_default_policies() {
    let everyone = PortPolicy::default_policy(DefaultPolicy::AllUnauthenticated);
    assert!(everyone.authorize(ip("203.0.113.9"), None, 80).is_ok());
    assert!(everyone.authorize(ip("::1"), None, 80).is_ok());

    let authenticated = PortPolicy::default_policy(DefaultPolicy::AllAuthenticated);
    assert!(authenticated
        .authorize(ip("203.0.113.9"), Some(WEB), 80)
        .is_ok());
    assert!(authenticated
        .authorize(ip("203.0.113.9"), None, 80)
        .is_err());

    let cluster = PortPolicy::default_policy(DefaultPolicy::ClusterAuthenticated);
    assert!(cluster.authorize(ip("198.18.3.4"), Some(WEB), 80).is_ok());
    assert!(cluster.authorize(ip("127.0.0.1"), Some(WEB), 80).is_ok());
    assert!(cluster.authorize(ip("203.0.113.9"), Some(WEB), 80).is_err());
    assert!(cluster.authorize(ip("198.18.3.4"), None, 80).is_err());

    let deny = PortPolicy::default_policy(DefaultPolicy::Deny);
    let denied = deny.authorize(ip("127.0.0.1"), Some(WEB), 80).unwrap_err();
    assert_eq!(&*denied.server_name, "deny");
    assert_eq!(&*denied.server_kind, "default");
}

#[test]
fn default_policies_parse_from_their_names() {
    for name in [
        "all-unauthenticated",
        "all-authenticated",
        "cluster-authenticated",
        "deny",
    ] {
        assert_eq!(name.parse::<DefaultPolicy>().unwrap().as_str(), name);
    }
    assert!("open".parse::<DefaultPolicy>().is_err());
}

#[test]
fn a_message_the_proxy_cannot_read_is_refused_whole() {
    let mut s = server(&[WEB], &[]);
    s.authorizations[0].authentication = None;
    let error = PortPolicy::from_server(s).unwrap_err();
    assert_eq!(error, "authorizations[0]: no authentication");
    let mut s = server(&[WEB], &[]);
    s.authorizations[0].networks[0].net = None;
    assert!(PortPolicy::from_server(s).is_err());
}

#[test]
fn unauthenticated_mesh_tls_clients_mean_any_mtls_caller() {
    let mut s = server(&[], &[]);
    s.authorizations[0].authentication = Some(inbound::Authn {
        permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(authn::permit_mesh_tls::Clients::Unauthenticated(
                authn::PermitUnauthenticated {},
            )),
        })),
    });
    let policy = PortPolicy::from_server(s).unwrap();
    assert_eq!(
        policy.authorizations[0].authentication,
        Authentication::AnyMeshTls
    );
    assert!(policy
        .authorize(ip("198.18.0.7"), Some(OTHER_NS), 80)
        .is_ok());
    assert!(policy.authorize(ip("198.18.0.7"), None, 80).is_err());
}

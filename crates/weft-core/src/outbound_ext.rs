//! The weft extension of `io.linkerd.proxy.outbound.OutboundPolicy`: the filters the
//! OutboundPolicies protocol of linkerd2-proxy-api 0.20 has no message for
//! (`URLRewrite`, `RequestMirror`), carried beside the policy without changing it.
//!
//! [`OutboundPolicyExt`] is wire-compatible with linkerd's `OutboundPolicy`: the same
//! fields with the same tags and linkerd's own nested types (`protocol = 1`,
//! `metadata = 2`), plus `extensions` at tag [`EXTENSIONS_TAG`]. A decoder of
//! linkerd's message (a Linkerd proxy) skips that tag as an unknown field and reads
//! the policy it always read, so the controller serves this one message to every
//! proxy on the protocol's own path. Declared with `prost`'s derive: no `.proto`, no
//! protoc (DESIGN: no `.proto` of our own for the Linkerd protocol).
//!
//! An extension names its place in the policy: the route (its metadata, as in the
//! policy's `HttpRoute`/`GrpcRoute`), the rule's index in that route, and for a
//! backend's filters the backend's index in the rule's distribution. Its filters apply
//! after the rule's (or backend's) own filters of the policy.

use linkerd2_proxy_api::http_route::{PathModifier, Ratio};
use linkerd2_proxy_api::meta::Metadata;
use linkerd2_proxy_api::outbound::{Backend, OutboundPolicy, ProxyProtocol};

/// The tag of [`OutboundPolicyExt::extensions`]: far above any tag linkerd's message
/// may take.
pub const EXTENSIONS_TAG: u32 = 1000;

/// `OutboundPolicy` with weft's extensions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboundPolicyExt {
    /// linkerd's `OutboundPolicy.protocol`.
    #[prost(message, optional, tag = "1")]
    pub protocol: Option<ProxyProtocol>,
    /// linkerd's `OutboundPolicy.metadata`.
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<Metadata>,
    /// The filters of rules and backends linkerd's messages cannot carry.
    #[prost(message, repeated, tag = "1000")]
    pub extensions: Vec<RouteExtension>,
}

impl OutboundPolicyExt {
    /// `policy` with `extensions`.
    pub fn new(policy: OutboundPolicy, extensions: Vec<RouteExtension>) -> OutboundPolicyExt {
        OutboundPolicyExt {
            protocol: policy.protocol,
            metadata: policy.metadata,
            extensions,
        }
    }

    /// The policy without the extensions: what a Linkerd proxy reads.
    pub fn policy(&self) -> OutboundPolicy {
        OutboundPolicy {
            protocol: self.protocol.clone(),
            metadata: self.metadata.clone(),
        }
    }

    /// Splits it into the policy and its extensions.
    pub fn into_parts(self) -> (OutboundPolicy, Vec<RouteExtension>) {
        (
            OutboundPolicy {
                protocol: self.protocol,
                metadata: self.metadata,
            },
            self.extensions,
        )
    }
}

impl From<OutboundPolicy> for OutboundPolicyExt {
    fn from(policy: OutboundPolicy) -> OutboundPolicyExt {
        OutboundPolicyExt::new(policy, Vec::new())
    }
}

/// The extended filters of one rule of one route.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteExtension {
    /// The route, as the policy's route metadata names it.
    #[prost(message, optional, tag = "1")]
    pub route: Option<Metadata>,
    /// The rule's index in the route's `rules`.
    #[prost(uint32, tag = "2")]
    pub rule: u32,
    /// The rule's filters.
    #[prost(message, repeated, tag = "3")]
    pub filters: Vec<FilterExtension>,
    /// Filters of the rule's backends.
    #[prost(message, repeated, tag = "4")]
    pub backend_filters: Vec<BackendFilterExtension>,
}

/// The extended filters of one backend of a rule.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BackendFilterExtension {
    /// The backend's index in the rule's distribution (`random_available.backends`).
    #[prost(uint32, tag = "1")]
    pub backend: u32,
    #[prost(message, repeated, tag = "2")]
    pub filters: Vec<FilterExtension>,
}

/// One filter linkerd's messages have no kind for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FilterExtension {
    #[prost(oneof = "filter_extension::Kind", tags = "1, 2")]
    pub kind: Option<filter_extension::Kind>,
}

pub mod filter_extension {
    /// The filter.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        UrlRewrite(super::UrlRewrite),
        /// Boxed: a backend is large, and a rewrite small.
        #[prost(message, boxed, tag = "2")]
        RequestMirror(Box<super::RequestMirror>),
    }
}

/// The Gateway API's `URLRewrite`: the request forwarded with another host or path.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UrlRewrite {
    /// The `Host` (`:authority`) the backend sees; empty: unchanged.
    #[prost(string, tag = "1")]
    pub hostname: String,
    /// The path the backend sees (`full`, or `prefix`: the prefix the rule matched
    /// replaced); unset: unchanged.
    #[prost(message, optional, tag = "2")]
    pub path: Option<PathModifier>,
}

/// The Gateway API's `RequestMirror`: a copy of the request sent to another backend,
/// its answer discarded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestMirror {
    /// Where copies go (a balancer over a Service port's endpoints, as a rule's
    /// backends are).
    #[prost(message, optional, tag = "1")]
    pub backend: Option<Backend>,
    /// The share of requests mirrored (`percent` or `fraction`); unset: every request.
    #[prost(message, optional, tag = "2")]
    pub ratio: Option<Ratio>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::meta::{metadata, Resource};
    use linkerd2_proxy_api::outbound::{backend, proxy_protocol, HttpRoute};
    use prost::Message as _;

    fn resource(group: &str, kind: &str, name: &str, port: u32) -> Metadata {
        Metadata {
            kind: Some(metadata::Kind::Resource(Resource {
                group: group.into(),
                kind: kind.into(),
                name: name.into(),
                namespace: "default".into(),
                section: String::new(),
                port,
            })),
        }
    }

    fn policy() -> OutboundPolicy {
        let route = HttpRoute {
            metadata: Some(resource(
                "gateway.networking.k8s.io",
                "HTTPRoute",
                "books",
                0,
            )),
            hosts: Vec::new(),
            rules: vec![Default::default()],
        };
        OutboundPolicy {
            protocol: Some(ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                    timeout: Some(prost_types::Duration {
                        seconds: 10,
                        nanos: 0,
                    }),
                    opaque: None,
                    http1: Some(proxy_protocol::Http1 {
                        routes: vec![route.clone()],
                        failure_accrual: None,
                    }),
                    http2: Some(proxy_protocol::Http2 {
                        routes: vec![route],
                        failure_accrual: None,
                    }),
                })),
            }),
            metadata: Some(resource("core", "Service", "books", 8080)),
        }
    }

    fn extensions() -> Vec<RouteExtension> {
        use linkerd2_proxy_api::http_route::path_modifier::Replace;
        vec![RouteExtension {
            route: Some(resource(
                "gateway.networking.k8s.io",
                "HTTPRoute",
                "books",
                0,
            )),
            rule: 0,
            filters: vec![
                FilterExtension {
                    kind: Some(filter_extension::Kind::UrlRewrite(UrlRewrite {
                        hostname: "books.example".into(),
                        path: Some(PathModifier {
                            replace: Some(Replace::Prefix("/v2".into())),
                        }),
                    })),
                },
                FilterExtension {
                    kind: Some(filter_extension::Kind::RequestMirror(Box::new(
                        RequestMirror {
                            backend: Some(Backend {
                                metadata: Some(resource("core", "Service", "books-shadow", 8080)),
                                queue: None,
                                kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
                                    discovery: Some(backend::EndpointDiscovery {
                                        kind: Some(backend::endpoint_discovery::Kind::Dst(
                                            backend::endpoint_discovery::DestinationGet {
                                                path: "books-shadow.default.svc.cluster.local:8080"
                                                    .into(),
                                            },
                                        )),
                                    }),
                                    load: None,
                                })),
                            }),
                            ratio: Some(Ratio {
                                numerator: 1,
                                denominator: 10,
                            }),
                        },
                    ))),
                },
            ],
            backend_filters: vec![BackendFilterExtension {
                backend: 0,
                filters: vec![FilterExtension {
                    kind: Some(filter_extension::Kind::UrlRewrite(UrlRewrite {
                        hostname: String::new(),
                        path: Some(PathModifier {
                            replace: Some(Replace::Full("/".into())),
                        }),
                    })),
                }],
            }],
        }]
    }

    #[test]
    fn a_linkerd_decoder_reads_the_policy_and_skips_the_extensions() {
        let policy = policy();
        let ext = OutboundPolicyExt::new(policy.clone(), extensions());
        let bytes = ext.encode_to_vec();
        assert!(bytes.len() > policy.encode_to_vec().len());

        let linkerd = OutboundPolicy::decode(bytes.as_slice()).expect("linkerd's message decodes");
        assert_eq!(linkerd, policy);

        // And back: linkerd's encoding is ours without extensions, and ours round-trips.
        let ours = OutboundPolicyExt::decode(policy.encode_to_vec().as_slice()).unwrap();
        assert_eq!(ours, OutboundPolicyExt::from(policy.clone()));
        assert!(ours.extensions.is_empty());
        let again = OutboundPolicyExt::decode(bytes.as_slice()).unwrap();
        assert_eq!(again, ext);
        assert_eq!(again.policy(), policy);
        assert_eq!(again.into_parts().1, extensions());
    }
}

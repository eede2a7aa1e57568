//! Reading the policy objects of the mesh directory strictly, as the API server would
//! take them with strict field validation: a wrong type, a missing required field or
//! an unknown field is refused with the file, the object and the field
//! (`policy.yaml: Server default/books: spec.prot: unknown field`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;
use weft_core::mesh::GatewayObject;

use crate::objects;

use super::{ObjectKey, API_VERSION};

pub const SERVER: &str = "Server";
pub const AUTHORIZATION_POLICY: &str = "AuthorizationPolicy";
pub const MESH_TLS_AUTHENTICATION: &str = "MeshTLSAuthentication";
pub const NETWORK_AUTHENTICATION: &str = "NetworkAuthentication";

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Object<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: S,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metadata {
    name: String,
    namespace: Option<String>,
    generation: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

/// `Server.spec`: which port of which pods.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    pub pod_selector: LabelSelector,
    pub port: PortRef,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Empty: every pod of the namespace (as Kubernetes reads an empty selector).
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A container port by number or by name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum ProxyProtocol {
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
    #[serde(rename = "HTTP/1")]
    Http1,
    #[serde(rename = "HTTP/2")]
    Http2,
    #[serde(rename = "gRPC")]
    Grpc,
    #[serde(rename = "opaque")]
    Opaque,
    #[serde(rename = "TLS")]
    Tls,
}

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub required_authentication_refs: Vec<TargetRef>,
}

/// A reference by group, kind, name (and namespace where allowed).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `MeshTLSAuthentication.spec`: exactly one of the two lists.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTlsAuthenticationSpec {
    /// Identity names (`web.default.serviceaccount.identity.weft.cluster.local`), `*`
    /// (any mesh identity) or `*.` and a suffix.
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    /// ServiceAccounts (or Namespaces: every service account in it).
    #[serde(default)]
    pub identity_refs: Option<Vec<TargetRef>>,
}

/// `NetworkAuthentication.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkAuthenticationSpec {
    pub networks: Vec<NetworkSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    pub cidr: String,
    #[serde(default)]
    pub except: Vec<String>,
}

/// A policy object's spec, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    Server(ServerSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
    MeshTls(MeshTlsAuthenticationSpec),
    Network(NetworkAuthenticationSpec),
}

/// An object that parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub key: ObjectKey,
    /// The file it is in, relative to the mesh directory.
    pub file: String,
    pub generation: Option<i64>,
    pub spec: Spec,
}

/// An object that did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unparsed {
    /// `None` when it has no name.
    pub key: Option<ObjectKey>,
    pub file: String,
    /// `Server default/books: spec.port` (object and field).
    pub location: String,
    pub message: String,
    /// Its `metadata.generation`, when it has one that is a number.
    pub generation: Option<i64>,
}

/// Every policy object of the mesh directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub parsed: Vec<Parsed>,
    pub unparsed: Vec<Unparsed>,
}

/// The kind's static name, if it is a policy kind.
pub fn policy_kind(kind: &str) -> Option<&'static str> {
    [
        SERVER,
        AUTHORIZATION_POLICY,
        MESH_TLS_AUTHENTICATION,
        NETWORK_AUTHENTICATION,
    ]
    .into_iter()
    .find(|k| *k == kind)
}

/// Parses the policy objects among those the mesh directory handed over (other kinds
/// are the routes').
pub fn parse(objects: &[GatewayObject]) -> Objects {
    let mut out = Objects::default();
    for object in objects {
        let Some(kind) = policy_kind(&object.kind) else {
            continue;
        };
        let result = match kind {
            SERVER => typed::<ServerSpec>(object).map(|(m, s)| (m, Spec::Server(s))),
            AUTHORIZATION_POLICY => typed::<AuthorizationPolicySpec>(object)
                .map(|(m, s)| (m, Spec::AuthorizationPolicy(s))),
            MESH_TLS_AUTHENTICATION => {
                typed::<MeshTlsAuthenticationSpec>(object).map(|(m, s)| (m, Spec::MeshTls(s)))
            }
            _ => typed::<NetworkAuthenticationSpec>(object).map(|(m, s)| (m, Spec::Network(s))),
        };
        let name = object
            .value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        let namespace = object
            .value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let key = name.map(|name| ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        match result.and_then(|(meta, spec)| {
            check_meta(&meta).map_err(|(f, m)| (format!("{}: {f}", object.location), m))?;
            Ok((meta, spec))
        }) {
            Ok((meta, spec)) => out.parsed.push(Parsed {
                key: key.expect("a parsed object has a name"),
                file: object.file.clone(),
                generation: meta.generation,
                spec,
            }),
            Err((location, message)) => out.unparsed.push(Unparsed {
                key,
                file: object.file.clone(),
                location,
                message,
                generation: object
                    .value
                    .get("metadata")
                    .and_then(|m| m.get("generation"))
                    .and_then(Value::as_i64),
            }),
        }
    }
    out
}

fn check_meta(meta: &Metadata) -> Result<(), (String, String)> {
    for (what, value) in [
        ("name", Some(&meta.name)),
        ("namespace", meta.namespace.as_ref()),
    ] {
        if let Some(v) = value {
            if !weft_core::mesh::is_dns_label(v) {
                return Err((
                    format!("metadata.{what}"),
                    format!(
                        "{v:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Deserializes `object`'s metadata and spec; on failure, the location (object and
/// field) and the message.
fn typed<S: serde::de::DeserializeOwned>(
    object: &GatewayObject,
) -> Result<(Metadata, S), (String, String)> {
    objects::check_api_version(object, &[API_VERSION])?;
    let typed: Object<S> = objects::deserialize(object)?;
    Ok((typed.metadata, typed.spec))
}

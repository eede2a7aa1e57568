//! Every policy object at one moment: each object checked, the AuthorizationPolicies'
//! references resolved, a condition per object, and the [`inbound::Server`] a
//! workload's port gets.
//!
//! An object that does not parse or check, or a policy whose references do not
//! resolve (an unknown Server, an unknown authentication, a kind that cannot be
//! referred to), is reported (`Accepted` / `ResolvedRefs` false with its reason) and
//! its last valid version, if it had one, keeps serving: a bad edit never opens or
//! closes a port by accident.
//!
//! Semantics (Linkerd's):
//! - a port a Server selects allows only what the policies targeting that Server, or
//!   the Server's namespace, authorize: a Server without policies denies everyone;
//! - a policy allows a caller when every one of its `requiredAuthenticationRefs`
//!   does (at most one MeshTLSAuthentication and one NetworkAuthentication); with none,
//!   it allows everyone;
//! - a port no Server selects gets the default policy: the workload's
//!   [`DEFAULT_POLICY_LABEL`], else the controller's.
//!
//! Several Servers selecting the same port: the first by name serves it.

use std::collections::{BTreeMap, HashMap};

use linkerd2_proxy_api::inbound::{self, authn, proxy_protocol};
use linkerd2_proxy_api::meta;
use weft_core::mesh::{Mesh, Workload};

use super::parse::{
    self, AuthorizationPolicySpec, MeshTlsAuthenticationSpec, NetworkAuthenticationSpec, Parsed,
    PortRef, ProxyProtocol, ServerSpec, Spec,
};
use super::{DefaultPolicy, ObjectKey, PolicyConfig, DEFAULT_POLICY_LABEL, POLICY_GROUP};

/// How long a proxy looks at a connection to detect its protocol (Linkerd's default).
const DETECT_TIMEOUT_SECS: i64 = 10;

/// One condition of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub ok: bool,
    /// `Accepted`, `Invalid`, `ResolvedRefs`, `TargetNotFound`,
    /// `AuthenticationNotFound`, `InvalidKind`.
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    fn ok(reason: &'static str) -> Condition {
        Condition {
            ok: true,
            reason,
            message: String::new(),
        }
    }

    fn failed(reason: &'static str, message: String) -> Condition {
        Condition {
            ok: false,
            reason,
            message,
        }
    }
}

/// An object's status: `Accepted` (it parsed and checked), `ResolvedRefs` (its
/// references resolved: AuthorizationPolicies only) and what serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectReport {
    /// The object, or `None` (and its file and location in `accepted`) when it has no
    /// name.
    pub key: Option<ObjectKey>,
    pub file: String,
    /// The `metadata.generation` the conditions were computed from (the Kubernetes
    /// status writer's `observedGeneration`), when the object has one.
    pub generation: Option<i64>,
    pub accepted: Condition,
    pub resolved_refs: Option<Condition>,
    /// Whether a version of it serves: this one, or the last valid one (`kept`).
    pub serving: bool,
    pub kept: bool,
}

impl ObjectReport {
    /// Whether every condition is true.
    pub fn ok(&self) -> bool {
        self.accepted.ok && self.resolved_refs.as_ref().is_none_or(|c| c.ok)
    }
}

/// What an AuthorizationPolicy applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Server(String),
    Namespace,
}

/// A policy whose references resolved: its target and the authorization it grants.
#[derive(Clone, Debug, PartialEq)]
struct Resolved {
    target: Target,
    authz: inbound::Authz,
}

/// The policy objects at one moment, and the last valid version of each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyIndex {
    /// The last valid version of every object (parsed and checked), serving.
    valid: BTreeMap<ObjectKey, Parsed>,
    /// The AuthorizationPolicies serving, resolved, by (namespace, name).
    policies: BTreeMap<(String, String), Resolved>,
    reports: Vec<ObjectReport>,
    config: PolicyConfig,
    trust_domain: String,
}

impl PolicyIndex {
    /// An index of no objects.
    pub fn empty(config: PolicyConfig, trust_domain: &str) -> PolicyIndex {
        PolicyIndex {
            config,
            trust_domain: trust_domain.to_owned(),
            ..PolicyIndex::default()
        }
    }

    /// The index of `mesh`'s policy objects, keeping `previous`'s valid versions of
    /// objects that turned invalid.
    pub fn build(previous: &PolicyIndex, mesh: &Mesh) -> PolicyIndex {
        for w in &mesh.workloads {
            if let Some(Err(problem)) = w
                .labels
                .get(DEFAULT_POLICY_LABEL)
                .map(|v| v.parse::<DefaultPolicy>())
            {
                tracing::warn!(workload = %w.name, namespace = %w.namespace, label = DEFAULT_POLICY_LABEL, %problem, "the workload's default inbound policy is invalid: its ports without a Server deny every caller until it is fixed");
            }
        }
        let objects = parse::parse(&mesh.gateway);
        let trust_domain = mesh.trust_domain.as_str();
        let mut valid: BTreeMap<ObjectKey, Parsed> = BTreeMap::new();
        let mut reports = Vec::new();
        for p in objects.parsed {
            match check(&p, trust_domain) {
                Ok(()) => {
                    reports.push(ObjectReport {
                        key: Some(p.key.clone()),
                        file: p.file.clone(),
                        generation: p.generation,
                        accepted: Condition::ok("Accepted"),
                        resolved_refs: None,
                        serving: true,
                        kept: false,
                    });
                    valid.insert(p.key.clone(), p);
                }
                Err((field, message)) => {
                    let message = format!("{}: {field}: {message}", p.key);
                    reports.push(invalid(
                        previous,
                        &mut valid,
                        Some(&p.key),
                        (&p.file, p.generation),
                        message,
                    ));
                }
            }
        }
        for u in objects.unparsed {
            let message = format!("{}: {}", u.location, u.message);
            reports.push(invalid(
                previous,
                &mut valid,
                u.key.as_ref(),
                (&u.file, u.generation),
                message,
            ));
        }

        // The AuthorizationPolicies' references, against the valid objects.
        let mut policies = BTreeMap::new();
        for report in reports.iter_mut() {
            let Some(key) = report.key.clone() else {
                continue;
            };
            if key.kind != parse::AUTHORIZATION_POLICY {
                continue;
            }
            let id = (key.namespace.clone(), key.name.clone());
            let resolved = match valid.get(&key).map(|p| &p.spec) {
                Some(Spec::AuthorizationPolicy(spec)) if !report.kept => {
                    resolve(&key, spec, &valid, trust_domain, place(&report.file))
                }
                // A kept version was resolved when it was valid.
                _ => {
                    if let Some(r) = previous.policies.get(&id) {
                        policies.insert(id, r.clone());
                    }
                    continue;
                }
            };
            match resolved {
                Ok(r) => {
                    report.resolved_refs = Some(Condition::ok("ResolvedRefs"));
                    policies.insert(id, r);
                }
                Err((reason, message)) => {
                    let kept = previous.policies.get(&id);
                    report.resolved_refs = Some(Condition::failed(reason, message));
                    report.serving = kept.is_some();
                    report.kept = kept.is_some();
                    if let Some(r) = kept {
                        policies.insert(id, r.clone());
                    }
                }
            }
        }
        PolicyIndex {
            valid,
            policies,
            reports,
            config: previous.config.clone(),
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// Every object's status, in the order of the mesh directory.
    pub fn reports(&self) -> &[ObjectReport] {
        &self.reports
    }

    /// The reports that differ from `before`'s (new, changed): what to log.
    pub fn changes<'a>(&'a self, before: &PolicyIndex) -> Vec<&'a ObjectReport> {
        self.reports
            .iter()
            .filter(|r| !before.reports.contains(r))
            .collect()
    }

    /// The default policy of `workload`'s ports no Server selects: its label's, else
    /// the controller's. A label that names no policy fails closed (`deny`), as a typo
    /// must not open the workload; [`PolicyIndex::build`] logs it.
    pub fn default_policy(&self, workload: &Workload) -> DefaultPolicy {
        match workload.labels.get(DEFAULT_POLICY_LABEL) {
            Some(v) => v.parse().unwrap_or(DefaultPolicy::Deny),
            None => self.config.default_policy,
        }
    }

    /// The Server message for `port` of `workload`.
    pub fn server(&self, workload: &Workload, port: u16) -> inbound::Server {
        let selected = self.valid.iter().find_map(|(key, p)| match &p.spec {
            Spec::Server(s)
                if key.namespace == workload.namespace && selects(s, workload, port) =>
            {
                Some((key, s))
            }
            _ => None,
        });
        let Some((key, spec)) = selected else {
            let policy = self.default_policy(workload);
            return inbound::Server {
                protocol: Some(protocol(ProxyProtocol::Unknown)),
                server_ips: Vec::new(),
                authorizations: default_authorizations(policy, &self.config.cluster_networks),
                labels: labels("default", policy.as_str()),
            };
        };
        let authorizations = self
            .policies
            .iter()
            .filter(|((ns, _), r)| {
                *ns == key.namespace
                    && match &r.target {
                        Target::Server(name) => *name == key.name,
                        Target::Namespace => true,
                    }
            })
            .map(|(_, r)| r.authz.clone())
            .collect();
        inbound::Server {
            protocol: Some(protocol(spec.proxy_protocol)),
            server_ips: Vec::new(),
            authorizations,
            labels: labels("server", &key.name),
        }
    }
}

/// The report of an object that is not valid now, keeping its last valid version.
fn invalid(
    previous: &PolicyIndex,
    valid: &mut BTreeMap<ObjectKey, Parsed>,
    key: Option<&ObjectKey>,
    (file, generation): (&str, Option<i64>),
    message: String,
) -> ObjectReport {
    let kept = key.and_then(|k| previous.valid.get(k));
    if let (Some(k), Some(p)) = (key, kept) {
        valid.insert(k.clone(), p.clone());
    }
    ObjectReport {
        key: key.cloned(),
        file: file.to_owned(),
        generation,
        accepted: Condition::failed("Invalid", message),
        resolved_refs: None,
        serving: kept.is_some(),
        kept: kept.is_some(),
    }
}

fn labels(kind: &str, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("group".to_owned(), POLICY_GROUP.to_owned()),
        ("kind".to_owned(), kind.to_owned()),
        ("name".to_owned(), name.to_owned()),
    ])
}

fn protocol(p: ProxyProtocol) -> inbound::ProxyProtocol {
    use proxy_protocol::Kind;
    let kind = match p {
        ProxyProtocol::Unknown => Kind::Detect(proxy_protocol::Detect {
            timeout: Some(prost_types::Duration {
                seconds: DETECT_TIMEOUT_SECS,
                nanos: 0,
            }),
            http_routes: Vec::new(),
            http_local_rate_limit: None,
        }),
        ProxyProtocol::Http1 => Kind::Http1(proxy_protocol::Http1::default()),
        ProxyProtocol::Http2 => Kind::Http2(proxy_protocol::Http2::default()),
        ProxyProtocol::Grpc => Kind::Grpc(proxy_protocol::Grpc::default()),
        ProxyProtocol::Opaque => Kind::Opaque(proxy_protocol::Opaque {}),
        ProxyProtocol::Tls => Kind::Tls(proxy_protocol::Tls {}),
    };
    inbound::ProxyProtocol { kind: Some(kind) }
}

fn everywhere() -> Vec<inbound::Network> {
    ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|n| n.parse::<ipnet::IpNet>().ok())
        .map(|n| inbound::Network {
            net: Some(n.into()),
            except: Vec::new(),
        })
        .collect()
}

fn any_identity() -> inbound::Authn {
    use authn::permit_mesh_tls::{Clients, PermitClientIdentities};
    inbound::Authn {
        permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(Clients::Identities(PermitClientIdentities {
                identities: Vec::new(),
                suffixes: vec![inbound::IdentitySuffix { parts: Vec::new() }],
            })),
        })),
    }
}

fn unauthenticated() -> inbound::Authn {
    inbound::Authn {
        permit: Some(authn::Permit::Unauthenticated(
            authn::PermitUnauthenticated {},
        )),
    }
}

/// The authorizations of a default policy.
pub fn default_authorizations(
    policy: DefaultPolicy,
    cluster_networks: &[ipnet::IpNet],
) -> Vec<inbound::Authz> {
    let (networks, authentication) = match policy {
        DefaultPolicy::Deny => return Vec::new(),
        DefaultPolicy::AllUnauthenticated => (everywhere(), unauthenticated()),
        DefaultPolicy::AllAuthenticated => (everywhere(), any_identity()),
        DefaultPolicy::ClusterAuthenticated => (
            cluster_networks
                .iter()
                .map(|n| inbound::Network {
                    net: Some((*n).into()),
                    except: Vec::new(),
                })
                .collect(),
            any_identity(),
        ),
    };
    vec![inbound::Authz {
        networks,
        authentication: Some(authentication),
        labels: labels("default", policy.as_str()),
        metadata: Some(meta::Metadata {
            kind: Some(meta::metadata::Kind::Default(policy.as_str().to_owned())),
        }),
    }]
}

/// Whether Server `s` selects `port` of `workload`.
fn selects(s: &ServerSpec, workload: &Workload, port: u16) -> bool {
    let labels_match = s
        .pod_selector
        .match_labels
        .iter()
        .all(|(k, v)| workload.labels.get(k) == Some(v));
    let port_match = match &s.port {
        PortRef::Number(n) => *n == port,
        PortRef::Name(name) => workload
            .ports
            .iter()
            .any(|p| p.port == port && p.name.as_deref() == Some(name.as_str())),
    };
    labels_match && port_match
}

/// Checks what parsing cannot: the field at fault and the problem.
fn check(p: &Parsed, trust_domain: &str) -> Result<(), (String, String)> {
    match &p.spec {
        Spec::Server(s) => {
            match &s.port {
                PortRef::Number(0) => {
                    return Err(("spec.port".into(), "port 0 is not a port".into()))
                }
                PortRef::Name(n) if n.is_empty() || n.len() > 15 => {
                    return Err((
                        "spec.port".into(),
                        format!("{n:?} is not a port name (1 to 15 characters)"),
                    ))
                }
                _ => {}
            }
            Ok(())
        }
        Spec::AuthorizationPolicy(_) => Ok(()),
        Spec::MeshTls(m) => mesh_tls(m, &p.key.namespace, trust_domain).map(|_| ()),
        Spec::Network(n) => networks(n).map(|_| ()),
    }
}

/// The Authn of a MeshTLSAuthentication.
fn mesh_tls(
    m: &MeshTlsAuthenticationSpec,
    namespace: &str,
    trust_domain: &str,
) -> Result<inbound::Authn, (String, String)> {
    use authn::permit_mesh_tls::{Clients, PermitClientIdentities};
    let mut ids = PermitClientIdentities::default();
    match (&m.identities, &m.identity_refs) {
        (Some(list), None) if !list.is_empty() => {
            for (i, id) in list.iter().enumerate() {
                let field = format!("spec.identities[{i}]");
                if id == "*" {
                    ids.suffixes
                        .push(inbound::IdentitySuffix { parts: Vec::new() });
                } else if let Some(suffix) = id.strip_prefix("*.") {
                    if !is_dns_name(suffix) {
                        return Err((
                            field,
                            format!("{id:?}: the suffix after \"*.\" is not a DNS name"),
                        ));
                    }
                    ids.suffixes.push(inbound::IdentitySuffix {
                        parts: suffix.split('.').map(str::to_owned).collect(),
                    });
                } else if is_dns_name(id) {
                    ids.identities.push(inbound::Identity { name: id.clone() });
                } else {
                    return Err((
                        field,
                        format!("{id:?} is not an identity name (SA.NS.serviceaccount.identity.weft.{trust_domain}), \"*\" or \"*.\" and a suffix"),
                    ));
                }
            }
        }
        (None, Some(refs)) if !refs.is_empty() => {
            for (i, r) in refs.iter().enumerate() {
                let field = format!("spec.identityRefs[{i}]");
                if !matches!(r.group.as_deref(), None | Some("" | "core")) {
                    return Err((
                        format!("{field}.group"),
                        format!(
                            "{:?}: a ServiceAccount or Namespace is of the core group (\"\")",
                            r.group.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                let ns = r.namespace.as_deref().unwrap_or(namespace);
                match r.kind.as_str() {
                    "ServiceAccount" => {
                        let id = weft_core::identity::Identity::new(&r.name, ns, trust_domain)
                            .map_err(|e| (format!("{field}.name"), e.to_string()))?;
                        ids.identities.push(inbound::Identity {
                            name: id.dns_name(),
                        });
                    }
                    "Namespace" => {
                        let id = weft_core::identity::Identity::new("x", &r.name, trust_domain)
                            .map_err(|e| (format!("{field}.name"), e.to_string()))?;
                        // Every service account of the namespace: the name past `x.`.
                        let name = id.dns_name();
                        ids.suffixes.push(inbound::IdentitySuffix {
                            parts: name[2..].split('.').map(str::to_owned).collect(),
                        });
                    }
                    other => {
                        return Err((
                            format!("{field}.kind"),
                            format!("{other} cannot be referred to: ServiceAccount or Namespace"),
                        ))
                    }
                }
            }
        }
        (Some(_), Some(_)) => {
            return Err((
                "spec".into(),
                "give identities or identityRefs, not both".into(),
            ))
        }
        _ => {
            return Err((
                "spec".into(),
                "give a non-empty identities or identityRefs list".into(),
            ))
        }
    }
    Ok(inbound::Authn {
        permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(Clients::Identities(ids)),
        })),
    })
}

/// The networks of a NetworkAuthentication.
fn networks(n: &NetworkAuthenticationSpec) -> Result<Vec<inbound::Network>, (String, String)> {
    if n.networks.is_empty() {
        return Err((
            "spec.networks".into(),
            "no networks: list at least one".into(),
        ));
    }
    let cidr = |s: &str, field: String| {
        s.trim()
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.trim().parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                (
                    field,
                    format!("{s:?} is not a CIDR (198.18.0.0/15) or an address"),
                )
            })
    };
    n.networks
        .iter()
        .enumerate()
        .map(|(i, net)| {
            let base = cidr(&net.cidr, format!("spec.networks[{i}].cidr"))?;
            let except = net
                .except
                .iter()
                .enumerate()
                .map(|(j, e)| cidr(e, format!("spec.networks[{i}].except[{j}]")).map(Into::into))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(inbound::Network {
                net: Some(base.into()),
                except,
            })
        })
        .collect()
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(weft_core::mesh::is_dns_label)
}

/// Where an object of `file` comes from, for messages: the cluster (the kube source),
/// else the mesh directory.
fn place(file: &str) -> &'static str {
    if file == crate::kube::GATEWAY_FILE {
        "in the cluster"
    } else {
        "in the mesh directory"
    }
}

/// Resolves an AuthorizationPolicy's references against the valid objects (`place`:
/// where they were looked for, for messages).
fn resolve(
    key: &ObjectKey,
    spec: &AuthorizationPolicySpec,
    valid: &BTreeMap<ObjectKey, Parsed>,
    trust_domain: &str,
    place: &str,
) -> Result<Resolved, (&'static str, String)> {
    let t = &spec.target_ref;
    let target = match (t.group.as_deref(), t.kind.as_str()) {
        (Some(POLICY_GROUP), "Server") => {
            if t.namespace.as_ref().is_some_and(|ns| *ns != key.namespace) {
                return Err((
                    "InvalidKind",
                    format!("{key}: spec.targetRef: a policy targets a Server of its own namespace ({})", key.namespace),
                ));
            }
            let server = ObjectKey {
                kind: parse::SERVER,
                namespace: key.namespace.clone(),
                name: t.name.clone(),
            };
            if !valid.contains_key(&server) {
                return Err((
                    "TargetNotFound",
                    format!("{key}: spec.targetRef: no valid {server} {place}"),
                ));
            }
            Target::Server(t.name.clone())
        }
        (None | Some("" | "core"), "Namespace") => {
            if t.name != key.namespace {
                return Err((
                    "InvalidKind",
                    format!("{key}: spec.targetRef: a policy may target only its own namespace ({}), not {}", key.namespace, t.name),
                ));
            }
            Target::Namespace
        }
        (group, kind) => {
            return Err((
                "InvalidKind",
                format!(
                    "{key}: spec.targetRef: {kind} of group {:?} cannot be targeted: a Server (group {POLICY_GROUP}) or a Namespace",
                    group.unwrap_or_default()
                ),
            ))
        }
    };
    let mut authn = None;
    let mut nets = None;
    for (i, r) in spec.required_authentication_refs.iter().enumerate() {
        let field = format!("spec.requiredAuthenticationRefs[{i}]");
        if r.group.as_deref() != Some(POLICY_GROUP) {
            return Err((
                "InvalidKind",
                format!(
                    "{key}: {field}.group: {:?}; authentications are of group {POLICY_GROUP}",
                    r.group.as_deref().unwrap_or_default()
                ),
            ));
        }
        let kind = match r.kind.as_str() {
            "MeshTLSAuthentication" => parse::MESH_TLS_AUTHENTICATION,
            "NetworkAuthentication" => parse::NETWORK_AUTHENTICATION,
            other => {
                return Err((
                    "InvalidKind",
                    format!("{key}: {field}.kind: {other} is not an authentication: MeshTLSAuthentication or NetworkAuthentication"),
                ))
            }
        };
        let target = ObjectKey {
            kind,
            namespace: r.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
            name: r.name.clone(),
        };
        let Some(found) = valid.get(&target) else {
            return Err((
                "AuthenticationNotFound",
                format!("{key}: {field}: no valid {target} {place}"),
            ));
        };
        let twice = |what: &str| {
            Err((
                "InvalidKind",
                format!("{key}: {field}: a second {what}; a policy requires at most one of each kind (write one listing everything)"),
            ))
        };
        match &found.spec {
            Spec::MeshTls(m) => {
                if authn.is_some() {
                    return twice("MeshTLSAuthentication");
                }
                authn = Some(
                    mesh_tls(m, &target.namespace, trust_domain)
                        .map_err(|(f, m)| ("InvalidKind", format!("{target}: {f}: {m}")))?,
                );
            }
            Spec::Network(n) => {
                if nets.is_some() {
                    return twice("NetworkAuthentication");
                }
                nets = Some(
                    networks(n).map_err(|(f, m)| ("InvalidKind", format!("{target}: {f}: {m}")))?,
                );
            }
            _ => {
                return Err((
                    "InvalidKind",
                    format!("{key}: {field}: {target} is not an authentication"),
                ))
            }
        }
    }
    let mut labels = labels("authorizationpolicy", &key.name);
    labels.insert("namespace".into(), key.namespace.clone());
    Ok(Resolved {
        target,
        authz: inbound::Authz {
            networks: nets.unwrap_or_else(everywhere),
            authentication: Some(authn.unwrap_or_else(unauthenticated)),
            labels,
            metadata: Some(meta::Metadata {
                kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                    group: POLICY_GROUP.to_owned(),
                    kind: parse::AUTHORIZATION_POLICY.to_owned(),
                    name: key.name.clone(),
                    namespace: key.namespace.clone(),
                    section: String::new(),
                    port: 0,
                })),
            }),
        },
    })
}

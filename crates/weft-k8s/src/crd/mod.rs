//! weft's custom resources: the `policy.weft.io` policy objects ([`policy`]) and the
//! `operator.weft.io` `ControlPlane` and `DataPlane` ([`operator`]), derived with
//! kube's `CustomResource` and schemars, with the validation the API server applies
//! (required fields, enums, name patterns, port ranges, CEL rules), printer columns
//! and a status subresource.
//!
//! [`all`] gives the CustomResourceDefinitions, [`yaml`] and [`documents`] render them
//! (and any other object) as `weft install --crds` prints them.

pub mod common;
pub mod operator;
pub mod policy;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::Serialize;

pub use common::{Condition, ConditionStatus};

/// The label every object weft installs carries (`app.kubernetes.io/part-of: weft`),
/// so `weft uninstall` and `kubectl ... -l` find them.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "weft");

/// A rendering failed (an object that cannot be serialized: a bug, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("rendering {what} as YAML: {source}")]
pub struct RenderError {
    what: String,
    #[source]
    source: serde_yaml_ng::Error,
}

/// Every CustomResourceDefinition weft installs, in a stable order (policy first).
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        policy::Server::crd(),
        policy::AuthorizationPolicy::crd(),
        policy::MeshTLSAuthentication::crd(),
        policy::NetworkAuthentication::crd(),
        operator::ControlPlane::crd(),
        operator::DataPlane::crd(),
    ];
    for crd in &mut crds {
        crd.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(PART_OF.0.to_owned(), PART_OF.1.to_owned());
    }
    crds
}

/// One object as a YAML document (without the `---` separator).
pub fn yaml<T: Serialize>(what: &str, object: &T) -> Result<String, RenderError> {
    serde_yaml_ng::to_string(object).map_err(|source| RenderError {
        what: what.to_owned(),
        source,
    })
}

/// YAML documents joined as one stream, each started by `---`.
pub fn documents<I: IntoIterator<Item = String>>(docs: I) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The CRDs as `weft install --crds` prints them.
pub fn render() -> Result<String, RenderError> {
    let docs = all()
        .iter()
        .map(|crd| yaml(crd.metadata.name.as_deref().unwrap_or("a CRD"), crd))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(documents(docs))
}

#[cfg(test)]
mod tests;

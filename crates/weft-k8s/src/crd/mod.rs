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

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
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
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                drop_null_enum_values(schema);
            }
        }
        crd.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(PART_OF.0.to_owned(), PART_OF.1.to_owned());
    }
    crds
}

/// An optional enum's schema lists `null` among its values (schemars' `Option<T>`),
/// which the API server then offers as a value in its refusals (`supported values:
/// "Always", "IfNotPresent", "Never", "null"`); `nullable` already allows an
/// explicit null.
fn drop_null_enum_values(schema: &mut JSONSchemaProps) {
    if let Some(values) = &mut schema.enum_ {
        values.retain(|v| v.0 != serde_json::Value::Null);
    }
    for child in schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
    {
        drop_null_enum_values(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &mut schema.items {
        drop_null_enum_values(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = &mut schema.additional_properties {
        drop_null_enum_values(extra);
    }
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

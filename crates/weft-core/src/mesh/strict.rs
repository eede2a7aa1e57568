//! Reading a Kubernetes object of the mesh directory into `k8s-openapi`'s types as
//! strictly as the API server with strict field validation would: a wrong type or an
//! unknown field is refused with the field's path.
//!
//! `k8s-openapi`'s types ignore unknown fields, so two steps: the object is
//! deserialized from YAML text (so that `serde_yaml_ng`'s errors carry the field's
//! path, e.g. `spec.ports[0].port: invalid type: string "http", expected i32`), then
//! what it holds is compared with what the typed value serializes back to: a field the
//! typed value does not carry back is unknown (`spec: unknown field `selecter``).

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml_ng::Value;

use super::parse::{locate, strip_position};

/// A problem with one field of an object: its path in the object (`spec.ports[0]`;
/// empty for the object itself) and the message.
pub type FieldProblem = (String, String);

/// `value` as a `T`, refusing wrong types and unknown fields.
pub fn from_value<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, FieldProblem> {
    // Deserialized from text so that errors carry the field's path; positions in the
    // re-serialized text are not the file's.
    let text = serde_yaml_ng::to_string(value).unwrap_or_default();
    let typed: T = serde_yaml_ng::from_str(&text).map_err(|e| {
        let message = strip_position(&e.to_string());
        locate(&message, |path| Some(path.to_owned()))
    })?;
    let read = serde_yaml_ng::to_value(&typed).unwrap_or(Value::Null);
    if let Some((at, field)) = unknown_field(value, &read, "") {
        return Err((at, format!("unknown field `{field}`")));
    }
    Ok(typed)
}

/// The first field of `written` that `read` does not have (nulls do not count): where
/// it is and its name.
fn unknown_field(written: &Value, read: &Value, path: &str) -> Option<(String, String)> {
    match (written, read) {
        (Value::Mapping(w), Value::Mapping(r)) => w.iter().find_map(|(k, v)| {
            let key = k.as_str()?;
            match r.get(key) {
                None if !v.is_null() => Some((path.to_owned(), key.to_owned())),
                None => None,
                Some(rv) => unknown_field(v, rv, &join(path, key)),
            }
        }),
        (Value::Sequence(w), Value::Sequence(r)) => w
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (w, r))| unknown_field(w, r, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The fields of the mapping at `path` in `value` that are not in `allowed`.
pub(super) fn fields_outside<'a>(value: &'a Value, path: &str, allowed: &[&str]) -> Vec<&'a str> {
    at_path(value, path)
        .and_then(Value::as_mapping)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|(_, v)| !v.is_null())
        .filter_map(|(k, _)| k.as_str())
        .filter(|k| !allowed.contains(k))
        .collect()
}

/// The value at a dotted path (`spec`, `metadata`).
fn at_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, key| v.get(key))
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn unknown_fields_are_found_at_any_depth() {
        let err = from_value::<Service>(&yaml(
            "kind: Service\nmetadata: {name: a}\nspec: {selecter: {app: a}}\n",
        ))
        .unwrap_err();
        assert_eq!(err, ("spec".into(), "unknown field `selecter`".into()));
        let err = from_value::<Service>(&yaml(
            "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}, {port: 81, nodeport: 3}]}\n",
        ))
        .unwrap_err();
        assert_eq!(
            err,
            ("spec.ports[1]".into(), "unknown field `nodeport`".into())
        );
        let err = from_value::<Service>(&yaml("kind: Service\nmetadta: {name: a}\n")).unwrap_err();
        assert_eq!(err, ("".into(), "unknown field `metadta`".into()));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = from_value::<Service>(&yaml(
            "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: http}]}\n",
        ))
        .unwrap_err();
        assert_eq!(err.0, "spec.ports[0].port");
        assert!(
            err.1.starts_with("invalid type: string \"http\""),
            "{}",
            err.1
        );
    }

    #[test]
    fn known_fields_and_nulls_pass() {
        let service: Service = from_value(&yaml(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {x: y}}\nspec: {selector: {app: a}, ports: [{port: 80, targetPort: http}], clusterIP: null}\nstatus: {}\n",
        ))
        .unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("a"));
    }

    #[test]
    fn fields_outside_a_list() {
        let value =
            yaml("spec: {selector: {}, ports: [], sessionAffinity: ClientIP, type: null}\n");
        let outside = fields_outside(&value, "spec", &["selector", "ports"]);
        assert_eq!(outside, ["sessionAffinity"]);
    }
}

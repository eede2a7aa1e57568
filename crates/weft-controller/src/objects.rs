//! Reading the mesh directory's Kubernetes-style objects that the controller models
//! itself (routes, policy) into typed values, with errors located at the object and
//! field: `routes.yaml: HTTPRoute default/r: spec.rules[0].matches: invalid type`.

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use weft_core::mesh::GatewayObject;

/// A problem: where (the object, and the field when known) and what.
pub(crate) type Located = (String, String);

/// `object`'s location with `field` after it (the object alone when `field` is empty).
pub(crate) fn at(object: &GatewayObject, field: &str) -> String {
    if field.is_empty() {
        object.location.clone()
    } else {
        format!("{}: {field}", object.location)
    }
}

/// Refuses an `apiVersion` other than `versions`.
pub(crate) fn check_api_version(object: &GatewayObject, versions: &[&str]) -> Result<(), Located> {
    let version = object
        .value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if versions.contains(&version) {
        return Ok(());
    }
    Err((
        at(object, "apiVersion"),
        format!(
            "is {version:?}; {} is read as {}",
            object.kind,
            versions.join(" or ")
        ),
    ))
}

/// `object` as a `T`. Deserialized from text so that errors carry the field's path
/// (positions in the re-serialized text are not the file's, so they are dropped).
pub(crate) fn deserialize<T: DeserializeOwned>(object: &GatewayObject) -> Result<T, Located> {
    let text = serde_yaml_ng::to_string(&object.value).unwrap_or_default();
    serde_yaml_ng::from_str(&text).map_err(|e| {
        let message = strip_position(&e.to_string());
        match message.split_once(": ") {
            Some((path, rest)) if looks_like_path(path) => (at(object, path), rest.to_owned()),
            _ => (object.location.clone(), message),
        }
    })
}

fn looks_like_path(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(' ')
        && s.chars()
            .all(|c| c.is_alphanumeric() || "._[]-".contains(c))
}

/// Drops the YAML library's ` at line L column C`.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

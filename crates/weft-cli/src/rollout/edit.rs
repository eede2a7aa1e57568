//! The one edit a rollout makes: the weights of the stable and canary `backendRefs` of
//! an HTTPRoute, in the route's own file, through YAML values (every other field and
//! document of the file is kept; comments and the layout are not, YAML values having
//! neither), written atomically (a temporary file renamed over it) so the controller
//! never reads half a file.

use std::fmt;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};

use super::spec::RouteRef;

/// The stable and canary weights of a route's rules that name both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Weights {
    pub stable: u32,
    pub canary: u32,
}

impl Weights {
    /// `canary` percent to the canary, the rest to the stable backend.
    pub fn canary_share(canary: u32) -> Weights {
        Weights {
            stable: 100 - canary.min(100),
            canary: canary.min(100),
        }
    }

    /// The canary's share in percent (`None` when both are 0).
    pub fn percent(&self) -> Option<f64> {
        let total = self.stable + self.canary;
        (total > 0).then(|| f64::from(self.canary) * 100.0 / f64::from(total))
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stable {} / canary {}", self.stable, self.canary)
    }
}

/// The documents of a YAML file (documents without content, only comments, dropped).
fn documents(text: &str) -> Result<Vec<Value>, serde_yaml_ng::Error> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(Value::deserialize)
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for key in path {
        v = v.get(*key)?;
    }
    v.as_str()
}

fn is_route(doc: &Value, route: &RouteRef) -> bool {
    str_at(doc, &["kind"]) == Some("HTTPRoute")
        && str_at(doc, &["apiVersion"]).is_some_and(|a| a.starts_with("gateway.networking.k8s.io/"))
        && str_at(doc, &["metadata", "name"]) == Some(route.name.as_str())
        && str_at(doc, &["metadata", "namespace"]).unwrap_or("default") == route.namespace
}

/// Whether `text` holds the HTTPRoute `route` (a file that does not parse holds none).
pub fn holds(text: &str, route: &RouteRef) -> bool {
    documents(text).is_ok_and(|docs| docs.iter().any(|d| is_route(d, route)))
}

/// Which backend Service a `backendRefs` entry names, if a Service of the route's
/// namespace.
fn backend_name<'a>(backend: &'a Value, route_ns: &str) -> Option<&'a str> {
    let kind_ok = str_at(backend, &["kind"]).is_none_or(|k| k == "Service")
        && str_at(backend, &["group"]).is_none_or(|g| g.is_empty() || g == "core");
    let ns_ok = str_at(backend, &["namespace"]).is_none_or(|n| n == route_ns);
    (kind_ok && ns_ok).then(|| str_at(backend, &["name"]))?
}

/// The rules of the route naming both backends, or why there are none.
fn both_rules<'a>(
    doc: &'a mut Value,
    route: &RouteRef,
    stable: &str,
    canary: &str,
    file: &str,
) -> anyhow::Result<Vec<&'a mut Vec<Value>>> {
    let what = format!("HTTPRoute {}/{} in {file}", route.namespace, route.name);
    let rules = doc
        .get_mut("spec")
        .and_then(|s| s.get_mut("rules"))
        .and_then(Value::as_sequence_mut)
        .with_context(|| format!("{what}: no spec.rules"))?;
    let mut found = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, rule) in rules.iter_mut().enumerate() {
        let Some(refs) = rule.get_mut("backendRefs").and_then(Value::as_sequence_mut) else {
            continue;
        };
        let names: Vec<Option<String>> = refs
            .iter()
            .map(|b| backend_name(b, &route.namespace).map(str::to_owned))
            .collect();
        seen.extend(names.iter().flatten().cloned());
        let has = |n: &str| names.iter().any(|x| x.as_deref() == Some(n));
        if !(has(stable) && has(canary)) {
            continue;
        }
        // A third backend would keep a share the rollout does not control.
        for (b, n) in refs.iter().zip(&names) {
            let other = n.as_deref().is_none_or(|n| n != stable && n != canary);
            let weight = b.get("weight").and_then(Value::as_u64).unwrap_or(1);
            if other && weight > 0 {
                anyhow::bail!(
                    "{what}: spec.rules[{i}].backendRefs has {} with weight {weight} beside \
{stable} and {canary}; a rollout shifts traffic between those two only (give it weight 0 or \
a rule of its own)",
                    str_at(b, &["name"]).unwrap_or("a backend")
                );
            }
        }
        found.push(refs);
    }
    if found.is_empty() {
        let missing: Vec<&str> = [stable, canary]
            .into_iter()
            .filter(|n| !seen.contains(*n))
            .collect();
        let seen: Vec<String> = seen.into_iter().collect();
        if missing.is_empty() {
            anyhow::bail!(
                "{what}: no rule has both {stable} and {canary} in its backendRefs (the \
rollout shifts weight between them within a rule)"
            );
        }
        anyhow::bail!(
            "{what}: backend {} not in the route's backendRefs (it has: {}); check \
spec.stableService and spec.canaryService",
            missing.join(" and "),
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        );
    }
    Ok(found)
}

fn the_route<'a>(
    docs: &'a mut [Value],
    route: &RouteRef,
    file: &str,
) -> anyhow::Result<&'a mut Value> {
    docs.iter_mut()
        .find(|d| is_route(d, route))
        .with_context(|| format!("no HTTPRoute {}/{} in {file}", route.namespace, route.name))
}

/// The route's current stable and canary weights (those of its first rule naming both;
/// a backendRef without a weight has 1, as the Gateway API says).
pub fn weights(
    text: &str,
    route: &RouteRef,
    stable: &str,
    canary: &str,
    file: &str,
) -> anyhow::Result<Weights> {
    let mut docs = documents(text).with_context(|| format!("{file} is not YAML"))?;
    let doc = the_route(&mut docs, route, file)?;
    let rules = both_rules(doc, route, stable, canary, file)?;
    let weight_of = |name: &str| {
        rules[0]
            .iter()
            .filter(|b| backend_name(b, &route.namespace) == Some(name))
            .map(|b| b.get("weight").and_then(Value::as_u64).unwrap_or(1) as u32)
            .sum::<u32>()
    };
    Ok(Weights {
        stable: weight_of(stable),
        canary: weight_of(canary),
    })
}

/// `text` with the stable and canary weights of every rule of the route naming both
/// set to `to`; the rest of the file kept (as YAML values: comments are lost).
pub fn set_weights(
    text: &str,
    route: &RouteRef,
    stable: &str,
    canary: &str,
    to: Weights,
    file: &str,
) -> anyhow::Result<String> {
    let mut docs = documents(text).with_context(|| format!("{file} is not YAML"))?;
    let doc = the_route(&mut docs, route, file)?;
    for refs in both_rules(doc, route, stable, canary, file)? {
        for b in refs.iter_mut() {
            let weight = match backend_name(b, &route.namespace) {
                Some(n) if n == stable => to.stable,
                Some(n) if n == canary => to.canary,
                _ => continue,
            };
            if let Value::Mapping(m) = b {
                set(m, "weight", Value::from(weight));
            }
        }
    }
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(d)?);
    }
    Ok(out)
}

fn set(m: &mut Mapping, key: &str, value: Value) {
    match m.get_mut(key) {
        Some(v) => *v = value,
        None => {
            m.insert(Value::from(key), value);
        }
    }
}

/// Writes `text` to `path` atomically: a hidden temporary file in the same directory
/// (the mesh directory's readers skip dot files), renamed over it, with the file's
/// permissions kept.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.weft-rollout.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> RouteRef {
        RouteRef {
            name: "books-canary".into(),
            namespace: "default".into(),
            file: None,
        }
    }

    fn example() -> String {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/routes/books-canary.yaml");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn weights_change_and_the_rest_of_the_file_stays() {
        let text = example();
        let r = route();
        let w = weights(&text, &r, "books-v1", "books-v2", "books-canary.yaml").unwrap();
        assert_eq!(
            w,
            Weights {
                stable: 90,
                canary: 10
            }
        );
        let edited = set_weights(
            &text,
            &r,
            "books-v1",
            "books-v2",
            Weights::canary_share(35),
            "books-canary.yaml",
        )
        .unwrap();
        assert_eq!(
            weights(&edited, &r, "books-v1", "books-v2", "f").unwrap(),
            Weights {
                stable: 65,
                canary: 35
            }
        );
        // Every document is the same value as before but for the two weights.
        let before = documents(&text).unwrap();
        let mut after = documents(&edited).unwrap();
        assert_eq!(before.len(), 3);
        assert_eq!(after.len(), 3);
        assert_eq!(before[..2], after[..2], "the Services are kept");
        let refs = after[2]["spec"]["rules"][0]["backendRefs"]
            .as_sequence_mut()
            .unwrap();
        assert_eq!(refs[0]["weight"], Value::from(65));
        assert_eq!(refs[1]["weight"], Value::from(35));
        refs[0]["weight"] = Value::from(90);
        refs[1]["weight"] = Value::from(10);
        assert_eq!(before[2], after[2], "only the weights changed");
        // The timeouts and retry of the rule are there as written.
        assert!(edited.contains("backoff: 50ms"), "{edited}");
        // Comments are lost (YAML values carry none): the docs say so.
        assert!(!edited.contains("# A canary release"));
        // The file the controller reads back is the route with the new weights.
        let back: Vec<Value> = documents(&edited).unwrap();
        assert_eq!(back[2]["metadata"]["name"], Value::from("books-canary"));
    }

    #[test]
    fn every_rule_naming_both_is_set_and_others_are_left_alone() {
        let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-canary}
spec:
  parentRefs: [{group: "", kind: Service, name: books, port: 8080}]
  rules:
    - matches: [{headers: [{name: x-canary, value: "yes"}]}]
      backendRefs: [{name: books-v2, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: books-v1, port: 8080}, {name: books-v2, port: 8080}]
    - backendRefs:
        - {name: books-v1, port: 8080, weight: 100}
        - {name: books-v2, port: 8080, weight: 0}
        - {name: books-old, port: 8080, weight: 0}
"#;
        let r = route();
        // The first rule naming both has no weights: 1 each.
        assert_eq!(
            weights(text, &r, "books-v1", "books-v2", "f").unwrap(),
            Weights {
                stable: 1,
                canary: 1
            }
        );
        let edited = set_weights(
            text,
            &r,
            "books-v1",
            "books-v2",
            Weights::canary_share(100),
            "f",
        )
        .unwrap();
        let docs = documents(&edited).unwrap();
        let rules = &docs[0]["spec"]["rules"];
        assert_eq!(rules[0]["backendRefs"][0].get("weight"), None);
        for rule in [&rules[1], &rules[2]] {
            assert_eq!(rule["backendRefs"][0]["weight"], Value::from(0));
            assert_eq!(rule["backendRefs"][1]["weight"], Value::from(100));
        }
        assert_eq!(rules[2]["backendRefs"][2]["weight"], Value::from(0));
    }

    #[test]
    fn a_route_or_backend_that_is_not_there_is_named() {
        let text = example();
        let mut r = route();
        let e = set_weights(
            &text,
            &r,
            "books-v1",
            "books-v3",
            Weights::canary_share(10),
            "books-canary.yaml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "HTTPRoute default/books-canary in books-canary.yaml: backend books-v3 not in the \
route's backendRefs (it has: books-v1, books-v2); check spec.stableService and spec.canaryService"
        );
        r.name = "books-other".into();
        let e = weights(&text, &r, "books-v1", "books-v2", "books-canary.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no HTTPRoute default/books-other in books-canary.yaml"
        );
        assert!(!holds(&text, &r));
        r.name = "books-canary".into();
        assert!(holds(&text, &r));
        let third = text.replace(
            "weight: 10\n",
            "weight: 10\n        - {name: books-v3, port: 8080, weight: 5}\n",
        );
        let e = weights(&third, &r, "books-v1", "books-v2", "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has books-v3 with weight 5 beside books-v1 and books-v2"),
            "{e}"
        );
    }

    #[test]
    fn the_write_is_atomic_and_keeps_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("weft-rollout-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("route.yaml");
        std::fs::write(&path, "old").unwrap();
        write_atomic(&path, "new: 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new: 1\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["route.yaml"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The `Rollout` file: which route's weights to shift, between which backends, in
//! which steps, and the thresholds the canary must keep. Parsed strictly (unknown
//! fields are errors) and checked whole, each error naming its field.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const API_VERSION: &str = "weft.io/v1alpha1";
pub const KIND: &str = "Rollout";

/// A checked Rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub name: String,
    pub namespace: String,
    pub route: RouteRef,
    pub stable: String,
    pub canary: String,
    pub steps: Vec<Step>,
    pub analysis: Analysis,
}

/// The HTTPRoute whose `backendRefs` weights the rollout rewrites.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRef {
    pub name: String,
    pub namespace: String,
    /// Its file, relative to the mesh directory; `None`: found by name.
    pub file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The canary's share of the requests, 0..=100 (the stable backend gets the rest).
    SetWeight(u32),
    /// Wait, analysing the canary.
    Pause(Duration),
}

/// The canary's thresholds over each window of a pause.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// The success rate the canary must keep, 0..=1.
    pub min_success_rate: Option<f64>,
    /// The p99 latency the canary must stay under.
    pub max_p99_latency: Option<Duration>,
    /// The window each judgement covers (shorter at a pause's end).
    pub window: Duration,
    /// Fewer canary requests than this in a window: no judgement yet (the window grows
    /// until the pause ends).
    pub min_requests: u64,
}

impl Default for Analysis {
    fn default() -> Analysis {
        Analysis {
            min_success_rate: None,
            max_p99_latency: None,
            window: Duration::from_secs(10),
            min_requests: 10,
        }
    }
}

impl Rollout {
    /// Whether any threshold is set (without one, pauses only wait).
    pub fn analyses(&self) -> bool {
        self.analysis.min_success_rate.is_some() || self.analysis.max_p99_latency.is_some()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    route: RouteSpec,
    stable_service: String,
    canary_service: String,
    steps: Vec<StepSpec>,
    #[serde(default)]
    analysis: Option<AnalysisSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    name: String,
    namespace: Option<String>,
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StepSpec {
    // i64 so that a negative weight is reported as out of range, not as a type error.
    set_weight: Option<i64>,
    pause: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AnalysisSpec {
    min_success_rate: Option<f64>,
    max_p99_latency: Option<String>,
    window: Option<String>,
    min_requests: Option<u64>,
}

/// A Rollout from `text` (the file `source`), checked; errors name the file and the
/// field.
pub fn parse(text: &str, source: &str) -> anyhow::Result<Rollout> {
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    check(file).map_err(|e| anyhow::anyhow!("{source}: {e}"))
}

fn duration(field: &str, text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{field}: {text:?} is not a duration like 30s or 500ms ({e})"))?;
    Ok(d)
}

fn name(field: &str, value: &str) -> Result<(), String> {
    // A DNS label, as Kubernetes names Services and routes.
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: {value:?} is not a name (lowercase letters, digits, '-', '.'; at most 63)"
        ))
    }
}

fn check(file: File) -> Result<Rollout, String> {
    if file.api_version != API_VERSION {
        return Err(format!(
            "apiVersion: {:?}, expected {API_VERSION}",
            file.api_version
        ));
    }
    if file.kind != KIND {
        return Err(format!("kind: {:?}, expected {KIND}", file.kind));
    }
    name("metadata.name", &file.metadata.name)?;
    let namespace = file.metadata.namespace.unwrap_or_else(|| "default".into());
    name("metadata.namespace", &namespace)?;
    let spec = file.spec;
    name("spec.route.name", &spec.route.name)?;
    let route_namespace = spec.route.namespace.unwrap_or_else(|| namespace.clone());
    name("spec.route.namespace", &route_namespace)?;
    if let Some(f) = &spec.route.file {
        let inside = f.components().all(|c| matches!(c, Component::Normal(_)));
        if !inside || f.as_os_str().is_empty() {
            return Err(format!(
                "spec.route.file: {:?} must be a path inside the mesh directory, relative to it",
                f.display().to_string()
            ));
        }
    }
    name("spec.stableService", &spec.stable_service)?;
    name("spec.canaryService", &spec.canary_service)?;
    if spec.stable_service == spec.canary_service {
        return Err(format!(
            "spec.canaryService: {:?} is the stable service too; the canary is another backend",
            spec.canary_service
        ));
    }
    if spec.steps.is_empty() {
        return Err("spec.steps: at least one step (setWeight: N or pause: DURATION)".into());
    }
    let mut steps = Vec::with_capacity(spec.steps.len());
    for (i, s) in spec.steps.iter().enumerate() {
        let field = format!("spec.steps[{i}]");
        steps.push(match (s.set_weight, &s.pause) {
            (Some(w), None) => {
                if !(0..=100).contains(&w) {
                    return Err(format!(
                        "{field}.setWeight: {w} is out of range: the canary's share in percent, 0 to 100"
                    ));
                }
                Step::SetWeight(w as u32)
            }
            (None, Some(p)) => Step::Pause(duration(&format!("{field}.pause"), p)?),
            _ => {
                return Err(format!(
                    "{field}: one of setWeight: N or pause: DURATION per step"
                ))
            }
        });
    }
    let mut analysis = Analysis::default();
    if let Some(a) = spec.analysis {
        if let Some(r) = a.min_success_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!(
                    "spec.analysis.minSuccessRate: {r} is out of range: a share from 0 to 1 (0.99 is 99 %)"
                ));
            }
            analysis.min_success_rate = Some(r);
        }
        if let Some(l) = &a.max_p99_latency {
            analysis.max_p99_latency = Some(duration("spec.analysis.maxP99Latency", l)?);
        }
        if let Some(w) = &a.window {
            let w = duration("spec.analysis.window", w)?;
            if w < Duration::from_millis(100) {
                return Err(format!(
                    "spec.analysis.window: {} is too short: at least 100ms",
                    humantime::format_duration(w)
                ));
            }
            analysis.window = w;
        }
        if let Some(n) = a.min_requests {
            if n == 0 {
                return Err("spec.analysis.minRequests: at least 1".into());
            }
            analysis.min_requests = n;
        }
    }
    Ok(Rollout {
        name: file.metadata.name,
        namespace,
        route: RouteRef {
            name: spec.route.name,
            namespace: route_namespace,
            file: spec.route.file,
        },
        stable: spec.stable_service,
        canary: spec.canary_service,
        steps,
        analysis,
    })
}

/// `path` relative to `dir` when inside it (for messages), else as given.
pub fn shown(path: &Path, dir: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: weft.io/v1alpha1
kind: Rollout
metadata: {name: books}
spec:
  route: {name: books-canary}
  stableService: books-v1
  canaryService: books-v2
  steps:
    - setWeight: 20
    - pause: 30s
    - setWeight: 100
  analysis:
    minSuccessRate: 0.99
    maxP99Latency: 500ms
    window: 5s
    minRequests: 20
"#;

    #[test]
    fn a_rollout_parses_with_defaults() {
        let r = parse(GOOD, "books.yaml").unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_str()),
            ("books", "default")
        );
        assert_eq!(r.route.namespace, "default");
        assert_eq!(r.route.file, None);
        assert_eq!(
            r.steps,
            [
                Step::SetWeight(20),
                Step::Pause(Duration::from_secs(30)),
                Step::SetWeight(100)
            ]
        );
        assert_eq!(r.analysis.min_success_rate, Some(0.99));
        assert_eq!(r.analysis.max_p99_latency, Some(Duration::from_millis(500)));
        assert_eq!(r.analysis.window, Duration::from_secs(5));
        assert_eq!(r.analysis.min_requests, 20);
    }

    #[test]
    fn the_example_of_the_docs_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rollouts/books.yaml");
        let r = parse(&std::fs::read_to_string(path).unwrap(), "books.yaml").unwrap();
        assert_eq!(
            r.route.file.as_deref(),
            Some(Path::new("books-canary.yaml"))
        );
        assert_eq!(
            (r.stable.as_str(), r.canary.as_str()),
            ("books-v1", "books-v2")
        );
        assert_eq!(r.steps.len(), 7);
        assert!(r.analyses());
    }

    #[test]
    fn bad_input_names_the_field() {
        let bad = |from: &str, to: &str| {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from:?} is not in the example");
            parse(&text, "books.yaml").unwrap_err().to_string()
        };
        let e = bad("setWeight: 20", "setWeight: 120");
        assert!(
            e.contains("books.yaml: spec.steps[0].setWeight: 120 is out of range"),
            "{e}"
        );
        let e = bad("setWeight: 20", "setWeight: -5");
        assert!(
            e.contains("spec.steps[0].setWeight: -5 is out of range"),
            "{e}"
        );
        let e = bad("pause: 30s", "pause: thirty");
        assert!(
            e.contains("spec.steps[1].pause: \"thirty\" is not a duration"),
            "{e}"
        );
        let e = bad("maxP99Latency: 500ms", "maxP99Latency: 500");
        assert!(e.contains("spec.analysis.maxP99Latency: \"500\""), "{e}");
        let e = bad("minSuccessRate: 0.99", "minSuccessRate: 99");
        assert!(
            e.contains("spec.analysis.minSuccessRate: 99 is out of range"),
            "{e}"
        );
        let e = bad("window: 5s", "window: 1ms");
        assert!(e.contains("spec.analysis.window: 1ms is too short"), "{e}");
        let e = bad("canaryService: books-v2", "canaryService: books-v1");
        assert!(
            e.contains("spec.canaryService: \"books-v1\" is the stable service too"),
            "{e}"
        );
        let e = bad("- pause: 30s", "- {pause: 30s, setWeight: 5}");
        assert!(e.contains("spec.steps[1]: one of setWeight"), "{e}");
        let e = bad("kind: Rollout", "kind: Deployment");
        assert!(e.contains("kind: \"Deployment\", expected Rollout"), "{e}");
        let e = bad(
            "route: {name: books-canary}",
            "route: {name: books-canary, file: ../x.yaml}",
        );
        assert!(
            e.contains("spec.route.file: \"../x.yaml\" must be a path inside"),
            "{e}"
        );
        let e = bad("minRequests: 20", "minRequest: 20");
        assert!(e.contains("unknown field `minRequest`"), "{e}");
        let e = bad("stableService: books-v1", "stableService: Books_V1");
        assert!(
            e.contains("spec.stableService: \"Books_V1\" is not a name"),
            "{e}"
        );
    }
}

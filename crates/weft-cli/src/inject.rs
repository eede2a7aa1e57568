//! `weft inject FILE|-`: the injector's work done offline on YAML, as `linkerd inject`:
//! every pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob,
//! ReplicationController), Pod and `List` item gets `weft.io/inject: enabled` and the
//! same containers, volumes and annotation the webhook would add
//! (`weft_k8s::inject::inject`); other objects pass through. The output is YAML for
//! `kubectl apply -f -`; pods made from it are left alone by the webhook (injected
//! already).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};
use weft_k8s::inject::{self, Decision, InjectConfig, INJECT_ANNOTATION};

#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// YAML file of Kubernetes objects (several documents, `List`s); `-` reads stdin.
    pub file: PathBuf,

    /// Image of the injected weft-proxy and weft-init containers.
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = inject::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,

    /// The controller's identity and destination services, host:port.
    #[arg(long, env = "WEFT_CONTROLLER", default_value = inject::DEFAULT_CONTROLLER)]
    pub controller: String,

    /// The mesh's trust anchors (PEM bundle, e.g. `weft identity init`'s
    /// trust-anchors.pem): each injected proxy gets them inline (WEFT_TRUST_ANCHORS_PEM).
    #[arg(long, env = "WEFT_TRUST_ANCHORS", value_name = "FILE")]
    pub trust_anchors: PathBuf,
}

pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let mut input = String::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut input)
            .context("cannot read stdin")?;
    } else {
        input = std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
    }
    let config = InjectConfig {
        proxy_image: args.proxy_image,
        controller: args.controller,
        trust_anchors_pem: inject::read_trust_anchors(&args.trust_anchors)?,
        ..InjectConfig::default()
    };
    let (output, notes) = inject_documents(&input, &config)?;
    for note in notes {
        eprintln!("{note}");
    }
    match std::io::stdout().lock().write_all(output.as_bytes()) {
        // A reader that stops early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("cannot write to stdout"),
    }
}

/// The documents of `input` with their pod templates injected, as YAML, and one note
/// per pod template left as it is. An error names the document (1-based) and object.
pub fn inject_documents(
    input: &str,
    config: &InjectConfig,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let at = format!("document {}", i + 1);
        let mut value = Value::deserialize(document).with_context(|| format!("{at}: not YAML"))?;
        if value.is_null() {
            continue;
        }
        inject_object(&mut value, config, &at, &mut notes)?;
        out.push(serde_yaml_ng::to_string(&value).with_context(|| format!("{at}: cannot print"))?);
    }
    Ok((out.join("---\n"), notes))
}

fn object_name(object: &Value) -> Option<String> {
    object
        .get("metadata")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

fn describe(object: &Value) -> String {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object without a kind");
    match object_name(object) {
        Some(name) => format!("{kind} {name}"),
        None => kind.to_owned(),
    }
}

fn inject_object(
    object: &mut Value,
    config: &InjectConfig,
    at: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let at = format!("{at} ({})", describe(object));
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let path: &[&str] = match kind.as_str() {
        "List" => {
            let Some(items) = object.get_mut("items").and_then(Value::as_sequence_mut) else {
                anyhow::bail!("{at}: items is not a list");
            };
            for (j, item) in items.iter_mut().enumerate() {
                inject_object(item, config, &format!("{at}, item {}", j + 1), notes)?;
            }
            return Ok(());
        }
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(()),
    };
    let deployment = (kind == "Deployment")
        .then(|| object_name(object))
        .flatten();
    let mut template = &mut *object;
    for key in path {
        template = template
            .get_mut(*key)
            .with_context(|| format!("{at}: no {}", path.join(".")))?;
    }
    let injected = inject_template(template, deployment.as_deref(), config);
    if let Some(skip) = injected.with_context(|| at.clone())? {
        notes.push(format!("{at}: not injected: {skip}"));
    }
    Ok(())
}

/// Injects a Pod or pod template (metadata + spec) in place, with
/// `weft.io/inject: enabled` set first (forcing injection, as `linkerd inject`); says
/// why when it cannot be injected (host network, a container named weft-proxy).
fn inject_template(
    template: &mut Value,
    deployment: Option<&str>,
    config: &InjectConfig,
) -> anyhow::Result<Option<inject::Skip>> {
    let Value::Mapping(map) = template else {
        anyhow::bail!("the pod template is not a mapping");
    };
    let metadata = map
        .entry("metadata".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if metadata.is_null() {
        *metadata = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(metadata) = metadata else {
        anyhow::bail!("metadata is not a mapping");
    };
    let annotations = metadata
        .entry("annotations".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if annotations.is_null() {
        *annotations = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(annotations) = annotations else {
        anyhow::bail!("metadata.annotations is not a mapping");
    };
    // Injected already: left exactly as it is (not even the annotation changes).
    if !annotations.contains_key(inject::INJECTED_ANNOTATION) {
        annotations.insert(INJECT_ANNOTATION.into(), "enabled".into());
    }
    let pod: Pod = serde_json::to_value(&*template)
        .and_then(serde_json::from_value)
        .context("not a pod template")?;
    match inject::inject_template(&pod, deployment, config)? {
        Decision::Inject(injection) => {
            for op in &injection.patch.0 {
                apply(template, op)?;
            }
        }
        Decision::Skip(skip) => return Ok(skip.warning().is_some().then_some(skip)),
    }
    Ok(None)
}

/// Applies one of the injector's operations (`add`, and `replace` for the probes it
/// points at the proxy) to YAML, keeping the document's key order, which a JSON round
/// trip would sort.
fn apply(doc: &mut Value, op: &PatchOperation) -> anyhow::Result<()> {
    let (path, value, replace) = match op {
        PatchOperation::Add(add) => (&add.path, &add.value, false),
        PatchOperation::Replace(r) => (&r.path, &r.value, true),
        _ => {
            anyhow::bail!("the injector made a {op:?} operation; only add and replace are expected")
        }
    };
    let value: Value = serde_yaml_ng::to_value(value)?;
    let tokens: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
    let Some((last, parents)) = tokens.split_last() else {
        anyhow::bail!("the injector's patch replaces the whole pod");
    };
    let mut at = doc;
    for token in parents {
        at = match at {
            Value::Mapping(m) => m.get_mut(token.as_str()),
            Value::Sequence(s) => token.parse::<usize>().ok().and_then(|i| s.get_mut(i)),
            _ => None,
        }
        .with_context(|| format!("no {path} to change"))?;
    }
    match at {
        Value::Mapping(m) if replace && !m.contains_key(last.as_str()) => {
            anyhow::bail!("{path}: nothing to replace")
        }
        Value::Mapping(m) => {
            m.insert(last.as_str().into(), value);
        }
        Value::Sequence(s) if last == "-" && !replace => s.push(value),
        Value::Sequence(s) => match last.parse::<usize>() {
            Ok(i) if replace && i < s.len() => s[i] = value,
            Ok(i) if !replace && i <= s.len() => s.insert(i, value),
            _ => anyhow::bail!("{path}: no such position"),
        },
        _ => anyhow::bail!("{path}: not a mapping or list"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: books
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: books}
  template:
    metadata:
      labels: {app: books}
      annotations:
        weft.io/skip-outbound-ports: "5432"
    spec:
      containers:
      - name: app
        image: books:1
        readinessProbe:
          httpGet: {path: /ready, port: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: books
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: probe}
  spec:
    containers: [{name: c, image: busybox}]
- apiVersion: batch/v1
  kind: CronJob
  metadata: {name: nightly}
  spec:
    schedule: "0 3 * * *"
    jobTemplate:
      spec:
        template:
          spec:
            restartPolicy: OnFailure
            containers: [{name: c, image: busybox}]
"#;

    fn init_names(template: &Value) -> Vec<String> {
        template["spec"]["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_pod_template_of_a_multi_document_file_is_injected_once() {
        let (out, _) = inject_documents(FILE, &InjectConfig::default()).unwrap();
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&out)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 3, "{out}");

        let template = &docs[0]["spec"]["template"];
        assert_eq!(init_names(template), ["weft-init", "weft-proxy"]);
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(annotations["weft.io/inject"], "enabled");
        assert_eq!(annotations["weft.io/injected"], env!("CARGO_PKG_VERSION"));
        // The Deployment's name for the proxy's `deployment` label.
        let env = template["spec"]["initContainers"][1]["env"]
            .as_sequence()
            .unwrap();
        let deployment = env.iter().find(|e| e["name"] == "WEFT_DEPLOYMENT");
        assert_eq!(deployment.unwrap()["value"], "books");
        // The HTTP probe goes to the proxy's admin port (a `replace` operation).
        let probe = &template["spec"]["containers"][0]["readinessProbe"]["httpGet"];
        assert_eq!(probe["port"], 4191);
        assert_eq!(probe["path"], "/app-probe/app/readiness");
        let probes = env.iter().find(|e| e["name"] == "WEFT_APP_PROBES").unwrap();
        assert!(probes["value"].as_str().unwrap().contains(r#""port":8080"#));
        let cron = &docs[2]["items"][1]["spec"]["jobTemplate"]["spec"]["template"];
        let env = cron["spec"]["initContainers"][1]["env"]
            .as_sequence()
            .unwrap();
        assert!(env.iter().all(|e| e["name"] != "WEFT_DEPLOYMENT"));
        let init_args = &template["spec"]["initContainers"][0]["args"];
        assert_eq!(
            serde_yaml_ng::to_string(init_args).unwrap(),
            "- init\n- --skip-outbound-ports\n- '5432'\n- --proxy-uid\n- '2102'\n"
        );
        // The document's own keys keep their order.
        let keys: Vec<&str> = docs[0]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
        assert_eq!(docs[1]["kind"], "Service");
        assert!(docs[1].get("spec").unwrap().get("template").is_none());

        let items = docs[2]["items"].as_sequence().unwrap();
        assert_eq!(init_names(&items[0]), ["weft-init", "weft-proxy"]);
        assert_eq!(
            init_names(&items[1]["spec"]["jobTemplate"]["spec"]["template"]),
            ["weft-init", "weft-proxy"]
        );

        // Its output injected again is the same text: nothing is added twice.
        let (again, _) = inject_documents(&out, &InjectConfig::default()).unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn errors_name_the_document_and_the_object() {
        let bad = format!(
            "{FILE}---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  template:\n    metadata:\n      annotations: {{weft.io/opaque-ports: abc}}\n    spec: {{containers: [{{name: c}}]}}\n"
        );
        let err = inject_documents(&bad, &InjectConfig::default()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            r#"document 4 (StatefulSet db): annotation weft.io/opaque-ports: "abc": "abc" is not a port (1-65535) or a port range (4000-4010)"#
        );
        // A pod that cannot take the proxy passes through, with a note for stderr.
        let host = "kind: List\nitems:\n- kind: Pod\n  metadata: {name: node-agent}\n  spec: {hostNetwork: true, containers: [{name: c}]}\n";
        let (out, notes) = inject_documents(host, &InjectConfig::default()).unwrap();
        assert_eq!(
            notes,
            ["document 1 (List), item 1 (Pod node-agent): not injected: the pod uses the host's network"]
        );
        assert!(!out.contains("weft-proxy"), "{out}");
        let err = inject_documents(
            "kind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            &InjectConfig::default(),
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "document 1 (Deployment x): no spec.template"
        );
        let err = inject_documents("a: [1\n", &InjectConfig::default()).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("document 1: not YAML"),
            "{err:#}"
        );
    }
}

//! weft's CRDs and `weft install`'s manifests against a real kube-apiserver
//! (`weft_test::kube::KubeApi`: skipped with a message when the binaries are not built,
//! failing under CI), and the chart's committed files against what weft renders.

mod common;

use std::path::{Path, PathBuf};

use common::install_crds;
use weft_k8s::crd::{self, operator, policy};
use weft_k8s::install::{self, InstallOptions};
use weft_k8s::operator::manifests;
use weft_test::kube::KubeApi;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `kubectl create` of `yaml`, expected to be refused; the refusal's text.
fn refused(api: &KubeApi, yaml: &str) -> String {
    match api.kubectl_stdin(&["create", "-f", "-"], Some(yaml)) {
        Ok(out) => panic!("accepted: {out}\n{yaml}"),
        Err(e) => format!("{e:#}"),
    }
}

const VALID_OPERATOR_OBJECTS: &str = r#"
apiVersion: operator.weft.io/v1alpha1
kind: ControlPlane
metadata: {name: weft}
spec:
  version: 0.1.0
  trustAnchor: {secret: {name: weft-trust-anchor, key: ca.crt}}
  highAvailability: {replicas: 3}
  values:
    imageRegistry: ghcr.io/weft
    proxy:
      logLevel: warn,weft_proxy=info
      resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 1, memory: 256Mi}}
    controller:
      image: {name: ghcr.io/weft/controller, tag: 0.1.0, pullPolicy: IfNotPresent}
---
apiVersion: operator.weft.io/v1alpha1
kind: DataPlane
metadata: {name: shop}
spec:
  workloadSelector:
    namespace: shop
    labelSelector:
      matchLabels: {tier: web}
      matchExpressions: [{key: app, operator: In, values: [books, authors]}]
  maxUnavailable: 2
"#;

#[test]
fn every_crd_becomes_established_accepts_the_documented_objects_and_refuses_bad_ones() {
    let Some(api) = KubeApi::shared() else { return };
    install_crds(api);

    // Every example of docs/policy.md's examples directory is accepted as it is, and
    // reads back into the types unchanged.
    let examples = repo().join("examples/policy");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let out = api
            .kubectl(&["apply", "--server-side", "-f", path.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(out.contains("serverside-applied"), "{out}");
    }
    let server = api
        .kubectl(&["get", "servers.policy.weft.io", "books-http", "-o", "json"])
        .unwrap();
    let server: policy::Server = serde_json::from_str(&server).unwrap();
    assert_eq!(server.spec.port, policy::PortRef::Number(8080));
    assert_eq!(server.spec.proxy_protocol, policy::ProxyProtocol::Http1);
    let mtls = api
        .kubectl(&["get", "meshtlsauthentications.policy.weft.io", "-o", "name"])
        .unwrap();
    assert!(
        mtls.contains("books-clients") && mtls.contains("any-mesh-identity"),
        "{mtls}"
    );

    // A port by name, and the default protocol filled in by the schema.
    api.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Server\nmetadata: {name: by-name, namespace: default}\nspec: {podSelector: {}, port: http}\n",
        ),
    )
    .unwrap();
    let by_name = api
        .kubectl(&["get", "servers.policy.weft.io", "by-name", "-o", "json"])
        .unwrap();
    let by_name: policy::Server = serde_json::from_str(&by_name).unwrap();
    assert_eq!(by_name.spec.port, policy::PortRef::Name("http".into()));
    assert_eq!(by_name.spec.proxy_protocol, policy::ProxyProtocol::Unknown);

    api.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(VALID_OPERATOR_OBJECTS),
    )
    .unwrap();
    let cp = api
        .kubectl(&[
            "get",
            "controlplanes.operator.weft.io",
            "weft",
            "-o",
            "json",
        ])
        .unwrap();
    let cp: operator::ControlPlane = serde_json::from_str(&cp).unwrap();
    assert_eq!(cp.spec.high_availability.unwrap().replicas, Some(3));

    // The printer columns.
    let table = api
        .kubectl(&["get", "servers.policy.weft.io", "-n", "default"])
        .unwrap();
    assert!(
        table.starts_with("NAME") && table.contains("PORT") && table.contains("PROTOCOL"),
        "{table}"
    );
    assert!(
        table.contains("books-http") && table.contains("HTTP/1"),
        "{table}"
    );

    // Refusals name the field at fault.
    let server = |spec: &str| {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Server\nmetadata: {{name: bad, namespace: default}}\nspec: {spec}\n"
        )
    };
    let cases: &[(String, &[&str])] = &[
        (server("{podSelector: {}}"), &["spec.port", "Required value"]),
        (
            server("{podSelector: {}, port: 70000}"),
            &["spec.port", "from 1 to 65535"],
        ),
        (server("{podSelector: {}, port: 0}"), &["spec.port", "from 1 to 65535"]),
        (
            server("{podSelector: {}, port: Not_A_Name}"),
            &["spec.port", "port name"],
        ),
        (
            server("{podSelector: {}, port: 80, proxyProtocol: HTTP/3}"),
            &["spec.proxyProtocol", "Unsupported value: \"HTTP/3\""],
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: default}\nspec:\n  targetRef: {kind: Deployment, name: books}\n".into(),
            &["spec.targetRef.kind", "Unsupported value: \"Deployment\""],
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: default}\nspec:\n  targetRef: {group: policy.weft.io, kind: Server, name: Books_HTTP}\n".into(),
            &["spec.targetRef.name", "should match"],
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: default}\nspec:\n  targetRef: {kind: Namespace, name: default}\n  requiredAuthenticationRefs:\n    - {kind: MeshTLSAuthentication, name: a}\n    - {kind: MeshTLSAuthentication, name: b}\n".into(),
            &["spec.requiredAuthenticationRefs", "at most one MeshTLSAuthentication"],
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {name: bad, namespace: default}\nspec:\n  identities: ['*']\n  identityRefs: [{kind: ServiceAccount, name: web}]\n".into(),
            &["spec", "give identities or identityRefs, not both"],
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {name: bad, namespace: default}\nspec:\n  identities: ['web.default.serviceaccount.identity.weft.cluster.local', 'Not An Identity']\n".into(),
            &["spec.identities[1]", "should match"],
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {name: bad, namespace: default}\nspec:\n  identityRefs: [{kind: Pod, name: web}]\n".into(),
            &["spec.identityRefs[0].kind", "Unsupported value: \"Pod\""],
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {name: bad, namespace: default}\nspec:\n  networks: [{cidr: 198.18.0.0/15, except: [198.18.0.300/32]}]\n".into(),
            &["spec.networks[0].except[0]", "must be a CIDR"],
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {name: bad, namespace: default}\nspec:\n  networks: []\n".into(),
            &["spec.networks", "should have at least 1 items"],
        ),
        (
            "apiVersion: operator.weft.io/v1alpha1\nkind: ControlPlane\nmetadata: {name: bad}\nspec: {highAvailability: {replicas: 1}}\n".into(),
            &["spec.version", "Required value", "spec.highAvailability.replicas", "greater than or equal to 2"],
        ),
        (
            "apiVersion: operator.weft.io/v1alpha1\nkind: ControlPlane\nmetadata: {name: bad}\nspec:\n  version: 0.1.0\n  trustAnchor: {secret: {name: a}, configMap: {name: b}}\n  values: {proxy: {resources: {requests: {cpu: lots}}}}\n".into(),
            &["spec.trustAnchor", "not both", "spec.values.proxy.resources.requests.cpu", "must be a quantity"],
        ),
        (
            "apiVersion: operator.weft.io/v1alpha1\nkind: DataPlane\nmetadata: {name: bad}\nspec:\n  maxUnavailable: 0\n".into(),
            &["spec.maxUnavailable", "greater than or equal to 1"],
        ),
        // CEL rules run only on objects that pass the rest of the schema.
        (
            "apiVersion: operator.weft.io/v1alpha1\nkind: DataPlane\nmetadata: {name: bad}\nspec:\n  workloadSelector: {labelSelector: {matchExpressions: [{key: app, operator: In}]}}\n".into(),
            &["spec.workloadSelector.labelSelector.matchExpressions[0]", "In and NotIn need values"],
        ),
        (
            "apiVersion: operator.weft.io/v1alpha1\nkind: ControlPlane\nmetadata: {name: bad}\nspec:\n  version: v0.1.0\n  values: {controller: {image: {pullPolicy: Sometimes}}}\n".into(),
            &["spec.values.controller.image.pullPolicy", "supported values: \"Always\", \"IfNotPresent\", \"Never\""],
        ),
    ];
    for (yaml, expected) in cases {
        let message = refused(api, yaml);
        for e in *expected {
            assert!(
                message.contains(e),
                "expected {e:?} in the refusal of\n{yaml}\ngot: {message}"
            );
        }
    }
}

/// `weft install`'s output applies to the API server as it is: the CRDs, the namespace,
/// RBAC, both Deployments and Services and the webhook configuration (and the HA
/// variant, with its PodDisruptionBudget, passes a server-side dry run). With the
/// injector absent (no kubelet runs it), the webhook's `failurePolicy: Ignore` lets a
/// pod be created without injection, as documented; `weft uninstall` deletes it all.
#[test]
fn weft_install_applies_its_webhook_ignores_a_missing_injector_and_uninstall_deletes_it() {
    let Some(api) = KubeApi::shared() else { return };
    let manifests = install::render(&InstallOptions::default(), true).unwrap();
    let out = api
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&manifests))
        .unwrap();
    assert!(out.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/weft-injector serverside-applied"), "{out}");
    common::wait_crds_established(api);
    let ha = InstallOptions {
        controller_replicas: install::HA_REPLICAS,
        ..Default::default()
    };
    let out = api
        .kubectl_stdin(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            Some(&install::render(&ha, false).unwrap()),
        )
        .unwrap();
    assert!(
        out.contains(
            "poddisruptionbudget.policy/weft-controller serverside-applied (server dry run)"
        ),
        "{out}"
    );

    // The controller's ServiceAccount may do what its ClusterRole grants.
    let sa = "system:serviceaccount:weft-system:weft-controller";
    for check in [
        &["watch", "endpointslices.discovery.k8s.io"][..],
        &["create", "tokenreviews.authentication.k8s.io"],
        &["patch", "servers.policy.weft.io", "--subresource=status"],
        // (Not the Gateway API's routes: their CRDs are not installed here.)
        &["list", "nodes"],
    ] {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(check);
        args.extend_from_slice(&["--as", sa, "-A"]);
        let answer = api.kubectl(&args).unwrap_or_else(|e| format!("{e:#}"));
        assert_eq!(answer.trim(), "yes", "{sa}: {check:?}");
    }
    let answer = api
        .kubectl(&[
            "auth",
            "can-i",
            "update",
            "leases.coordination.k8s.io",
            "--as",
            sa,
            "-n",
            "weft-system",
        ])
        .unwrap();
    assert_eq!(answer.trim(), "yes");
    // `kubectl auth can-i` answers "no" with exit status 1.
    let denied = api.kubectl(&["auth", "can-i", "delete", "pods", "--as", sa, "-A"]);
    assert!(
        denied
            .as_ref()
            .is_err_and(|e| !format!("{e:#}").contains("forbidden")),
        "{denied:?}"
    );

    // No injector behind the webhook: the pod is created all the same, unchanged. The
    // webhook is pointed at a closed loopback port first: this API server has no
    // Service network, and would look the Service's DNS name up outside the machine.
    api.kubectl(&[
        "patch",
        "mutatingwebhookconfiguration",
        "weft-injector",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/webhooks/0/clientConfig","value":{"url":"https://127.0.0.1:9/inject"}}]"#,
    ])
    .unwrap();
    api.kubectl(&["create", "namespace", "shop"]).unwrap();
    api.kubectl(&["annotate", "namespace", "shop", "weft.io/inject=enabled"])
        .unwrap();
    // (No controller manager makes the default ServiceAccount here.)
    api.kubectl(&["-n", "shop", "create", "serviceaccount", "default"])
        .unwrap();
    api.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: books, namespace: shop}\nspec:\n  containers: [{name: app, image: books:1}]\n"),
    )
    .unwrap();
    let containers = api
        .kubectl(&[
            "-n",
            "shop",
            "get",
            "pod",
            "books",
            "-o",
            "jsonpath={.spec.containers[*].name} {.spec.initContainers[*].name}",
        ])
        .unwrap();
    assert_eq!(containers.trim(), "app");
    let log = std::fs::read_to_string(api.log("kube-apiserver")).unwrap();
    assert!(
        log.contains("failing open inject.weft.io"),
        "the API server did not call the webhook and fail open"
    );

    let out = api
        .kubectl_stdin(
            &["delete", "--wait=false", "-f", "-"],
            Some(&install::uninstall(&InstallOptions::default(), true).unwrap()),
        )
        .unwrap();
    assert!(
        out.contains(
            "mutatingwebhookconfiguration.admissionregistration.k8s.io \"weft-injector\" deleted"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io \"dataplanes.operator.weft.io\" deleted"
        ),
        "{out}"
    );
    let left = api
        .kubectl(&[
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations",
            "-l",
            "app.kubernetes.io/part-of=weft",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(left.trim(), "", "left behind: {left}");
}

/// How to bring the chart's generated files up to date.
const REGENERATE: &str =
    "regenerate them with: WEFT_BLESS=1 cargo nextest run -p weft-k8s --test crds chart";

/// Compares `path` with `want`, or writes it under `WEFT_BLESS=1`.
fn committed(path: &Path, want: &str) {
    if std::env::var_os("WEFT_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from what weft renders; {REGENERATE}",
        path.display()
    );
}

/// `charts/weft/crds/` holds exactly the CRDs `weft install --crds` prints, one file
/// each.
#[test]
fn chart_crds_are_what_weft_install_crds_prints() {
    let dir = repo().join("charts/weft/crds");
    let mut names = Vec::new();
    for c in crd::all() {
        let name = format!("{}.yaml", c.metadata.name.clone().unwrap());
        committed(&dir.join(&name), &crd::yaml(&name, &c).unwrap());
        names.push(name);
    }
    // Concatenated in order, they are `weft install --crds`'s output (crd::render).
    let files = names
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap_or_default());
    assert!(
        crd::documents(files) == crd::render().unwrap(),
        "{} differs from `weft install --crds`; {REGENERATE}",
        dir.display()
    );
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    names.sort();
    assert_eq!(
        present,
        names,
        "{}: other files than the CRDs; {REGENERATE}",
        dir.display()
    );
}

/// `charts/weft/rendered/` is `weft install --operator`'s default output (there is no
/// Debian `helm` to render the chart here): what the chart's default rendering must be.
#[test]
fn chart_rendered_manifests_are_weft_installs_default_output() {
    let path = repo().join("charts/weft/rendered/weft.yaml");
    committed(
        &path,
        &manifests::render(&InstallOptions::default(), manifests::OPERATOR, true).unwrap(),
    );
}

/// The chart's templates, rendered with a small subset of Helm's template language
/// (the only constructs they use), make the same objects as `weft install --operator`,
/// with the default values, with high availability, without the Namespace and without
/// the ControlPlane.
#[test]
fn chart_templates_render_the_same_objects_as_weft_install() {
    let chart = repo().join("charts/weft");
    let values: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        values["version"],
        install::DEFAULT_VERSION,
        "values.yaml's version"
    );
    assert_eq!(values["imageRegistry"], install::DEFAULT_IMAGE_REGISTRY);
    let chart_yaml: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart_yaml["appVersion"],
        install::DEFAULT_VERSION,
        "Chart.yaml's appVersion"
    );

    assert_eq!(
        values["controlPlane"]["namespace"],
        install::DEFAULT_NAMESPACE
    );
    for (ha, create_namespace, control_plane) in [
        (false, true, true),
        (true, true, true),
        (false, false, true),
        (false, true, false),
    ] {
        let mut values = values.clone();
        values["highAvailability"] = ha.into();
        values["createNamespace"] = create_namespace.into();
        values["controlPlane"]["create"] = control_plane.into();
        let mut rendered = Vec::new();
        let mut templates: Vec<_> = std::fs::read_dir(chart.join("templates"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        templates.sort();
        for t in templates {
            let text = std::fs::read_to_string(&t).unwrap();
            let out = helm_subset::render(&text, &values, manifests::OPERATOR)
                .unwrap_or_else(|e| panic!("{}: {e}", t.display()));
            for doc in serde_yaml_ng::Deserializer::from_str(&out) {
                let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
                if !v.is_null() {
                    rendered.push(v);
                }
            }
        }
        let opts = InstallOptions {
            controller_replicas: if ha { install::HA_REPLICAS } else { 1 },
            ..Default::default()
        };
        let mut want: Vec<serde_json::Value> =
            manifests::operator(&opts, manifests::OPERATOR, control_plane)
                .unwrap()
                .iter()
                .map(|m| serde_yaml_ng::from_str(&m.yaml).unwrap())
                .filter(|v: &serde_json::Value| create_namespace || v["kind"] != "Namespace")
                .collect();
        let key = |v: &serde_json::Value| format!("{} {}", v["kind"], v["metadata"]["name"]);
        rendered.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(
            rendered.iter().map(key).collect::<Vec<_>>(),
            want.iter().map(key).collect::<Vec<_>>(),
            "ha={ha} createNamespace={create_namespace} controlPlane={control_plane}"
        );
        for (r, w) in rendered.iter().zip(&want) {
            assert_eq!(
                r,
                w,
                "ha={ha}: {} differs between the chart and weft install",
                key(w)
            );
        }
    }
}

/// The few constructs of Helm's template language the chart uses: `{{ .Values.a.b }}`,
/// `{{ .Release.Namespace }}`, `{{ if .Values.x }}…{{ else }}…{{ end }}` and
/// `| b64enc`, with `{{-`/`-}}` trimming. Anything else is an error, so a template
/// growing past this subset fails the test instead of passing unchecked.
mod helm_subset {
    use serde_json::Value;

    pub fn render(text: &str, values: &Value, namespace: &str) -> Result<String, String> {
        let mut out = String::new();
        // One entry per open `if`: (the branch is taken, an enclosing branch is on).
        let mut stack: Vec<(bool, bool)> = Vec::new();
        let on =
            |stack: &[(bool, bool)]| stack.last().is_none_or(|(taken, outer)| *taken && *outer);
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let (before, after) = rest.split_at(start);
            let end = after.find("}}").ok_or("an unclosed {{")?;
            let mut action = &after[2..end];
            let mut text = before;
            if let Some(a) = action.strip_prefix('-') {
                action = a;
                text = text.trim_end();
            }
            let mut next = &after[end + 2..];
            if let Some(a) = action.strip_suffix('-') {
                action = a;
                next = next.trim_start();
            }
            if on(&stack) {
                out.push_str(text);
            }
            let action = action.trim();
            let words: Vec<&str> = action.split_whitespace().collect();
            match words.as_slice() {
                ["if", path] => {
                    let outer = on(&stack);
                    stack.push((truthy(lookup(values, path)?), outer));
                }
                ["else"] => {
                    let (taken, outer) = stack.pop().ok_or("else without if")?;
                    stack.push((!taken, outer));
                }
                ["end"] => {
                    stack.pop().ok_or("end without if")?;
                }
                [".Release.Namespace"] => {
                    if on(&stack) {
                        out.push_str(namespace)
                    }
                }
                [path] => {
                    if on(&stack) {
                        out.push_str(&scalar(lookup(values, path)?)?)
                    }
                }
                [path, "|", "b64enc"] => {
                    if on(&stack) {
                        out.push_str(&base64(scalar(lookup(values, path)?)?.as_bytes()))
                    }
                }
                _ => return Err(format!("unsupported action {{{{ {action} }}}}")),
            }
            rest = next;
        }
        if !stack.is_empty() {
            return Err("an if without end".into());
        }
        out.push_str(rest);
        Ok(out)
    }

    fn lookup<'a>(values: &'a Value, path: &str) -> Result<&'a Value, String> {
        let path = path
            .strip_prefix(".Values.")
            .ok_or_else(|| format!("unsupported reference {path}"))?;
        let mut v = values;
        for key in path.split('.') {
            v = v
                .get(key)
                .ok_or_else(|| format!("no value .Values.{path}"))?;
        }
        Ok(v)
    }

    fn truthy(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }

    fn scalar(v: &Value) -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Bool(_) | Value::Number(_) => Ok(v.to_string()),
            _ => Err(format!("{v} is not a scalar")),
        }
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

use serde_json::{json, Value};

use super::*;

fn schema_of(kind: &str) -> Value {
    let crd = all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD of kind {kind}"));
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn every_crd_is_named_by_plural_and_group_with_one_stored_version_and_status() {
    let names: Vec<_> = all()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "servers.policy.weft.io",
            "authorizationpolicies.policy.weft.io",
            "meshtlsauthentications.policy.weft.io",
            "networkauthentications.policy.weft.io",
            "controlplanes.operator.weft.io",
            "dataplanes.operator.weft.io",
        ]
    );
    for crd in all() {
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(crd.spec.versions.len(), 1, "{name}");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1", "{name}");
        assert!(v.served && v.storage, "{name}");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: no status subresource"
        );
        let columns = v.additional_printer_columns.as_ref().unwrap();
        assert!(columns.iter().any(|c| c.name == "Age"), "{name}");
        assert_eq!(
            crd.metadata
                .labels
                .as_ref()
                .unwrap()
                .get(PART_OF.0)
                .map(String::as_str),
            Some(PART_OF.1)
        );
    }
    let scopes: Vec<_> = all().iter().map(|c| c.spec.scope.clone()).collect();
    assert_eq!(
        scopes,
        [
            "Namespaced",
            "Namespaced",
            "Namespaced",
            "Namespaced",
            "Cluster",
            "Cluster"
        ]
    );
}

#[test]
fn server_schema_requires_selector_and_port_and_checks_the_port_in_cel() {
    let s = schema_of("Server");
    assert_eq!(s["required"], json!(["spec"]));
    let spec = &s["properties"]["spec"];
    assert_eq!(spec["required"], json!(["podSelector", "port"]));
    let port = &spec["properties"]["port"];
    assert_eq!(port["x-kubernetes-int-or-string"], json!(true));
    let rule = port["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .unwrap();
    assert!(rule.contains("self <= 65535"), "{rule}");
    assert_eq!(
        spec["properties"]["proxyProtocol"]["enum"],
        json!(["unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"])
    );
    // The selector takes only matchLabels, as the controller does.
    let selector = &spec["properties"]["podSelector"]["properties"];
    assert_eq!(
        selector.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["matchLabels"]
    );
}

#[test]
fn policy_references_have_their_kinds_as_enums_and_names_as_dns_labels() {
    let s = schema_of("AuthorizationPolicy");
    let spec = &s["properties"]["spec"];
    assert_eq!(spec["required"], json!(["targetRef"]));
    let target = &spec["properties"]["targetRef"];
    assert_eq!(
        target["properties"]["kind"]["enum"],
        json!(["Server", "Namespace"])
    );
    assert_eq!(
        target["properties"]["name"]["pattern"],
        json!(common::DNS_LABEL)
    );
    let refs = &spec["properties"]["requiredAuthenticationRefs"];
    assert_eq!(refs["maxItems"], json!(2));
    assert!(refs["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .unwrap()
        .contains("MeshTLSAuthentication"));

    let m = schema_of("MeshTLSAuthentication");
    let rule = &m["properties"]["spec"]["x-kubernetes-validations"][0];
    assert_eq!(
        rule["rule"],
        json!("has(self.identities) != has(self.identityRefs)")
    );
    assert_eq!(
        m["properties"]["spec"]["properties"]["identities"]["items"]["pattern"],
        json!(policy::IDENTITY)
    );

    let n = schema_of("NetworkAuthentication");
    let networks = &n["properties"]["spec"]["properties"]["networks"];
    assert_eq!(networks["minItems"], json!(1));
    assert_eq!(networks["items"]["required"], json!(["cidr"]));
    assert_eq!(
        networks["items"]["properties"]["cidr"]["x-kubernetes-validations"][0]["rule"],
        json!("isCIDR(self) || isIP(self)")
    );
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    for kind in ["Server", "AuthorizationPolicy", "ControlPlane", "DataPlane"] {
        let s = schema_of(kind);
        let conditions = &s["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], json!("map"), "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            json!(["type"]),
            "{kind}"
        );
        assert_eq!(
            conditions["items"]["required"],
            json!(["lastTransitionTime", "message", "reason", "status", "type"]),
            "{kind}"
        );
    }
}

#[test]
fn operator_schemas_require_the_version_and_bound_replicas() {
    let c = schema_of("ControlPlane");
    let spec = &c["properties"]["spec"];
    assert_eq!(spec["required"], json!(["version"]));
    let ha = &spec["properties"]["highAvailability"]["properties"]["replicas"];
    assert_eq!(
        (ha["minimum"].as_f64(), ha["maximum"].as_f64()),
        (Some(2.0), Some(9.0))
    );
    assert!(spec["properties"]["trustAnchor"]["x-kubernetes-validations"].is_array());
    let pull = &spec["properties"]["values"]["properties"]["proxy"]["properties"]["image"]
        ["properties"]["pullPolicy"];
    assert_eq!(pull["enum"], json!(["Always", "IfNotPresent", "Never"]));
    let d = schema_of("DataPlane");
    let max = &d["properties"]["spec"]["properties"]["maxUnavailable"];
    assert_eq!(max["minimum"].as_f64(), Some(1.0));
}

/// The types read the same YAML the controller reads from the mesh directory (the
/// examples of docs/policy.md), and write it back unchanged.
#[test]
fn the_policy_examples_parse_into_the_types_and_round_trip() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = value["kind"].as_str().unwrap().to_owned();
            let back = match kind.as_str() {
                "Server" => round_trip::<policy::Server>(&value),
                "AuthorizationPolicy" => round_trip::<policy::AuthorizationPolicy>(&value),
                "MeshTLSAuthentication" => round_trip::<policy::MeshTLSAuthentication>(&value),
                "NetworkAuthentication" => round_trip::<policy::NetworkAuthentication>(&value),
                other => panic!("{}: unexpected kind {other}", path.display()),
            };
            assert_eq!(back["spec"], value["spec"], "{}: {kind}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 8, "only {seen} objects in {dir}");
}

fn round_trip<T: serde::de::DeserializeOwned + Serialize>(value: &Value) -> Value {
    let typed: T = serde_json::from_value(value.clone()).unwrap();
    serde_json::to_value(typed).unwrap()
}

#[test]
fn rendering_gives_one_document_per_crd() {
    let text = render().unwrap();
    assert_eq!(text.matches("---\n").count(), all().len());
    assert!(
        text.starts_with(
            "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
        ),
        "{}",
        &text[..200]
    );
}

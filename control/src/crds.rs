//! The CustomResourceDefinitions of the kinds `istiod --kube` watches beyond core Kubernetes,
//! generated here and checked in under `control/crds/` (a test keeps the files equal to what
//! this module produces), so a cluster — kind, or a test's private API server — serves them:
//!
//! - Gateway API (`gateway.networking.k8s.io`): Gateway, HTTPRoute and GRPCRoute, from the
//!   `gateway-api` crate's own types (`CustomResourceExt::crd`), experimental channel — a
//!   superset of the standard one, so the API server does not prune the experimental fields
//!   users write (the store reads HTTPRoute as experimental too). The group is protected
//!   (`*.k8s.io`), so each carries the `api-approved.kubernetes.io` annotation the upstream
//!   release files carry, without which the API server refuses it.
//! - Istio's `security.istio.io` AuthorizationPolicy and PeerAuthentication, and our own
//!   `testbed.ambient.io` FaultInjection: our types implement `kube::Resource` by hand (they
//!   keep an optional `spec` and refuse unknown fields, which a schema derive would not give),
//!   so their CRDs are minimal structural ones whose `spec` and `status` keep any field
//!   (`x-kubernetes-preserve-unknown-fields`). The API server stores whatever is written;
//!   istiod's readers are what check it, and report what they cannot read.

use std::collections::BTreeMap;

use gateway_api::experimental::{gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResourceExt;

use crate::types::fault;

/// The value upstream's release files give `api-approved.kubernetes.io`.
const GATEWAY_API_APPROVAL: &str = "https://github.com/kubernetes-sigs/gateway-api/pull/3328";

/// One checked-in file: its name under `control/crds/` and the CRDs it holds.
pub struct CrdFile {
    pub name: &'static str,
    pub crds: Vec<CustomResourceDefinition>,
}

/// Every CRD file, in the order to apply them.
pub fn files() -> Vec<CrdFile> {
    vec![
        CrdFile {
            name: "gateway.networking.k8s.io.yaml",
            crds: gateway_api(),
        },
        CrdFile {
            name: "security.istio.io.yaml",
            crds: istio_security(),
        },
        CrdFile {
            name: "testbed.ambient.io.yaml",
            crds: testbed(),
        },
    ]
}

/// Gateway, HTTPRoute and GRPCRoute from the `gateway-api` crate's experimental types.
pub fn gateway_api() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![Gateway::crd(), HttpRoute::crd(), GrpcRoute::crd()];
    for crd in &mut crds {
        let annotations = crd.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(
            "api-approved.kubernetes.io".into(),
            GATEWAY_API_APPROVAL.into(),
        );
        annotations.insert(
            "gateway.networking.k8s.io/channel".into(),
            "experimental".into(),
        );
    }
    crds
}

/// AuthorizationPolicy and PeerAuthentication, served as `v1` (stored) and `v1beta1`, as
/// upstream serves both and the store reads both.
pub fn istio_security() -> Vec<CustomResourceDefinition> {
    let versions = [("v1", true), ("v1beta1", false)];
    vec![
        preserving(
            "security.istio.io",
            "AuthorizationPolicy",
            "authorizationpolicies",
            &versions,
            &[],
        ),
        preserving(
            "security.istio.io",
            "PeerAuthentication",
            "peerauthentications",
            &versions,
            &["pa"],
        ),
    ]
}

/// Our FaultInjection (`testbed.ambient.io/v1alpha1`).
pub fn testbed() -> Vec<CustomResourceDefinition> {
    vec![preserving(
        fault::GROUP,
        fault::KIND,
        "faultinjections",
        &[(fault::VERSION, true)],
        &[],
    )]
}

/// An object-typed schema property that keeps every field written under it.
fn open_object() -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some("object".into()),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..JSONSchemaProps::default()
    }
}

/// A namespaced CRD whose `spec` and `status` keep any field: structural (the API server
/// requires that of `apiextensions.k8s.io/v1`), and no stricter than the types that read it.
fn preserving(
    group: &str,
    kind: &str,
    plural: &str,
    versions: &[(&str, bool)],
    short_names: &[&str],
) -> CustomResourceDefinition {
    let schema = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some(BTreeMap::from([
            ("spec".to_string(), open_object()),
            ("status".to_string(), open_object()),
        ])),
        ..JSONSchemaProps::default()
    };
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{group}")),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: group.into(),
            names: CustomResourceDefinitionNames {
                kind: kind.into(),
                list_kind: Some(format!("{kind}List")),
                plural: plural.into(),
                singular: Some(kind.to_lowercase()),
                short_names: (!short_names.is_empty())
                    .then(|| short_names.iter().map(|s| s.to_string()).collect()),
                categories: None,
            },
            scope: "Namespaced".into(),
            versions: versions
                .iter()
                .map(|(name, storage)| CustomResourceDefinitionVersion {
                    name: name.to_string(),
                    served: true,
                    storage: *storage,
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: Some(schema.clone()),
                    }),
                    subresources: Some(CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                        scale: None,
                    }),
                    ..CustomResourceDefinitionVersion::default()
                })
                .collect(),
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    }
}

/// The text of a CRD file: a header saying where it comes from, then one YAML document per
/// CRD.
pub fn render(file: &CrdFile) -> Result<String, serde_yaml::Error> {
    let mut text = format!(
        "# Generated by control::crds ({}); do not edit.\n\
         # Regenerate: UPDATE_CRDS=1 cargo test -p control --test control_plane kube::files\n",
        file.name
    );
    for crd in &file.crds {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(crd)?);
    }
    Ok(text)
}

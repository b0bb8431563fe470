//! `testbed.ambient.io/v1alpha1` FaultInjection: our own kind, because Gateway API has no
//! fault filter and upstream's (VirtualService `fault`) is not something an HTTPRoute can
//! name. An HTTPRoute rule or backendRef uses one through an `ExtensionRef` filter:
//!
//! ```yaml
//! apiVersion: testbed.ambient.io/v1alpha1
//! kind: FaultInjection
//! metadata: {name: flaky, namespace: shop}
//! spec:
//!   delay: {fixedDelay: 500ms, percentage: 10}
//!   abort: {httpStatus: 503, fraction: {numerator: 1, denominator: 1000}}
//! ---
//! # in an HTTPRoute rule (or backendRef):
//! filters:
//! - type: ExtensionRef
//!   extensionRef: {group: testbed.ambient.io, kind: FaultInjection, name: flaky}
//! ```
//!
//! Shares of requests are written as RequestMirror writes them (gateway-api-semantics §8.5),
//! so a Gateway API user already knows the shape: `percentage` (a whole percent, 0–100) or
//! `fraction` (`numerator` ≤ `denominator`, `denominator` 100 when omitted) for shares below
//! one percent, never both; neither means every request (as upstream's fault injection).
//! Unknown fields are errors, like the Istio types in [`super::security`].

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::security::OpaqueStatus;

/// The API group of our own kinds; an `ExtensionRef` must name it to reach a FaultInjection.
pub const GROUP: &str = "testbed.ambient.io";
/// The only version there is.
pub const VERSION: &str = "v1alpha1";
/// The `kind` an `ExtensionRef` names.
pub const KIND: &str = "FaultInjection";

/// A share of requests as a fraction, for shares a whole percent cannot express.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    /// Validated 0 ≤ numerator ≤ denominator.
    pub numerator: i64,
    /// Validated ≥ 1; omitted means 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<i64>,
}

/// A delay before the request is forwarded, for a share of requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// A GEP-2257 duration (`500ms`, `1s`), the same syntax as HTTPRoute timeouts.
    pub fixed_delay: String,
    /// Whole percent of requests delayed, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<i64>,
    /// Or the share as a fraction; not with `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// An error answered instead of forwarding, for a share of requests. Exactly one of
/// `httpStatus`, `grpcStatus` or `reset: true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// An HTTP status answered by the waypoint, 200–599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// A gRPC status code, 0–16 (HTTP 200 with `grpc-status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<i64>,
    /// `true`: the client's stream is reset. `false` counts as not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
    /// Whole percent of requests aborted, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<i64>,
    /// Or the share as a fraction; not with `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// What to inject; at least one of the two. The delay applies first, and an aborted request
/// is never forwarded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjectionSpec {
    /// Unset: no delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Unset: no abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A `testbed.ambient.io/v1alpha1` FaultInjection object, namespaced: an `ExtensionRef`
/// finds it in the route's own namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjection {
    /// As written; the source checks it against [`GROUP`]/[`VERSION`] before parsing.
    #[serde(default)]
    pub api_version: String,
    /// As written; always [`KIND`] once parsed.
    #[serde(default)]
    pub kind: String,
    /// Name and namespace: what an `ExtensionRef` names.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What to inject; validation refuses an empty one.
    #[serde(default)]
    pub spec: FaultInjectionSpec,
    /// Kept opaque: the control plane never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: OpaqueStatus,
}

/// By hand, as for the Istio types: the watcher only needs the API coordinates, and the
/// object keeps rejecting unknown fields without a JSON schema.
impl kube::Resource for FaultInjection {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "faultinjections".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

//! The waypoint's request metrics, with upstream's names and the standard Istio request
//! labels (`reporter="waypoint"`): `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`.

use std::fmt::Write as _;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::identity::Identity;
use crate::state::Workload;

/// Upstream's request label set, in its order; missing values render as `unknown`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// What one request's labels are made of.
pub(crate) struct RequestTraffic<'a> {
    pub(crate) source: Option<&'a Workload>,
    pub(crate) source_identity: Option<&'a Identity>,
    /// Hostname, namespace and name of the Service addressed.
    pub(crate) service: Option<(&'a str, &'a str, &'a str)>,
    pub(crate) destination: Option<&'a Workload>,
    pub(crate) grpc: bool,
    pub(crate) status: u16,
    pub(crate) grpc_status: Option<&'a str>,
    pub(crate) response_flags: &'a str,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_string()
    }
}

impl RequestTraffic<'_> {
    pub(crate) fn labels(&self) -> RequestLabels {
        let (s, d) = (self.source, self.destination);
        let w = |w: Option<&Workload>, f: fn(&Workload) -> &str| or_unknown(w.map(f).unwrap_or(""));
        let (host, ns, name) = self.service.unwrap_or(("", "", ""));
        RequestLabels {
            reporter: "waypoint".into(),
            source_workload: w(s, |w| &w.workload_name),
            source_canonical_service: w(s, |w| &w.canonical_name),
            source_canonical_revision: w(s, |w| &w.canonical_revision),
            source_workload_namespace: w(s, |w| &w.namespace),
            source_principal: or_unknown(
                &self
                    .source_identity
                    .map(Identity::to_string)
                    .unwrap_or_default(),
            ),
            source_app: w(s, |w| &w.canonical_name),
            source_version: w(s, |w| &w.canonical_revision),
            source_cluster: w(s, |w| &w.cluster_id),
            destination_service: or_unknown(host),
            destination_service_namespace: or_unknown(ns),
            destination_service_name: or_unknown(name),
            destination_workload: w(d, |w| &w.workload_name),
            destination_canonical_service: w(d, |w| &w.canonical_name),
            destination_canonical_revision: w(d, |w| &w.canonical_revision),
            destination_workload_namespace: w(d, |w| &w.namespace),
            destination_principal: or_unknown(
                &d.map(|w| w.identity().to_string()).unwrap_or_default(),
            ),
            destination_app: w(d, |w| &w.canonical_name),
            destination_version: w(d, |w| &w.canonical_revision),
            destination_cluster: w(d, |w| &w.cluster_id),
            request_protocol: if self.grpc { "grpc" } else { "http" }.into(),
            response_code: self.status.to_string(),
            grpc_response_status: self.grpc_status.unwrap_or("").to_string(),
            response_flags: if self.response_flags.is_empty() {
                "-".into()
            } else {
                self.response_flags.into()
            },
            connection_security_policy: "mutual_tls".into(),
        }
    }
}

/// Milliseconds, as upstream's Envoy buckets them.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Bytes: 1 to 10^8 by decades.
const SIZE_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

type Histograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// The waypoint's metric families.
pub struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: Histograms,
    pub(crate) request_bytes: Histograms,
    pub(crate) response_bytes: Histograms,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("istio");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: Histograms =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        let request_bytes: Histograms =
            Family::new_with_constructor(|| Histogram::new(SIZE_BUCKETS));
        let response_bytes: Histograms =
            Family::new_with_constructor(|| Histogram::new(SIZE_BUCKETS));
        registry.register(
            "requests",
            "Requests through the waypoint",
            requests.clone(),
        );
        registry.register(
            "request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        registry.register("request_bytes", "Request body sizes", request_bytes.clone());
        registry.register(
            "response_bytes",
            "Response body sizes",
            response_bytes.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
        }
    }
}

impl Metrics {
    pub(crate) fn record(&self, labels: &RequestLabels, millis: f64, sent: u64, received: u64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
        self.request_bytes
            .get_or_create(labels)
            .observe(sent as f64);
        self.response_bytes
            .get_or_create(labels)
            .observe(received as f64);
    }

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# metrics could not be encoded");
        }
        out
    }
}

//! Prometheus metrics with upstream's names and traffic labels.

use std::fmt::Write as _;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::identity::Identity;
use crate::state::{Service, Workload};

/// Upstream's traffic label set, in its order. Missing values render as `unknown`.
///
/// The four locality labels close the set: upstream puts them on every traffic metric (from
/// the workload's `locality`), so a dashboard grouping by zone finds them on any ztunnel.
/// Locality is not modelled here (istiod does not send it), so they read `unknown`, which is
/// what upstream shows for a workload without one.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
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
    pub response_flags: String,
    pub connection_security_policy: String,
    pub source_region: String,
    pub source_zone: String,
    pub destination_region: String,
    pub destination_zone: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

/// What one connection's labels are made of.
pub struct Traffic<'a> {
    pub reporter: Reporter,
    pub source: Option<&'a Workload>,
    pub source_identity: Option<&'a Identity>,
    pub destination: Option<&'a Workload>,
    pub destination_identity: Option<&'a Identity>,
    pub service: Option<&'a Service>,
    pub response_flags: &'a str,
    pub mutual_tls: bool,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_string()
    }
}

fn field<T>(w: Option<&T>, f: impl Fn(&T) -> &str) -> String {
    or_unknown(w.map(f).unwrap_or(""))
}

impl Traffic<'_> {
    pub fn labels(&self) -> TrafficLabels {
        let (s, d) = (self.source, self.destination);
        TrafficLabels {
            reporter: match self.reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
            }
            .into(),
            source_workload: field(s, |w| &w.workload_name),
            source_canonical_service: field(s, |w| &w.canonical_name),
            source_canonical_revision: field(s, |w| &w.canonical_revision),
            source_workload_namespace: field(s, |w| &w.namespace),
            source_principal: or_unknown(
                &self
                    .source_identity
                    .map(Identity::to_string)
                    .unwrap_or_default(),
            ),
            source_app: field(s, |w| &w.canonical_name),
            source_version: field(s, |w| &w.canonical_revision),
            source_cluster: field(s, |w| &w.cluster_id),
            destination_service: field(self.service, |v| &v.hostname),
            destination_service_namespace: field(self.service, |v| &v.namespace),
            destination_service_name: field(self.service, |v| &v.name),
            destination_workload: field(d, |w| &w.workload_name),
            destination_canonical_service: field(d, |w| &w.canonical_name),
            destination_canonical_revision: field(d, |w| &w.canonical_revision),
            destination_workload_namespace: field(d, |w| &w.namespace),
            destination_principal: or_unknown(
                &self
                    .destination_identity
                    .map(Identity::to_string)
                    .unwrap_or_default(),
            ),
            destination_app: field(d, |w| &w.canonical_name),
            destination_version: field(d, |w| &w.canonical_revision),
            destination_cluster: field(d, |w| &w.cluster_id),
            request_protocol: "tcp".into(),
            response_flags: self.response_flags.into(),
            connection_security_policy: if self.mutual_tls {
                "mutual_tls"
            } else {
                "unknown"
            }
            .into(),
            source_region: or_unknown(""),
            source_zone: or_unknown(""),
            destination_region: or_unknown(""),
            destination_zone: or_unknown(""),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: String,
    tag: String,
}

/// `istio_xds_message*`'s label: the type URL.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsUrlLabels {
    pub url: String,
}

/// `istio_xds_connection_terminations`' label: why a stream to istiod ended
/// (`ConnectionError`, `Error`, `Complete`), as upstream names them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsTerminationLabels {
    pub reason: String,
}

/// The xDS client's metrics, shareable with a client running on its own.
#[derive(Debug, Clone, Default)]
pub struct XdsMetrics {
    pub terminations: Family<XdsTerminationLabels, Counter>,
    pub messages: Family<XdsUrlLabels, Counter>,
    pub message_bytes: Family<XdsUrlLabels, Counter>,
}

/// The ztunnel's metrics.
pub struct Metrics {
    registry: Registry,
    pub xds: XdsMetrics,
    pub opened: Family<TrafficLabels, Counter>,
    pub closed: Family<TrafficLabels, Counter>,
    pub received_bytes: Family<TrafficLabels, Counter>,
    pub sent_bytes: Family<TrafficLabels, Counter>,
    pub failed: Family<TrafficLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("istio");
        let opened = Family::<TrafficLabels, Counter>::default();
        let closed = Family::<TrafficLabels, Counter>::default();
        let received_bytes = Family::<TrafficLabels, Counter>::default();
        let sent_bytes = Family::<TrafficLabels, Counter>::default();
        let failed = Family::<TrafficLabels, Counter>::default();
        registry.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            received_bytes.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            sent_bytes.clone(),
        );
        registry.register(
            "tcp_connections_failed",
            "The total number of TCP connections that failed to establish (unstable)",
            failed.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                component: "ztunnel".into(),
                tag: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build", "Istio component build info", build);
        let xds = XdsMetrics::default();
        registry.register(
            "xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            xds.terminations.clone(),
        );
        registry.register(
            "xds_message",
            "Total number of messages received (unstable)",
            xds.messages.clone(),
        );
        registry.register(
            "xds_message_bytes",
            "Total number of bytes received (unstable)",
            xds.message_bytes.clone(),
        );
        Metrics {
            registry,
            xds,
            opened,
            closed,
            received_bytes,
            sent_bytes,
            failed,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream ztunnel (62d82653) ends every traffic label set so; seen side by side in
    /// `control/tests/interop`.
    #[test]
    fn traffic_labels_end_with_upstreams_locality_labels() {
        let metrics = Metrics::default();
        let traffic = Traffic {
            reporter: Reporter::Source,
            source: None,
            source_identity: None,
            destination: None,
            destination_identity: None,
            service: None,
            response_flags: "-",
            mutual_tls: true,
        };
        metrics.opened.get_or_create(&traffic.labels()).inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                "connection_security_policy=\"mutual_tls\",source_region=\"unknown\",\
                 source_zone=\"unknown\",destination_region=\"unknown\",\
                 destination_zone=\"unknown\"} 1"
            ),
            "{text}"
        );
    }
}

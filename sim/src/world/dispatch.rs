//! The scenario's traffic turned into requests: at each request's time, the driver picks a
//! running source pod, resolves the destination as the client would dial it (and as capture
//! would route it), and queues the request on the source pod's node.

use std::net::SocketAddr;
use std::time::Duration;

use dataplane::ztunnel::Ports;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::shared::Inboxed;
use super::{Driver, PodInfo, RequestRecord};
use crate::apps::Job;
use crate::scenario::{Capture, ConnectionMode, Outcome, Target};

impl Driver<'_> {
    pub(super) fn traffic_done(&self, now: Duration) -> bool {
        self.scenario
            .traffic
            .iter()
            .all(|t| now >= t.start.0 + t.duration.0)
    }

    /// Starts the requests whose time has come, on their source pods' nodes.
    pub(super) fn dispatch_due_requests(&mut self) {
        let now = self.now();
        for (index, traffic) in self.scenario.traffic.iter().enumerate() {
            loop {
                let n = self.next_request[index];
                let at = traffic.start.0 + traffic.every.0 * u32::try_from(n).unwrap_or(u32::MAX);
                if at > now || at >= traffic.start.0 + traffic.duration.0 {
                    break;
                }
                self.next_request[index] += 1;
                self.dispatch(index, n);
            }
            if !self.closed[index] && now >= traffic.start.0 + traffic.duration.0 {
                self.closed[index] = true;
                if traffic.connection == ConnectionMode::Persistent {
                    for inbox in self.shared.inboxes.values() {
                        inbox.jobs.borrow_mut().push_back(Inboxed::Close(index));
                        inbox.notify.notify_one();
                    }
                }
            }
        }
    }

    /// The pods a target stands for, in name order.
    fn pods_of(&self, target: &Target) -> Vec<PodInfo> {
        let pods = self.shared.pods.borrow();
        let mut list: Vec<PodInfo> = pods
            .values()
            .filter(|p| match target {
                Target::Pod(ns, n) => &p.namespace == ns && &p.name == n,
                Target::Deployment(ns, n) => {
                    &p.namespace == ns && p.deployment.as_deref() == Some(n.as_str())
                }
                Target::Service(..) => false,
            })
            .cloned()
            .collect();
        list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        list
    }

    fn dispatch(&mut self, index: usize, n: u64) {
        let traffic = &self.scenario.traffic[index];
        let conn = format!("{}#{n}", traffic.name);
        let now = self.now();
        let sources: Vec<PodInfo> = self
            .pods_of(&traffic.from.0)
            .into_iter()
            .filter(|p| !self.down.contains(&p.node))
            .collect();
        let Some(source) = pick(&sources, n) else {
            self.shared.trace.record_at(
                now,
                "sim",
                "client",
                "not sent: no running source pod",
                Some(conn),
            );
            return;
        };
        let captured = match traffic.capture {
            Capture::Auto => source.enrolled,
            Capture::Captured => true,
            Capture::Uncaptured => false,
        };
        // Resolve the destination as the client dials it.
        let port = traffic.to.port;
        let (destination, authority, service) = match &traffic.to.target {
            Target::Service(ns, name) => {
                let vip = self.shared.store.read(|s| {
                    s.services()
                        .find(|svc| {
                            svc.metadata.namespace.as_deref() == Some(ns)
                                && svc.metadata.name.as_deref() == Some(name)
                        })
                        .and_then(|svc| s.service_ips(svc).first().copied())
                });
                let Some(vip) = vip else {
                    self.record(
                        "client",
                        format!("{conn} not sent: service {ns}/{name} has no VIP"),
                    );
                    return;
                };
                (
                    SocketAddr::new(vip, port),
                    format!("{name}.{ns}.svc.cluster.local"),
                    Some((ns.clone(), name.clone())),
                )
            }
            target => {
                let pods = self.pods_of(target);
                let Some(pod) = pick(&pods, n) else {
                    self.shared.trace.record_at(
                        now,
                        "sim",
                        "client",
                        "destination has no pod",
                        Some(conn.clone()),
                    );
                    // Dialling an address nobody has: a refused connection, judged as such.
                    self.finish_now(index, n, &conn, &source.node, Outcome::Refused);
                    return;
                };
                (SocketAddr::new(pod.ip, port), pod.ip.to_string(), None)
            }
        };
        // A pod calling its own IP is not intercepted at all, out or in (policy-semantics
        // §4.1): the connection never leaves the pod, so no ztunnel and no policy sees it.
        let to_itself = destination.ip() == source.ip;
        let via = if to_itself {
            self.send(
                index,
                n,
                conn,
                &source,
                destination,
                destination,
                authority,
                traffic.timeout.0,
            );
            return;
        } else if captured {
            SocketAddr::new(self.ip(&source.node), Ports::default().outbound)
        } else {
            // kube-proxy turns a VIP into an endpoint first; then the destination's inbound
            // capture (if it is enrolled) hands the plaintext to its node's ztunnel.
            let endpoint = match &service {
                Some((ns, name)) => self.service_endpoint(ns, name, port, n),
                None => self
                    .shared
                    .pods
                    .borrow()
                    .get(&destination.ip())
                    .cloned()
                    .map(|p| (p, port)),
            };
            match endpoint {
                Some((pod, target_port)) if pod.enrolled => {
                    let to = SocketAddr::new(pod.ip, target_port);
                    let via =
                        SocketAddr::new(self.ip(&pod.node), Ports::default().inbound_plaintext);
                    self.send(
                        index,
                        n,
                        conn,
                        &source,
                        to,
                        via,
                        authority,
                        traffic.timeout.0,
                    );
                    return;
                }
                Some((pod, target_port)) => {
                    let to = SocketAddr::new(pod.ip, target_port);
                    self.send(
                        index,
                        n,
                        conn,
                        &source,
                        to,
                        to,
                        authority,
                        traffic.timeout.0,
                    );
                    return;
                }
                None => destination,
            }
        };
        self.send(
            index,
            n,
            conn,
            &source,
            destination,
            via,
            authority,
            traffic.timeout.0,
        );
    }

    /// A pod behind `ns/name` and its target port for `port`, taken in turn.
    fn service_endpoint(&self, ns: &str, name: &str, port: u16, n: u64) -> Option<(PodInfo, u16)> {
        let (selector, target) = self.shared.store.read(|s| {
            let svc = s.services().find(|svc| {
                svc.metadata.namespace.as_deref() == Some(ns)
                    && svc.metadata.name.as_deref() == Some(name)
            })?;
            let spec = svc.spec.as_ref()?;
            let selector = spec.selector.clone().unwrap_or_default();
            let target = spec
                .ports
                .iter()
                .flatten()
                .find(|p| u16::try_from(p.port).ok() == Some(port))
                .map(|p| p.target_port.clone());
            Some((selector, target.flatten()))
        })?;
        let pods: Vec<PodInfo> = self
            .shared
            .pods
            .borrow()
            .values()
            .filter(|p| {
                p.namespace == ns
                    && !selector.is_empty()
                    && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        let pod = pick(&pods, n)?;
        let target_port = match target {
            Some(IntOrString::Int(p)) => u16::try_from(p).ok()?,
            Some(IntOrString::String(named)) => pod
                .ports
                .iter()
                .find(|(_, (name, _))| name.as_deref() == Some(named.as_str()))
                .map(|(p, _)| *p)?,
            None => port,
        };
        Some((pod, target_port))
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        index: usize,
        n: u64,
        conn: String,
        source: &PodInfo,
        destination: SocketAddr,
        via: SocketAddr,
        authority: String,
        timeout: Duration,
    ) {
        let traffic = &self.scenario.traffic[index];
        let now = self.now();
        self.shared.trace.record_at(
            now,
            &source.node,
            "client",
            format!(
                "{} {}/{} ({}) -> {destination} via {via}",
                match traffic.protocol {
                    crate::scenario::Protocol::Tcp => "tcp",
                    crate::scenario::Protocol::Http => "http",
                },
                source.namespace,
                source.name,
                source.ip
            ),
            Some(conn.clone()),
        );
        self.started.insert((index, n), now);
        self.outstanding
            .insert((index, n), (now, source.node.clone()));
        let job = Job {
            traffic: index,
            request: n,
            conn,
            source: source.ip,
            destination,
            via,
            protocol: traffic.protocol,
            timeout,
            persistent: traffic.connection == ConnectionMode::Persistent,
            authority,
            http: traffic.http.clone(),
            record: traffic.record,
        };
        let inbox = &self.shared.inboxes[&source.node];
        inbox
            .jobs
            .borrow_mut()
            .push_back(Inboxed::Request(Box::new(job)));
        inbox.notify.notify_one();
    }

    fn finish_now(&mut self, index: usize, n: u64, conn: &str, node: &str, outcome: Outcome) {
        let now = self.now();
        self.started.insert((index, n), now);
        let record = RequestRecord {
            traffic: index,
            request: n,
            conn: conn.to_string(),
            source_node: node.to_string(),
            started: now,
            finished: now,
            outcome,
            backend: None,
            response: None,
        };
        self.judge(record);
    }
}

fn pick<T: Clone>(list: &[T], n: u64) -> Option<T> {
    if list.is_empty() {
        return None;
    }
    list.get(usize::try_from(n % list.len() as u64).unwrap_or(0))
        .cloned()
}

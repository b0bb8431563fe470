//! The scenario's timeline applied to the world: store changes, crashes and restarts,
//! partitions and link faults, the wall clock and root rotations; and what a change means
//! for the pod table and the configuration every ztunnel must converge to.

use control::object::Kind;

use super::cluster::pod_table;
use super::fingerprint::{Fingerprint, snapshot_fingerprint};
use super::hosts::waypoint_host;
use super::{Driver, PodInfo};
use crate::scenario::{Action, ISTIOD};

impl Driver<'_> {
    /// Re-reads the pods from the store: the app table and the routes.
    pub(super) fn refresh_pods(&mut self) {
        let table = self.shared.store.read(pod_table);
        let old: Vec<PodInfo> = self.shared.pods.borrow().values().cloned().collect();
        for pod in old {
            if table.get(&pod.ip).is_some_and(|p| p.name == pod.name) {
                continue;
            }
            self.shared.network.remove_route(pod.ip);
            // A waypoint pod that is gone takes its waypoint with it.
            if pod.waypoint.is_some() {
                let host = waypoint_host(&pod);
                if let Some(&ip) = self.hosts.get(&host)
                    && !self.retired_waypoints.contains(&host)
                {
                    self.shared.waypoints.borrow_mut().remove(&host);
                    self.sim.crash(ip);
                    self.down.insert(host.clone());
                    self.retired_waypoints.insert(host);
                }
            }
        }
        for pod in table.values() {
            let host = match &pod.waypoint {
                Some(_) => self.ensure_waypoint_host(pod),
                None => pod.node.clone(),
            };
            self.shared.network.add_route(pod.ip, self.hosts[&host]);
        }
        *self.shared.pods.borrow_mut() = table;
    }

    pub(super) fn expected_snapshot(&self) -> Fingerprint {
        let mesh = self.mesh.clone();
        let snapshot = self
            .shared
            .store
            .read(|s| control::translate::snapshot(s, &mesh));
        snapshot_fingerprint(&snapshot)
    }

    pub(super) fn apply_due_steps(&mut self) {
        while let Some(step) = self.scenario.timeline.get(self.next_step) {
            if step.at > self.now() {
                return;
            }
            let index = self.next_step;
            self.next_step += 1;
            let action = step.action.clone();
            self.timeline
                .push((self.now(), action.describe(), action.is_fault()));
            self.record("timeline", action.describe());
            self.apply(index, &action);
        }
    }

    fn apply(&mut self, index: usize, action: &Action) {
        let unknown = action
            .hosts()
            .into_iter()
            .find(|h| !self.hosts.contains_key(*h));
        if let Some(h) = unknown {
            self.record("timeline", format!("skipped: no host {h} (yet)"));
            return;
        }
        match action {
            Action::Apply { .. } => {
                let loaded = self
                    .prepared
                    .applies
                    .get(&index)
                    .cloned()
                    .unwrap_or_default();
                let result = self
                    .shared
                    .store
                    .update(|s| control::sources::apply_loaded(s, loaded));
                if let Err(e) = result {
                    self.record("timeline", format!("apply refused: {e}"));
                }
                self.changed("apply");
            }
            Action::Delete(r) => {
                if let Some(kind) = Kind::from_name(&r.kind) {
                    self.shared
                        .store
                        .update(|s| s.delete(kind, &r.namespace, &r.name));
                }
                self.changed("delete");
            }
            Action::Partition([a, b]) => {
                self.sim.partition(self.ip(a), self.ip(b));
                self.partitions.insert(link(a, b));
            }
            Action::Repair([a, b]) => {
                self.sim.repair(self.ip(a), self.ip(b));
                self.partitions.remove(&link(a, b));
                self.changed("repair");
            }
            Action::Crash(h) => {
                self.forget_host(h);
                self.sim.crash(self.ip(h));
                self.down.insert(h.clone());
            }
            Action::Restart(h) => {
                self.forget_host(h);
                self.sim.bounce(self.ip(h));
                self.down.remove(h);
                self.changed("restart");
            }
            Action::Latency(l) => {
                let [a, b] = &l.between;
                self.sim
                    .set_link_latency(self.ip(a), self.ip(b), l.latency.0);
            }
            Action::Loss(l) => {
                let [a, b] = &l.between;
                let (a, b) = (self.ip(a), self.ip(b));
                self.sim.set_link_fail_rate(a, b, l.rate);
            }
            Action::AdvanceClock(by) => self.shared.clock.advance(*by),
            Action::RotateRoot(r) => self
                .shared
                .rotations
                .borrow_mut()
                .push_back((r.activate_after.0, r.overlap.0)),
        }
    }

    /// Configuration changed: every ztunnel must hold the new translation within the bound.
    /// What the driver knows of a host that crashes or restarts: istiod's handle, or a node's
    /// ztunnel, connections, and the requests its clients had in flight (they die with it).
    fn forget_host(&mut self, h: &str) {
        if h == ISTIOD {
            self.shared.istiod.borrow_mut().take();
        } else if !self.shared.inboxes.contains_key(h) {
            // A waypoint host.
            self.shared.waypoints.borrow_mut().remove(h);
        } else {
            self.fingerprints.remove(h);
            self.shared.ztunnels.borrow_mut().remove(h);
            self.shared.app_connections.borrow_mut().remove(h);
            self.outstanding.retain(|_, (_, node)| node != h);
            self.shared.inboxes[h].jobs.borrow_mut().clear();
        }
    }

    fn changed(&mut self, what: &str) {
        if what == "apply" || what == "delete" {
            self.store_changes.push(self.now());
        }
        self.refresh_pods();
        self.expected = self.expected_snapshot();
        self.pending = Some((self.now(), what.to_string()));
    }
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

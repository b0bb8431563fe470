//! Leaked tasks: a node must end a run with no more tasks than its long-lived parts need.
//!
//! Each node samples its own runtime from inside (turmoil gives every host a tokio runtime of
//! its own): how many tasks are alive, and how many TCP connections the host holds. The
//! runtime counts the tasks the production code spawns; the simulator's own tasks for the
//! node's pods (clients, application connections) run on turmoil's `LocalSet`, which it does
//! not count, so the simulator counts those itself, and none may be left at the end. The
//! runtime's tasks, less one per TCP connection (a pooled HBONE connection is one
//! task on the client and one on the server, and it may outlive the traffic by the pool's idle
//! timeout), is the node's own bookkeeping: listeners, the xDS and CA clients, timers. Its
//! baseline is the most it reached while the node started up (the first [`STARTUP`] after the
//! ztunnel reported ready: the CA client and the first certificates come in that time),
//! counting only samples where no pod task ran. At the end of the run it must not be above
//! that in every one of the last [`RECENT`] samples (a connection being torn down holds its
//! task for a round trip after its socket is gone; a leaked task stays). A task per request
//! that never ends raises it by the number of requests.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How often a node samples its runtime.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How many of the last samples must all be above the baseline for a leak: two seconds.
const RECENT: usize = 8;

/// How long after its ztunnel is first ready a node counts as starting up.
const STARTUP: Duration = Duration::from_secs(5);

/// One node's latest sample and its baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TaskSample {
    /// Tasks alive on the node's runtime.
    pub tasks: usize,
    /// TCP connections the node's host holds.
    pub connections: usize,
    /// Tasks the simulator runs for the node's pods (not among `tasks`).
    pub pod_tasks: usize,
}

impl TaskSample {
    /// Runtime tasks not explained by a connection.
    pub(crate) fn unexplained(&self) -> usize {
        self.tasks.saturating_sub(self.connections)
    }
}

/// Every node's samples, written by the nodes and read by the driver.
#[derive(Debug, Default)]
pub(crate) struct TaskLedger {
    nodes: RefCell<BTreeMap<String, NodeTasks>>,
    pod_tasks: RefCell<BTreeMap<String, usize>>,
}

#[derive(Debug, Default, Clone)]
struct NodeTasks {
    /// When the ztunnel first reported ready (simulated time).
    ready_at: Option<Duration>,
    /// The most unexplained tasks while starting up, in samples without pod tasks.
    baseline: Option<usize>,
    latest: TaskSample,
    /// Unexplained tasks in the last [`RECENT`] samples.
    recent: VecDeque<usize>,
}

impl NodeTasks {
    fn record(&mut self, sample: TaskSample, ready: bool, now: Duration) {
        self.latest = sample;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(sample.unexplained());
        if ready && self.ready_at.is_none() {
            self.ready_at = Some(now);
        }
        let starting = self.ready_at.is_some_and(|at| now <= at + STARTUP);
        if starting && sample.pod_tasks == 0 {
            let unexplained = sample.unexplained();
            self.baseline = Some(self.baseline.map_or(unexplained, |b| b.max(unexplained)));
        }
    }
}

impl TaskLedger {
    /// A node (re)started: its old runtime and its baseline are gone.
    pub(crate) fn node_started(&self, node: &str) {
        self.nodes
            .borrow_mut()
            .insert(node.to_string(), NodeTasks::default());
        self.pod_tasks.borrow_mut().insert(node.to_string(), 0);
    }

    /// A task the simulator runs for one of `node`'s pods began; it ends when the guard drops.
    pub(crate) fn pod_task(self: &std::rc::Rc<Self>, node: &str) -> PodTask {
        *self
            .pod_tasks
            .borrow_mut()
            .entry(node.to_string())
            .or_default() += 1;
        PodTask {
            ledger: self.clone(),
            node: node.to_string(),
        }
    }

    fn record(&self, node: &str, ready: bool) {
        let sample = TaskSample {
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            connections: turmoil::established_tcp_stream_count(),
            pod_tasks: self.pod_tasks.borrow().get(node).copied().unwrap_or(0),
        };
        let now = turmoil::sim_elapsed().unwrap_or_default();
        self.nodes
            .borrow_mut()
            .entry(node.to_string())
            .or_default()
            .record(sample, ready, now);
    }

    /// Samples `node`'s runtime until the node goes down; `ready` says whether its ztunnel
    /// reports ready.
    pub(crate) async fn sample(&self, node: String, ready: impl Fn() -> bool) {
        loop {
            self.record(&node, ready());
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// The nodes whose runtime tasks grew past their baseline, with what they hold: `(node,
    /// baseline, latest)`. Nodes with no baseline (never ready and quiet) are not judged.
    pub(crate) fn grown(&self) -> Vec<(String, usize, TaskSample)> {
        self.nodes
            .borrow()
            .iter()
            .filter_map(|(node, t)| {
                let baseline = t.baseline?;
                let fewest = t.recent.iter().min().copied().unwrap_or(0);
                (fewest > baseline).then(|| (node.clone(), baseline, t.latest))
            })
            .collect()
    }

    /// The nodes where simulator tasks for pods are still running, with how many.
    pub(crate) fn pod_tasks_left(&self) -> Vec<(String, usize)> {
        self.pod_tasks
            .borrow()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(node, n)| (node.clone(), *n))
            .collect()
    }
}

/// Counts one simulator task for a node's pods while it lives.
pub(crate) struct PodTask {
    ledger: std::rc::Rc<TaskLedger>,
    node: String,
}

impl Drop for PodTask {
    fn drop(&mut self) {
        if let Some(n) = self.ledger.pod_tasks.borrow_mut().get_mut(&self.node) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tasks: usize, connections: usize, pod_tasks: usize) -> TaskSample {
        TaskSample {
            tasks,
            connections,
            pod_tasks,
        }
    }

    #[test]
    fn the_baseline_is_the_most_a_quiet_node_needs_while_starting_up() {
        let mut node = NodeTasks::default();
        let s = Duration::from_secs;
        node.record(sample(30, 0, 0), false, s(0)); // not ready: not counted
        node.record(sample(14, 1, 0), true, s(1));
        node.record(sample(30, 1, 9), true, s(2)); // pods busy: not counted
        node.record(sample(17, 2, 0), true, s(3));
        node.record(sample(40, 0, 0), true, s(7)); // started up: not counted
        assert_eq!(node.baseline, Some(15));
    }

    #[test]
    fn a_task_without_a_connection_is_a_leak_and_pooled_connections_are_not() {
        let ledger = TaskLedger::default();
        let at = |baseline, latest: TaskSample| NodeTasks {
            ready_at: Some(Duration::ZERO),
            baseline: Some(baseline),
            latest,
            recent: [latest.unexplained()].into(),
        };
        let mut nodes = ledger.nodes.borrow_mut();
        nodes.insert("pooled".into(), at(19, sample(26, 7, 0)));
        nodes.insert("leaky".into(), at(19, sample(21, 1, 0)));
        nodes.insert(
            "never-ready".into(),
            NodeTasks {
                latest: sample(90, 0, 0),
                ..NodeTasks::default()
            },
        );
        // Above the baseline in one recent sample only: a connection being torn down.
        let mut closing = at(19, sample(21, 1, 0));
        closing.recent = [20, 18, 20].into();
        nodes.insert("closing".into(), closing);
        drop(nodes);
        let grown = ledger.grown();
        assert_eq!(grown.len(), 1, "{grown:?}");
        assert_eq!(grown[0].0, "leaky");
    }

    #[test]
    fn a_pod_task_is_counted_while_it_lives() {
        let ledger = std::rc::Rc::new(TaskLedger::default());
        ledger.node_started("node-a");
        let task = ledger.pod_task("node-a");
        assert_eq!(ledger.pod_tasks_left(), vec![("node-a".to_string(), 1)]);
        drop(task);
        assert!(ledger.pod_tasks_left().is_empty());
    }
}

//! What serde cannot check (references between parts, setting bounds, unique names), and
//! the file lines errors name: of a word, or of a block string's first line.

use super::{Action, INVARIANTS, ISTIOD, LinkLatency, LinkLoss, Scenario};

impl Scenario {
    /// Checks what serde cannot: references between parts, setting bounds. On error, returns
    /// a word to look for (to name the line) and the message.
    pub(super) fn check(&self, _text: &str) -> Result<(), (Option<String>, String)> {
        let host = |h: &str| -> Result<(), (Option<String>, String)> {
            // `<namespace>/<pod>` names a waypoint pod's host, known once the pod exists.
            let waypoint_pod = h
                .split_once('/')
                .is_some_and(|(ns, pod)| !ns.is_empty() && !pod.is_empty());
            if h == ISTIOD || self.nodes.iter().any(|n| n == h) || waypoint_pod {
                Ok(())
            } else {
                Err((
                    Some(h.to_string()),
                    format!(
                        "{h:?} is neither a node of this scenario, istiod, nor a waypoint pod (<namespace>/<pod>)"
                    ),
                ))
            }
        };
        for step in &self.timeline {
            match &step.action {
                Action::Partition([a, b]) | Action::Repair([a, b]) => {
                    host(a)?;
                    host(b)?;
                    if a == b {
                        return Err((Some(a.clone()), format!("a link needs two ends: {a}")));
                    }
                }
                Action::Latency(LinkLatency {
                    between: [a, b], ..
                })
                | Action::Loss(LinkLoss {
                    between: [a, b], ..
                }) => {
                    host(a)?;
                    host(b)?;
                }
                Action::Crash(h) | Action::Restart(h) => host(h)?,
                Action::Delete(r) if control::object::Kind::from_name(&r.kind).is_none() => {
                    return Err((
                        Some(format!("kind: {}", r.kind)),
                        format!("delete: unknown kind {:?}", r.kind),
                    ));
                }
                _ => {}
            }
        }
        let s = &self.settings;
        if s.tick.0.is_zero() || s.min_latency.0 < s.tick.0 || s.max_latency.0 < s.min_latency.0 {
            return Err((
                Some("settings:".into()),
                "settings: need 0 < tick <= minLatency <= maxLatency (the wire tap must see every \
                 message for at least one tick)"
                    .into(),
            ));
        }
        if let Err(message) = s.mesh() {
            return Err((Some("settings:".into()), message));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.traffic {
            if !names.insert(t.name.as_str()) {
                return Err((
                    Some(format!("name: {}", t.name)),
                    format!("traffic {:?} defined twice", t.name),
                ));
            }
            if t.every.0.is_zero() {
                return Err((
                    Some(format!("name: {}", t.name)),
                    format!("traffic {:?}: every must be more than 0", t.name),
                ));
            }
            if t.name.contains(|c: char| c.is_whitespace() || c == ':') {
                return Err((
                    Some(format!("name: {}", t.name)),
                    format!("traffic name {:?}: no spaces or ':'", t.name),
                ));
            }
        }
        if let Some(inv) = &self.must_fail
            && !INVARIANTS.contains(&inv.as_str())
        {
            return Err((
                Some("mustFail".into()),
                format!(
                    "mustFail: {inv:?} is not an invariant ({})",
                    INVARIANTS.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// The first line (1-based) containing `needle`.
pub fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Finds where block strings (`key: |`) start in the file, so errors inside the manifests
/// they carry can name lines of the scenario file. Identical blocks are matched in order.
pub(super) struct BlockFinder<'a> {
    lines: Vec<&'a str>,
    used: Vec<usize>,
}

impl<'a> BlockFinder<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        BlockFinder {
            lines: text.lines().collect(),
            used: Vec::new(),
        }
    }

    /// The 1-based file line of the block's first line.
    pub(super) fn find(&mut self, block: &str) -> Option<usize> {
        let wanted: Vec<&str> = block.lines().collect();
        let first = wanted.iter().position(|l| !l.trim().is_empty())?;
        let candidates: Vec<usize> = (0..self.lines.len())
            .filter(|&start| {
                wanted.iter().enumerate().skip(first).all(|(i, w)| {
                    self.lines
                        .get(start + i - first)
                        .is_some_and(|l| indented(l, w))
                })
            })
            .collect();
        let start = candidates
            .iter()
            .find(|c| !self.used.contains(c))
            .or(candidates.first())
            .copied()?;
        self.used.push(start);
        // Lines of the block are numbered from its first line, empty leading lines included.
        Some(start + 1 - first)
    }
}

/// Whether file line `l` is block line `w` indented.
fn indented(l: &str, w: &str) -> bool {
    let (l, w) = (l.trim_end(), w.trim_end());
    if w.is_empty() {
        return l.is_empty();
    }
    l.strip_suffix(w)
        .is_some_and(|indent| indent.chars().all(|c| c == ' '))
}

//! The values the format writes its own way: durations with a unit, and the nodes as names
//! or a count.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::ISTIOD;

/// A duration written as `250ms`, `10s`, `5m` or `25h` (a number and a unit, no spaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

/// Parses `250ms`, `1.5s`, `10s`, `5m`, `25h`, `2d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    let secs = number * scale;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms, 10s, 5m or 25h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).ok_or_else(|| {
                    E::custom(format!(
                        "invalid duration {v:?}: expected a number and a unit (ms, s, m, h, d), e.g. 10s"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: give a unit, e.g. {v}s or {v}ms"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// The nodes: a list of names, or a count (`node-01` … `node-NN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes(pub Vec<String>);

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Nodes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of node names or a number of nodes")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Nodes, E> {
                if !(1..=250).contains(&n) {
                    return Err(E::custom(format!("{n} nodes: between 1 and 250")));
                }
                let width = n.to_string().len().max(2);
                Ok(Nodes(
                    (1..=n).map(|i| format!("node-{i:0width$}")).collect(),
                ))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Nodes, A::Error> {
                let mut names: Vec<String> = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    if !is_dns_label(&name) {
                        return Err(de::Error::custom(format!(
                            "node name {name:?} is not a DNS label (lower-case letters, digits, '-')"
                        )));
                    }
                    if name == ISTIOD {
                        return Err(de::Error::custom("\"istiod\" names the control plane"));
                    }
                    if names.contains(&name) {
                        return Err(de::Error::custom(format!("node {name:?} listed twice")));
                    }
                    names.push(name);
                }
                if names.is_empty() || names.len() > 250 {
                    return Err(de::Error::custom("between 1 and 250 nodes"));
                }
                Ok(Nodes(names))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("25h"), Some(Duration::from_secs(90000)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("3x"), None);
    }
}

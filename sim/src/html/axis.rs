//! The page's time scale: round ticks over simulated time, their labels, and how
//! overlapping spans share a lane's rows.

use serde::Serialize;

/// Simulated milliseconds from `start` to `end`, with labelled ticks.
#[derive(Debug, Serialize)]
pub(crate) struct Axis {
    pub unit: &'static str,
    pub start: u64,
    pub end: u64,
    /// The distance between two ticks.
    pub tick: u64,
    pub ticks: Vec<Tick>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Tick {
    pub at: u64,
    pub label: String,
}

/// A time in simulated milliseconds as a tick label: `0s`, `1.5s`, `2m05s`, `10m`, `2h`.
pub(crate) fn time_label(t: u64) -> String {
    let (s, ms) = (t / 1000, t % 1000);
    if ms == 0 {
        if s >= 3600 && s % 3600 == 0 {
            return format!("{}h", s / 3600);
        }
        if s >= 60 {
            return if s % 60 == 0 {
                format!("{}m", s / 60)
            } else {
                format!("{}m{:02}s", s / 60, s % 60)
            };
        }
        return format!("{s}s");
    }
    let frac = format!("{ms:03}");
    format!("{s}.{}s", frac.trim_end_matches('0'))
}

/// About ten ticks at round distances (1, 2 or 5 times a power of ten milliseconds below a
/// second, then 1, 2, 5, 10, 15, 20, 30 seconds or minutes, then hours), from 0 to `end`.
pub(crate) fn axis(end: u64) -> Axis {
    let end = end.max(1);
    let want = end.div_ceil(10).max(1);
    const SECOND: u64 = 1000;
    const MINUTE: u64 = 60 * SECOND;
    const HOUR: u64 = 60 * MINUTE;
    let round = [1, 2, 5, 10, 20, 50, 100, 200, 500]
        .into_iter()
        .chain([1, 2, 5, 10, 15, 20, 30].map(|n| n * SECOND))
        .chain([1, 2, 5, 10, 15, 20, 30].map(|n| n * MINUTE))
        .chain((0..12).flat_map(|p| [1, 2, 5].map(|m| m * 10u64.pow(p) * HOUR)));
    let tick = round.into_iter().find(|&t| t >= want).unwrap_or(want);
    let ticks = (0..=end / tick)
        .map(|i| i * tick)
        .map(|at| Tick {
            at,
            label: time_label(at),
        })
        .collect();
    Axis {
        unit: "ms",
        start: 0,
        end,
        tick,
        ticks,
    }
}

/// Packs `spans` (start, end) into rows, first fit, at most `max` rows; returns each span's
/// row and how many rows were used.
pub(crate) fn pack(spans: &[(u64, u64)], max: usize) -> (Vec<usize>, usize) {
    let mut ends: Vec<u64> = Vec::new();
    let mut rows = Vec::with_capacity(spans.len());
    for (i, &(start, end)) in spans.iter().enumerate() {
        let row = match ends.iter().position(|&e| e <= start) {
            Some(r) => r,
            None if ends.len() < max => {
                ends.push(0);
                ends.len() - 1
            }
            None => i % max,
        };
        ends[row] = end.max(start + 1);
        rows.push(row);
    }
    (rows, ends.len().max(1))
}

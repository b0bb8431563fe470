//! What every fuzz target (`fuzz_*` tests, in the `fuzz` module beside the code each one
//! attacks) shares: how many cases a target runs, how long one input may take, and a
//! structure-aware mutator for YAML. Test code cannot cross crates, so the control plane
//! includes this file by path.
//!
//! A target runs [`config`]`(n)`: `n` cases by default, few enough that every target together
//! adds seconds to `cargo test`; `PROPTEST_CASES` replaces `n` for all of them at once, for a
//! long run (`just fuzz`). A failing input is shrunk, and its seed written to the crate's
//! `proptest-regressions/`, where the next run of that target replays it first.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use serde_yaml::{Mapping, Value};

/// The longest one input may take, in a debug build on a loaded machine: the inputs are a
/// few kilobytes, so anything near this is super-linear work an attacker could scale.
pub(crate) const BOUND: Duration = Duration::from_secs(1);

/// `cases` cases unless `PROPTEST_CASES` is set; everything else as proptest's default
/// (which reads the other `PROPTEST_*` variables and persists failures).
pub(crate) fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    // A failure is shrunk for at most a minute (each step reruns an input that may be slow).
    if std::env::var_os("PROPTEST_MAX_SHRINK_TIME").is_none() {
        config.max_shrink_time = 60_000;
    }
    config
}

/// Past this an input is not slow but stuck (a loop that never ends): the test process is
/// aborted, naming what was stuck, so CI fails instead of waiting for its job timeout.
/// Generous, as a loaded machine or a debugger can stall a healthy case for a while.
const STUCK: Duration = Duration::from_secs(60);

/// What is running under [`bounded`] now, from every test thread: id → (deadline, what).
static ARMED: Mutex<BTreeMap<u64, (Instant, String)>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
static WATCHDOG: Once = Once::new();

/// One call of [`bounded`] being watched; disarmed when dropped (also by a panic).
struct Armed(u64);

impl Armed {
    fn new(what: &str) -> Self {
        WATCHDOG.call_once(|| {
            std::thread::spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
                    let now = Instant::now();
                    if let Some((_, what)) = armed.values().find(|(deadline, _)| *deadline <= now) {
                        // Straight to stderr: `eprintln!` from a thread a test spawned is
                        // captured with that test's output, which the abort throws away.
                        let _ = writeln!(
                            std::io::stderr(),
                            "fuzz: {what} has run for over {STUCK:?}: stuck, aborting. \
                             PROPTEST_VERBOSE=2 (and --nocapture) prints each input as it starts."
                        );
                        std::process::abort();
                    }
                }
            });
        });
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        ARMED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (Instant::now() + STUCK, what.to_string()));
        Armed(id)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// Runs `f`, failing the case when it took longer than [`BOUND`] (and aborting the run if
/// it has not returned after [`STUCK`]).
pub(crate) fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let armed = Armed::new(what);
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    drop(armed);
    if took > BOUND {
        return Err(TestCaseError::fail(format!(
            "{what} took {took:?}, over the bound of {BOUND:?}"
        )));
    }
    Ok(out)
}

/// Strings a parser of names, addresses and numbers meets at its edges.
pub(crate) fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "", " ", "*", "/", "//", "-", ":", "::", "[]", "{}", "0", "-1", "65535", "65536",
            "4294967296", "18446744073709551616", "1e999", "NaN", ".inf", "null", "~", "true",
            "10.0.0.1", "10.0.0.1/33", "10.0.0.0/-1", "0.0.0.0/0", "::1", "[::1]:80",
            "::ffff:10.0.0.1", "fe80::1%eth0", "10.0.0.1:99999", "a.b.svc.cluster.local",
            "spiffe://cluster.local/ns/a/sa/b", "ns/a/sa/b", "shop/echo", "ambient",
            "istio-waypoint", "HBONE", "TCP", "UDP", "HTTP", "GET", "/path/{**}", "\u{0}",
            "\t\n", "é", "\u{202e}", "\u{feff}", "#", "&anchor", "*alias", "!!binary",
        ])
        .prop_map(str::to_string),
        2 => "\\PC{0,24}",
        1 => "[a-z0-9./:-]{60,300}",
        1 => (prop::sample::select(vec!["x", "[", "a/", "10.0."]), 1usize..2000)
            .prop_map(|(unit, n)| unit.repeat(n)),
    ]
}

/// A YAML scalar of any type.
pub(crate) fn hostile_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => hostile_text().prop_map(Value::String),
        2 => prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(-1i64),
            Just(0i64),
            Just(65_535i64),
            Just(65_536i64),
            Just(i64::from(u32::MAX) + 1),
        ]
        .prop_map(|n| Value::Number(n.into())),
        1 => any::<u64>().prop_map(|n| Value::Number(n.into())),
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(1e300), Just(0.5)]
            .prop_map(|f| Value::Number(f.into())),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
    ]
}

/// A small value: a scalar, or a collection of a few scalars under keys Kubernetes objects use.
pub(crate) fn hostile_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let key = prop::sample::select(keys).prop_map(|k| Value::String(k.to_string()));
    prop_oneof![
        6 => hostile_scalar(),
        1 => prop::collection::vec(hostile_scalar(), 0..4).prop_map(Value::Sequence),
        1 => prop::collection::vec((key, hostile_scalar()), 0..4)
            .prop_map(|pairs| Value::Mapping(pairs.into_iter().collect::<Mapping>())),
    ]
}

/// One change to a document, at the node `at` (pre-order, wrapping around the node count).
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    /// The node becomes `value`.
    Replace(Value),
    /// A mapping loses an entry, a sequence an element; a scalar becomes null.
    Remove(Index),
    /// A mapping gains (or overwrites) `key`, a sequence an element; a scalar becomes
    /// `{key: value}`.
    Insert(String, Value),
    /// A collection's entries repeated `n` times (mapping keys made unique).
    Repeat(usize),
    /// A mapping becomes the sequence of its values, a sequence a mapping by index, a
    /// string a number and a number a string.
    Retype,
}

/// Edits whose new keys come from `keys` (field names of the format under test, so an
/// insertion often lands on a real field rather than an unknown one).
pub(crate) fn edits(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<(Index, Edit)>> {
    let edit = prop_oneof![
        4 => hostile_value(keys).prop_map(Edit::Replace),
        2 => any::<Index>().prop_map(Edit::Remove),
        2 => (prop::sample::select(keys), hostile_value(keys))
            .prop_map(|(k, v)| Edit::Insert(k.to_string(), v)),
        1 => (2usize..40).prop_map(Edit::Repeat),
        1 => Just(Edit::Retype),
    ];
    prop::collection::vec((any::<Index>(), edit), 1..6)
}

fn count(value: &Value) -> usize {
    1 + match value {
        Value::Mapping(m) => m.values().map(count).sum(),
        Value::Sequence(s) => s.iter().map(count).sum(),
        Value::Tagged(t) => count(&t.value),
        _ => 0,
    }
}

/// Applies `edit` at pre-order node `n` of `value`; returns whether it was reached.
fn apply_at(value: &mut Value, n: &mut usize, edit: &Edit) -> bool {
    if *n == 0 {
        apply(value, edit);
        return true;
    }
    *n -= 1;
    match value {
        Value::Mapping(m) => m.values_mut().any(|v| apply_at(v, n, edit)),
        Value::Sequence(s) => s.iter_mut().any(|v| apply_at(v, n, edit)),
        Value::Tagged(t) => apply_at(&mut t.value, n, edit),
        _ => false,
    }
}

fn apply(value: &mut Value, edit: &Edit) {
    match (edit, &mut *value) {
        (Edit::Replace(new), _) => *value = new.clone(),
        (Edit::Remove(i), Value::Mapping(m)) if !m.is_empty() => {
            let key = m.keys().nth(i.index(m.len())).cloned();
            if let Some(key) = key {
                m.remove(&key);
            }
        }
        (Edit::Remove(i), Value::Sequence(s)) if !s.is_empty() => {
            s.remove(i.index(s.len()));
        }
        (Edit::Remove(_), _) => *value = Value::Null,
        (Edit::Insert(k, v), Value::Mapping(m)) => {
            m.insert(Value::String(k.clone()), v.clone());
        }
        (Edit::Insert(_, v), Value::Sequence(s)) => s.push(v.clone()),
        (Edit::Insert(k, v), _) => {
            let mut m = Mapping::new();
            m.insert(Value::String(k.clone()), v.clone());
            *value = Value::Mapping(m);
        }
        (Edit::Repeat(n), Value::Sequence(s)) => {
            let once = s.clone();
            for _ in 1..*n {
                s.extend(once.iter().cloned());
            }
        }
        (Edit::Repeat(n), Value::Mapping(m)) => {
            let once = m.clone();
            for copy in 1..*n {
                for (k, v) in &once {
                    let key = format!("{}-{copy}", k.as_str().unwrap_or("k"));
                    m.insert(Value::String(key), v.clone());
                }
            }
        }
        (Edit::Retype, Value::Mapping(m)) => {
            *value = Value::Sequence(m.values().cloned().collect());
        }
        (Edit::Retype, Value::Sequence(s)) => {
            let m = s
                .iter()
                .enumerate()
                .map(|(i, v)| (Value::Number(i.into()), v.clone()))
                .collect();
            *value = Value::Mapping(m);
        }
        (Edit::Retype, Value::String(s)) => *value = Value::Number(s.len().into()),
        (Edit::Retype, Value::Number(n)) => *value = Value::String(n.to_string()),
        (Edit::Repeat(_) | Edit::Retype, _) => {}
    }
}

/// Past this many nodes a document is not repeated further: inputs stay a few hundred
/// kilobytes, however the edits compound.
const MAX_NODES: usize = 1_000;

/// `value` with `edits` applied, each at its node.
pub(crate) fn mutate(mut value: Value, edits: &[(Index, Edit)]) -> Value {
    for (at, edit) in edits {
        let nodes = count(&value);
        if matches!(edit, Edit::Repeat(_)) && nodes > MAX_NODES {
            continue;
        }
        let mut n = at.index(nodes);
        apply_at(&mut value, &mut n, edit);
    }
    value
}

/// One change to a document's text, for what a structural edit cannot produce (syntax
/// errors, stray indentation, cut-off input).
#[derive(Debug, Clone)]
pub(crate) enum TextEdit {
    Insert(Index, String),
    Delete(Index, usize),
    Truncate(Index),
}

pub(crate) fn text_edits() -> impl Strategy<Value = Vec<TextEdit>> {
    let fragment = prop_oneof![
        prop::sample::select(vec![
            "\n",
            "  ",
            "\t",
            ":",
            ": ",
            "- ",
            "---\n",
            "...\n",
            "[",
            "]",
            "{",
            "}",
            ",",
            "'",
            "\"",
            "|",
            ">",
            "&a ",
            "*a",
            "!!str ",
            "? ",
            "#",
            "%YAML 1.2\n",
            "<<: *a\n",
        ])
        .prop_map(str::to_string),
        "\\PC{1,8}",
    ];
    let edit = prop_oneof![
        3 => (any::<Index>(), fragment).prop_map(|(i, s)| TextEdit::Insert(i, s)),
        2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| TextEdit::Delete(i, n)),
        1 => any::<Index>().prop_map(TextEdit::Truncate),
    ];
    prop::collection::vec(edit, 1..4)
}

/// The char boundary at or before `i`.
fn boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub(crate) fn edit_text(text: &str, edits: &[TextEdit]) -> String {
    let mut text = text.to_string();
    for edit in edits {
        let at = |i: &Index, text: &str| boundary(text, i.index(text.len() + 1));
        match edit {
            TextEdit::Insert(i, s) => {
                let at = at(i, &text);
                text.insert_str(at, s);
            }
            TextEdit::Delete(i, n) => {
                let from = at(i, &text);
                let to = boundary(&text, from + n);
                text.replace_range(from..to, "");
            }
            TextEdit::Truncate(i) => {
                let at = at(i, &text);
                text.truncate(at);
            }
        }
    }
    text
}

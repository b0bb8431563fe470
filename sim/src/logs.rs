//! The production code's own log lines, recorded into the trace.
//!
//! The ztunnel explains its decisions in its logs (which policy denied a connection, why a
//! connection was closed, the access log). Copying those lines into the trace puts the
//! explanation next to the events the scenario recorded, and makes the replay hash cover the
//! proxies' decisions too. Which host logged a line comes from the `node` span turmoil enters
//! around every host's tick.
//!
//! turmoil opens that span for every host on every step (tens of thousands of times a
//! simulated minute on a large cluster), so a normal run records through a subscriber of its
//! own that keeps no span data at all: hosts never nest, so the host running now is one slot
//! set when its span opens and cleared when it is left. Only `SIM_LOG` brings in
//! `tracing-subscriber`'s registry, for its formatter.

use std::fmt::{self, Write as _};
use std::sync::{Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, filter_fn};
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::trace::Trace;

/// Collects an event's message and fields as text.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

/// Writes the `name` field of turmoil's host span into a reused buffer.
struct HostNameVisitor<'a>(&'a mut String);

impl Visit for HostNameVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "name" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

fn is_host_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.name() == "node" && meta.target().starts_with("turmoil")
}

/// Dataplane and control-plane events at INFO and above, and the access log. Not only events: the `enabled!`
/// checks the production code makes before building a costly line (hints) must pass too.
fn is_recorded_event(meta: &Metadata<'_>) -> bool {
    !meta.is_span()
        && *meta.level() <= Level::INFO
        && (meta.target().starts_with("dataplane")
            || meta.target().starts_with("control")
            || meta.target() == "access")
}

fn is_recorded(meta: &Metadata<'_>) -> bool {
    is_host_span(meta) || is_recorded_event(meta)
}

/// Appends recorded events to a [`Trace`], each with the host whose tick logged it.
struct Recorder {
    trace: Trace,
    /// The host whose span is open, empty between hosts.
    host: Mutex<String>,
}

impl Recorder {
    fn new(trace: &Trace) -> Self {
        Recorder {
            trace: trace.clone(),
            host: Mutex::new(String::new()),
        }
    }

    fn host_span_opened(&self, attrs: &Attributes<'_>) {
        let mut host = self.host.lock().unwrap_or_else(PoisonError::into_inner);
        host.clear();
        attrs.record(&mut HostNameVisitor(&mut host));
    }

    fn host_span_left(&self) {
        self.host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn event(&self, event: &Event<'_>) {
        let host = {
            let host = self.host.lock().unwrap_or_else(PoisonError::into_inner);
            if host.is_empty() {
                "-".to_string()
            } else {
                host.clone()
            }
        };
        let mut text = Text::default();
        event.record(&mut text);
        let meta = event.metadata();
        let line = format!("{} {}{}", meta.level(), text.message, text.fields);
        // The access log separates its fields with a tab; one line per event reads better.
        self.trace
            .record(&host, meta.target(), line.replace('\t', " "));
    }
}

/// The subscriber of a normal run: host spans and recorded events, nothing else.
struct TraceSubscriber(Recorder);

/// Every host span gets this id: they never nest and nothing looks them up.
const HOST_SPAN: u64 = 1;

impl Subscriber for TraceSubscriber {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_recorded(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        is_recorded(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        if is_host_span(attrs.metadata()) {
            self.0.host_span_opened(attrs);
        }
        Id::from_u64(HOST_SPAN)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        self.0.event(event);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {
        self.0.host_span_left();
    }
}

/// The same recording as a layer, beside the formatter `SIM_LOG` adds.
struct TraceLayer(Recorder);

impl<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S> for TraceLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if is_host_span(attrs.metadata()) {
            self.0.host_span_opened(attrs);
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if ctx.metadata(id).is_some_and(|meta| is_host_span(meta)) {
            self.0.host_span_left();
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        self.0.event(event);
    }
}

/// Runs `f` with dataplane logs going into `trace` (on this thread only, so parallel runs do
/// not mix). When `SIM_LOG` is set (an `EnvFilter` directive such as `debug`), every log line
/// is also printed to stderr, without wall-clock timestamps, for debugging a scenario.
pub(crate) fn with_trace_logs<R>(trace: &Trace, f: impl FnOnce() -> R) -> R {
    let recorder = Recorder::new(trace);
    match std::env::var("SIM_LOG") {
        Err(_) => tracing::subscriber::with_default(TraceSubscriber(recorder), f),
        Ok(directive) => {
            let debug = tracing_subscriber::fmt::layer()
                .without_time()
                .with_writer(std::io::stderr)
                .with_filter(EnvFilter::new(directive));
            let subscriber = tracing_subscriber::registry()
                .with(TraceLayer(recorder).with_filter(filter_fn(is_recorded)))
                .with(debug);
            tracing::subscriber::with_default(subscriber, f)
        }
    }
}

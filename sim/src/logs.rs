//! The production code's own log lines, recorded into the trace.
//!
//! The ztunnel explains its decisions in its logs (which policy denied a connection, why a
//! connection was closed, the access log). Copying those lines into the trace puts the
//! explanation next to the events the scenario recorded, and makes the replay hash cover the
//! proxies' decisions too. Which host logged a line comes from the `node` span turmoil enters
//! around every host's tick.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::trace::Trace;

/// The turmoil host a span runs on, kept in the span's extensions.
struct HostName(String);

/// Collects an event's message and fields as text.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
    name: Option<String>,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "name" => self.name = Some(value.to_string()),
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
            "name" => self.name = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

/// A layer that appends dataplane log events to a [`Trace`].
struct TraceLayer {
    trace: Trace,
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

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !is_host_span(attrs.metadata()) {
            return;
        }
        let mut text = Text::default();
        attrs.record(&mut text);
        if let (Some(name), Some(span)) = (text.name, ctx.span(id)) {
            span.extensions_mut().insert(HostName(name));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let host = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .from_root()
                    .find_map(|span| span.extensions().get::<HostName>().map(|h| h.0.clone()))
            })
            .unwrap_or_else(|| "-".to_string());
        let mut text = Text::default();
        event.record(&mut text);
        let meta = event.metadata();
        let line = format!("{} {}{}", meta.level(), text.message, text.fields);
        // The access log separates its fields with a tab; one line per event reads better.
        self.trace
            .record(&host, meta.target(), line.replace('\t', " "));
    }
}

/// Runs `f` with dataplane logs going into `trace` (on this thread only, so parallel runs do
/// not mix). When `SIM_LOG` is set (an `EnvFilter` directive such as `debug`), every log line
/// is also printed to stderr, without wall-clock timestamps, for debugging a scenario.
pub(crate) fn with_trace_logs<R>(trace: &Trace, f: impl FnOnce() -> R) -> R {
    let layer = TraceLayer {
        trace: trace.clone(),
    }
    .with_filter(filter_fn(|meta| {
        is_host_span(meta) || is_recorded_event(meta)
    }));
    let debug = std::env::var("SIM_LOG").ok().map(|directive| {
        tracing_subscriber::fmt::layer()
            .without_time()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::new(directive))
    });
    let subscriber = tracing_subscriber::registry().with(layer).with(debug);
    tracing::subscriber::with_default(subscriber, f)
}

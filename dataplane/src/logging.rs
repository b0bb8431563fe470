//! Log output for the binaries, in upstream's plain format:
//! `<RFC 3339 UTC time>\t<level>\t<target>\t<message>\t<key=value …>`.
//!
//! The fields of the spans an event happens in (a connection's peer, its trace id) join the
//! event's own, so that a line logged deep inside a library still says which connection it is
//! about.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as upstream's ztunnel does.
pub struct UpstreamFormat;

struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl<S, N> FormatEvent<S, N> for UpstreamFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut writer)?;
        let meta = event.metadata();
        let mut fields = Fields {
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(formatted) = extensions.get::<FormattedFields<N>>()
                    && !formatted.is_empty()
                {
                    fields.rest.push(' ');
                    fields.rest.push_str(formatted);
                }
            }
        }
        let level = meta.level().as_str().to_ascii_lowercase();
        write!(writer, "\t{level}\t{}\t{}", meta.target(), fields.message)?;
        if !fields.rest.is_empty() {
            // A message that already ends in its own key=value column (the access log's)
            // takes the rest into that column rather than a new one.
            if fields.message.contains('\t') {
                write!(writer, "{}", fields.rest)?;
            } else {
                write!(writer, "\t{}", fields.rest.trim_start())?;
            }
        }
        writeln!(writer)
    }
}

/// What is logged when `RUST_LOG` is not set: INFO, and the HTTP/2 library's reports of a
/// peer's protocol errors on a stream (oversized header blocks among them), which it answers
/// by itself (431, RST_STREAM) and logs only at DEBUG.
pub const DEFAULT_FILTER: &str = "info,h2::proto::streams::recv=debug";

/// Installs the formatter on stderr; `RUST_LOG` filters, default [`DEFAULT_FILTER`].
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(UpstreamFormat)
        .try_init();
}

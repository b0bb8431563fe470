//! Wall-clock time for certificate validity, expiry and rotation.
//!
//! Timers use `tokio::time` (virtual under turmoil); only *wall-clock* readings go through
//! [`Clock`], including the time rustls checks certificates against.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::time_provider::TimeProvider;
use rustls_pki_types::UnixTime;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock, for the binaries.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// turmoil's logical wall clock: the simulation epoch plus simulated time.
///
/// Outside a simulation there is no such clock, so it reads the UNIX epoch, which makes every
/// certificate look not-yet-valid: a misuse shows up as a loud handshake failure, never as a
/// silent fallback to the real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimClock;

impl Clock for SimClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + turmoil::since_epoch().unwrap_or_default()
    }
}

/// A clock that reads another one, moved by an adjustable offset.
///
/// Scenarios and tests use it to jump past certificate expiry without waiting.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<dyn Clock>,
    offset_millis: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(inner: Arc<dyn Clock>) -> Self {
        ManualClock {
            inner,
            offset_millis: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_millis.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        let offset = self.offset_millis.load(Ordering::SeqCst);
        let base = self.inner.now();
        if offset >= 0 {
            base + Duration::from_millis(offset.unsigned_abs())
        } else {
            base - Duration::from_millis(offset.unsigned_abs())
        }
    }
}

/// Adapts a [`Clock`] to rustls, so certificate validity is checked against the seam.
#[derive(Debug)]
pub(crate) struct RustlsTime(pub Arc<dyn Clock>);

impl TimeProvider for RustlsTime {
    fn current_time(&self) -> Option<UnixTime> {
        let since = self.0.now().duration_since(UNIX_EPOCH).ok()?;
        Some(UnixTime::since_unix_epoch(since))
    }
}

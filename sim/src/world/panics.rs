//! Panic capture: a panic inside a spawned task would only reach tokio as a `JoinError`, so a
//! hook reports every panic on a simulating thread to its run for the `panic` invariant.

use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    /// Where panics on this thread are reported while a run is in progress.
    pub(super) static PANICS: RefCell<Option<Rc<RefCell<Vec<String>>>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that reports panics on a simulating thread to its run, so a
/// panic inside a spawned task (which tokio would only turn into a `JoinError`) is seen.
pub(super) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let reported = PANICS
                .try_with(|p| {
                    p.try_borrow().ok().and_then(|p| p.clone()).map(|sink| {
                        let location = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        let message = info
                            .payload()
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| {
                                info.payload().downcast_ref::<&str>().map(|s| s.to_string())
                            })
                            .unwrap_or_default();
                        if let Ok(mut sink) = sink.try_borrow_mut() {
                            sink.push(format!("{message}{location}"));
                        }
                    })
                })
                .ok()
                .flatten()
                .is_some();
            if !reported {
                previous(info);
            }
        }));
    });
}

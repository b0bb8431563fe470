//! The attacks, each a function from the running mesh to a [`Findings`]: what it saw
//! (notes) and what the binaries did that they must not (violations). Whether every process
//! survived, the happy path still answers and resources came back is judged by the suite
//! after each one, the same way for all.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::mesh::Mesh;

mod admin;
mod control;
pub(crate) mod floods;
mod hbone;
mod junk;
mod lifecycle;
mod slow;
mod socks5;
mod yaml;

/// What an attack runs with.
pub struct Ctx<'a> {
    pub mesh: &'a Mesh,
    /// The run is in its own network namespace: canary listeners on well-known ports and
    /// a non-loopback source address are available.
    pub private_netns: bool,
    /// The ztunnels' deadline for silent or slow clients.
    pub ztunnel_deadline: Duration,
    /// istiod's (10 s, the binary's default: it has no setting for it).
    pub istiod_deadline: Duration,
    /// The runner's scratch directory.
    pub dir: std::path::PathBuf,
}

impl Ctx<'_> {
    /// How long after its deadline a listener may take to drop a silent client.
    pub const LATE: Duration = Duration::from_secs(3);

    /// The deadline of the process listening on `port`.
    pub fn deadline(&self, port: u16) -> Duration {
        if crate::mesh::ports::ISTIOD.contains(&port) {
            self.istiod_deadline
        } else {
            self.ztunnel_deadline
        }
    }
}

/// What an attack observed.
#[derive(Debug, Default)]
pub struct Findings {
    pub notes: Vec<String>,
    pub violations: Vec<String>,
    /// Set when the attack could not run here; the reason.
    pub skipped: Option<String>,
}

impl Findings {
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }
    pub fn violation(&mut self, s: impl Into<String>) {
        self.violations.push(s.into());
    }
    /// Records `what` as a violation unless `ok`.
    pub fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.violations.push(what());
        }
    }
}

pub type Run = for<'a> fn(&'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Findings>>;

/// One attack of the suite.
pub struct Attack {
    pub name: &'static str,
    pub about: &'static str,
    pub run: Run,
}

/// Every attack, in the order the suite runs them.
pub fn all() -> Vec<Attack> {
    vec![
        Attack {
            name: "garbage",
            about: "random bytes and the wrong protocol on every port of every process",
            run: |c| Box::pin(junk::garbage(c)),
        },
        Attack {
            name: "truncated-handshakes",
            about: "each port's own handshake cut short, closed with FIN and with RST",
            run: |c| Box::pin(junk::truncated(c)),
        },
        Attack {
            name: "idle-and-stalled-peers",
            about: "connect and say nothing, or half a handshake and nothing: dropped by the deadline",
            run: |c| Box::pin(slow::idle_and_stalled(c)),
        },
        Attack {
            name: "trickle",
            about: "a handshake at one byte per second on every port: dropped by the deadline",
            run: |c| Box::pin(slow::trickle(c)),
        },
        Attack {
            name: "connection-flood",
            about: "1000 connections held on every port at once, happy path asked during it; readiness over its cap",
            run: |c| Box::pin(floods::connections(c)),
        },
        Attack {
            name: "descriptor-limit",
            about: "node-a's traffic listeners flooded past its descriptor limit: caps refuse, readiness and metrics answer",
            run: |c| Box::pin(floods::descriptor_limit(c)),
        },
        Attack {
            name: "hbone-tunnel-flood",
            about: "4000 HBONE tunnels to echo over 40 connections with a CA-issued certificate",
            run: |c| Box::pin(floods::tunnels(c)),
        },
        Attack {
            name: "socks5-abuse",
            about: "bad versions, methods, commands, address types; CONNECT to the ztunnel's own ports by every spelling",
            run: |c| Box::pin(socks5::abuse(c)),
        },
        Attack {
            name: "hbone-authorities",
            about: "CONNECT to the ztunnel's own listeners and malformed authorities, CA-issued certificate",
            run: |c| Box::pin(hbone::authorities(c)),
        },
        Attack {
            name: "hbone-headers",
            about: "70 KiB and 1 MiB header blocks, 10,000 headers, and a CONTINUATION flood",
            run: |c| Box::pin(hbone::headers(c)),
        },
        Attack {
            name: "hbone-rapid-reset",
            about: "streams opened and reset at once, 10,000 per connection",
            run: |c| Box::pin(hbone::rapid_reset(c)),
        },
        Attack {
            name: "hbone-untrusted-clients",
            about: "TLS without a client certificate and with one from a foreign CA",
            run: |c| Box::pin(hbone::untrusted(c)),
        },
        Attack {
            name: "ca-abuse",
            about: "forged, expired and cross-node tokens and bad CSRs against istiod's CA on 15012",
            run: |c| Box::pin(control::ca(c)),
        },
        Attack {
            name: "xds-abuse",
            about: "NACKs with megabytes of error_detail, streams that never read, unauthenticated streams",
            run: |c| Box::pin(control::xds(c)),
        },
        Attack {
            name: "hostile-yaml",
            about: "deep nesting, aliases, huge and special files given to istiod --check",
            run: |c| Box::pin(yaml::check(c)),
        },
        Attack {
            name: "quitquitquit-non-loopback",
            about: "POST /quitquitquit to the admin-type ports from an address that is not loopback",
            run: |c| Box::pin(admin::quit_from_outside(c)),
        },
        Attack {
            name: "help",
            about: "--help on ztunnel, waypoint and istiod prints the usage and exits 0",
            run: |c| Box::pin(lifecycle::help(c)),
        },
        Attack {
            name: "sigterm-drain",
            about: "SIGTERM to a second ztunnel carrying a connection and a second istiod serving a stream: drained and exited within the bound",
            run: |c| Box::pin(lifecycle::sigterm(c)),
        },
        Attack {
            name: "absolute-form-targets",
            about: "absolute-form, authority-form and asterisk request targets on the HTTP ports",
            run: |c| Box::pin(admin::absolute_form(c)),
        },
    ]
}

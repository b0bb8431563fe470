//! A root rotation driven by the operator (`istiod rotate-root begin|advance|finish|status`),
//! kept in the state directory beside the root it replaces, so that a restart mid-rotation
//! comes back in the same phase and a running istiod follows each step.
//!
//! The directory holds the base root (`root-cert.pem`, `ca-key.pem`) and, while a rotation is
//! on, the next one (`next-root-cert.pem`, `next-ca-key.pem`) and its two times
//! (`rotation.json`: when the next root starts signing, when the base root leaves the trust
//! bundle). The phase is a function of those times and the clock, so nobody has to write
//! anything when a time passes: `begin` schedules both, `advance` brings the next one to now,
//! and `finish` makes the next root the base and removes the rotation.
//!
//! Every file is replaced by a rename, so a reader sees a whole file, old or new.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataplane::identity::LocalCa;
use serde::{Deserialize, Serialize};

use super::state_dir::{self, StateDirError};
use crate::ca::PlannedRoot;

const NEXT_ROOT_CERT: &str = "next-root-cert.pem";
const NEXT_CA_KEY: &str = "next-ca-key.pem";
const ROTATION: &str = "rotation.json";

/// By default the next root starts signing after one default certificate lifetime, so every
/// live certificate has been renewed with a bundle that trusts it.
pub const DEFAULT_ACTIVATE_AFTER: Duration = crate::ca::DEFAULT_TTL;
/// By default the old root stays trusted one default certificate lifetime after that, until
/// every leaf it signed has expired.
pub const DEFAULT_OVERLAP: Duration = crate::ca::DEFAULT_TTL;

/// `rotation.json`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Times {
    /// Seconds since the Unix epoch.
    activate_at: u64,
    retire_at: u64,
}

/// Where a rotation stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No rotation: one root trusted and signing.
    Idle,
    /// The next root is trusted and not yet signing.
    Trusting { activate_at: SystemTime },
    /// The next root signs; the old one is still trusted.
    Signing { retire_at: SystemTime },
    /// Both times have passed: the old root is no longer trusted, and `finish` tidies up.
    Retired,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |t: &SystemTime| time::OffsetDateTime::from(*t).to_string();
        match self {
            Phase::Idle => write!(f, "no rotation: one root trusted and signing"),
            Phase::Trusting { activate_at } => write!(
                f,
                "trusting: the next root is in the trust bundle; it signs from {}",
                at(activate_at)
            ),
            Phase::Signing { retire_at } => write!(
                f,
                "signing: the next root signs; the old root is trusted until {}",
                at(retire_at)
            ),
            Phase::Retired => write!(
                f,
                "retired: the old root is no longer trusted; `finish` makes the next root the base"
            ),
        }
    }
}

/// Why a rotation step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("no root rotation is in progress (begin one with `istiod rotate-root begin`)")]
    NotRotating,
    #[error("a root rotation is already in progress ({0})")]
    InProgress(Phase),
    #[error(
        "the next root does not sign yet ({0}); finishing now would cut off every workload \
         whose certificate the old root signed. Run `advance` first, and `finish` once those \
         certificates have been renewed"
    )]
    NotSigningYet(Phase),
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(transparent)]
    State(#[from] StateDirError),
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn instant(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

fn phase(times: Option<Times>, now: SystemTime) -> Phase {
    match times {
        None => Phase::Idle,
        Some(t) if now < instant(t.activate_at) => Phase::Trusting {
            activate_at: instant(t.activate_at),
        },
        Some(t) if now < instant(t.retire_at) => Phase::Signing {
            retire_at: instant(t.retire_at),
        },
        Some(_) => Phase::Retired,
    }
}

fn read_times(dir: &Path) -> Result<Option<Times>, RotationError> {
    let path = dir.join(ROTATION);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateDirError::Io { path, source }.into()),
    };
    let times: Times = serde_json::from_str(&text).map_err(|e| RotationError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if times.retire_at < times.activate_at {
        return Err(RotationError::Corrupt {
            path: path.display().to_string(),
            reason: "retireAt is before activateAt".into(),
        });
    }
    Ok(Some(times))
}

fn write_times(dir: &Path, times: Times) -> Result<(), RotationError> {
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "activateAt": times.activate_at,
        "retireAt": times.retire_at,
    }))
    .unwrap_or_default();
    state_dir::replace(&dir.join(ROTATION), &text, false)?;
    Ok(())
}

/// The rotation in `dir`, if one is on: the root it brings in, with its times.
pub fn load(dir: &Path) -> Result<Option<PlannedRoot>, RotationError> {
    let Some(times) = read_times(dir)? else {
        return Ok(None);
    };
    let next = state_dir::read_ca(&dir.join(NEXT_ROOT_CERT), &dir.join(NEXT_CA_KEY))?;
    Ok(Some(PlannedRoot {
        next,
        activate_at: instant(times.activate_at),
        retire_at: instant(times.retire_at),
    }))
}

/// The base root and the rotation replacing it, as a running istiod adopts them.
pub fn load_roots(dir: &Path) -> Result<(LocalCa, Option<PlannedRoot>), RotationError> {
    let base = state_dir::read_ca(
        &dir.join(state_dir::ROOT_CERT),
        &dir.join(state_dir::CA_KEY),
    )?;
    Ok((base, load(dir)?))
}

/// What the rotation's files hold now, to notice a change: the roots and the times (the keys
/// change only with their roots).
pub fn fingerprint(dir: &Path) -> Vec<Option<Vec<u8>>> {
    [state_dir::ROOT_CERT, NEXT_ROOT_CERT, ROTATION]
        .iter()
        .map(|name| std::fs::read(dir.join(name)).ok())
        .collect()
}

/// Where the rotation in `dir` stands at `now`.
pub fn status(dir: &Path, now: SystemTime) -> Result<Phase, RotationError> {
    Ok(phase(read_times(dir)?, now))
}

/// Starts a rotation: a new root, trusted from now, signing after `activate_after`, the old
/// root trusted for `overlap` after that.
pub fn begin(
    dir: &Path,
    trust_domain: &str,
    now: SystemTime,
    activate_after: Duration,
    overlap: Duration,
) -> Result<Phase, RotationError> {
    // The base root must be there to be replaced.
    state_dir::load_or_create(dir, trust_domain, now)?;
    let current = phase(read_times(dir)?, now);
    if current != Phase::Idle {
        return Err(RotationError::InProgress(current));
    }
    let next = LocalCa::generate(trust_domain, now).map_err(|source| StateDirError::Ca {
        path: dir.join(NEXT_ROOT_CERT),
        source,
    })?;
    state_dir::replace(&dir.join(NEXT_CA_KEY), next.key_pem(), true)?;
    state_dir::replace(&dir.join(NEXT_ROOT_CERT), &next.root_pem(), false)?;
    let activate_at = seconds(now + activate_after);
    let times = Times {
        activate_at,
        retire_at: activate_at + overlap.as_secs(),
    };
    // Last: until this file is there, the next root's files mean nothing.
    write_times(dir, times)?;
    Ok(phase(Some(times), now))
}

/// Brings the next step to now: a trusted root starts signing (the old one stays trusted for
/// the overlap `begin` set), or a signing root's predecessor leaves the trust bundle.
pub fn advance(dir: &Path, now: SystemTime) -> Result<Phase, RotationError> {
    let times = read_times(dir)?.ok_or(RotationError::NotRotating)?;
    let now_s = seconds(now);
    let advanced = match phase(Some(times), now) {
        Phase::Trusting { .. } => Times {
            activate_at: now_s,
            retire_at: now_s + (times.retire_at - times.activate_at),
        },
        Phase::Signing { .. } => Times {
            retire_at: now_s,
            ..times
        },
        Phase::Retired | Phase::Idle => times,
    };
    write_times(dir, advanced)?;
    Ok(phase(Some(advanced), now))
}

/// Ends a rotation whose next root already signs: the next root becomes the base, the old
/// one is gone from the trust bundle, and the rotation files are removed.
pub fn finish(dir: &Path, now: SystemTime) -> Result<Phase, RotationError> {
    let times = read_times(dir)?.ok_or(RotationError::NotRotating)?;
    let current = phase(Some(times), now);
    if let Phase::Trusting { .. } = current {
        return Err(RotationError::NotSigningYet(current));
    }
    let next = state_dir::read_ca(&dir.join(NEXT_ROOT_CERT), &dir.join(NEXT_CA_KEY))?;
    state_dir::replace_root(dir, &next)?;
    for name in [ROTATION, NEXT_ROOT_CERT, NEXT_CA_KEY] {
        let path = dir.join(name);
        if let Err(source) = std::fs::remove_file(&path)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(StateDirError::Io { path, source }.into());
        }
    }
    Ok(Phase::Idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("istiod-rotation-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn begin_advance_finish_walk_the_three_phases_and_survive_a_reload() {
        let dir = dir("walk");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let base = state_dir::load_or_create(&dir, "cluster.local", t0).unwrap();
        assert_eq!(status(&dir, t0).unwrap(), Phase::Idle);

        let phase = begin(&dir, "cluster.local", t0, DAY, DAY).unwrap();
        assert_eq!(
            phase,
            Phase::Trusting {
                activate_at: t0 + DAY
            }
        );
        // A restart reads the same rotation: the base root unchanged, the next one pending.
        let again = state_dir::load_or_create(&dir, "cluster.local", t0).unwrap();
        assert_eq!(again.root.root(), base.root.root());
        let plan = load(&dir).unwrap().unwrap();
        assert_ne!(plan.next.root(), base.root.root());
        assert_eq!(plan.activate_at, t0 + DAY);
        assert_eq!(plan.retire_at, t0 + 2 * DAY);
        assert!(matches!(
            begin(&dir, "cluster.local", t0, DAY, DAY),
            Err(RotationError::InProgress(_))
        ));
        assert!(matches!(
            finish(&dir, t0),
            Err(RotationError::NotSigningYet(_))
        ));

        // Time passes on its own: signing after a day.
        assert_eq!(
            status(&dir, t0 + DAY).unwrap(),
            Phase::Signing {
                retire_at: t0 + 2 * DAY
            }
        );
        // Or at once: signing now, the old root trusted for the overlap from now.
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!(
            advance(&dir, t1).unwrap(),
            Phase::Signing {
                retire_at: t1 + DAY
            }
        );
        assert_eq!(advance(&dir, t1).unwrap(), Phase::Retired);

        assert_eq!(finish(&dir, t1).unwrap(), Phase::Idle);
        let after = state_dir::load_or_create(&dir, "cluster.local", t1).unwrap();
        assert_eq!(
            after.root.root(),
            plan.next.root(),
            "the next root is the base"
        );
        assert_eq!(after.token_secret, base.token_secret);
        assert!(load(&dir).unwrap().is_none());
        assert!(matches!(advance(&dir, t1), Err(RotationError::NotRotating)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_rotation_file_is_an_error_naming_it() {
        let dir = dir("corrupt");
        let now = SystemTime::now();
        begin(&dir, "cluster.local", now, DAY, DAY).unwrap();
        std::fs::write(dir.join(ROTATION), "{\"activateAt\": 5}").unwrap();
        let err = status(&dir, now).unwrap_err().to_string();
        assert!(err.contains("rotation.json"), "{err}");
        std::fs::write(dir.join(ROTATION), "{\"activateAt\": 9, \"retireAt\": 5}").unwrap();
        let err = load(&dir).err().unwrap().to_string();
        assert!(err.contains("before activateAt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

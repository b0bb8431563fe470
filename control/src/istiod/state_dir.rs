//! istiod's state directory: what must survive a restart so that ztunnels keep trusting it and
//! their tokens stay valid — the CA root and key (upstream keeps them in a Secret) and the
//! token-signing key. Created on first start.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};

use dataplane::identity::{LocalCa, LocalCaError};

pub(super) const ROOT_CERT: &str = "root-cert.pem";
pub(super) const CA_KEY: &str = "ca-key.pem";
const TOKEN_KEY: &str = "token-key";

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Ca { path: PathBuf, source: LocalCaError },
    #[error("{0}: not a hex-encoded key of at least 32 bytes")]
    TokenKey(PathBuf),
    #[error("no secure randomness for a new token key")]
    Random,
}

/// What the directory holds.
pub struct StateDir {
    pub root: LocalCa,
    pub token_secret: Vec<u8>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateDirError + '_ {
    move |source| StateDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn write_private(path: &Path, contents: &str) -> Result<(), StateDirError> {
    replace(path, contents, true)
}

/// Writes `path` whole through a temporary file and a rename, so that a reader (a running
/// istiod following the directory) sees the old file or the new one, never half of one.
/// `private`: readable by the owner only (keys).
pub(super) fn replace(path: &Path, contents: &str, private: bool) -> Result<(), StateDirError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, contents).map_err(io(&temporary))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&temporary))?;
    }
    std::fs::rename(&temporary, path).map_err(io(path))
}

/// A root and its key, as the directory keeps them.
pub(super) fn read_ca(root_path: &Path, key_path: &Path) -> Result<LocalCa, StateDirError> {
    let root_pem = std::fs::read_to_string(root_path).map_err(io(root_path))?;
    let key_pem = std::fs::read_to_string(key_path).map_err(io(key_path))?;
    LocalCa::from_pem(&root_pem, &key_pem).map_err(|source| StateDirError::Ca {
        path: root_path.to_path_buf(),
        source,
    })
}

/// Makes `ca` the directory's root (the end of a rotation): the key first, so that the
/// root on disk never names a key that is not there yet.
pub(super) fn replace_root(dir: &Path, ca: &LocalCa) -> Result<(), StateDirError> {
    write_private(&dir.join(CA_KEY), ca.key_pem())?;
    replace(&dir.join(ROOT_CERT), &ca.root_pem(), false)
}

/// The root CA file in `dir`: the trust bundle clients outside the cluster verify istiod with.
pub fn root_cert_path(dir: &Path) -> PathBuf {
    dir.join(ROOT_CERT)
}

/// Loads the state in `dir`, creating the directory and what is missing on first start.
pub fn load_or_create(
    dir: &Path,
    trust_domain: &str,
    now: SystemTime,
) -> Result<StateDir, StateDirError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let root_path = dir.join(ROOT_CERT);
    let key_path = dir.join(CA_KEY);
    let root = if root_path.exists() {
        read_ca(&root_path, &key_path)?
    } else {
        let ca = LocalCa::generate(trust_domain, now).map_err(|source| StateDirError::Ca {
            path: root_path.clone(),
            source,
        })?;
        replace_root(dir, &ca)?;
        tracing::info!(dir = %dir.display(), "created a new CA root");
        ca
    };
    let token_path = dir.join(TOKEN_KEY);
    let token_secret = if token_path.exists() {
        let text = std::fs::read_to_string(&token_path).map_err(io(&token_path))?;
        unhex(&text)
            .filter(|k| k.len() >= 32)
            .ok_or_else(|| StateDirError::TokenKey(token_path.clone()))?
    } else {
        let mut secret = vec![0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| StateDirError::Random)?;
        write_private(&token_path, &hex(&secret))?;
        secret
    };
    Ok(StateDir { root, token_secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_kept() {
        let dir = std::env::temp_dir().join(format!("istiod-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = SystemTime::now();
        let first = load_or_create(&dir, "cluster.local", now).unwrap();
        let again = load_or_create(&dir, "cluster.local", now).unwrap();
        assert_eq!(
            first.root.root(),
            again.root.root(),
            "a restart keeps the root"
        );
        assert_eq!(first.token_secret, again.token_secret);
        std::fs::write(dir.join(TOKEN_KEY), "xyz").unwrap();
        let err = load_or_create(&dir, "cluster.local", now).err().unwrap();
        assert!(err.to_string().contains("token-key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! istiod's state directory: what must survive a restart so that ztunnels keep trusting it and
//! their tokens stay valid — the CA root and key (upstream keeps them in a Secret) and the
//! token-signing key. Created on first start.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};

use dataplane::identity::{LocalCa, LocalCaError};

const ROOT_CERT: &str = "root-cert.pem";
const CA_KEY: &str = "ca-key.pem";
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
    std::fs::write(path, contents).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
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
        let root_pem = std::fs::read_to_string(&root_path).map_err(io(&root_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        LocalCa::from_pem(&root_pem, &key_pem).map_err(|source| StateDirError::Ca {
            path: root_path.clone(),
            source,
        })?
    } else {
        let ca = LocalCa::generate(trust_domain, now).map_err(|source| StateDirError::Ca {
            path: root_path.clone(),
            source,
        })?;
        write_private(&key_path, ca.key_pem())?;
        std::fs::write(&root_path, ca.root_pem()).map_err(io(&root_path))?;
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

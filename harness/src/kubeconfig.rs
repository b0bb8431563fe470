//! Who may talk to the private API server: static bearer tokens (the API server's
//! `--token-auth-file`), one per user, and a kubeconfig file per user that a client — a test,
//! the controller manager, istiod through `KUBECONFIG` — reads as it would a real cluster's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

/// A user the API server knows by a static token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// The user name RBAC sees. A ServiceAccount's form
    /// (`system:serviceaccount:NS:NAME`) makes bindings to that ServiceAccount apply.
    pub username: String,
    pub groups: Vec<String>,
}

impl TokenUser {
    pub fn new(username: &str, groups: &[&str]) -> TokenUser {
        TokenUser {
            username: username.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// The user a ServiceAccount's own token would authenticate as, with its groups.
    pub fn service_account(namespace: &str, name: &str) -> TokenUser {
        TokenUser {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ],
        }
    }
}

/// A user with its secret token and kubeconfig.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: TokenUser,
    pub token: String,
    pub kubeconfig: PathBuf,
}

/// 32 random bytes, hex: unguessable by anything else on the machine.
pub(crate) fn new_token() -> Result<String, crate::Error> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| crate::Error::Random)?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// One `--token-auth-file` line: `token,user,uid,"group1,group2"`.
pub(crate) fn token_line(credentials: &Credentials) -> String {
    let user = &credentials.user;
    format!(
        "{},{},{},\"{}\"\n",
        credentials.token,
        user.username,
        user.username,
        user.groups.join(",")
    )
}

/// Writes a kubeconfig for `token` against `server`, trusting `ca`.
pub(crate) fn write(
    path: &Path,
    server: &str,
    ca: &Path,
    name: &str,
    token: &str,
) -> Result<(), crate::Error> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "harness",
            "cluster": {"server": server, "certificate-authority": ca.to_string_lossy()},
        }],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "harness", "user": name}}],
        "current-context": name,
    });
    let text = serde_yaml::to_string(&config).map_err(|e| crate::Error::Io {
        what: format!("serializing {}", path.display()),
        source: std::io::Error::other(e),
    })?;
    crate::write_file(path, text.as_bytes())
}

/// A client for the user of `kubeconfig`, as `kubectl --kubeconfig` would connect.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client, crate::Error> {
    let options = kube::config::KubeConfigOptions::default();
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| crate::Error::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|e| crate::Error::Kubeconfig(e.to_string()))?;
    kube::Client::try_from(config).map_err(crate::Error::Kube)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_user_has_the_groups_kubernetes_gives_it() {
        let user = TokenUser::service_account("istio-system", "istiod");
        assert_eq!(user.username, "system:serviceaccount:istio-system:istiod");
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:istio-system"
            ]
        );
    }

    #[test]
    fn token_lines_quote_the_groups() {
        let credentials = Credentials {
            user: TokenUser::new("admin", &["system:masters", "extra"]),
            token: "t0k3n".into(),
            kubeconfig: PathBuf::from("x"),
        };
        assert_eq!(
            token_line(&credentials),
            "t0k3n,admin,admin,\"system:masters,extra\"\n"
        );
        assert_eq!(new_token().unwrap().len(), 64);
    }
}

//! One gRPC channel to istiod over the network seam.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::control_plane_client_config;
use crate::seams::{BoxStream, Clock, Network};

/// Why the control plane could not be reached or was misconfigured.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("control-plane address {0:?} is not https://host:port, http://host:port or host:port")]
    Address(String),
    #[error("control-plane root certificate: {0}")]
    Root(String),
    #[error("cannot read the token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token is not a valid header value")]
    TokenValue,
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

/// Where istiod is: `https://host:port` (TLS, the default for a scheme-less address) or
/// `http://host:port` (plaintext, istiod's 15010).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Target {
    pub fn parse(address: &str) -> Result<Self, ControlPlaneError> {
        let bad = || ControlPlaneError::Address(address.to_string());
        let (tls, rest) = if let Some(rest) = address.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = address.strip_prefix("http://") {
            (false, rest)
        } else {
            (true, address)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port = port.parse().map_err(|_| bad())?;
        Ok(Target {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// The caller token (`AUTH_TOKEN`): a file re-read on every call, or a literal value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthToken {
    File(PathBuf),
    Literal(String),
}

impl AuthToken {
    /// Upstream's rule: a value naming an existing file is that file, anything else literal.
    pub fn from_setting(value: &str) -> Self {
        let path = PathBuf::from(value);
        if path.is_file() {
            AuthToken::File(path)
        } else {
            AuthToken::Literal(value.to_string())
        }
    }

    fn current(&self) -> Result<String, ControlPlaneError> {
        match self {
            AuthToken::Literal(v) => Ok(v.clone()),
            AuthToken::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|source| ControlPlaneError::Token {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// Reads root certificates from PEM text or a file holding it.
pub(crate) fn read_roots(setting: &str) -> Result<Vec<CertificateDer<'static>>, ControlPlaneError> {
    let pem = if setting.trim_start().starts_with("-----BEGIN") {
        setting.to_string()
    } else {
        std::fs::read_to_string(setting)
            .map_err(|e| ControlPlaneError::Root(format!("cannot read {setting}: {e}")))?
    };
    let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ControlPlaneError::Root(e.to_string()))?;
    if roots.is_empty() {
        return Err(ControlPlaneError::Root(format!(
            "no certificate in {setting}"
        )));
    }
    Ok(roots)
}

/// A channel to istiod plus what every call must carry.
#[derive(Clone)]
pub struct ControlPlaneClient {
    pub target: Target,
    channel: Channel,
    token: Option<AuthToken>,
    cluster_id: String,
}

impl ControlPlaneClient {
    /// A lazily connecting channel to `address`; TLS is verified against `root` (PEM text or
    /// a file), by the address's host name.
    pub fn new(
        address: &str,
        root: &str,
        token: Option<AuthToken>,
        cluster_id: &str,
        network: Arc<dyn Network>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ControlPlaneError> {
        let target = Target::parse(address)?;
        let tls = if target.tls {
            let roots = read_roots(root)?;
            let config = control_plane_client_config(&roots, clock)
                .map_err(|e| ControlPlaneError::Root(e.to_string()))?;
            Some(Arc::new(config))
        } else {
            None
        };
        let endpoint = Endpoint::from_shared(format!("http://{}:{}", target.host, target.port))
            .map_err(|_| ControlPlaneError::Address(address.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let host = target.host.clone();
        let port = target.port;
        let connector = tower::service_fn(move |_: Uri| {
            let network = network.clone();
            let tls = tls.clone();
            let host = host.clone();
            async move {
                let address = network.resolve(&host, port).await?;
                let tcp = network.connect(None, address).await?;
                let stream: BoxStream = match tls {
                    Some(config) => {
                        let name = ServerName::try_from(host.clone()).map_err(|e| {
                            std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
                        })?;
                        Box::new(TlsConnector::from(config).connect(name, tcp).await?)
                    }
                    None => tcp,
                };
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = endpoint.connect_with_connector_lazy(connector);
        Ok(ControlPlaneClient {
            target,
            channel,
            token,
            cluster_id: cluster_id.to_string(),
        })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Adds `authorization: Bearer …` and `clusterid` to a request.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), ControlPlaneError> {
        let metadata = request.metadata_mut();
        if let Some(token) = &self.token {
            let value = format!("Bearer {}", token.current()?)
                .parse()
                .map_err(|_| ControlPlaneError::TokenValue)?;
            metadata.insert("authorization", value);
        }
        if let Ok(value) = self.cluster_id.parse() {
            metadata.insert("clusterid", value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Target::parse("istiod.istio-system.svc:15012").unwrap(),
            Target {
                host: "istiod.istio-system.svc".into(),
                port: 15012,
                tls: true
            }
        );
        assert!(!Target::parse("http://127.0.0.1:15010").unwrap().tls);
        assert_eq!(Target::parse("https://[::1]:15012").unwrap().host, "::1");
        assert!(Target::parse("https://istiod").is_err());
        assert!(Target::parse(":15012").is_err());
        assert!(Target::parse("istiod:port").is_err());
    }

    #[test]
    fn roots_from_text_or_garbage() {
        let err =
            read_roots("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
        assert!(err.is_err());
        let err = read_roots("/nonexistent/root.pem").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/root.pem"), "{err}");
    }
}

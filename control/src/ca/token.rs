//! Caller tokens for the CA and xDS: what a Kubernetes service-account JWT is to upstream
//! istiod, for clusters istiod runs itself (standalone processes, the simulator).
//!
//! A token names the node whose ztunnel presents it (and, for a ztunnel in dedicated mode, the
//! one identity it serves), carries an expiry, and is signed with HMAC-SHA256 under a key kept
//! in istiod's state directory, so `istiod --issue-token NODE` and a running istiod with the
//! same directory agree. Layout: `istio-node.<hex JSON claims>.<hex MAC>`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use serde::{Deserialize, Serialize};

use dataplane::identity::Identity;

const PREFIX: &str = "istio-node";

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The node the caller runs on; impersonation is allowed for identities of pods there.
    pub node: String,
    /// The caller's own identity (a dedicated-mode ztunnel's workload); absent for node
    /// ztunnels, which are `ns/istio-system/sa/ztunnel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token for node {node} expired {seconds} s ago")]
    Expired { node: String, seconds: u64 },
}

/// Signs and verifies tokens with one key.
pub struct TokenSigner {
    key: hmac::Key,
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl TokenSigner {
    /// A signer over `secret` (32 random bytes from the state directory).
    pub fn new(secret: &[u8]) -> Self {
        TokenSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A token for the ztunnel on `node` (optionally serving only `identity`), valid for `ttl`.
    pub fn issue(
        &self,
        node: &str,
        identity: Option<&Identity>,
        ttl: Duration,
        now: SystemTime,
    ) -> String {
        let claims = Claims {
            node: node.to_string(),
            identity: identity.map(Identity::to_string),
            // A lifetime past what a clock can hold (`--token-ttl` is the operator's) never
            // expires, rather than panicking.
            exp: now.checked_add(ttl).map_or(u64::MAX, seconds),
        };
        // Serializing a struct of strings and an integer cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let mac = hmac::sign(&self.key, &payload);
        format!("{PREFIX}.{}.{}", hex(&payload), hex(mac.as_ref()))
    }

    /// The claims of a token this signer issued that has not expired at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(PREFIX), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected istio-node.<claims>.<mac>"));
        };
        let payload = unhex(payload).ok_or(TokenError::Malformed("claims are not hex"))?;
        let mac = unhex(mac).ok_or(TokenError::Malformed("MAC is not hex"))?;
        hmac::verify(&self.key, &payload, &mac).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|_| TokenError::Malformed("claims are not the expected JSON"))?;
        let now = seconds(now);
        if now >= claims.exp {
            return Err(TokenError::Expired {
                node: claims.node,
                seconds: now - claims.exp,
            });
        }
        Ok(claims)
    }
}

/// The token in an `authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, TokenError> {
    let value = header.ok_or(TokenError::Missing)?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Malformed(
            "authorization is not `Bearer <token>`",
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn round_trip_and_expiry() {
        let signer = TokenSigner::new(&[7; 32]);
        let token = signer.issue("node-a", None, Duration::from_secs(60), now());
        let claims = signer.verify(&token, now()).unwrap();
        assert_eq!(claims.node, "node-a");
        assert_eq!(claims.identity, None);
        let err = signer
            .verify(&token, now() + Duration::from_secs(61))
            .unwrap_err();
        assert_eq!(
            err,
            TokenError::Expired {
                node: "node-a".into(),
                seconds: 1
            }
        );
    }

    #[test]
    fn another_key_or_tampering_is_refused() {
        let signer = TokenSigner::new(&[7; 32]);
        let token = signer.issue("node-a", None, Duration::from_secs(60), now());
        let other = TokenSigner::new(&[8; 32]);
        assert_eq!(other.verify(&token, now()), Err(TokenError::BadSignature));
        let forged = signer
            .issue("node-b", None, Duration::from_secs(60), now())
            .split('.')
            .nth(1)
            .map(|claims| {
                let mac = token.rsplit('.').next().unwrap_or_default();
                format!("istio-node.{claims}.{mac}")
            })
            .unwrap();
        assert_eq!(signer.verify(&forged, now()), Err(TokenError::BadSignature));
        assert!(matches!(
            signer.verify("garbage", now()),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            signer.verify("istio-node.zz.00", now()),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(None), Err(TokenError::Missing));
        assert!(bearer(Some("Basic abc")).is_err());
        assert!(bearer(Some("Bearer ")).is_err());
    }
}

//! Conformance profiles and how a test counts in them (gateway-api-semantics §2): a test is
//! counted in a profile only if every one of its features belongs to the profile, and it is
//! core when all of them are the profile's core features, extended otherwise.

use serde::Deserialize;

/// A Gateway API conformance profile a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Profile {
    #[serde(rename = "MESH-HTTP")]
    MeshHttp,
    /// Gateway semantics expressed on a waypoint (no Gateway listener is involved).
    #[serde(rename = "GATEWAY-HTTP")]
    GatewayHttp,
}

/// Core or extended support level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Core,
    Extended,
}

/// MESH-HTTP's core features.
pub const MESH_HTTP_CORE: &[&str] = &["Mesh", "HTTPRoute"];

/// MESH-HTTP's extended features: the nine `Mesh…` ones.
pub const MESH_HTTP_EXTENDED: &[&str] = &[
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteBackendRequestHeaderModification",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteNamedRouteRule",
];

/// GATEWAY-HTTP's core features.
pub const GATEWAY_HTTP_CORE: &[&str] = &["Gateway", "ReferenceGrant", "HTTPRoute"];

impl Profile {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Profile::MeshHttp => "MESH-HTTP",
            Profile::GatewayHttp => "GATEWAY-HTTP",
        }
    }

    fn core(self) -> &'static [&'static str] {
        match self {
            Profile::MeshHttp => MESH_HTTP_CORE,
            Profile::GatewayHttp => GATEWAY_HTTP_CORE,
        }
    }

    /// The profile's extended features.
    pub fn extended(self) -> &'static [&'static str] {
        match self {
            Profile::MeshHttp => MESH_HTTP_EXTENDED,
            // Every Gateway and HTTPRoute extended feature (and BackendTLSPolicy).
            Profile::GatewayHttp => &[],
        }
    }

    fn contains(self, feature: &str) -> bool {
        match self {
            Profile::MeshHttp => {
                MESH_HTTP_CORE.contains(&feature) || MESH_HTTP_EXTENDED.contains(&feature)
            }
            Profile::GatewayHttp => {
                GATEWAY_HTTP_CORE.contains(&feature)
                    || feature.starts_with("HTTPRoute")
                    || feature.starts_with("Gateway")
                    || feature.starts_with("BackendTLSPolicy")
            }
        }
    }

    /// The level a test with `features` counts at in this profile; `None` when it is not
    /// counted in it (some feature lies outside the profile).
    pub fn level_of(self, features: &[String]) -> Option<Level> {
        if !features.iter().all(|f| self.contains(f)) {
            return None;
        }
        if features.iter().all(|f| self.core().contains(&f.as_str())) {
            Some(Level::Core)
        } else {
            Some(Level::Extended)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counting_follows_the_profile_rule() {
        let mesh = Profile::MeshHttp;
        assert_eq!(
            mesh.level_of(&features(&["Mesh", "HTTPRoute"])),
            Some(Level::Core)
        );
        assert_eq!(
            mesh.level_of(&features(&[
                "Mesh",
                "HTTPRoute",
                "MeshHTTPRouteRedirectPort"
            ])),
            Some(Level::Extended)
        );
        // MeshPorts needs HTTPRouteParentRefPort, which MESH-HTTP does not contain.
        assert_eq!(
            mesh.level_of(&features(&[
                "Mesh",
                "HTTPRoute",
                "HTTPRouteParentRefPort",
                "HTTPRouteResponseHeaderModification"
            ])),
            None
        );
        assert_eq!(
            Profile::GatewayHttp.level_of(&features(&["Gateway", "HTTPRoute"])),
            Some(Level::Core)
        );
        assert_eq!(
            Profile::GatewayHttp.level_of(&features(&[
                "Gateway",
                "HTTPRoute",
                "HTTPRouteQueryParamMatching"
            ])),
            Some(Level::Extended)
        );
    }
}

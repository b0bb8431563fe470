//! Upstream's mesh config file (`pilot-discovery --meshConfig`, the `mesh` key of the
//! `istio` ConfigMap): the fields translation depends on are read into [`MeshConfig`];
//! every other field is named back so the caller can say it is not used.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::snapshot::MeshConfig;

/// Why a mesh config cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("mesh config{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct MeshConfigError {
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    trust_domain_aliases: Vec<String>,
    #[serde(default)]
    root_namespace: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

/// Reads `text` into `mesh`; returns the fields it does not use, sorted.
pub fn read(text: &str, mesh: &mut MeshConfig) -> Result<Vec<String>, MeshConfigError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let file: File = serde_yaml::from_str(text).map_err(|e| MeshConfigError {
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    for (field, value) in [
        ("trustDomain", &file.trust_domain),
        ("rootNamespace", &file.root_namespace),
    ] {
        if value.as_deref().is_some_and(str::is_empty) {
            return Err(MeshConfigError {
                line: None,
                message: format!("{field} is empty"),
            });
        }
    }
    if let Some(alias) = file
        .trust_domain_aliases
        .iter()
        .find(|a| a.is_empty() || a.contains('/'))
    {
        return Err(MeshConfigError {
            line: None,
            message: format!("trustDomainAliases: {alias:?} is not a trust domain"),
        });
    }
    if let Some(td) = file.trust_domain {
        mesh.trust_domain = td;
    }
    if let Some(ns) = file.root_namespace {
        mesh.root_namespace = ns;
    }
    mesh.trust_domain_aliases = file.trust_domain_aliases;
    Ok(file.other.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_translation_uses_and_names_the_rest() {
        let mut mesh = MeshConfig::default();
        let ignored = read(
            "trustDomain: new.td\ntrustDomainAliases: [old.td, cluster.local]\naccessLogFile: /dev/stdout\n",
            &mut mesh,
        )
        .unwrap();
        assert_eq!(mesh.trust_domain, "new.td");
        assert_eq!(mesh.trust_domain_aliases, ["old.td", "cluster.local"]);
        assert_eq!(mesh.root_namespace, "istio-system");
        assert_eq!(ignored, ["accessLogFile"]);
    }

    #[test]
    fn bad_files_are_refused_with_where() {
        let mut mesh = MeshConfig::default();
        let err = read("trustDomain: [1, 2]\n", &mut mesh).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = read("trustDomainAliases: [\"a/b\"]\n", &mut mesh).unwrap_err();
        assert!(err.to_string().contains("\"a/b\""), "{err}");
        assert_eq!(mesh, MeshConfig::default());
    }
}

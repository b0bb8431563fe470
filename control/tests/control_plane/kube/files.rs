//! The checked-in files a cluster gets (CRDs, istiod's RBAC) against the code they must
//! match. No API server needed.

use std::collections::BTreeSet;

use control::object::Kind;
use control::sources::kube::api_resource;
use k8s_openapi::api::rbac::v1::ClusterRole;

use harness::manifests::documents;

use super::repo_file;

/// `control/crds/*.yaml` are what `control::crds` generates; `UPDATE_CRDS=1` rewrites them.
#[test]
fn crd_files_are_what_the_generator_makes() {
    let update = std::env::var("UPDATE_CRDS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for file in control::crds::files() {
        let path = repo_file("crds").join(file.name);
        let generated = control::crds::render(&file).unwrap();
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        if checked_in != generated {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale: {}; regenerate with UPDATE_CRDS=1 cargo test -p control --test control_plane \
         kube::files",
        stale.join(", ")
    );
}

/// Every kind istiod watches has a CRD or is built in, and every CRD is for a kind it
/// watches.
#[test]
fn the_crds_serve_exactly_the_custom_kinds_istiod_watches() {
    let built_in = ["", "apps", "discovery.k8s.io"];
    let watched: BTreeSet<(String, String, String)> = Kind::ALL
        .iter()
        .map(|&k| api_resource(k))
        .filter(|r| !built_in.contains(&r.group.as_str()))
        .map(|r| (r.group, r.plural, r.version))
        .collect();
    let served: BTreeSet<(String, String, String)> = control::crds::files()
        .into_iter()
        .flat_map(|f| f.crds)
        .flat_map(|crd| {
            let spec = crd.spec;
            spec.versions
                .into_iter()
                .filter(|v| v.served)
                .map(move |v| (spec.group.clone(), spec.names.plural.clone(), v.name))
        })
        .filter(|served| {
            // Istio's kinds are also served as v1beta1, which the store reads too.
            served.2 != "v1beta1"
        })
        .collect();
    assert_eq!(served, watched);
}

/// The ClusterRole grants `list` and `watch` on exactly the resources the watchers read,
/// and nothing else.
#[test]
fn the_cluster_role_is_list_and_watch_on_exactly_the_watched_kinds() {
    let text = std::fs::read_to_string(repo_file("rbac/istiod.yaml")).unwrap();
    let role = documents::<serde_yaml::Value>(&text)
        .into_iter()
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("ClusterRole"))
        .map(|d| serde_yaml::from_value::<ClusterRole>(d).unwrap())
        .expect("a ClusterRole in rbac/istiod.yaml");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(
            verbs,
            BTreeSet::from(["list", "watch"]),
            "a rule grants {verbs:?}"
        );
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.iter().flatten() {
                granted.insert((group.clone(), resource.clone()));
            }
        }
    }
    let watched: BTreeSet<(String, String)> = Kind::ALL
        .iter()
        .map(|&k| api_resource(k))
        .map(|r| (r.group, r.plural))
        .collect();
    assert_eq!(granted, watched);
}

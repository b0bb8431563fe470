//! What the API serves but istiod cannot read: an AuthorizationPolicy with `rules` of the
//! wrong type and one with a misspelt field, both stored by the API server (the CRD keeps
//! unknown fields, as upstream's does for fields it does not know). Each is reported with its
//! name and left out; the good policy next to them, a policy created later and a Service all
//! keep flowing; a bad policy fixed in place arrives.

use serde_json::json;

use super::ads::describe;
use super::{Istiod, PUSH_LIMIT, objects, policies, shared_cluster};

const NS: &str = "kube-bad-input";

fn allow_web() -> serde_json::Value {
    json!({
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/kube-bad-input/sa/web"]}}]}],
    })
}

#[tokio::test]
async fn an_unreadable_object_is_reported_and_skipped_while_the_rest_flows() {
    let Some(cluster) = shared_cluster("kube::bad_input").await else {
        return;
    };
    let admin = cluster.admin_client().await.unwrap();
    objects::ambient_namespace(&admin, NS, true).await;
    policies::authorization_policy(&admin, NS, "good", allow_web()).await;
    policies::authorization_policy(&admin, NS, "wrong-type", json!({"rules": "everyone"})).await;
    policies::authorization_policy(&admin, NS, "misspelt", json!({"rulez": []})).await;

    // Started after: the bad objects come in the initial list, with the good one.
    let istiod = Istiod::start("bad-input", cluster);
    let mut ads = istiod.client("ztunnel~bad-input").await;
    let good = format!("{NS}/good");
    ads.wait(PUSH_LIMIT, |v| v.has_policy(&good))
        .await
        .unwrap_or_else(|| panic!("the good policy never arrived: {}", describe(&ads.view())));

    for (name, complaint) in [("wrong-type", "invalid type"), ("misspelt", "rulez")] {
        let object = format!("AuthorizationPolicy {NS}/{name}");
        let reported = istiod.logged(&object);
        assert!(
            reported
                .iter()
                .any(|l| l.contains("unreadable") && l.contains(complaint)),
            "{object} not reported as unreadable ({complaint}):\n{}",
            istiod.log()
        );
        assert!(!ads.view().has_policy(&format!("{NS}/{name}")));
    }

    // The same kind keeps flowing, and so do the others.
    policies::authorization_policy(&admin, NS, "later", allow_web()).await;
    objects::service(&admin, NS, "web", "web").await;
    let later = format!("{NS}/later");
    let service = objects::service_key(NS, "web");
    let took = ads
        .wait(PUSH_LIMIT, |v| {
            v.has_policy(&later) && v.service(&service).is_some()
        })
        .await
        .unwrap_or_else(|| panic!("stuck behind the bad objects: {}", describe(&ads.view())));
    println!("kube bad input: a later policy and a service seen in {took:?}");

    // Fixed in place, the bad policy arrives.
    policies::set_policy_spec(&admin, NS, "wrong-type", allow_web()).await;
    let fixed = format!("{NS}/wrong-type");
    ads.wait(PUSH_LIMIT, |v| v.has_policy(&fixed))
        .await
        .unwrap_or_else(|| panic!("the fixed policy never arrived: {}", describe(&ads.view())));
    assert!(!ads.view().has_policy(&format!("{NS}/misspelt")));
    assert!(istiod.logged("watch failed").is_empty());
}

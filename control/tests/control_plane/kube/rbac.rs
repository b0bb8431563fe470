//! istiod's ClusterRole (`control/rbac/istiod.yaml`, installed from the file) is enough: the
//! real istiod runs under it with every watch working. And it is no more: the API server's
//! own authorizer says istiod may list and watch its kinds and nothing else, and a write or a
//! Secret read with istiod's token is forbidden.

use control::object::Kind;
use control::sources::kube::api_resource;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};

use super::ads::describe;
use super::{Istiod, PUSH_LIMIT, objects, shared_cluster};

const NS: &str = "kube-rbac";

/// Whether the API server would let istiod's user do `verb` on `group`/`resource`.
async fn allowed(
    admin: &kube::Client,
    user: &harness::TokenUser,
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.username.clone()),
            groups: Some(user.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: subresource.map(String::from),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

#[tokio::test]
async fn istiod_runs_under_its_least_privileged_role() {
    let Some(cluster) = shared_cluster("kube::rbac").await else {
        return;
    };
    let admin = cluster.admin_client().await.unwrap();
    let user = cluster.istiod_user();

    let mut wrong = Vec::new();
    for kind in Kind::ALL {
        let resource = api_resource(kind);
        for verb in ["list", "watch"] {
            if !allowed(&admin, user, verb, &resource.group, &resource.plural, None).await {
                wrong.push(format!("cannot {verb} {}", resource.plural));
            }
        }
        for verb in ["get", "create", "update", "patch", "delete"] {
            if allowed(&admin, user, verb, &resource.group, &resource.plural, None).await {
                wrong.push(format!("may {verb} {}", resource.plural));
            }
        }
    }
    for (verb, group, resource, subresource) in [
        ("get", "", "secrets", None),
        ("list", "", "secrets", None),
        ("watch", "", "secrets", None),
        ("list", "", "configmaps", None),
        ("create", "authentication.k8s.io", "tokenreviews", None),
        ("create", "", "serviceaccounts", Some("token")),
        ("patch", "", "pods", Some("status")),
    ] {
        if allowed(&admin, user, verb, group, resource, subresource).await {
            wrong.push(format!("may {verb} {resource} {subresource:?}"));
        }
    }
    // The check itself works: the admin may do all of that.
    let admin_user = harness::TokenUser::new("admin", &["system:masters"]);
    assert!(allowed(&admin, &admin_user, "get", "", "secrets", None).await);
    assert!(wrong.is_empty(), "istiod's role: {}", wrong.join("; "));

    // The same, as istiod: its token gets 403 for a write and for Secrets.
    let as_istiod = cluster.istiod_client().await.unwrap();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "istiod-may-not"}
    }))
    .unwrap();
    let create = Api::<Namespace>::all(as_istiod.clone())
        .create(&PostParams::default(), &namespace)
        .await;
    assert!(
        matches!(&create, Err(kube::Error::Api(s)) if s.code == 403),
        "{create:?}"
    );
    let secrets = Api::<Secret>::all(as_istiod)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&secrets, Err(kube::Error::Api(s)) if s.code == 403),
        "{secrets:?}"
    );

    // Enough to serve: the real istiod under this identity sees a new Service, and none
    // of its watches is refused.
    let istiod = Istiod::start("rbac", cluster);
    let mut ads = istiod.client("ztunnel~rbac").await;
    objects::ambient_namespace(&admin, NS, true).await;
    objects::service(&admin, NS, "web", "web").await;
    let service = objects::service_key(NS, "web");
    ads.wait(PUSH_LIMIT, |v| v.service(&service).is_some())
        .await
        .unwrap_or_else(|| panic!("{service} never arrived: {}", describe(&ads.view())));
    let refused = istiod.logged("watch failed");
    assert!(
        refused.is_empty(),
        "watches failed under the role:\n{}",
        refused.join("\n")
    );
}

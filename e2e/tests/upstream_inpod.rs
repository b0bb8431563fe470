//! Upstream's ztunnel (`../shared/bin/upstream-ztunnel.xz`) in its in-pod mode on every node,
//! driven by our node agent over ZDS: the agent speaks upstream's protocol, so upstream's
//! ztunnel opens its listeners in the pods our agent hands it and carries their captured
//! traffic over HBONE (the wire tap checks only TLS crosses between nodes). Needs root and the
//! binary; skips clearly without them (a failure with `REAL_COMPONENTS_REQUIRED=1`).

mod common;

use e2e::{Options, Verdict};
use harness::components::{self, Component};
use sim::Scenario;

#[test]
fn upstreams_ztunnel_in_pod_is_driven_by_our_node_agent() {
    const TEST: &str = "upstreams_ztunnel_in_pod_is_driven_by_our_node_agent";
    if !common::usable(TEST) {
        return;
    }
    let upstream = match components::find(Component::UpstreamZtunnel) {
        Ok(path) => path,
        Err(why) => {
            harness::skip(TEST, &why.to_string());
            return;
        }
    };
    let options = Options {
        upstream_ztunnel: Some(upstream),
        ..Options::new(common::binaries())
    };
    for file in ["basic-mtls.yaml", "strict-refuses-plaintext.yaml"] {
        let scenario = Scenario::load(&sim::scenarios_dir().join(file)).unwrap();
        let verdict = common::local(e2e::run_scenario(&scenario, &options));
        assert!(
            matches!(verdict, Verdict::Pass { .. }),
            "{file} with upstream's ztunnel: {}",
            verdict.line()
        );
    }
}

//! The library placement is istiod's: for a scenario with deployments, explicit pods and a
//! waypoint (whose pod istiod generates), every pod's node, IP and service account as the
//! runner computes them equal the workloads the real istiod publishes from the config
//! directory the runner writes. Read from istiod's plaintext xDS port (15010), which answers
//! anyone.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dataplane::seams::{Seams, SystemClock};
use dataplane::xds::proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use dataplane::xds::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use dataplane::xds::proto::istio::workload::Address;
use dataplane::xds::{ADDRESS_TYPE_URL, AddressResource, address_from_proto};
use dataplane::ztunnel::ControlPlaneClient;
use e2e::Placement;
use e2e::placement::{ISTIOD_IP, workload_uid};
use e2e::processes::IstiodSpec;
use harness::Netns;
use prost::Message;
use sim::Scenario;

/// uid → (IPs, node, service account).
type Workloads = BTreeMap<String, (Vec<IpAddr>, String, String)>;

/// Every pod workload istiod publishes, asked over plaintext Delta ADS.
async fn published() -> Result<Workloads, String> {
    let client = ControlPlaneClient::new(
        &format!("http://{ISTIOD_IP}:15010"),
        "",
        None,
        "Kubernetes",
        Seams::real(1).network,
        Arc::new(SystemClock),
    )
    .map_err(|e| e.to_string())?;
    let (send, mut rx) = tokio::sync::mpsc::channel(4);
    send.try_send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.to_string(),
        ..DeltaDiscoveryRequest::default()
    })
    .map_err(|e| e.to_string())?;
    let request = tonic::Request::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut responses = AggregatedDiscoveryServiceClient::new(client.channel())
        .max_decoding_message_size(64 << 20)
        .delta_aggregated_resources(request)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let response = loop {
        let response = responses
            .message()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream ended")?;
        if response.type_url == ADDRESS_TYPE_URL {
            break response;
        }
    };
    drop(send);
    let mut workloads = Workloads::new();
    for resource in response.resources {
        let any = resource.resource.ok_or("a resource without a body")?;
        let address = Address::decode(&any.value[..]).map_err(|e| e.to_string())?;
        if let AddressResource::Workload(w) = address_from_proto(address).map_err(|e| e.0)?
            && w.uid.starts_with("Kubernetes//Pod/")
        {
            workloads.insert(w.uid.clone(), (w.workload_ips, w.node, w.service_account));
        }
    }
    Ok(workloads)
}

#[test]
fn the_runners_placement_is_the_one_istiod_publishes() {
    if !common::usable("placement") {
        return;
    }
    let scenario = Scenario::load(&sim::scenarios_dir().join("waypoint-routes.yaml")).unwrap();
    let placement = Placement::of(&scenario).unwrap();
    assert!(
        placement.pods.iter().any(|p| p.waypoint.is_some()),
        "the scenario has a waypoint pod"
    );
    let expected: Workloads = placement
        .pods
        .iter()
        .map(|p| {
            (
                workload_uid(p),
                (vec![p.ip], p.node.clone(), p.service_account.clone()),
            )
        })
        .collect();

    // Three deployments and the waypoint's generated one, over two nodes.
    assert_eq!(expected.len(), 4, "{expected:?}");
    assert_eq!(placement.nodes.len(), 2);

    let dir = std::env::temp_dir().join(format!("e2e-placement-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    harness::remove_dir_at_exit(dir.clone());
    let config = dir.join("config");
    placement.write_config(&config).unwrap();
    let spec = IstiodSpec::new(
        common::binaries().istiod().unwrap(),
        &dir,
        &config,
        &dir.join("state"),
        &scenario,
    )
    .unwrap();
    let netns = Netns::create("istiod").unwrap();
    netns
        .ip(&["addr", "add", &format!("{ISTIOD_IP}/32"), "dev", "lo"])
        .unwrap();
    let (istiod, _root) = common::local(spec.start(&netns)).unwrap();
    let answer = netns
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), published())
                    .await
                    .map_err(|_| "no answer in 10s".to_string())?
            })
        })
        .unwrap();
    let got = answer.unwrap_or_else(|e| panic!("{e}\n{}", istiod.log_tail(3000)));
    assert_eq!(got, expected);
    drop(istiod);
    let _ = std::fs::remove_dir_all(&dir);
}

//! The sizing measurement behind the README's figures: the cost of a quota reservation on the
//! request path and of a rebuild of the cluster state, and the memory the watch caches and the
//! cluster state take, with realistic GPU nodes and one quota per namespace. Ignored by
//! default; run it in a release build (see `measure_reservation_and_rebuild_costs`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_api::{namespace, quota};
use common::live::{fixture_pod_review, validate, validating_pod_review};
use mlguard::admission::Mode;
use mlguard::cluster::watch;
use mlguard::cluster::ClusterState;
use mlguard::policy::source::Origin;
use mlguard::policy::{Backend, Evaluator, PolicySet};
use mlguard::serve::Webhook;
use serde_json::{json, Value as Json};

/// A GPU node as mlguard's watch keeps it (the API server's object without managedFields,
/// image list, conditions and volumes): the labels GPU feature discovery puts on it,
/// annotations, taints, addresses, capacity and node info.
fn realistic_node(name: &str) -> Json {
    let mut labels = serde_json::Map::new();
    for (k, v) in [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("node.kubernetes.io/instance-type", "p5.48xlarge"),
        ("topology.kubernetes.io/region", "us-east-1"),
        ("topology.kubernetes.io/zone", "us-east-1a"),
        ("nvidia.com/gpu.present", "true"),
        ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
        ("nvidia.com/gpu.count", "8"),
        ("nvidia.com/gpu.memory", "81559"),
        ("nvidia.com/gpu.family", "hopper"),
        ("nvidia.com/cuda.driver.major", "550"),
        ("nvidia.com/cuda.runtime.major", "12"),
        ("nvidia.com/mig.capable", "true"),
        ("nvidia.com/mig.strategy", "single"),
        ("feature.node.kubernetes.io/cpu-model.vendor_id", "Intel"),
        (
            "feature.node.kubernetes.io/kernel-version.full",
            "6.1.0-18-cloud-amd64",
        ),
        ("feature.node.kubernetes.io/pci-10de.present", "true"),
        ("feature.node.kubernetes.io/system-os_release.ID", "ubuntu"),
        ("node-role.kubernetes.io/gpu-worker", ""),
    ] {
        labels.insert(k.into(), json!(v));
    }
    let resources = json!({"cpu": "192", "memory": "2097152Mi", "ephemeral-storage": "3500Gi",
                           "hugepages-1Gi": "0", "hugepages-2Mi": "0", "pods": "110",
                           "nvidia.com/gpu": "8", "vpc.amazonaws.com/efa": "32"});
    json!({"metadata": {"name": name, "uid": "0f6e7a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
                        "resourceVersion": "123456789", "creationTimestamp": "2026-11-01T10:00:00Z",
                        "labels": labels,
                        "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                                        "nfd.node.kubernetes.io/feature-labels": "cpu-model.vendor_id,kernel-version.full,pci-10de.present,system-os_release.ID",
                                        "nvidia.com/gpu-driver-upgrade-enabled": "true"}},
           "spec": {"providerID": format!("aws:///us-east-1a/i-{name}"),
                    "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
           "status": {"capacity": resources, "allocatable": resources,
                      "addresses": [{"type": "InternalIP", "address": "10.0.12.34"},
                                    {"type": "Hostname", "address": name}],
                      "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                      "nodeInfo": {"machineID": "ec2b4f1d0a9e", "systemUUID": "ec2b4f1d-0a9e", "bootID": "5d0e",
                                   "kernelVersion": "6.1.0-18-cloud-amd64", "osImage": "Ubuntu 22.04.4 LTS",
                                   "containerRuntimeVersion": "containerd://1.7.13", "kubeletVersion": "v1.30.2",
                                   "kubeProxyVersion": "v1.30.2", "operatingSystem": "linux", "architecture": "amd64"}}})
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Costs on the request path and of a rebuild, and the memory the watch caches and the
/// cluster state take, for the README's sizing figures. Run with
/// `cargo test --release --test cluster_sizing -- --ignored --nocapture measure`; set
/// MLGUARD_MEASURE_NODES and MLGUARD_MEASURE_NAMESPACES for other sizes (500 and 1,000).
#[test]
#[ignore]
fn measure_reservation_and_rebuild_costs() {
    use k8s_openapi::api::core::v1::{Namespace, Node, ResourceQuota};
    let size = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (nodes, namespaces) = (
        size("MLGUARD_MEASURE_NODES", 500),
        size("MLGUARD_MEASURE_NAMESPACES", 1000),
    );
    let rss_at_start = rss_kib();
    let mut quotas = Vec::new();
    let mut nss = Vec::new();
    for i in 0..namespaces {
        let name = if i == 0 {
            "ml".to_string()
        } else {
            format!("team-{i}")
        };
        nss.push(Arc::new(
            serde_json::from_value::<Namespace>(namespace(&name)).unwrap(),
        ));
        let mut q = quota(1_000_000, 0);
        q["metadata"]["namespace"] = json!(name);
        quotas.push(Arc::new(
            serde_json::from_value::<ResourceQuota>(q).unwrap(),
        ));
    }
    let nodes: Vec<_> = (0..nodes)
        .map(|i| {
            Arc::new(serde_json::from_value::<Node>(realistic_node(&format!("gpu-{i}"))).unwrap())
        })
        .collect();
    let rss_caches = rss_kib();

    let started = Instant::now();
    let state = watch::build_state(&quotas, &nodes, &nss);
    let build = started.elapsed();

    let set = PolicySet::load(Origin::Embedded, Backend::Vm).unwrap();
    let mut app = Webhook::new(
        Evaluator::new(set.clone(), Arc::new(ClusterState::default())).unwrap(),
        Mode::Enforce,
        64,
        None,
    );
    let live = app.enable_live_cluster(Duration::from_secs(3600));
    let app = Arc::new(app);
    let started = Instant::now();
    live.publish(state, Instant::now());
    let publish = started.elapsed();
    let rss_state = rss_kib();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds = 200;
    let time = |body: fn() -> Vec<u8>| {
        let started = Instant::now();
        for _ in 0..rounds {
            runtime.block_on(validate(&app, body()));
        }
        started.elapsed() / rounds
    };
    let reserving = time(validating_pod_review);
    let dry_run = time(|| {
        let mut review: Json = serde_json::from_slice(&fixture_pod_review()).unwrap();
        review["request"]["dryRun"] = json!(true);
        serde_json::to_vec(&review).unwrap()
    });
    println!(
        "{nodes} nodes, {namespaces} namespaces with a quota each: build_state {build:?}, \
         publish (settle + evaluator rebuild) {publish:?}; /validate of a GPU pod: \
         reserving {reserving:?}, dry run (no reservation) {dry_run:?}; {} reservations; \
         RSS: watch caches +{} MiB, cluster state and policy data +{} MiB, total {} MiB",
        live.reservations(),
        (rss_caches - rss_at_start) / 1024,
        rss_state.saturating_sub(rss_caches) / 1024,
        rss_kib() / 1024,
        nodes = nodes.len(),
    );
}

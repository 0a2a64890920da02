//! Live cluster state: mlguard's watch task against the fake API server of
//! tests/common/fake_api.rs (list, watch events, 410 Gone and relist, dropped connections, an
//! outage). A `kube::Client` points at it over plain HTTP on 127.0.0.1, and the decisions are
//! taken through the webhook router as the API server would send them; `mlguard serve
//! --kubeconfig` is run in-process too. The DRA objects of resource.k8s.io/v1 are watched
//! where the fake serves that group, and not asked for where it does not. Every wait is
//! bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_api::{
    claim_template, cluster, gpu_slice, namespace, node, nvidia_device_classes, quota, start_fake,
    write_kubeconfig, FakeServer,
};
use common::live::{fixture_pod_review, validate, validate_response, validating_pod_review, WAIT};
use mlguard::admission::Mode;
use mlguard::cluster::watch::{self, WatchOptions};
use mlguard::cluster::ClusterState;
use mlguard::policy::source::Origin;
use mlguard::policy::{Backend, Evaluator, PolicySet};
use mlguard::serve::quota::QuotaCoordinator;
use mlguard::serve::Webhook;
use serde_json::{json, Value as Json};
use tokio::sync::watch as signal;

// ---------------------------------------------------------------------------------------
// Policies and reviews
// ---------------------------------------------------------------------------------------

/// A small policy of the same shape as the default quota policy: it reads what remains of the
/// namespace's GPU quota from `data.mlguard.cluster`.
const POLICY: &str = r#"package mlguard.policies.gpuquota

import rego.v1

gpus := sum([to_number(object.get(c, ["resources", "limits", "nvidia.com/gpu"], "0")) |
	some c in input.review.object.spec.containers
])

deny contains msg if {
	input.review.kind.kind == "Pod"
	some q in data.mlguard.cluster.quotas[input.review.namespace]
	left := q.remaining["requests.nvidia.com/gpu"]
	gpus > left
	msg := sprintf("pod needs %v GPUs, quota %v has %v left", [gpus, q.name, left])
}
"#;

struct Setup {
    app: Arc<Webhook>,
    live: Arc<QuotaCoordinator>,
    _stop: signal::Sender<bool>,
    _policies: tempfile::TempDir,
}

fn options() -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(20),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        watch_timeout_secs: 30,
        tick: Duration::from_millis(50),
        stale_warning_every: Duration::from_secs(1),
    }
}

/// A policy that reads the DRA entry of the cluster document: a pod that names a
/// ResourceClaimTemplate which does not exist in its namespace is denied.
const CLAIM_TEMPLATE_POLICY: &str = r#"package mlguard.policies.claimtemplates

import rego.v1

deny contains msg if {
	input.review.kind.kind == "Pod"
	some claim in input.review.object.spec.resourceClaims
	name := claim.resourceClaimTemplateName
	not data.mlguard.cluster.dra.claim_templates[input.review.namespace][name]
	msg := sprintf("ResourceClaimTemplate %v/%v does not exist", [input.review.namespace, name])
}
"#;

fn start_mlguard(server: &FakeServer) -> Setup {
    start_mlguard_with(server, "gpuquota.rego", POLICY)
}

fn start_mlguard_with(server: &FakeServer, file: &str, policy: &str) -> Setup {
    // RUST_LOG=mlguard=debug shows what the watch task does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file), policy).unwrap();
    let set = PolicySet::load(Origin::Directory(dir.path().to_path_buf()), Backend::Vm).unwrap();
    let evaluator = Evaluator::new(set, Arc::new(ClusterState::default())).unwrap();
    let mut app = Webhook::new(evaluator, Mode::Enforce, 64, None);
    app.health.tls_bound.open();
    let live = app.enable_live_cluster(Duration::from_secs(30));
    let (stop, stop_rx) = signal::channel(false);
    watch::spawn(server.client(), live.clone(), options(), stop_rx);
    let app = Arc::new(app);
    Setup {
        app,
        live,
        _stop: stop,
        _policies: dir,
    }
}

static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn pod_review(name: &str, gpus: u32, dry_run: bool) -> Vec<u8> {
    let spec = json!({"containers": [{"name": "train", "image": "registry.example/train:1",
        "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]});
    review_of_pod(name, spec, dry_run)
}

/// A Pod CREATE review in namespace ml, with a fresh uid.
fn review_of_pod(name: &str, spec: Json, dry_run: bool) -> Vec<u8> {
    let uid = NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ml", "operation": "CREATE", "name": name,
            "userInfo": {"username": "alice"}, "dryRun": dry_run,
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "ml", "uid": format!("pod-{uid}")},
                "spec": spec}
        }
    }))
    .unwrap()
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn remaining(app: &Webhook) -> Option<f64> {
    let evaluator = app.published.load();
    Some(evaluator.cluster.quotas.get("ml")?.first()?.remaining()["requests.nvidia.com/gpu"])
}

fn largest(app: &Webhook) -> Option<f64> {
    app.published
        .load()
        .cluster
        .largest_allocatable()
        .get("nvidia.com/gpu")
        .copied()
}

/// A pod whose container uses a claim made from the ResourceClaimTemplate `template`.
fn claim_pod_review(name: &str, template: &str) -> Vec<u8> {
    let spec = json!({
        "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template}],
        "containers": [{"name": "train", "image": "registry.example/train:1",
            "resources": {"claims": [{"name": "gpu"}]}}]});
    review_of_pod(name, spec, true)
}

const DRA_RESOURCES: [&str; 4] = [
    "deviceclasses",
    "resourceclaims",
    "resourceclaimtemplates",
    "resourceslices",
];

async fn synced(server: &FakeServer) -> Setup {
    let setup = start_mlguard(server);
    server.open();
    eventually("the first sync", || setup.app.health.readiness().is_ok()).await;
    setup
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_first_sync_and_quota_changes_reach_the_next_decision() {
    let server = start_fake(cluster()).await;
    let setup = start_mlguard(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let why = setup.app.health.readiness().unwrap_err();
    assert!(why.contains("not synced"), "{why}");

    server.open();
    eventually("the first sync", || setup.app.health.readiness().is_ok()).await;
    let cluster = setup.app.published.load().cluster.clone();
    assert_eq!(cluster.namespaces["ml"].labels["team"], "vision");
    assert_eq!(largest(&setup.app), Some(8.0));
    assert_eq!(remaining(&setup.app), Some(4.0));

    // A server-side dry run is decided on the same figures but reserves nothing.
    let (allowed, _) = validate(&setup.app, pod_review("train-0", 3, true)).await;
    assert!(allowed);
    assert_eq!(setup.live.reservations(), 0);

    server.fake.put("resourcequotas", quota(4, 2));
    eventually("the quota change", || remaining(&setup.app) == Some(2.0)).await;
    let (allowed, message) = validate(&setup.app, pod_review("train-0", 3, true)).await;
    assert!(!allowed);
    assert!(message.contains("quota gpu has 2 left"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_pods_cannot_overrun_the_quota_through_one_replica() {
    let server = start_fake(cluster()).await;
    let setup = synced(&server).await;

    let burst: Vec<_> = (0..12)
        .map(|i| {
            let app = setup.app.clone();
            tokio::spawn(async move {
                validate(&app, pod_review(&format!("worker-{i}"), 1, false)).await
            })
        })
        .collect();
    let mut allowed = 0;
    for task in burst {
        let (ok, message) = task.await.unwrap();
        if ok {
            allowed += 1;
        } else {
            assert!(message.contains("has 0 left"), "{message}");
        }
    }
    assert_eq!(allowed, 4, "a 4-GPU quota admitted {allowed} one-GPU pods");
    assert_eq!(setup.live.reservations(), 4);
    assert_eq!(setup.app.metrics.quota_reservations.get(), 4);
    assert_eq!(remaining(&setup.app), Some(0.0));

    // The API server's quota plugin charges the four pods; the reservations settle and the
    // figures stay right.
    server.fake.put("resourcequotas", quota(4, 4));
    eventually("reservations to settle", || setup.live.reservations() == 0).await;
    assert_eq!(setup.app.metrics.quota_reservations.get(), 0);
    assert_eq!(setup.app.metrics.quota_reservations_expired.get(), 0);
    assert_eq!(remaining(&setup.app), Some(0.0));
    let (ok, _) = validate(&setup.app, pod_review("late", 1, false)).await;
    assert!(!ok);

    // Three pods finish.
    server.fake.put("resourcequotas", quota(4, 1));
    eventually("the freed quota", || remaining(&setup.app) == Some(3.0)).await;
    let (ok, _) = validate(&setup.app, pod_review("next", 3, false)).await;
    assert!(ok);
    assert_eq!(remaining(&setup.app), Some(0.0));
}

/// Reservations the quota status never shows expire: the pods were refused after mlguard
/// admitted them. They are counted and logged, and the quota they held is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshown_reservations_expire_and_are_counted() {
    let server = start_fake(cluster()).await;
    let setup = synced(&server).await;
    for name in ["refused-later-0", "refused-later-1"] {
        let (ok, message) = validate(&setup.app, pod_review(name, 1, false)).await;
        assert!(ok, "{message}");
    }
    let metrics = &setup.app.metrics;
    assert_eq!(metrics.quota_reservations.get(), 2);
    assert_eq!(remaining(&setup.app), Some(2.0));

    setup
        .live
        .settle(Instant::now() + Duration::from_secs(3600));
    assert_eq!(metrics.quota_reservations.get(), 0);
    assert_eq!(metrics.quota_reservations_expired.get(), 2);
    assert_eq!(remaining(&setup.app), Some(4.0));
    let text = metrics.render();
    assert!(
        text.contains("mlguard_quota_reservations_expired_total 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_410_gone_and_resumes_after_a_dropped_connection() {
    let server = start_fake(cluster()).await;
    let setup = synced(&server).await;
    assert_eq!(server.fake.lists("nodes"), 1);

    // A dropped connection resumes the watch from the last resourceVersion: what happened
    // meanwhile is replayed, without a new list.
    server.fake.drop_watches();
    server.fake.put("nodes", node("gpu-2", 16));
    eventually("the node added while disconnected", || {
        largest(&setup.app) == Some(16.0)
    })
    .await;
    assert_eq!(server.fake.lists("nodes"), 1);

    // 410 Gone: the history is compacted, so the watcher lists again.
    server.fake.expire();
    server.fake.delete("nodes", "/gpu-2");
    eventually("the relist", || server.fake.lists("nodes") >= 2).await;
    eventually("the node deleted", || largest(&setup.app) == Some(8.0)).await;
    assert!(setup.app.health.readiness().is_ok());
    let cluster = setup.app.published.load().cluster.clone();
    assert_eq!(cluster.nodes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_leaves_the_last_state_serving_and_ageing() {
    let server = start_fake(cluster()).await;
    let setup = synced(&server).await;
    eventually("a fresh state", || {
        setup.app.metrics.cluster_state_age() == Some(0)
    })
    .await;

    server.fake.set_down(true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let age = setup.app.metrics.cluster_state_age().unwrap();
    assert!(age >= 2, "state age {age}s after 2.5s of outage");
    assert!(setup
        .app
        .metrics
        .render()
        .contains("mlguard_cluster_state_age_seconds"));
    assert!(
        setup.app.health.readiness().is_ok(),
        "an outage must not take mlguard out of service"
    );
    let (allowed, message) = validate(&setup.app, pod_review("big", 5, true)).await;
    assert!(!allowed);
    assert!(message.contains("has 4 left"), "{message}");

    server.fake.set_down(false);
    server.fake.put("resourcequotas", quota(8, 0));
    eventually("recovery", || remaining(&setup.app) == Some(8.0)).await;
    eventually("a fresh state again", || {
        setup
            .app
            .metrics
            .cluster_state_age()
            .is_some_and(|a| a <= 1)
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Dynamic Resource Allocation (resource.k8s.io/v1)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_template_created_after_start_reaches_the_next_decision() {
    let server = start_fake(cluster()).await;
    let setup = start_mlguard_with(&server, "claimtemplates.rego", CLAIM_TEMPLATE_POLICY);
    server.open();
    eventually("the first sync", || setup.app.health.readiness().is_ok()).await;
    for resource in DRA_RESOURCES {
        assert_eq!(server.fake.lists(resource), 1, "{resource}");
    }
    assert_eq!(server.fake.discoveries(), 1);

    let (allowed, message) = validate(&setup.app, claim_pod_review("train-0", "one-gpu")).await;
    assert!(!allowed);
    assert!(
        message.contains("ResourceClaimTemplate ml/one-gpu does not exist"),
        "{message}"
    );

    server.fake.put(
        "resourceclaimtemplates",
        claim_template("ml", "one-gpu", "gpu.nvidia.com"),
    );
    template_published(&setup.app, "one-gpu").await;
    let cluster = setup.app.published.load().cluster.clone();
    assert_eq!(
        cluster.dra.claim_templates["ml"]["one-gpu"],
        json!({"devices": {"requests": [{"name": "gpu",
            "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}})
    );
    let (allowed, message) = validate(&setup.app, claim_pod_review("train-1", "one-gpu")).await;
    assert!(allowed, "{message}");
    // Another name is still unknown.
    let (allowed, _) = validate(&setup.app, claim_pod_review("train-2", "eight-gpus")).await;
    assert!(!allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_slice_added_after_start_raises_the_largest_allocatable() {
    let mut objects = cluster();
    objects.extend(nvidia_device_classes());
    let server = start_fake(objects).await;
    let setup = synced(&server).await;
    let key = "gpu.nvidia.com.deviceclass.resource.k8s.io/devices";
    let largest_devices = |app: &Webhook| {
        app.published
            .load()
            .cluster
            .largest_allocatable()
            .get(key)
            .copied()
    };
    assert_eq!(largest_devices(&setup.app), None);
    assert_eq!(
        setup.app.published.load().cluster.dra.capacity["gpu.nvidia.com"].total,
        0
    );

    server.fake.put("resourceslices", gpu_slice("gpu-1", 4));
    eventually("the slice's devices", || {
        largest_devices(&setup.app) == Some(4.0)
    })
    .await;
    let cluster = setup.app.published.load().cluster.clone();
    assert_eq!(cluster.dra.capacity["gpu.nvidia.com"].largest, 4);
    assert_eq!(cluster.dra.capacity["mig.nvidia.com"].total, 0);
    assert!(cluster.dra.unknown_capacity.is_empty());
    assert_eq!(cluster.nodes["gpu-1"].allocatable[key], 4.0);
    // The node's device-plugin GPUs are untouched.
    assert_eq!(largest(&setup.app), Some(8.0));

    // A node without the GPU slice yet: the largest stays, the slice of a bigger one raises it.
    server.fake.put("nodes", node("gpu-2", 0));
    server.fake.put("resourceslices", gpu_slice("gpu-2", 8));
    eventually("the bigger node's devices", || {
        largest_devices(&setup.app) == Some(8.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resource_k8s_io_mlguard_works_as_before_and_asks_only_discovery() {
    let server = start_fake(cluster()).await;
    server.fake.serve_dra(false);
    let setup = start_mlguard(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(setup.app.health.readiness().is_err());

    server.open();
    eventually("the first sync", || setup.app.health.readiness().is_ok()).await;
    assert_eq!(remaining(&setup.app), Some(4.0));
    let (allowed, _) = validate(&setup.app, pod_review("small", 2, true)).await;
    assert!(allowed);
    let (allowed, message) = validate(&setup.app, pod_review("big", 5, true)).await;
    assert!(!allowed);
    assert!(message.contains("has 4 left"), "{message}");
    server.fake.put("resourcequotas", quota(4, 3));
    eventually("the quota change", || remaining(&setup.app) == Some(1.0)).await;

    let cluster = setup.app.published.load().cluster.clone();
    assert!(cluster.dra.device_classes.is_empty());
    assert!(cluster.dra.claim_templates.is_empty());
    assert_eq!(server.fake.discoveries(), 1);
    for resource in DRA_RESOURCES {
        assert_eq!(server.fake.lists(resource), 0, "{resource}");
    }
}

/// An API server down when mlguard starts: discovery of resource.k8s.io/v1 fails with 503
/// and is retried, not taken for "not served", so the DRA objects are watched once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_that_fails_at_start_is_retried() {
    let mut objects = cluster();
    objects.extend(nvidia_device_classes());
    let server = start_fake(objects).await;
    server.fake.set_down(true);
    let setup = start_mlguard(&server);
    server.open();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(setup.app.health.readiness().is_err());
    assert_eq!(server.fake.discoveries(), 0);

    server.fake.set_down(false);
    eventually("the first sync", || setup.app.health.readiness().is_ok()).await;
    assert_eq!(server.fake.discoveries(), 1);
    let cluster = setup.app.published.load().cluster.clone();
    assert_eq!(cluster.dra.device_classes.len(), 2);
    for resource in DRA_RESOURCES {
        assert_eq!(server.fake.lists(resource), 1, "{resource}");
    }
}

// ---------------------------------------------------------------------------------------
// With the default policy set
// ---------------------------------------------------------------------------------------

/// A DRA cluster: namespace ml with a quota of 4 gpu.nvidia.com devices, none used, and a
/// node with a slice of 8 GPUs of NVIDIA's classes.
fn dra_cluster() -> Vec<(&'static str, Json)> {
    let device_quota = json!({"metadata": {"name": "gpu-quota", "namespace": "ml"},
        "spec": {"hard": {"gpu.nvidia.com.deviceclass.resource.k8s.io/devices": "4"}},
        "status": {"used": {"gpu.nvidia.com.deviceclass.resource.k8s.io/devices": "0"}}});
    let mut objects = vec![
        ("namespaces", namespace("ml")),
        ("nodes", node("gpu-1", 0)),
        ("resourcequotas", device_quota),
        ("resourceslices", gpu_slice("gpu-1", 8)),
    ];
    objects.extend(nvidia_device_classes());
    objects
}

/// Waits until the claim template `name` of namespace ml is in the published state.
async fn template_published(app: &Webhook, name: &str) {
    eventually("the template in the published state", || {
        let cluster = app.published.load().cluster.clone();
        cluster
            .dra
            .claim_templates
            .get("ml")
            .is_some_and(|t| t.contains_key(name))
    })
    .await;
}

/// Posts `reviews` to /validate all at once; the messages of those denied.
async fn denials_of_burst(app: &Arc<Webhook>, reviews: Vec<Vec<u8>>) -> Vec<String> {
    let burst: Vec<_> = reviews
        .into_iter()
        .map(|review| {
            let app = app.clone();
            tokio::spawn(async move { validate(&app, review).await })
        })
        .collect();
    let mut denials = Vec::new();
    for task in burst {
        let (ok, message) = task.await.unwrap();
        if !ok {
            denials.push(message);
        }
    }
    denials
}

fn default_policies(app: &Webhook) {
    let set = PolicySet::load(Origin::Embedded, Backend::Vm).unwrap();
    app.published.swap_policies(set).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_quota_policy_reads_reservations_too() {
    let gpu_quota = json!({"metadata": {"name": "gpu-quota", "namespace": "ml"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "8", "limits.nvidia.com/gpu": "8"}},
        "status": {"used": {"requests.nvidia.com/gpu": "0", "limits.nvidia.com/gpu": "0"}}});
    let server = start_fake(vec![
        ("namespaces", namespace("ml")),
        ("nodes", node("gpu-1", 8)),
        ("resourcequotas", gpu_quota),
    ])
    .await;
    let setup = synced(&server).await;
    default_policies(&setup.app);

    // The fixture pod asks for 2 GPUs: four fit in 8.
    let reviews = (0..7).map(|_| validating_pod_review()).collect();
    let denials = denials_of_burst(&setup.app, reviews).await;
    assert_eq!(denials.len(), 3, "{denials:#?}");
    for message in &denials {
        assert!(
            message.contains("has 0 left of its ResourceQuota gpu-quota"),
            "{message}"
        );
    }
    // One reservation per pod and quota key: requests and limits.
    assert_eq!(setup.live.reservations(), 8);
}

/// The default policies on a DRA cluster: a pod naming a claim template mlguard has not seen
/// yet is admitted with a warning that its devices were not counted; once the template (eight
/// GPUs) is in the cache, the next such pod is refused by the namespace's device quota (four).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policies_count_a_claim_template_created_after_start() {
    let objects = dra_cluster();
    let server = start_fake(objects).await;
    let setup = synced(&server).await;
    default_policies(&setup.app);

    let before = validate_response(&setup.app, claim_pod_review("train-0", "eight-gpus")).await;
    assert_eq!(before["allowed"], true, "{before}");
    assert!(
        before["warnings"].to_string().contains(
            "ResourceClaimTemplate ml/eight-gpus, which mlguard's view of the cluster does not hold yet"
        ),
        "{before}"
    );

    let mut template = claim_template("ml", "eight-gpus", "gpu.nvidia.com");
    template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"] = json!(8);
    server.fake.put("resourceclaimtemplates", template);
    template_published(&setup.app, "eight-gpus").await;
    let (allowed, message) = validate(&setup.app, claim_pod_review("train-1", "eight-gpus")).await;
    assert!(!allowed);
    assert!(
        message.contains("asks for 8 gpu.nvidia.com.deviceclass.resource.k8s.io/devices (through ResourceClaimTemplate eight-gpus) but namespace ml has 4 left"),
        "{message}"
    );
}

/// Quota reservations count DRA devices: a burst of pods that each get a GPU from a claim
/// template cannot overrun the namespace's device quota through one replica before the quota
/// status shows their claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_claim_template_pods_cannot_overrun_the_device_quota() {
    let mut objects = dra_cluster();
    objects.push((
        "resourceclaimtemplates",
        claim_template("ml", "one-gpu", "gpu.nvidia.com"),
    ));
    let server = start_fake(objects).await;
    let setup = synced(&server).await;
    default_policies(&setup.app);

    let spec = json!({
        "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}],
        "containers": [{"name": "train", "image": "registry.example/train:1",
            "resources": {"claims": [{"name": "gpu"}]}}]});
    let reviews = (0..7)
        .map(|i| review_of_pod(&format!("burst-{i}"), spec.clone(), false))
        .collect();
    let denials = denials_of_burst(&setup.app, reviews).await;
    assert_eq!(denials.len(), 3, "{denials:#?}");
    for message in &denials {
        assert!(
            message.contains("but namespace ml has 0 left of its ResourceQuota gpu-quota"),
            "{message}"
        );
    }
    assert_eq!(setup.live.reservations(), 4);
}

/// `mlguard serve --kubeconfig FILE` as the binary runs it: the client from the kubeconfig,
/// readiness on /readyz, decisions over HTTPS, the state on /status and /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_kubeconfig_watches_the_cluster() {
    let server = start_fake(vec![
        ("namespaces", namespace("ml")),
        ("nodes", node("gpu-1", 8)),
        (
            "resourcequotas",
            json!({"metadata": {"name": "gpu-quota", "namespace": "ml"},
            "spec": {"hard": {"requests.nvidia.com/gpu": "8"}},
            "status": {"used": {"requests.nvidia.com/gpu": "0"}}}),
        ),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = common::write_certs(dir.path());
    let kubeconfig = write_kubeconfig(dir.path(), server.addr);
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let mlguard = common::TestServer::spawn(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = common::http_get(mlguard.probe, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cluster state has not synced"), "{body}");

    server.open();
    mlguard.wait_ready().await;
    let (_, status) = common::http_get(mlguard.probe, "/status").await.unwrap();
    let status: Json = serde_json::from_str(&status).unwrap();
    assert_eq!(status["cluster"]["live"], true, "{status}");
    assert_eq!(status["cluster"]["quotas"], 1, "{status}");

    let mut conn = common::Conn::open(mlguard.webhook, common::trusting(&ca))
        .await
        .unwrap();
    let review: Json = serde_json::from_slice(&fixture_pod_review()).unwrap();
    let response = conn.review("/validate", &review).await;
    assert_eq!(response["allowed"], true, "{response}");

    server.fake.put(
        "resourcequotas",
        json!({"metadata": {"name": "gpu-quota", "namespace": "ml"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "8"}},
        "status": {"used": {"requests.nvidia.com/gpu": "8"}}}),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let response = conn.review("/validate", &review).await;
        if response["allowed"] == false {
            let message = response["status"]["message"].as_str().unwrap();
            assert!(message.contains("has 0 left"), "{message}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quota change never reached the decision"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = common::http_get(mlguard.probe, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mlguard_cluster_state_age_seconds"),
        "{metrics}"
    );
    mlguard.stop().await.unwrap();
}

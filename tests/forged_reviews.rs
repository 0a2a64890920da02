//! Reviews that did not come from the API server must not hold quota back from other users'
//! pods. Live cluster state against the fake API server of tests/common/fake_api.rs: the
//! watch task, the quota coordinator and its confirmation task (a GET of each reserved pod a
//! moment after its review), with reviews taken through the webhook router. A real pod is
//! created in the fake after its review, with the review's uid, as the API server stores it;
//! a forged review's pod never is. Every wait is bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_api::{cluster, quota, start_fake, FakeServer};
use common::live::{validate, WAIT};
use k8s_openapi::jiff::Timestamp;
use mlguard::admission::Mode;
use mlguard::cluster::confirm::ConfirmOptions;
use mlguard::cluster::watch::{self, WatchOptions};
use mlguard::cluster::ClusterState;
use mlguard::policy::source::Origin;
use mlguard::policy::{Backend, Evaluator, PolicySet};
use mlguard::serve::quota::QuotaCoordinator;
use mlguard::serve::Webhook;
use serde_json::{json, Value as Json};
use tokio::sync::watch as signal;

/// The quota policy of tests/cluster_watch.rs: denies a pod that needs more GPUs than remain.
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

/// How long after a reservation its pod is looked up, in these tests.
const DELAY: Duration = Duration::from_millis(300);

struct Setup {
    app: Arc<Webhook>,
    live: Arc<QuotaCoordinator>,
    _stop: signal::Sender<bool>,
    _policies: tempfile::TempDir,
}

async fn start(server: &FakeServer, ttl: Duration) -> Setup {
    // RUST_LOG=mlguard=debug shows what the confirmation task does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gpuquota.rego"), POLICY).unwrap();
    let set = PolicySet::load(Origin::Directory(dir.path().to_path_buf()), Backend::Vm).unwrap();
    let evaluator = Evaluator::new(set, Arc::new(ClusterState::default())).unwrap();
    let mut app = Webhook::new(evaluator, Mode::Enforce, 64, None);
    app.health.tls_bound.open();
    let live = app.enable_live_cluster(ttl);
    let (stop, stop_rx) = signal::channel(false);
    let options = ConfirmOptions {
        delay: DELAY,
        timeout: Duration::from_secs(5),
        concurrency: 4,
    };
    live.spawn_confirmations(server.client(), options, stop_rx.clone());
    let watch_options = WatchOptions {
        debounce: Duration::from_millis(20),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        watch_timeout_secs: 30,
        tick: Duration::from_millis(50),
        stale_warning_every: Duration::from_secs(1),
    };
    watch::spawn(server.client(), live.clone(), watch_options, stop_rx);
    let setup = Setup {
        app: Arc::new(app),
        live,
        _stop: stop,
        _policies: dir,
    };
    server.open();
    eventually("the first sync", || setup.app.health.readiness().is_ok()).await;
    setup
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A GPU pod as the API server has it at validating admission: named, with a uid and a
/// creationTimestamp (whole seconds). `uid: None` leaves the uid out, as only a hand-made
/// review would.
fn pod(name: &str, uid: Option<&str>, gpus: u32) -> Json {
    let mut metadata = json!({"name": name, "namespace": "ml",
        "creationTimestamp": Timestamp::from_second(Timestamp::now().as_second()).unwrap().to_string()});
    if let Some(uid) = uid {
        metadata["uid"] = json!(uid);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"containers": [{"name": "train", "image": "registry.example/train:1",
            "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}})
}

fn review(pod: &Json, user: &str) -> Vec<u8> {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("review-{n}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ml", "operation": "CREATE", "name": pod["metadata"]["name"],
            "userInfo": {"username": user}, "dryRun": false,
            "object": pod,
        }
    }))
    .unwrap()
}

fn remaining(app: &Webhook) -> Option<f64> {
    let evaluator = app.published.load();
    Some(evaluator.cluster.quotas.get("ml")?.first()?.remaining()["requests.nvidia.com/gpu"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_reviews_are_dropped_within_the_confirmation_delay() {
    let server = start_fake(cluster()).await;
    // A TTL far beyond the test: only the confirmation can free the quota.
    let setup = start(&server, Duration::from_secs(3600)).await;
    let metrics = &setup.app.metrics;

    // Two forged reviews take the namespace's whole 4-GPU quota; their pods never exist.
    let forged_at = Instant::now();
    for (name, uid) in [("forged-0", "f0"), ("forged-1", "f1")] {
        let (ok, message) = validate(&setup.app, review(&pod(name, Some(uid), 2), "mallory")).await;
        assert!(ok, "{message}");
    }
    assert_eq!(setup.live.reservations(), 2);
    assert_eq!(remaining(&setup.app), Some(0.0));
    let real = pod("train-0", Some("real-0"), 1);
    let (ok, message) = validate(&setup.app, review(&real, "alice")).await;
    assert!(!ok, "the forged reservations hold the quota until checked");
    assert!(message.contains("has 0 left"), "{message}");

    eventually("the forged reservations to be dropped", || {
        setup.live.reservations() == 0
    })
    .await;
    let took = forged_at.elapsed();
    assert!(took >= DELAY, "dropped after {took:?}, before the delay");
    assert!(
        took < DELAY + Duration::from_secs(5),
        "dropped only after {took:?}"
    );
    assert_eq!(remaining(&setup.app), Some(4.0));
    assert_eq!(metrics.quota_reservations_unconfirmed.get(), 2);
    assert_eq!(metrics.quota_reservations_expired.get(), 0);
    assert_eq!(metrics.quota_reservations.get(), 0);
    assert!(server.fake.gets("pods") >= 2);
    let text = metrics.render();
    assert!(
        text.contains("mlguard_quota_reservations_unconfirmed_total 2"),
        "{text}"
    );

    // Forged again: the namespace is suspect now, so the reviews reserve nothing and cannot
    // hold the quota, however often they come.
    for (name, uid) in [("forged-2", "f2"), ("forged-3", "f3")] {
        let (ok, message) = validate(&setup.app, review(&pod(name, Some(uid), 2), "mallory")).await;
        assert!(ok, "{message}");
    }
    assert_eq!(setup.live.reservations(), 0);
    assert_eq!(remaining(&setup.app), Some(4.0));

    // A hand-made review without a pod uid is decided as any other and reserves nothing.
    let (ok, message) = validate(&setup.app, review(&pod("no-uid", None, 2), "mallory")).await;
    assert!(ok, "{message}");
    assert_eq!(setup.live.reservations(), 0);
    assert_eq!(remaining(&setup.app), Some(4.0));
    let (ok, _) = validate(&setup.app, review(&pod("no-uid", None, 5), "mallory")).await;
    assert!(!ok, "a pod over the quota is still denied");

    // The real GPU pod is admitted again, on the quota's own figures (not reserved while the
    // namespace is suspect).
    let (ok, message) = validate(&setup.app, review(&real, "alice")).await;
    assert!(ok, "{message}");
    assert_eq!(remaining(&setup.app), Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_pod_keeps_its_reservation_until_the_quota_status_shows_it() {
    let server = start_fake(cluster()).await;
    let setup = start(&server, Duration::from_secs(3600)).await;
    let metrics = &setup.app.metrics;

    let real = pod("train-0", Some("real-0"), 3);
    let (ok, message) = validate(&setup.app, review(&real, "alice")).await;
    assert!(ok, "{message}");
    // The API server stores the pod right after admission; the quota plugin's charge is
    // held back here, so that the reservation outlives the lookup.
    server.fake.put("pods", real);
    assert_eq!(setup.live.reservations(), 1);

    eventually("the pod lookup", || server.fake.gets("pods") >= 1).await;
    tokio::time::sleep(DELAY).await;
    assert_eq!(
        setup.live.reservations(),
        1,
        "a real pod's reservation was dropped"
    );
    assert_eq!(metrics.quota_reservations_unconfirmed.get(), 0);
    assert_eq!(remaining(&setup.app), Some(1.0));
    let (ok, _) = validate(
        &setup.app,
        review(&pod("train-1", Some("real-1"), 2), "bob"),
    )
    .await;
    assert!(!ok, "the confirmed reservation still counts");

    server.fake.put("resourcequotas", quota(4, 3));
    eventually("the reservation to settle", || {
        setup.live.reservations() == 0
    })
    .await;
    assert_eq!(remaining(&setup.app), Some(1.0));
    assert_eq!(metrics.quota_reservations_unconfirmed.get(), 0);
    assert_eq!(metrics.quota_reservations_expired.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lookup_keeps_reservations_until_their_ttl() {
    let server = start_fake(cluster()).await;
    server.fake.forbid_gets(true);
    let ttl = Duration::from_secs(2);
    let setup = start(&server, ttl).await;
    let metrics = &setup.app.metrics;

    let reserved_at = Instant::now();
    for name in ["a", "b"] {
        let (ok, message) = validate(&setup.app, review(&pod(name, Some(name), 1), "alice")).await;
        assert!(ok, "{message}");
    }
    eventually("both lookups", || server.fake.gets("pods") >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    if reserved_at.elapsed() < ttl {
        assert_eq!(
            setup.live.reservations(),
            2,
            "kept while the pods are unknown"
        );
    }
    assert_eq!(metrics.quota_reservations_unconfirmed.get(), 0);

    eventually("the reservations to expire", || {
        setup.live.reservations() == 0
    })
    .await;
    assert!(reserved_at.elapsed() >= ttl);
    assert_eq!(metrics.quota_reservations_expired.get(), 2);
    assert_eq!(metrics.quota_reservations_unconfirmed.get(), 0);
    assert_eq!(remaining(&setup.app), Some(4.0));
}

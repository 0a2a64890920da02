//! Live cluster state against a fake API server that speaks the real wire format: list
//! responses with a resourceVersion, watch streams of ADDED / MODIFIED / DELETED events as JSON
//! lines, an ERROR event with code 410 once the history is compacted (forcing a relist),
//! dropped connections, and an outage. A `kube::Client` points at it over plain HTTP on
//! 127.0.0.1, and the decisions are taken through the webhook router as the API server would
//! send them. Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::channel::mpsc::{unbounded, UnboundedSender};
use mlguard::admission::Mode;
use mlguard::cluster::watch::{self, WatchOptions};
use mlguard::cluster::{list, ClusterState, LiveCluster};
use mlguard::policy::source::Origin;
use mlguard::policy::{Backend, Evaluator, PolicySet};
use mlguard::server::{webhook_router, AppState};
use serde_json::{json, Value as Json};
use tokio::sync::watch as signal;
use tower::ServiceExt;

/// Longest wait for anything in these tests; a healthy run needs well under a second per step.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// The fake API server
// ---------------------------------------------------------------------------------------

type Chunk = Result<Bytes, std::io::Error>;

#[derive(Default)]
struct Inner {
    rv: u64,
    /// resource -> "namespace/name" -> object
    objects: BTreeMap<&'static str, BTreeMap<String, Json>>,
    /// (resourceVersion, resource, event type, object): what a resumed watch replays.
    history: Vec<(u64, &'static str, &'static str, Json)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    watches: Vec<(&'static str, UnboundedSender<Chunk>)>,
    lists: BTreeMap<String, usize>,
    down: bool,
}

#[derive(Clone)]
struct Fake {
    inner: Arc<Mutex<Inner>>,
    /// Lists wait until this is true, so that a test can look at mlguard before the first sync.
    open: signal::Receiver<bool>,
}

struct FakeServer {
    fake: Fake,
    open: signal::Sender<bool>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(object: &Json) -> String {
    let meta = &object["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or(""),
        meta["name"].as_str().unwrap()
    )
}

fn line(value: &Json) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "resourcequotas" => ("v1", "ResourceQuota"),
        "nodes" => ("v1", "Node"),
        "namespaces" => ("v1", "Namespace"),
        "pods" => ("v1", "Pod"),
        "jobs" => ("batch/v1", "Job"),
        other => panic!("fake API server: unknown resource {other}"),
    }
}

fn resource_name(resource: &str) -> &'static str {
    match resource {
        "resourcequotas" => "resourcequotas",
        "nodes" => "nodes",
        "namespaces" => "namespaces",
        "pods" => "pods",
        "jobs" => "jobs",
        other => panic!("fake API server: unknown resource {other}"),
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `status.phase!=Succeeded,status.phase!=Failed` and the like.
fn field_selector_matches(selector: &str, object: &Json) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, value, equal) = match term.split_once("!=") {
            Some((p, v)) => (p, v, false),
            None => {
                let (p, v) = term.split_once('=').unwrap();
                (p, v, true)
            }
        };
        let actual = path
            .split('.')
            .fold(object, |o, k| &o[k])
            .as_str()
            .unwrap_or("");
        (actual == value) == equal
    })
}

fn status(code: u16, reason: &str, message: &str) -> Json {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    fn put(&self, resource: &'static str, mut object: Json) {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        let (api_version, kind) = kind_of(resource);
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let k = key(&object);
        let objects = inner.objects.entry(resource).or_default();
        let event = if objects.insert(k, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        inner.history.push((rv, resource, event, object.clone()));
        let chunk = line(&json!({"type": event, "object": object}));
        inner
            .watches
            .retain(|(r, tx)| *r != resource || tx.unbounded_send(Ok(chunk.clone())).is_ok());
    }

    fn delete(&self, resource: &'static str, key: &str) {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        let mut object = inner
            .objects
            .get_mut(resource)
            .and_then(|o| o.remove(key))
            .expect("deleting an object that exists");
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner
            .history
            .push((rv, resource, "DELETED", object.clone()));
        let chunk = line(&json!({"type": "DELETED", "object": object}));
        inner
            .watches
            .retain(|(r, tx)| *r != resource || tx.unbounded_send(Ok(chunk.clone())).is_ok());
    }

    /// Compacts the history: open watches get an ERROR event with code 410 and end, and
    /// resuming from an older resourceVersion is refused the same way, forcing a relist.
    fn expire(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.rv;
        let gone = line(&json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: 1 ({})", inner.rv))}));
        for (_, tx) in inner.watches.drain(..) {
            let _ = tx.unbounded_send(Ok(gone.clone()));
        }
    }

    /// Cuts every watch connection in the middle of its body.
    fn drop_watches(&self) {
        for (_, tx) in self.lock().watches.drain(..) {
            let _ = tx.unbounded_send(Err(std::io::Error::other("connection reset")));
        }
    }

    /// An outage: every request fails with 503 and open watches are cut.
    fn set_down(&self, down: bool) {
        self.lock().down = down;
        if down {
            self.drop_watches();
        }
    }

    fn lists(&self, resource: &str) -> usize {
        self.lock().lists.get(resource).copied().unwrap_or(0)
    }

    async fn list(
        &self,
        resource: &'static str,
        namespace: Option<&str>,
        q: &BTreeMap<String, String>,
    ) -> Response {
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        let mut inner = self.lock();
        *inner.lists.entry(resource.to_string()).or_default() += 1;
        let selector = q.get("fieldSelector").cloned().unwrap_or_default();
        let items: Vec<Json> = inner
            .objects
            .get(resource)
            .into_iter()
            .flat_map(|o| o.values())
            .filter(|o| namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns))
            .filter(|o| field_selector_matches(&selector, o))
            .cloned()
            .collect();
        let (api_version, kind) = kind_of(resource);
        axum::Json(
            json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                          "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
        )
        .into_response()
    }

    fn watch(&self, resource: &'static str, q: &BTreeMap<String, String>) -> Response {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = unbounded::<Chunk>();
        let mut inner = self.lock();
        if from < inner.compacted {
            let gone = status(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", inner.compacted),
            );
            let _ = tx.unbounded_send(Ok(line(&json!({"type": "ERROR", "object": gone}))));
        } else {
            for (rv, r, event, object) in &inner.history {
                if *rv > from && *r == resource {
                    let _ = tx.unbounded_send(Ok(line(&json!({"type": event, "object": object}))));
                }
            }
            inner.watches.push((resource, tx));
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(rx))
            .unwrap()
    }
}

async fn serve_fake(State(fake): State<Fake>, uri: Uri) -> Response {
    if fake.lock().down {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(status(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            )),
        )
            .into_response();
    }
    let q = query(&uri);
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] | ["apis", "batch", "v1", rest @ ..] => rest,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let (namespace, resource) = match rest {
        [resource] => (None, resource_name(resource)),
        ["namespaces", ns, resource] => (Some(*ns), resource_name(resource)),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        fake.watch(resource, &q)
    } else {
        fake.list(resource, namespace, &q).await
    }
}

async fn start_fake(objects: Vec<(&'static str, Json)>) -> FakeServer {
    let (open_tx, open_rx) = signal::channel(false);
    let fake = Fake {
        inner: Arc::new(Mutex::new(Inner::default())),
        open: open_rx,
    };
    for (resource, object) in objects {
        fake.put(resource, object);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(serve_fake).with_state(fake.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FakeServer {
        fake,
        open: open_tx,
        addr,
        task,
    }
}

impl FakeServer {
    fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        config.connect_timeout = Some(Duration::from_secs(2));
        list::client_from_config(config).unwrap()
    }

    fn open(&self) {
        let _ = self.open.send(true);
    }
}

// ---------------------------------------------------------------------------------------
// Cluster objects, policies and reviews
// ---------------------------------------------------------------------------------------

fn namespace(name: &str) -> Json {
    json!({"metadata": {"name": name, "labels": {"team": "vision"}}})
}

fn node(name: &str, gpus: u32) -> Json {
    json!({"metadata": {"name": name, "managedFields": [{"manager": "kubelet"}]},
           "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string(), "cpu": "96"},
                      "images": [{"names": ["registry.example/cuda:12"], "sizeBytes": 1}]}})
}

fn quota(hard: u32, used: u32) -> Json {
    json!({"metadata": {"name": "gpu", "namespace": "ml"},
           "spec": {"hard": {"requests.nvidia.com/gpu": hard.to_string()}},
           "status": {"hard": {"requests.nvidia.com/gpu": hard.to_string()},
                      "used": {"requests.nvidia.com/gpu": used.to_string()}}})
}

fn cluster() -> Vec<(&'static str, Json)> {
    vec![
        ("namespaces", namespace("ml")),
        ("nodes", node("gpu-1", 8)),
        ("resourcequotas", quota(4, 0)),
    ]
}

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
    app: Arc<AppState>,
    live: Arc<LiveCluster>,
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

fn start_mlguard(server: &FakeServer) -> Setup {
    // RUST_LOG=mlguard=debug shows what the watch task does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gpuquota.rego"), POLICY).unwrap();
    let set = PolicySet::load(Origin::Directory(dir.path().to_path_buf()), Backend::Vm).unwrap();
    let evaluator = Evaluator::new(set, Arc::new(ClusterState::default())).unwrap();
    let app = AppState::new(evaluator, Mode::Enforce, 64);
    app.health
        .tls_bound
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (stop, stop_rx) = signal::channel(false);
    let live = watch::start(
        server.client(),
        app.clone(),
        Duration::from_secs(30),
        options(),
        stop_rx,
    );
    Setup {
        app,
        live,
        _stop: stop,
        _policies: dir,
    }
}

static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn pod_review(name: &str, gpus: u32, dry_run: bool) -> Vec<u8> {
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
                "metadata": {"name": name, "namespace": "ml"},
                "spec": {"containers": [{"name": "train", "image": "registry.example/train:1",
                    "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}}
        }
    }))
    .unwrap()
}

/// POSTs a review to /validate; returns (allowed, message).
async fn validate(app: &Arc<AppState>, body: Vec<u8>) -> (bool, String) {
    let request = Request::post("/validate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = webhook_router(app.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let review: Json = serde_json::from_slice(&bytes).unwrap();
    let r = &review["response"];
    (
        r["allowed"].as_bool().unwrap(),
        r["status"]["message"].as_str().unwrap_or("").to_string(),
    )
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn remaining(app: &AppState) -> Option<f64> {
    let evaluator = app.evaluator.load();
    Some(evaluator.cluster.quotas.get("ml")?.first()?.remaining()["requests.nvidia.com/gpu"])
}

fn largest(app: &AppState) -> Option<f64> {
    app.evaluator
        .load()
        .cluster
        .largest_allocatable()
        .get("nvidia.com/gpu")
        .copied()
}

async fn synced(server: &FakeServer) -> Setup {
    let setup = start_mlguard(server);
    server.open();
    eventually("the first sync", || setup.app.readiness().is_ok()).await;
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
    let why = setup.app.readiness().unwrap_err();
    assert!(why.contains("not synced"), "{why}");

    server.open();
    eventually("the first sync", || setup.app.readiness().is_ok()).await;
    let cluster = setup.app.evaluator.load().cluster.clone();
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
        .settle(&setup.app, Instant::now() + Duration::from_secs(3600));
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
    assert!(setup.app.readiness().is_ok());
    let cluster = setup.app.evaluator.load().cluster.clone();
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
        setup.app.readiness().is_ok(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_reads_for_the_audit_command() {
    let mut objects = cluster();
    objects.push(("namespaces", namespace("web")));
    for (name, ns, phase) in [
        ("a", "ml", "Running"),
        ("b", "ml", "Succeeded"),
        ("c", "web", "Pending"),
    ] {
        objects.push((
            "pods",
            json!({"metadata": {"name": name, "namespace": ns,
            "managedFields": [{"manager": "kubectl"}]},
            "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"phase": phase}}),
        ));
    }
    for (name, done) in [("active", false), ("done", true)] {
        let conditions = if done {
            json!([{"type": "Complete", "status": "True"}])
        } else {
            json!([])
        };
        objects.push((
            "jobs",
            json!({"metadata": {"name": name, "namespace": "ml"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "x"}]}}},
            "status": {"conditions": conditions}}),
        ));
    }
    let server = start_fake(objects).await;
    server.open();
    let client = server.client();

    let state = tokio::time::timeout(WAIT, list::read_state(&client))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.quotas["ml"][0].hard["requests.nvidia.com/gpu"], 4.0);
    assert_eq!(state.nodes.len(), 1);
    assert_eq!(state.namespaces.len(), 2);

    let names = |objects: Vec<Json>| -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                assert!(o["metadata"].get("managedFields").is_none());
                format!("{} {}", o["kind"].as_str().unwrap(), key(o))
            })
            .collect()
    };
    let all = tokio::time::timeout(WAIT, list::list_workloads(&client, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(all), vec!["Pod ml/a", "Pod web/c", "Job ml/active"]);
    let ml = list::list_workloads(&client, Some("ml")).await.unwrap();
    assert_eq!(names(ml), vec!["Pod ml/a", "Job ml/active"]);

    // The same through a kubeconfig, from synchronous code.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), server.addr);
    let (state, objects) = tokio::task::spawn_blocking(move || {
        list::read_blocking(Some(&kubeconfig), Some("ml"), true, WAIT)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(state.quota_count(), 1);
    assert_eq!(names(objects), vec!["Pod ml/a", "Job ml/active"]);
}

// ---------------------------------------------------------------------------------------
// With the default policy set
// ---------------------------------------------------------------------------------------

fn fixture_pod_review() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/gpu-training-pod.json"
    ))
    .unwrap()
}

fn default_policies(app: &AppState) {
    let set = PolicySet::load(Origin::Embedded, Backend::Vm).unwrap();
    app.swap_policies(set).unwrap();
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
    let burst: Vec<_> = (0..7)
        .map(|_| {
            let app = setup.app.clone();
            tokio::spawn(async move { validate(&app, fixture_pod_review()).await })
        })
        .collect();
    let mut denials = Vec::new();
    for task in burst {
        let (ok, message) = task.await.unwrap();
        if !ok {
            denials.push(message);
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_read_is_bounded_in_time() {
    let server = start_fake(cluster()).await; // never opened: lists hang
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), server.addr);
    let error = tokio::task::spawn_blocking(move || {
        list::read_blocking(Some(&kubeconfig), None, false, Duration::from_millis(300))
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(error, list::ListError::Timeout(_)), "{error}");
}

/// A kubeconfig whose only context points at the fake API server.
fn write_kubeconfig(dir: &std::path::Path, addr: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let config = json!({"apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": format!("http://{addr}")}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]});
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
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
/// `cargo test --release --test cluster_watch -- --ignored --nocapture measure`; set
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
    let app = AppState::new(
        Evaluator::new(set.clone(), Arc::new(ClusterState::default())).unwrap(),
        Mode::Enforce,
        64,
    );
    let live = LiveCluster::new(Duration::from_secs(3600));
    app.live.set(live.clone()).ok().unwrap();
    let started = Instant::now();
    live.publish(&app, state, Instant::now());
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
    let reserving = time(fixture_pod_review);
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

/// `mlguard audit --cluster` as a user runs it: the binary reads the fake API server through a
/// kubeconfig and audits the running Pods and Jobs with the default policies. A running pod is
/// not found to exceed a quota it is itself counted in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_cluster_audits_the_running_workloads() {
    let gpu_pod = |name: &str, gpus: u32, limits: bool| {
        let resources = if limits {
            json!({"limits": {"nvidia.com/gpu": gpus.to_string(), "memory": "8Gi"},
                   "requests": {"nvidia.com/gpu": gpus.to_string()}})
        } else {
            json!({"requests": {"nvidia.com/gpu": gpus.to_string()}})
        };
        json!({"metadata": {"name": name, "namespace": "ml"},
               "spec": {"containers": [{"name": "trainer", "image": "x", "resources": resources}],
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
               "status": {"phase": "Running"}})
    };
    let objects = vec![
        ("namespaces", namespace("ml")),
        ("nodes", node("gpu-1", 8)),
        // 4 of the 6 used GPUs are the running pod `big`.
        ("resourcequotas", quota(8, 6)),
        ("pods", gpu_pod("big", 4, true)),
        ("pods", gpu_pod("no-limit", 2, false)),
        (
            "jobs",
            json!({"metadata": {"name": "sweep", "namespace": "ml"},
                   "spec": {"ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 600,
                            "template": {"spec": {"restartPolicy": "Never",
                                "containers": [{"name": "c", "image": "x"}]}}},
                   "status": {}}),
        ),
    ];
    let server = start_fake(objects).await;
    server.open();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), server.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mlguard"))
            .args(["audit", "--cluster", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--output", "json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Json = serde_json::from_str(&stdout).unwrap();
    let status_of = |name: &str| {
        report["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .map(|o| o["status"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{name} not in {report}"))
    };
    assert_eq!(status_of("no-limit"), "denied");
    // 6 used, 2 left; `big` asks for 4 but holds 4 of the 6 itself.
    assert_ne!(status_of("big"), "denied", "{report}");
    assert_eq!(status_of("sweep"), "clean", "{report}");
    assert_eq!(report["objects"].as_array().unwrap().len(), 3);
}

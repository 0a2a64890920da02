//! A fake Kubernetes API server that speaks the real wire format: list responses with a
//! resourceVersion, watch streams of ADDED / MODIFIED / DELETED events as JSON lines, an ERROR
//! event with code 410 once the history is compacted (forcing a relist), dropped connections,
//! and an outage. It serves plain HTTP on 127.0.0.1; a `kube::Client` or a kubeconfig points at
//! it. It serves the core kinds, Jobs, and the DRA kinds of resource.k8s.io/v1 with that group
//! version's discovery document, or, after `serve_dra(false)`, a cluster without that group:
//! 404 on its discovery and on its paths, as the API server answers for a group it does not
//! serve. Also the cluster objects the tests put in it.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::channel::mpsc::{unbounded, UnboundedSender};
use mlguard::cluster::list;
use serde_json::{json, Value as Json};
use tokio::sync::watch as signal;

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
    /// GETs of one object, by resource.
    gets: BTreeMap<String, usize>,
    down: bool,
    /// GETs of one object are refused with 403, as without the RBAC rule.
    forbid_gets: bool,
    /// resource.k8s.io/v1 is not served.
    no_dra: bool,
    /// GETs of the discovery document of resource.k8s.io/v1.
    discoveries: usize,
}

#[derive(Clone)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    /// Lists wait until this is true, so that a test can look at mlguard before the first sync.
    open: signal::Receiver<bool>,
}

pub struct FakeServer {
    pub fake: Fake,
    open: signal::Sender<bool>,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn key(object: &Json) -> String {
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
        "deviceclasses" => ("resource.k8s.io/v1", "DeviceClass"),
        "resourceclaims" => ("resource.k8s.io/v1", "ResourceClaim"),
        "resourceclaimtemplates" => ("resource.k8s.io/v1", "ResourceClaimTemplate"),
        "resourceslices" => ("resource.k8s.io/v1", "ResourceSlice"),
        other => panic!("fake API server: unknown resource {other}"),
    }
}

/// The DRA resources: name, kind, namespaced.
const DRA_RESOURCES: [(&str, &str, bool); 4] = [
    ("deviceclasses", "DeviceClass", false),
    ("resourceclaims", "ResourceClaim", true),
    ("resourceclaimtemplates", "ResourceClaimTemplate", true),
    ("resourceslices", "ResourceSlice", false),
];

/// `GET /apis/resource.k8s.io/v1`, as the API server answers it (less the status
/// subresources' details and the short names).
fn dra_discovery() -> Json {
    let verbs = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let mut resources: Vec<Json> = DRA_RESOURCES
        .iter()
        .map(|(name, kind, namespaced)| {
            json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced,
                   "kind": kind, "verbs": verbs, "storageVersionHash": "fake"})
        })
        .collect();
    resources.push(json!({"name": "resourceclaims/status", "singularName": "",
        "namespaced": true, "kind": "ResourceClaim", "verbs": ["get", "patch", "update"]}));
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "resource.k8s.io/v1",
           "resources": resources})
}

/// The 404 of a path the API server does not serve: plain text, not a Status.
fn page_not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

fn resource_name(resource: &str) -> &'static str {
    match resource {
        "resourcequotas" => "resourcequotas",
        "nodes" => "nodes",
        "namespaces" => "namespaces",
        "pods" => "pods",
        "jobs" => "jobs",
        "deviceclasses" => "deviceclasses",
        "resourceclaims" => "resourceclaims",
        "resourceclaimtemplates" => "resourceclaimtemplates",
        "resourceslices" => "resourceslices",
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

    pub fn put(&self, resource: &'static str, mut object: Json) {
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

    pub fn delete(&self, resource: &'static str, key: &str) {
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
    pub fn expire(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.rv;
        let gone = line(&json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: 1 ({})", inner.rv))}));
        for (_, tx) in inner.watches.drain(..) {
            let _ = tx.unbounded_send(Ok(gone.clone()));
        }
    }

    /// Cuts every watch connection in the middle of its body.
    pub fn drop_watches(&self) {
        for (_, tx) in self.lock().watches.drain(..) {
            let _ = tx.unbounded_send(Err(std::io::Error::other("connection reset")));
        }
    }

    /// An outage: every request fails with 503 and open watches are cut.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
        if down {
            self.drop_watches();
        }
    }

    /// Serves resource.k8s.io/v1 (the default) or answers 404 for it, as a cluster without
    /// DRA does.
    pub fn serve_dra(&self, served: bool) {
        self.lock().no_dra = !served;
    }

    /// How many times the discovery document of resource.k8s.io/v1 was asked for.
    pub fn discoveries(&self) -> usize {
        self.lock().discoveries
    }

    pub fn lists(&self, resource: &str) -> usize {
        self.lock().lists.get(resource).copied().unwrap_or(0)
    }

    pub fn gets(&self, resource: &str) -> usize {
        self.lock().gets.get(resource).copied().unwrap_or(0)
    }

    /// Refuses (403) or serves again the GET of single objects.
    pub fn forbid_gets(&self, forbid: bool) {
        self.lock().forbid_gets = forbid;
    }

    /// `GET /api/v1/namespaces/{ns}/{resource}/{name}`: the stored object, else a 404 Status
    /// as the API server sends it.
    fn get(&self, resource: &'static str, namespace: Option<&str>, name: &str) -> Response {
        let mut inner = self.lock();
        *inner.gets.entry(resource.to_string()).or_default() += 1;
        if inner.forbid_gets {
            let who = "system:serviceaccount:mlguard-system:mlguard";
            let message = format!(
                "{resource} \"{name}\" is forbidden: User \"{who}\" cannot get resource \"{resource}\" in API group \"\" in the namespace \"{}\"",
                namespace.unwrap_or("")
            );
            let mut body = status(403, "Forbidden", &message);
            body["details"] = json!({"name": name, "kind": resource});
            return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        }
        let key = format!("{}/{name}", namespace.unwrap_or(""));
        match inner.objects.get(resource).and_then(|o| o.get(&key)) {
            Some(object) => axum::Json(object.clone()).into_response(),
            None => {
                let mut body = status(404, "NotFound", &format!("{resource} \"{name}\" not found"));
                body["details"] = json!({"name": name, "kind": resource});
                (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
            }
        }
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
        ["apis", "resource.k8s.io", "v1", rest @ ..] => {
            let mut inner = fake.lock();
            if inner.no_dra {
                if rest.is_empty() {
                    inner.discoveries += 1;
                }
                return page_not_found();
            }
            if rest.is_empty() {
                inner.discoveries += 1;
                return axum::Json(dra_discovery()).into_response();
            }
            rest
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let (namespace, resource) = match rest {
        [resource] => (None, resource_name(resource)),
        ["namespaces", ns, resource] => (Some(*ns), resource_name(resource)),
        ["namespaces", ns, resource, name] => {
            return fake.get(resource_name(resource), Some(ns), name);
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        fake.watch(resource, &q)
    } else {
        fake.list(resource, namespace, &q).await
    }
}

pub async fn start_fake(objects: Vec<(&'static str, Json)>) -> FakeServer {
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
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        config.connect_timeout = Some(Duration::from_secs(2));
        list::client_from_config(config).unwrap()
    }

    pub fn open(&self) {
        let _ = self.open.send(true);
    }
}

// ---------------------------------------------------------------------------------------
// Cluster objects
// ---------------------------------------------------------------------------------------

pub fn namespace(name: &str) -> Json {
    json!({"metadata": {"name": name, "labels": {"team": "vision"}}})
}

pub fn node(name: &str, gpus: u32) -> Json {
    json!({"metadata": {"name": name, "managedFields": [{"manager": "kubelet"}]},
           "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string(), "cpu": "96"},
                      "images": [{"names": ["registry.example/cuda:12"], "sizeBytes": 1}]}})
}

pub fn quota(hard: u32, used: u32) -> Json {
    json!({"metadata": {"name": "gpu", "namespace": "ml"},
           "spec": {"hard": {"requests.nvidia.com/gpu": hard.to_string()}},
           "status": {"hard": {"requests.nvidia.com/gpu": hard.to_string()},
                      "used": {"requests.nvidia.com/gpu": used.to_string()}}})
}

/// NVIDIA's GPU DRA driver's DeviceClasses.
pub fn nvidia_device_classes() -> Vec<(&'static str, Json)> {
    ["gpu", "mig"]
        .into_iter()
        .map(|t| {
            let expression = format!(
                "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == '{t}'"
            );
            (
                "deviceclasses",
                json!({"metadata": {"name": format!("{t}.nvidia.com")},
                       "spec": {"selectors": [{"cel": {"expression": expression}}]}}),
            )
        })
        .collect()
}

/// A ResourceSlice of `gpus` GPUs on `node`, as NVIDIA's driver publishes it.
pub fn gpu_slice(node: &str, gpus: u32) -> Json {
    let devices: Vec<Json> = (0..gpus)
        .map(|i| {
            json!({"name": format!("gpu-{i}"), "attributes": {"type": {"string": "gpu"},
                "index": {"int": i}, "productName": {"string": "NVIDIA H100 80GB HBM3"}},
                "capacity": {"memory": {"value": "80Gi"}}})
        })
        .collect();
    json!({"metadata": {"name": format!("{node}-gpu.nvidia.com"),
                        "managedFields": [{"manager": "gpu-kubelet-plugin"}]},
           "spec": {"driver": "gpu.nvidia.com", "nodeName": node,
                    "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                    "devices": devices}})
}

/// A ResourceClaimTemplate of one GPU of `class` in `namespace`.
pub fn claim_template(namespace: &str, name: &str, class: &str) -> Json {
    json!({"metadata": {"name": name, "namespace": namespace},
           "spec": {"spec": {"devices": {"requests": [
               {"name": "gpu", "exactly": {"deviceClassName": class}}]}}}})
}

pub fn cluster() -> Vec<(&'static str, Json)> {
    vec![
        ("namespaces", namespace("ml")),
        ("nodes", node("gpu-1", 8)),
        ("resourcequotas", quota(4, 0)),
    ]
}

/// A kubeconfig whose only context points at the fake API server.
pub fn write_kubeconfig(dir: &std::path::Path, addr: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let config = json!({"apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": format!("http://{addr}")}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]});
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

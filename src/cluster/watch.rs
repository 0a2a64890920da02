//! Live cluster state: watch caches (kube reflectors) of ResourceQuotas (all namespaces),
//! Nodes and Namespaces, and, where the API server serves resource.k8s.io/v1, of
//! DeviceClasses, ResourceClaims, ResourceClaimTemplates and ResourceSlices, turned into
//! `data.mlguard.cluster` when they change.
//!
//! - Rebuilds are debounced: the first change starts a window (100 ms, or twice the last
//!   rebuild on a large cluster), and the state is rebuilt once at its end however many
//!   events arrived, so a storm of node updates costs one rebuild per window. A rebuild that
//!   yields the same state swaps nothing.
//! - Rebuilds run on the blocking pool, never on the request path nor on the async workers
//!   that answer reviews, and are handed to a [`ClusterSink`]: the server's quota coordinator,
//!   which adds the quota reservations of recently admitted pods and swaps the result in
//!   atomically. The watch task knows nothing else of the server.
//! - Readiness waits for the first complete list of every kind watched: the three core kinds,
//!   and the four DRA kinds when discovery (once, at start) finds resource.k8s.io/v1 served.
//! - When the API server becomes unreachable, the watchers retry with backoff while mlguard
//!   keeps serving the last known state; it logs that, and the
//!   `mlguard_cluster_state_age_seconds` gauge and the decision log say how old the state is.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::FusedFuture;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, ResourceQuota};
use k8s_openapi::api::resource::v1::{
    DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice,
};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::StreamBackoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use super::{dra, ClusterState};

/// Where the watch task delivers what it learns. The server implements it (its quota
/// coordinator); tests implement it to watch the task alone.
pub trait ClusterSink: Send + Sync + 'static {
    /// A state freshly built from the watch caches. The first one means the caches synced.
    fn publish(&self, state: ClusterState, now: Instant);
    /// Called every tick, for what expires with time (quota reservations).
    fn tick(&self, now: Instant);
    /// The state is current: every kind is synced and no watch is failing, at `unix_now`.
    fn fresh(&self, unix_now: i64);
    /// Seconds since the state was last current, for the warning while the API server is
    /// unreachable.
    fn age_seconds(&self) -> Option<i64>;
}

/// Timings of the watch task. The defaults suit a cluster; tests shorten them.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How long after a change the state is rebuilt, collecting further changes meanwhile.
    pub debounce: Duration,
    /// First and longest wait before retrying a failed list or watch.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Server-side timeout of each watch call; a connection silent for longer (plus a few
    /// seconds) is taken for dead and reopened.
    pub watch_timeout_secs: u32,
    /// How often reservations are expired and the state's freshness is recorded.
    pub tick: Duration,
    /// How often, while the API server is unreachable, a warning says how old the state is.
    pub stale_warning_every: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(100),
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            watch_timeout_secs: 60,
            tick: Duration::from_secs(1),
            stale_warning_every: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ResourceQuota,
    Node,
    Namespace,
    DeviceClass,
    ResourceClaim,
    ResourceClaimTemplate,
    ResourceSlice,
}

const CORE_KINDS: [Kind; 3] = [Kind::ResourceQuota, Kind::Node, Kind::Namespace];
const DRA_KINDS: [Kind; 4] = [
    Kind::DeviceClass,
    Kind::ResourceClaim,
    Kind::ResourceClaimTemplate,
    Kind::ResourceSlice,
];

/// The group version of the DRA kinds, discovered once at start.
pub const DRA_GROUP_VERSION: &str = "resource.k8s.io/v1";

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::ResourceQuota => "resourcequotas",
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::DeviceClass => "deviceclasses",
            Kind::ResourceClaim => "resourceclaims",
            Kind::ResourceClaimTemplate => "resourceclaimtemplates",
            Kind::ResourceSlice => "resourceslices",
        }
    }

    /// The resource as an RBAC rule names it, with its group.
    fn rbac_name(self) -> String {
        match self {
            Kind::ResourceQuota | Kind::Node | Kind::Namespace => self.as_str().to_string(),
            _ => format!("{}.resource.k8s.io", self.as_str()),
        }
    }
}

/// What one watcher event means to the rebuild loop.
#[derive(Debug)]
enum Signal {
    /// A relist is in progress; the cache is swapped only when it completes.
    Listing,
    /// A complete list is in the cache.
    Synced,
    Changed,
    Failed(String),
}

/// Exponential backoff without jitter beyond what the retry timing gives: mlguard runs a few
/// replicas, not thousands of clients.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Why a watcher failed, with a hint for the one cause an admin must fix by hand.
fn describe(error: &watcher::Error, kind: Kind) -> String {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    match status {
        Some(403) => format!(
            "{error} (forbidden: mlguard's ServiceAccount needs list and watch on {}; see manifests/common/rbac.yaml)",
            kind.rbac_name()
        ),
        Some(410) => format!("{error} (watch expired; relisting)"),
        _ => error.to_string(),
    }
}

fn events<K>(
    api: Api<K>,
    kind: Kind,
    writer: reflector::store::Writer<K>,
    options: &WatchOptions,
    strip: fn(&mut K),
) -> BoxStream<'static, (Kind, Signal)>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().timeout(options.watch_timeout_secs);
    let stream = watcher(api, config).modify(strip).reflect(writer);
    let backoff = Backoff {
        min: options.backoff_min,
        max: options.backoff_max,
        next: options.backoff_min,
    };
    StreamBackoff::new(stream, backoff)
        .map(move |event| {
            let signal = match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Signal::Listing,
                Ok(watcher::Event::InitDone) => Signal::Synced,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed,
                Err(e) => Signal::Failed(describe(&e, kind)),
            };
            (kind, signal)
        })
        .boxed()
}

/// Fields the policies never read: dropped before caching to keep memory small on large
/// clusters (node image lists and managed fields are most of a Node).
fn strip_metadata<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

fn strip_node(node: &mut Node) {
    strip_metadata(node);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.conditions = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

/// The cached DRA objects; empty where resource.k8s.io/v1 is not served.
#[derive(Debug, Default, Clone)]
pub struct DraObjects {
    pub device_classes: Vec<Arc<DeviceClass>>,
    pub claims: Vec<Arc<ResourceClaim>>,
    pub claim_templates: Vec<Arc<ResourceClaimTemplate>>,
    pub slices: Vec<Arc<ResourceSlice>>,
}

/// The cluster state from cached objects, without DRA objects.
pub fn build_state(
    quotas: &[Arc<ResourceQuota>],
    nodes: &[Arc<Node>],
    namespaces: &[Arc<Namespace>],
) -> ClusterState {
    build_state_with_dra(quotas, nodes, namespaces, &DraObjects::default())
}

/// The cluster state from cached objects: the same model `--cluster-snapshot` files give.
pub fn build_state_with_dra(
    quotas: &[Arc<ResourceQuota>],
    nodes: &[Arc<Node>],
    namespaces: &[Arc<Namespace>],
    dra: &DraObjects,
) -> ClusterState {
    let mut state = ClusterState::default();
    for ns in namespaces {
        state.add_namespace(ns);
    }
    for rq in quotas {
        state.add_quota(rq);
    }
    for node in nodes {
        state.add_node(node);
    }
    dra.device_classes
        .iter()
        .for_each(|c| state.add_device_class(c));
    dra.claims.iter().for_each(|c| state.add_resource_claim(c));
    dra.claim_templates
        .iter()
        .for_each(|t| state.add_resource_claim_template(t));
    dra.slices.iter().for_each(|s| state.add_resource_slice(s));
    state.finish_dra();
    state
}

#[derive(Debug, Default)]
struct KindHealth {
    synced: bool,
    failing_since: Option<Instant>,
    error: String,
}

/// Per-kind sync and failure tracking, and the messages that go with state changes.
#[derive(Debug, Default)]
struct WatchHealth {
    kinds: BTreeMap<Kind, KindHealth>,
    /// The kinds watched; None until discovery says whether the DRA kinds are served.
    expected: Option<Vec<Kind>>,
    last_stale_warning: Option<Instant>,
}

impl WatchHealth {
    fn all_synced(&self) -> bool {
        self.expected.as_ref().is_some_and(|expected| {
            expected
                .iter()
                .all(|k| self.kinds.get(k).is_some_and(|h| h.synced))
        })
    }

    /// Since when the state may be stale: the oldest failure that has not recovered.
    fn failing_since(&self) -> Option<Instant> {
        self.kinds.values().filter_map(|k| k.failing_since).min()
    }

    /// Records a signal; true when it changed the cache.
    fn record(&mut self, kind: Kind, signal: Signal, now: Instant) -> bool {
        let entry = self.kinds.entry(kind).or_default();
        let recovered = |entry: &mut KindHealth| {
            if let Some(since) = entry.failing_since.take() {
                tracing::info!(
                    kind = kind.as_str(),
                    after_seconds = since.elapsed().as_secs(),
                    "watch of {} recovered",
                    kind.as_str()
                );
            }
        };
        match signal {
            Signal::Listing => {
                recovered(entry);
                false
            }
            Signal::Synced => {
                recovered(entry);
                entry.synced = true;
                true
            }
            Signal::Changed => {
                recovered(entry);
                true
            }
            Signal::Failed(error) => {
                if entry.failing_since.is_none() {
                    entry.failing_since = Some(now);
                    tracing::warn!(
                        kind = kind.as_str(),
                        error,
                        "cannot list or watch {}; retrying, and serving the last known cluster state meanwhile",
                        kind.as_str()
                    );
                } else {
                    tracing::debug!(kind = kind.as_str(), error, "watch still failing");
                }
                entry.error = error;
                false
            }
        }
    }

    fn warn_if_stale(&mut self, sink: &dyn ClusterSink, options: &WatchOptions, now: Instant) {
        let Some(since) = self.failing_since() else {
            self.last_stale_warning = None;
            return;
        };
        if self
            .last_stale_warning
            .is_some_and(|t| now.duration_since(t) < options.stale_warning_every)
        {
            return;
        }
        self.last_stale_warning = Some(now);
        let errors: Vec<String> = self
            .kinds
            .iter()
            .filter(|(_, k)| k.failing_since.is_some())
            .map(|(kind, k)| format!("{}: {}", kind.as_str(), k.error))
            .collect();
        tracing::warn!(
            state_age_seconds = sink.age_seconds().unwrap_or(0),
            failing_for_seconds = now.duration_since(since).as_secs(),
            ?errors,
            synced = self.all_synced(),
            "the API server is unreachable; admission decisions use the last known cluster state"
        );
    }
}

/// The reflector stores the state is built from.
#[derive(Clone)]
struct Stores {
    quotas: Store<ResourceQuota>,
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    device_classes: Store<DeviceClass>,
    claims: Store<ResourceClaim>,
    claim_templates: Store<ResourceClaimTemplate>,
    slices: Store<ResourceSlice>,
}

/// The writers of the DRA stores, until discovery says which kinds to watch.
struct DraWriters {
    device_classes: reflector::store::Writer<DeviceClass>,
    claims: reflector::store::Writer<ResourceClaim>,
    claim_templates: reflector::store::Writer<ResourceClaimTemplate>,
    slices: reflector::store::Writer<ResourceSlice>,
}

impl DraWriters {
    /// The event streams of the `served` DRA kinds.
    fn streams(
        self,
        client: &Client,
        served: &[Kind],
        options: &WatchOptions,
    ) -> Vec<BoxStream<'static, (Kind, Signal)>> {
        let mut out = Vec::new();
        if served.contains(&Kind::DeviceClass) {
            let strip = dra::strip_device_class;
            out.push(events(
                Api::all(client.clone()),
                Kind::DeviceClass,
                self.device_classes,
                options,
                strip,
            ));
        }
        if served.contains(&Kind::ResourceClaim) {
            let strip = dra::strip_claim;
            out.push(events(
                Api::all(client.clone()),
                Kind::ResourceClaim,
                self.claims,
                options,
                strip,
            ));
        }
        if served.contains(&Kind::ResourceClaimTemplate) {
            let (kind, strip) = (Kind::ResourceClaimTemplate, dra::strip_claim_template);
            out.push(events(
                Api::all(client.clone()),
                kind,
                self.claim_templates,
                options,
                strip,
            ));
        }
        if served.contains(&Kind::ResourceSlice) {
            let strip = dra::strip_slice;
            out.push(events(
                Api::all(client.clone()),
                Kind::ResourceSlice,
                self.slices,
                options,
                strip,
            ));
        }
        out
    }
}

/// Which DRA kinds the API server serves, asked once at start (`GET /apis/resource.k8s.io/v1`).
/// A 404 means the group version is not served: the DRA kinds are not watched, and readiness
/// waits for the core kinds alone, as on clusters before DRA. Any other failure (the API
/// server down or restarting at start, a 5xx, a timeout) is retried with the watch backoff
/// rather than taken for "not served": giving up would leave the DRA objects unwatched until
/// mlguard restarts, policies silently seeing no claims, templates or devices. Readiness
/// waits for the answer, as it waits for the first lists, which fail meanwhile anyway.
/// A group version that appears later (an upgrade of the control plane) is seen at mlguard's
/// next start.
async fn discover_dra(client: Client, options: WatchOptions) -> Vec<Kind> {
    let mut backoff = Backoff {
        min: options.backoff_min,
        max: options.backoff_max,
        next: options.backoff_min,
    };
    let mut failing = false;
    loop {
        match client.list_api_group_resources(DRA_GROUP_VERSION).await {
            Ok(list) => {
                let served: Vec<Kind> = DRA_KINDS
                    .into_iter()
                    .filter(|k| list.resources.iter().any(|r| r.name == k.as_str()))
                    .collect();
                let names: Vec<&str> = served.iter().map(|k| k.as_str()).collect();
                tracing::info!(
                    kinds = ?names,
                    "{DRA_GROUP_VERSION} is served; watching its DRA objects"
                );
                return served;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::info!("{DRA_GROUP_VERSION} is not served; DRA objects are not watched");
                return Vec::new();
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error,
                        "cannot discover whether {DRA_GROUP_VERSION} is served; retrying");
                } else {
                    tracing::debug!(%error, "discovery of {DRA_GROUP_VERSION} still failing");
                }
                failing = true;
                tokio::time::sleep(backoff.next().unwrap_or(options.backoff_max)).await;
            }
        }
    }
}

/// Watches quotas, nodes and namespaces, and the DRA objects where served, with `client` and
/// hands each rebuilt state to `sink` until `stop` fires.
pub fn spawn(
    client: Client,
    sink: Arc<dyn ClusterSink>,
    options: WatchOptions,
    mut stop: signal::Receiver<bool>,
) -> JoinHandle<()> {
    let (quotas, quota_writer) = reflector::store::<ResourceQuota>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let (namespaces, namespace_writer) = reflector::store::<Namespace>();
    let (device_classes, class_writer) = reflector::store::<DeviceClass>();
    let (claims, claim_writer) = reflector::store::<ResourceClaim>();
    let (claim_templates, template_writer) = reflector::store::<ResourceClaimTemplate>();
    let (slices, slice_writer) = reflector::store::<ResourceSlice>();
    let stores = Stores {
        quotas,
        nodes,
        namespaces,
        device_classes,
        claims,
        claim_templates,
        slices,
    };
    let mut dra_writers = Some(DraWriters {
        device_classes: class_writer,
        claims: claim_writer,
        claim_templates: template_writer,
        slices: slice_writer,
    });
    let mut discovery = discover_dra(client.clone(), options.clone()).boxed().fuse();
    let mut stream: SelectAll<BoxStream<'static, (Kind, Signal)>> = futures::stream::select_all([
        events(
            Api::all(client.clone()),
            Kind::ResourceQuota,
            quota_writer,
            &options,
            strip_metadata,
        ),
        events(
            Api::all(client.clone()),
            Kind::Node,
            node_writer,
            &options,
            strip_node,
        ),
        events(
            Api::all(client.clone()),
            Kind::Namespace,
            namespace_writer,
            &options,
            strip_metadata,
        ),
    ]);
    tokio::spawn(async move {
        let mut health = WatchHealth::default();
        let mut synced_once = false;
        let mut dirty_since: Option<Instant> = None;
        let mut problems: Vec<String> = Vec::new();
        let mut next_tick = Instant::now() + options.tick;
        let mut last_rebuild = Duration::ZERO;
        loop {
            // A rebuild converts the whole state: about 0.2 s of CPU at 5,000 nodes and 10,000
            // namespaces, where quota and node status changes never stop. A window of at
            // least twice the last rebuild keeps rebuilds to a third of a core however
            // busy the cluster; the state then trails it by a few hundred milliseconds, which
            // the quota reservations of admitted pods cover.
            let window = options.debounce.max(last_rebuild * 2);
            let deadline = match dirty_since {
                Some(t) if health.all_synced() => (t + window).min(next_tick),
                _ => next_tick,
            };
            tokio::select! {
                _ = stop.changed() => break,
                served = &mut discovery, if !discovery.is_terminated() => {
                    if let Some(writers) = dra_writers.take() {
                        for events in writers.streams(&client, &served, &options) {
                            stream.push(events);
                        }
                    }
                    health.expected = Some(CORE_KINDS.into_iter().chain(served).collect());
                    dirty_since.get_or_insert_with(Instant::now);
                }
                item = stream.next() => match item {
                    Some((kind, signal)) => {
                        if health.record(kind, signal, Instant::now()) {
                            dirty_since.get_or_insert_with(Instant::now);
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            if let Some(t) = dirty_since {
                if health.all_synced() && now >= t + window {
                    dirty_since = None;
                    let sink = sink.clone();
                    let stores = stores.clone();
                    let mut known = std::mem::take(&mut problems);
                    let first = !synced_once;
                    // Milliseconds to a fraction of a second of CPU: off the async workers,
                    // which answer reviews meanwhile.
                    let job = tokio::task::spawn_blocking(move || {
                        rebuild(&*sink, &stores, &mut known, first, now);
                        known
                    });
                    match job.await {
                        Ok(known) => {
                            problems = known;
                            synced_once = true;
                        }
                        Err(e) => tracing::error!(error = %e,
                            "cluster state rebuild failed; the previous state keeps serving"),
                    }
                    last_rebuild = now.elapsed();
                }
            }
            if now >= next_tick {
                next_tick = now + options.tick;
                sink.tick(now);
                if health.all_synced() && health.failing_since().is_none() {
                    sink.fresh(crate::tls::now());
                }
                health.warn_if_stale(&*sink, &options, now);
            }
        }
        tracing::debug!("cluster watch stopped");
    })
}

/// Builds the state from the caches and hands it to `sink`. `first` is the first rebuild
/// since the watch started: the caches have synced.
fn rebuild(
    sink: &dyn ClusterSink,
    stores: &Stores,
    problems: &mut Vec<String>,
    first: bool,
    now: Instant,
) {
    let dra = DraObjects {
        device_classes: stores.device_classes.state(),
        claims: stores.claims.state(),
        claim_templates: stores.claim_templates.state(),
        slices: stores.slices.state(),
    };
    let state = build_state_with_dra(
        &stores.quotas.state(),
        &stores.nodes.state(),
        &stores.namespaces.state(),
        &dra,
    );
    drop(dra);
    if state.problems != *problems {
        for problem in state.problems.iter().filter(|p| !problems.contains(p)) {
            tracing::warn!(problem, "cluster state: object skipped in part");
        }
        problems.clone_from(&state.problems);
    }
    let counts = (
        state.namespaces.len(),
        state.quota_count(),
        state.nodes.len(),
        state.dra.device_classes.len(),
        state.dra.claims.values().map(|c| c.len()).sum::<usize>(),
    );
    sink.publish(state, now);
    sink.fresh(crate::tls::now());
    if first {
        tracing::info!(
            namespaces = counts.0,
            quotas = counts.1,
            nodes = counts.2,
            device_classes = counts.3,
            resource_claims = counts.4,
            "live cluster state synced"
        );
    } else {
        tracing::debug!(
            namespaces = counts.0,
            quotas = counts.1,
            nodes = counts.2,
            device_classes = counts.3,
            resource_claims = counts.4,
            "live cluster state rebuilt"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(350),
            next: Duration::from_millis(100),
        };
        let waits: Vec<u128> = (0..4).map(|_| b.next().unwrap().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn health_waits_for_all_kinds_and_tracks_failures() {
        let now = Instant::now();
        let mut h = WatchHealth {
            expected: Some(CORE_KINDS.to_vec()),
            ..Default::default()
        };
        assert!(!h.record(Kind::Node, Signal::Listing, now));
        assert!(h.record(Kind::Node, Signal::Synced, now));
        assert!(h.record(Kind::Namespace, Signal::Synced, now));
        assert!(!h.all_synced());
        assert!(h.record(Kind::ResourceQuota, Signal::Synced, now));
        assert!(h.all_synced());
        assert!(!h.record(Kind::Node, Signal::Failed("connection refused".into()), now));
        assert_eq!(h.failing_since(), Some(now));
        assert!(h.record(Kind::Node, Signal::Changed, now));
        assert_eq!(h.failing_since(), None);
    }

    #[test]
    fn readiness_waits_for_discovery_and_then_for_the_dra_kinds_served() {
        let now = Instant::now();
        let mut h = WatchHealth::default();
        for kind in CORE_KINDS {
            h.record(kind, Signal::Synced, now);
        }
        assert!(!h.all_synced(), "synced before discovery answered");
        h.expected = Some(CORE_KINDS.into_iter().chain(DRA_KINDS).collect());
        assert!(!h.all_synced());
        for kind in DRA_KINDS {
            h.record(kind, Signal::Synced, now);
        }
        assert!(h.all_synced());
        let mut without = WatchHealth {
            expected: Some(CORE_KINDS.to_vec()),
            ..Default::default()
        };
        for kind in CORE_KINDS {
            without.record(kind, Signal::Synced, now);
        }
        assert!(without.all_synced());
    }

    #[test]
    fn forbidden_names_the_rbac_rule() {
        let status = kube::core::Status::failure("nodes is forbidden", "Forbidden").with_code(403);
        let msg = describe(
            &watcher::Error::InitialListFailed(kube::Error::Api(status.boxed())),
            Kind::Node,
        );
        assert!(msg.contains("list and watch on nodes"), "{msg}");
        let status =
            kube::core::Status::failure("resourceslices.resource.k8s.io is forbidden", "Forbidden")
                .with_code(403);
        let msg = describe(
            &watcher::Error::InitialListFailed(kube::Error::Api(status.boxed())),
            Kind::ResourceSlice,
        );
        assert!(
            msg.contains("list and watch on resourceslices.resource.k8s.io"),
            "{msg}"
        );
    }

    #[test]
    fn build_state_matches_the_snapshot_model() {
        let rq: ResourceQuota = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gpu", "namespace": "ml"},
            "spec": {"hard": {"requests.nvidia.com/gpu": "8"}},
            "status": {"used": {"requests.nvidia.com/gpu": "3"}}
        }))
        .unwrap();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gpu-1"},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "images": [{"names": ["x"]}]}
        }))
        .unwrap();
        let mut stripped = node.clone();
        strip_node(&mut stripped);
        assert!(stripped.status.as_ref().unwrap().images.is_none());
        let s = build_state(&[Arc::new(rq)], &[Arc::new(stripped)], &[]);
        let j = s.to_json();
        assert_eq!(
            j["quotas"]["ml"][0]["remaining"]["requests.nvidia.com/gpu"],
            5
        );
        assert_eq!(j["largest_allocatable"]["nvidia.com/gpu"], 8);
    }
}

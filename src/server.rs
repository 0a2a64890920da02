//! The HTTPS webhook listener, the plain-HTTP probe listener, hot reload of certificates and
//! policies, and graceful shutdown. Handlers are glue: the decision is `pipeline::admit`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, ParsedReview, ReviewError};
use crate::cluster::{snapshot, ClusterState, LiveCluster};
use crate::config::{ServeConfig, TlsSource};
use crate::metrics::Metrics;
use crate::pipeline::{admit, Mode};
use crate::policy::source::Origin;
use crate::policy::verdict::Verdict;
use crate::policy::{Evaluator, PolicySet, Stage};
use crate::tls::{self, SwappableCert};

/// Largest AdmissionReview accepted. Kubernetes objects are capped at about 1.5 MiB by etcd; a
/// review carries the object and, on UPDATE, the old object, so 8 MiB leaves room without
/// letting one request hold unbounded memory.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Bodies above this are evaluated on the blocking pool so they cannot stall the async
/// workers that serve everyone else's small reviews.
const INLINE_BODY_BYTES: usize = 128 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/readyz` and `/status` report.
#[derive(Debug, Default)]
pub struct Health {
    pub tls_bound: AtomicBool,
    /// The last policy reload error, while the last good set keeps serving.
    pub policy_error: RwLock<Option<String>>,
    pub cert_error: RwLock<Option<String>>,
    /// False until live cluster state has synced once (true when none is used).
    pub cluster_synced: AtomicBool,
}

pub struct AppState {
    pub evaluator: ArcSwap<Evaluator>,
    pub mode: Mode,
    pub metrics: Metrics,
    pub health: Health,
    pub cert: Option<Arc<SwappableCert>>,
    pub generation: AtomicU64,
    /// Live cluster state, when watched: Pod CREATEs at /validate go through it to reserve quota.
    pub live: OnceLock<Arc<LiveCluster>>,
    limiter: Semaphore,
}

impl AppState {
    pub fn new(evaluator: Evaluator, mode: Mode, max_concurrent: usize) -> Arc<AppState> {
        let metrics = Metrics::new();
        metrics.policy_generation.set(1);
        let health = Health::default();
        health.cluster_synced.store(true, Ordering::Relaxed);
        Arc::new(AppState {
            evaluator: ArcSwap::from_pointee(evaluator),
            mode,
            metrics,
            health,
            cert: None,
            generation: AtomicU64::new(1),
            live: OnceLock::new(),
            limiter: Semaphore::new(max_concurrent),
        })
    }

    /// Replaces the policy set, keeping the cluster state.
    pub fn swap_policies(&self, set: Arc<PolicySet>) -> Result<(), crate::policy::PolicyError> {
        let cluster = self.evaluator.load().cluster.clone();
        self.evaluator
            .store(Arc::new(Evaluator::new(set, cluster)?));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.policy_generation.set(generation as i64);
        Ok(())
    }

    /// Replaces the cluster state, keeping the policy set.
    pub fn swap_cluster(
        &self,
        cluster: Arc<ClusterState>,
    ) -> Result<(), crate::policy::PolicyError> {
        let set = self.evaluator.load().set.clone();
        self.evaluator
            .store(Arc::new(Evaluator::new(set, cluster)?));
        Ok(())
    }

    /// Not ready, with the reason, or ready.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.health.tls_bound.load(Ordering::Relaxed) {
            return Err("TLS listener not bound yet".into());
        }
        if !self.health.cluster_synced.load(Ordering::Relaxed) {
            return Err("cluster state has not synced yet".into());
        }
        if let Some(cert) = &self.cert {
            if cert.not_after() <= tls::now() {
                return Err(
                    "the serving certificate has expired; rotate the mlguard-tls Secret".into(),
                );
            }
        }
        Ok(())
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

async fn mutate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    review(state, Stage::Mutate, headers, body).await
}

async fn validate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    review(state, Stage::Validate, headers, body).await
}

/// Parses and decides; a panic anywhere in there becomes an error, never an admission.
fn decide(
    state: &AppState,
    stage: Stage,
    body: &[u8],
) -> Result<(ParsedReview, Verdict), ReviewError> {
    let parsed = admission::parse(body)?;
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let evaluate = |evaluator: &Evaluator| admit(evaluator, &parsed, stage, state.mode);
        match state.live.get() {
            // Check the quota and reserve what the pod takes in one step (see cluster::live).
            Some(live) if LiveCluster::reserves(&parsed, stage) => {
                live.admit(state, &parsed, evaluate)
            }
            _ => evaluate(&state.evaluator.load()),
        }
    }))
    .unwrap_or_else(|_| Verdict {
        allowed: false,
        had_error: true,
        denials: vec!["internal error while evaluating policies (see mlguard's log)".into()],
        ..Default::default()
    });
    Ok((parsed, verdict))
}

async fn review(state: Arc<AppState>, stage: Stage, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let endpoint = stage.as_str();
    if !is_json(&headers) {
        state
            .metrics
            .observe_rejected(endpoint, started.elapsed().as_secs_f64());
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json (an admission.k8s.io/v1 AdmissionReview)\n",
        )
            .into_response();
    }
    let Ok(_permit) = state.limiter.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let result = if body.len() > INLINE_BODY_BYTES {
        let state = state.clone();
        tokio::task::spawn_blocking(move || decide(&state, stage, &body))
            .await
            .unwrap_or_else(|e| {
                Err(ReviewError::NotAReview(format!(
                    "evaluation task failed: {e}"
                )))
            })
    } else {
        decide(&state, stage, &body)
    };
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "rejected a request that is not a usable AdmissionReview");
            state.metrics.observe_rejected(endpoint, seconds);
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Ok((parsed, verdict)) => {
            state
                .metrics
                .observe(endpoint, &parsed.kind, &parsed.operation, &verdict, seconds);
            let cluster_age = state.metrics.cluster_state_age();
            crate::decision_log::log(endpoint, &parsed, &verdict, seconds, cluster_age);
            Json(parsed.reply(&verdict)).into_response()
        }
    }
}

/// POST /mutate and /validate.
pub fn webhook_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let evaluator = state.evaluator.load();
    let set = &evaluator.set;
    Json(serde_json::json!({
        "version": crate::metrics::VERSION,
        "commit": crate::metrics::COMMIT,
        "mode": state.mode.as_str(),
        "ready": state.readiness().err().unwrap_or_else(|| "ready".into()),
        "policies": {
            "origin": set.origin.to_string(),
            "generation": state.generation.load(Ordering::Relaxed),
            "evaluator": set.backend.as_str(),
            "vm_fallback_reason": set.vm_fallback_reason,
            "hints": set.hints,
            "names": set.policy_names(),
            "files": set.files,
            "last_reload_error": state.health.policy_error.read().ok().and_then(|e| e.clone()),
        },
        "certificate": {
            "not_after": state.cert.as_ref().map(|c| c.not_after()),
            "last_reload_error": state.health.cert_error.read().ok().and_then(|e| e.clone()),
        },
        "cluster": {
            "namespaces": evaluator.cluster.namespaces.len(),
            "quotas": evaluator.cluster.quota_count(),
            "nodes": evaluator.cluster.nodes.len(),
            "live": state.live.get().is_some(),
            "age_seconds": state.metrics.cluster_state_age(),
            "quota_reservations": state.live.get().map(|l| l.reservations()),
        },
    }))
}

/// GET /healthz, /readyz, /metrics, /status.
pub fn probe_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

/// Accepts TLS connections until `shutdown` fires, then waits up to `drain` for in-flight
/// requests. HTTP/1.1 with keep-alive.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "in-flight requests did not finish in time");
    }
}

/// Certificates for the configured source: files as given, or development certificates.
fn initial_certificate(
    tls: &TlsSource,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    match tls {
        TlsSource::Files { cert, key } => Ok((cert.clone(), key.clone())),
        TlsSource::Dev { dir } => {
            let (bundle, created) = crate::certs::ensure_dev(dir).map_err(|e| {
                anyhow::anyhow!("{e}; pass --dev-certs-dir to use a writable directory, or --tls-cert/--tls-key")
            })?;
            tracing::info!(
                dir = %dir.display(),
                created,
                "using development certificates (for a cluster, use cert-manager or `mlguard certs`)"
            );
            println!(
                "caBundle for a webhook configuration (CA in {}/ca.crt):\n{}",
                dir.display(),
                bundle.ca_bundle()
            );
            Ok((dir.join("tls.crt"), dir.join("tls.key")))
        }
    }
}

/// Resolves on SIGTERM (the kubelet stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops mlguard");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

/// Everything `mlguard serve` needs, with listeners already bound (tests bind port 0).
pub struct Listeners {
    pub webhook: TcpListener,
    pub probe: TcpListener,
}

impl Listeners {
    pub async fn bind(webhook: SocketAddr, probe: SocketAddr) -> anyhow::Result<Listeners> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for {what}: {e}"))
        };
        Ok(Listeners {
            webhook: bind(webhook, "the webhook (--listen)").await?,
            probe: bind(probe, "probes (--probe-listen)").await?,
        })
    }
}

/// Loads certificates, policies and cluster state, then serves until `shutdown` resolves.
/// Fails before serving if any of them cannot be loaded: no partial policy set is ever served.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (cert_path, key_path) = initial_certificate(&config.tls)?;
    let (key, info) = tls::load_pair(&cert_path, &key_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cert = SwappableCert::new(key, &info);

    let origin = config.policies.clone();
    let backend = config.backend;
    let set = tokio::task::spawn_blocking(move || PolicySet::load(origin, backend))
        .await?
        .map_err(|e| anyhow::anyhow!("policies not loaded: {e}"))?;
    set.log_notes();
    let cluster = snapshot::load(&config.cluster_snapshots).map_err(|e| anyhow::anyhow!("{e}"))?;
    for problem in &cluster.problems {
        tracing::warn!(problem, "cluster snapshot");
    }
    tracing::info!(
        origin = %set.origin, policies = ?set.policy_names(), evaluator = set.backend.as_str(),
        namespaces = cluster.namespaces.len(), quotas = cluster.quotas.len(), nodes = cluster.nodes.len(),
        "policies loaded"
    );
    let evaluator = Evaluator::new(set, Arc::new(cluster)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut state = AppState::new(evaluator, config.mode, config.max_concurrent);
    Arc::get_mut(&mut state).expect("state not shared yet").cert = Some(cert.clone());
    state.metrics.certificate_expiry.set(cert.not_after());

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    if let Some(live) = &config.live_cluster {
        let client = crate::cluster::list::client(live.kubeconfig.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("live cluster state: {e}"))?;
        crate::cluster::watch::start(
            client,
            state.clone(),
            live.reservation_ttl,
            Default::default(),
            stop_rx.clone(),
        );
    }
    crate::reload::spawn_certificate_reloader(
        state.clone(),
        cert.clone(),
        cert_path,
        key_path,
        config.reload_interval,
        stop_rx.clone(),
    );
    if let Origin::Directory(dir) = &config.policies {
        crate::reload::spawn_policy_reloader(
            state.clone(),
            dir.clone(),
            config.backend,
            config.reload_interval,
            stop_rx.clone(),
        );
    }

    let probe_addr = listeners.probe.local_addr()?;
    let webhook_addr = listeners.webhook.local_addr()?;
    let mut probe_stop = stop_rx.clone();
    let probe_app = probe_router(state.clone());
    let probe = tokio::spawn(async move {
        axum::serve(listeners.probe, probe_app)
            .with_graceful_shutdown(async move {
                let _ = probe_stop.changed().await;
            })
            .await
    });
    state.health.tls_bound.store(true, Ordering::Relaxed);
    tracing::info!(webhook = %webhook_addr, probes = %probe_addr, mode = state.mode.as_str(), "mlguard serving");
    serve_tls(
        listeners.webhook,
        tls::server_config(cert),
        webhook_router(state.clone()),
        stop_rx,
        config.shutdown_timeout,
    )
    .await;
    let _ = probe.await;
    tracing::info!("mlguard stopped");
    Ok(())
}

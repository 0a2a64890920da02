//! `mlguard serve`: the running webhook.
//!
//! [`run`] builds the handles in order (certificate, policies, cluster state, the published
//! evaluator, metrics, health, the quota coordinator) and hands each task only the ones it
//! uses: the handlers their [`handlers::WebhookState`], the probes their
//! [`probes::ProbeState`], the watch task a [`crate::cluster::watch::ClusterSink`], the
//! task that confirms quota reservations a [`crate::cluster::confirm::ReservationSink`] and
//! the kube client, each reloader the handle it swaps and the error it records.
//!
//! - `handlers`: `POST /mutate` and `/validate`; `probes`: the probe port;
//! - `listener`: the TLS accept loop and the shutdown signals; `pool`: the evaluation threads;
//! - `health`: readiness latches and reload errors; `reload`: certificates and policies;
//! - `quota`: the quota coordinator on the request path (live cluster state).

pub mod handlers;
pub mod health;
pub mod listener;
pub mod pool;
pub mod probes;
pub mod quota;
pub mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use handlers::{memory_cost_kib, MAX_BODY_BYTES, MEMORY_PER_BODY_BYTE};
pub use listener::{serve_tls, shutdown_signal};

use crate::admission::Mode;
use crate::cluster::snapshot;
use crate::config::{ReviewLimits, ServeConfig, TlsSource};
use crate::metrics::Metrics;
use crate::policy::{Evaluator, PolicySet, Published};
use crate::tls::{self, SwappableCert};
use health::Health;
use quota::QuotaCoordinator;

/// The handles a webhook is made of. [`run`] builds one in order; tests build one directly
/// and take routers from it. Tasks never receive this whole: each gets the handles it uses.
pub struct Webhook {
    pub published: Arc<Published>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub mode: Mode,
    /// Set by [`Webhook::enable_live_cluster`] before any router is built.
    pub quota: Option<Arc<QuotaCoordinator>>,
    limiter: Arc<Semaphore>,
    limits: ReviewLimits,
    /// KiB of review memory (see `handlers::memory_cost_kib`).
    memory: Arc<Semaphore>,
    pool: Arc<pool::EvaluationPool>,
}

impl Webhook {
    /// A webhook serving `evaluator`; at most `max_concurrent` reviews are evaluated at once.
    pub fn new(
        evaluator: Evaluator,
        mode: Mode,
        max_concurrent: usize,
        cert: Option<Arc<SwappableCert>>,
    ) -> Webhook {
        let metrics = Metrics::new();
        metrics.policy_generation.set(1);
        if let Some(cert) = &cert {
            metrics.certificate_expiry.set(cert.not_after());
        }
        Webhook {
            published: Arc::new(Published::new(evaluator)),
            metrics: Arc::new(metrics),
            health: Arc::new(Health::new(cert)),
            mode,
            quota: None,
            limiter: Arc::new(Semaphore::new(max_concurrent)),
            memory: Arc::new(Semaphore::new(ReviewLimits::default().memory_kib as usize)),
            limits: ReviewLimits::default(),
            pool: Arc::new(pool::EvaluationPool::new(
                pool::EvaluationPool::default_threads(),
            )),
        }
    }

    /// The bounds on each review (deadline, review memory, body timeout).
    pub fn with_limits(mut self, limits: ReviewLimits) -> Webhook {
        self.memory = Arc::new(Semaphore::new(limits.memory_kib as usize));
        self.limits = limits;
        self
    }

    /// Turns on live cluster state: the quota coordinator that the watch task publishes to
    /// (a reservation is kept at most `reservation_ttl`). Readiness waits for its first state.
    pub fn enable_live_cluster(&mut self, reservation_ttl: Duration) -> Arc<QuotaCoordinator> {
        let quota = Arc::new(QuotaCoordinator::new(
            reservation_ttl,
            self.published.clone(),
            self.metrics.clone(),
            self.health.cluster_synced.clone(),
        ));
        self.quota = Some(quota.clone());
        quota
    }

    /// POST /mutate and /validate.
    pub fn webhook_router(&self) -> Router {
        handlers::router(handlers::WebhookState {
            published: self.published.clone(),
            quota: self.quota.clone(),
            mode: self.mode,
            metrics: self.metrics.clone(),
            limiter: self.limiter.clone(),
            memory: self.memory.clone(),
            limits: self.limits.clone(),
            pool: self.pool.clone(),
        })
    }

    /// GET /healthz, /readyz, /metrics, /status.
    pub fn probe_router(&self) -> Router {
        probes::router(probes::ProbeState {
            published: self.published.clone(),
            quota: self.quota.clone(),
            mode: self.mode,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
        })
    }
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

/// Certificates for the configured source: files as given, or development certificates.
fn initial_certificate(tls: &TlsSource) -> anyhow::Result<(PathBuf, PathBuf)> {
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
            // In the log (standard error), never on standard output: with --log-format json
            // every line an operator collects must be a JSON object.
            tracing::info!(
                ca_file = %dir.join("ca.crt").display(),
                ca_bundle = %bundle.ca_bundle(),
                "caBundle for a webhook configuration: the base64 CA certificate in ca_bundle"
            );
            Ok((dir.join("tls.crt"), dir.join("tls.key")))
        }
    }
}

/// Loads certificates, policies and cluster state, then serves until `shutdown` resolves.
/// Fails before serving if any of them cannot be loaded: no partial policy set is ever served.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::policy::limits::set_process_memory_limit(config.memory_limit);
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
        origin = %set.origin, policy_layers = ?set.origin.names(), policies = ?set.policy_names(),
        evaluator = set.backend.as_str(),
        namespaces = cluster.namespaces.len(), quotas = cluster.quotas.len(), nodes = cluster.nodes.len(),
        "policies loaded"
    );
    let evaluator = Evaluator::new(set, Arc::new(cluster)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut webhook = Webhook::new(
        evaluator,
        config.mode,
        config.max_concurrent,
        Some(cert.clone()),
    )
    .with_limits(config.limits.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    if let Some(live) = &config.live_cluster {
        let client = crate::cluster::list::client(live.kubeconfig.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("live cluster state: {e}"))?;
        let quota = webhook.enable_live_cluster(live.reservation_ttl);
        let confirm = crate::cluster::confirm::ConfirmOptions {
            delay: live.confirm_delay,
            ..Default::default()
        };
        quota.spawn_confirmations(client.clone(), confirm, stop_rx.clone());
        crate::cluster::watch::spawn(client, quota, Default::default(), stop_rx.clone());
    }
    reload::spawn_certificate_reloader(
        cert.clone(),
        webhook.metrics.clone(),
        webhook.health.cert_error.clone(),
        cert_path,
        key_path,
        config.reload_interval,
        stop_rx.clone(),
    );
    if !config.policies.directories().is_empty() {
        reload::spawn_policy_reloader(
            webhook.published.clone(),
            webhook.metrics.clone(),
            webhook.health.policy_error.clone(),
            config.policies.clone(),
            config.backend,
            config.reload_interval,
            stop_rx.clone(),
        );
    }

    let probe_addr = listeners.probe.local_addr()?;
    let webhook_addr = listeners.webhook.local_addr()?;
    let mut probe_stop = stop_rx.clone();
    let probe_app = webhook.probe_router();
    let probe = tokio::spawn(async move {
        axum::serve(listeners.probe, probe_app)
            .with_graceful_shutdown(async move {
                let _ = probe_stop.changed().await;
            })
            .await
    });
    webhook.health.tls_bound.open();
    tracing::info!(webhook = %webhook_addr, probes = %probe_addr, mode = webhook.mode.as_str(), "mlguard serving");
    serve_tls(
        listeners.webhook,
        tls::server_config(cert),
        webhook.webhook_router(),
        stop_rx,
        config.shutdown_timeout,
    )
    .await;
    let _ = probe.await;
    tracing::info!("mlguard stopped");
    Ok(())
}

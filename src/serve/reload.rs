//! Hot reload of the serving certificate and the policy directory. Both poll content digests
//! rather than relying on file events: the kubelet updates Secret and ConfigMap volumes by
//! swapping a `..data` symlink, which inotify on the visible paths does not report reliably,
//! while a digest of what the paths resolve to always changes. Failures keep the last good
//! state and are logged, counted and shown on /status.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::health::LastError;
use crate::metrics::{Metrics, ResultLabels};
use crate::policy::layers::{self, Layers};
use crate::policy::{set, Backend, PolicySet, Published};
use crate::tls::{self, SwappableCert};

fn result(ok: bool) -> ResultLabels {
    ResultLabels {
        result: if ok { "success" } else { "failure" }.into(),
    }
}

/// Runs `check` every `interval` until shutdown.
fn every(
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    mut check: impl FnMut() + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => check(),
                _ = stop.changed() => return,
            }
        }
    });
}

/// Swaps in the certificate at `cert_path` and `key_path` whenever their content changes and
/// it is valid; records the result in `metrics` and `last_error`.
pub fn spawn_certificate_reloader(
    cert: Arc<SwappableCert>,
    metrics: Arc<Metrics>,
    last_error: Arc<LastError>,
    cert_path: PathBuf,
    key_path: PathBuf,
    interval: Duration,
    stop: watch::Receiver<bool>,
) {
    let digest_of = |c: &str, k: &str| -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(c.as_bytes());
        h.update([0]);
        h.update(k.as_bytes());
        h.finalize().to_vec()
    };
    let mut last = tls::read_pair(&cert_path, &key_path)
        .map(|(c, k)| digest_of(&c, &k))
        .unwrap_or_default();
    every(interval, stop, move || {
        let Ok((c, k)) = tls::read_pair(&cert_path, &key_path) else {
            // Mid-swap the files can be briefly missing; the next tick sees the new ones.
            return;
        };
        let digest = digest_of(&c, &k);
        if digest == last {
            return;
        }
        last = digest;
        match tls::certified_key_from_pem(&c, &k) {
            Ok((key, info)) => {
                cert.store(key, &info);
                metrics
                    .certificate_reloads
                    .get_or_create(&result(true))
                    .inc();
                metrics.certificate_expiry.set(info.not_after);
                last_error.set(None);
                tracing::info!(path = %cert_path.display(), not_after = info.not_after, "serving certificate reloaded");
            }
            Err(e) => {
                metrics
                    .certificate_reloads
                    .get_or_create(&result(false))
                    .inc();
                last_error.set(Some(e.to_string()));
                tracing::error!(path = %cert_path.display(), error = %e,
                    "new certificate rejected; still serving the previous one");
            }
        }
    });
}

/// Compiles the policy set of `layers` whenever the content of any of its directories
/// changes and serves it through `published` if it loads; records the result in `metrics`
/// and `last_error`.
pub fn spawn_policy_reloader(
    published: Arc<Published>,
    metrics: Arc<Metrics>,
    last_error: Arc<LastError>,
    layers: Layers,
    backend: Backend,
    interval: Duration,
    stop: watch::Receiver<bool>,
) {
    let mut last = published.load().set.digest.clone();
    let busy = Arc::new(AtomicBool::new(false));
    every(interval, stop, move || {
        let files = match layers::read(&layers) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a policy directory; keeping the current policies");
                return;
            }
        };
        let digest = set::digest(&files);
        if digest == last || busy.swap(true, Ordering::AcqRel) {
            return;
        }
        last = digest;
        let (published, metrics, last_error) =
            (published.clone(), metrics.clone(), last_error.clone());
        let (layers, busy) = (layers.clone(), busy.clone());
        // Compiling takes milliseconds of CPU: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let loaded = PolicySet::compile(files, layers.clone(), backend).and_then(|set| {
                set.log_notes();
                published.swap_policies(set)
            });
            let ok = loaded.is_ok();
            metrics.policy_reloads.get_or_create(&result(ok)).inc();
            metrics.policy_last_reload_success.set(i64::from(ok));
            last_error.set(loaded.as_ref().err().map(ToString::to_string));
            match loaded {
                Ok(generation) => {
                    metrics.policy_generation.set(generation as i64);
                    tracing::info!(policy_layers = ?layers.names(), generation, "policies reloaded");
                }
                Err(e) => {
                    tracing::error!(policy_layers = ?layers.names(), error = %e,
                        "policy reload failed; still serving the last good policy set");
                }
            }
            busy.store(false, Ordering::Release);
        });
    });
}

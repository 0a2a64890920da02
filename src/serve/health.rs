//! What `/readyz` and `/status` report, as small handles that each writer holds alone: the
//! listener opens a latch when it is bound, the quota coordinator when the cluster state has
//! synced, and each reloader records its last error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::tls::{self, SwappableCert};

/// A readiness condition: closed until something has happened once (it may close again).
#[derive(Debug, Default)]
pub struct Latch(AtomicBool);

impl Latch {
    pub fn open(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn close(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The last error of a reload, while the last good state keeps serving; `None` after a
/// reload that worked.
#[derive(Debug, Default)]
pub struct LastError(RwLock<Option<String>>);

impl LastError {
    pub fn set(&self, error: Option<String>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = error;
    }
    pub fn get(&self) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Readiness and the errors `/status` shows.
#[derive(Debug)]
pub struct Health {
    pub tls_bound: Arc<Latch>,
    /// Open unless live cluster state is used and has not synced yet.
    pub cluster_synced: Arc<Latch>,
    pub policy_error: Arc<LastError>,
    pub cert_error: Arc<LastError>,
    pub cert: Option<Arc<SwappableCert>>,
}

impl Health {
    pub fn new(cert: Option<Arc<SwappableCert>>) -> Health {
        let cluster_synced = Arc::new(Latch::default());
        cluster_synced.open();
        Health {
            tls_bound: Arc::default(),
            cluster_synced,
            policy_error: Arc::default(),
            cert_error: Arc::default(),
            cert,
        }
    }

    /// Not ready, with the reason, or ready.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.tls_bound.is_open() {
            return Err("TLS listener not bound yet".into());
        }
        if !self.cluster_synced.is_open() {
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

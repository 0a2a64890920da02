//! A bare TLS server on mlguard's own stack, for comparison in scripts/loadbench.sh: the same
//! runtime, rustls configuration, certificate, accept loop and HTTP/1.1 settings as
//! `mlguard serve` (it calls `serve::serve_tls`), but the handlers take the body and answer a
//! fixed AdmissionReview without parsing anything. What mlguard adds on top of it is the cost
//! of the review itself.
//!
//!     cargo run --release --example tls_echo -- CERT_DIR 127.0.0.1:8444 [SECONDS]
//!
//! CERT_DIR holds tls.crt and tls.key (as `mlguard serve --dev-certs-dir` writes them). The
//! server stops on SIGTERM or Ctrl-C, or by itself after SECONDS (default 600).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;
use axum::Router;

const REPLY: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true,"status":{"metadata":{},"code":200}}}"#;

async fn fixed(_body: Bytes) -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "application/json")], REPLY)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: tls_echo CERT_DIR LISTEN_ADDR [SECONDS]";
    let dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let addr: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let seconds: u64 = args.next().map_or(Ok(600), |s| s.parse())?;

    let (key, info) = mlguard::tls::load_pair(&dir.join("tls.crt"), &dir.join("tls.key"))?;
    let tls = mlguard::tls::server_config(mlguard::tls::SwappableCert::new(key, &info));
    let router = Router::new()
        .route("/mutate", post(fixed))
        .route("/validate", post(fixed))
        .layer(axum::extract::DefaultBodyLimit::max(
            mlguard::serve::MAX_BODY_BYTES,
        ));

    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            println!("tls_echo listening on {}", listener.local_addr()?);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                tokio::select! {
                    _ = mlguard::serve::shutdown_signal() => {}
                    _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                }
                let _ = stop_tx.send(true);
            });
            mlguard::serve::serve_tls(listener, tls, router, stop_rx, Duration::from_secs(2)).await;
            Ok(())
        })
}

//! Test support that plays the Kubernetes API server: starts `mlguard serve` in-process on
//! 127.0.0.1:0, talks HTTPS to it with a client that trusts only the generated CA and checks
//! the Service DNS name, and applies the returned JSON patch as the API server would.
#![allow(dead_code)] // each test binary uses a different part

pub mod fake_api;
pub mod live;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mlguard::cli::{Cli, Command};
use mlguard::config::ServeConfig;
use mlguard::serve::{run, Listeners};
use serde_json::Value as Json;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The name the API server uses to reach mlguard's Service.
pub const SERVICE_DNS: &str = "mlguard.mlguard-system.svc";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/admission").join(name)).unwrap()
}

/// Writes a CA and a serving certificate for the Service into `dir`; returns the CA PEM.
pub fn write_certs(dir: &Path) -> String {
    let bundle = mlguard::certs::generate(
        &mlguard::certs::service_dns_names("mlguard", "mlguard-system"),
        &[],
    )
    .unwrap();
    mlguard::certs::write(dir, &bundle).unwrap();
    bundle.ca_pem
}

pub struct TestServer {
    pub webhook: SocketAddr,
    pub probe: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts `mlguard serve ARGS` (listeners on 127.0.0.1:0 are added) and waits for
    /// /readyz. `args` are the command-line flags a user would pass.
    pub async fn start(args: &[&str]) -> TestServer {
        let server = TestServer::spawn(args).await;
        server.wait_ready().await;
        server
    }

    /// Starts `mlguard serve ARGS` without waiting for readiness.
    pub async fn spawn(args: &[&str]) -> TestServer {
        let mut full = vec!["mlguard", "serve"];
        full.extend_from_slice(args);
        // Tests that run inside a pod must not watch the cluster they run in.
        if !args
            .iter()
            .any(|a| a.starts_with("--cluster-state") || a.starts_with("--kubeconfig"))
        {
            full.extend(["--cluster-state", "none"]);
        }
        let Command::Serve(serve) = Cli::try_parse_from(full).unwrap().command else {
            unreachable!()
        };
        let config = ServeConfig::from_args(&serve).unwrap();
        let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listeners = Listeners::bind(localhost, localhost).await.unwrap();
        let webhook = listeners.webhook.local_addr().unwrap();
        let probe = listeners.probe.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(run(config, listeners, async move {
            let _ = stopped.await;
        }));
        TestServer {
            webhook,
            probe,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http_get(self.probe, "/readyz").await {
                return;
            }
            assert!(Instant::now() < deadline, "mlguard did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends the shutdown signal and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.handle.take().unwrap())
            .await
            .expect("mlguard did not stop within 30 s")
            .unwrap()
    }
}

/// A plain HTTP GET on the probe port: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A client TLS configuration that trusts only `ca_pem`, as the API server trusts only the
/// webhook configuration's caBundle.
pub fn trusting(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    trusting_over(ca_pem, rustls::DEFAULT_VERSIONS)
}

/// As [`trusting`], limited to the given TLS versions.
pub fn trusting_over(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One kept-alive HTTPS connection, as the API server's webhook client holds them.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The certificate the server presented (DER), to tell rotations apart.
    pub server_cert: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Conn, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from(SERVICE_DNS).unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let server_cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            server_cert,
        })
    }

    /// POSTs `body` to `path`; (status, body).
    pub async fn post(&mut self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        self.sender.ready().await.unwrap();
        let req = hyper::Request::post(path)
            .header("host", SERVICE_DNS)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, body)
    }

    /// POSTs an AdmissionReview and returns the reply's `response`, checking what the API
    /// server checks: HTTP 200, the same apiVersion and kind, the same uid.
    pub async fn review(&mut self, path: &str, review: &Json) -> Json {
        let (status, body) = self
            .post(
                path,
                "application/json",
                serde_json::to_vec(review).unwrap(),
            )
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let reply: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(reply["kind"], "AdmissionReview");
        assert_eq!(reply["response"]["uid"], review["request"]["uid"]);
        reply["response"].clone()
    }
}

/// The JSON patch of a response. The AdmissionReview API documents `patch` (Go's `[]byte`)
/// as a base64 string, and mlguard sends that form; anything else fails the test.
pub fn patch_of(response: &Json) -> Option<json_patch::Patch> {
    let bytes: Vec<u8> = match &response["patch"] {
        Json::Null => return None,
        Json::String(b64) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        }
        other => panic!("patch is not a base64 string: {other}"),
    };
    assert_eq!(response["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// The warnings of a response, as kubectl prints them; none when it has none. A warning that
/// is not a string fails the test.
pub fn warnings_of(response: &Json) -> Vec<&str> {
    match &response["warnings"] {
        Json::Null => Vec::new(),
        Json::Array(list) => list
            .iter()
            .map(|w| w.as_str().expect("a warning is a string"))
            .collect(),
        other => panic!("warnings is not a list: {other}"),
    }
}

/// Applies the response's patch to `object`, as the API server does.
pub fn apply(object: &Json, response: &Json) -> Json {
    let mut out = object.clone();
    if let Some(patch) = patch_of(response) {
        json_patch::patch(&mut out, &patch).unwrap();
    }
    out
}

/// A directory laid out as the kubelet lays out a Secret or ConfigMap volume: the files live
/// in a timestamped directory, `..data` links to it, and each visible name links through
/// `..data`. An update writes a new directory and renames a new `..data` link over the old
/// one, atomically.
pub struct KubeletVolume {
    pub root: PathBuf,
    generation: u32,
    names: Vec<String>,
}

impl KubeletVolume {
    pub fn new(root: &Path, files: &[(&str, String)]) -> KubeletVolume {
        let mut volume = KubeletVolume {
            root: root.to_path_buf(),
            generation: 0,
            names: Vec::new(),
        };
        volume.update(files);
        volume
    }

    /// Replaces the volume's content the way the kubelet does.
    #[cfg(unix)]
    pub fn update(&mut self, files: &[(&str, String)]) {
        use std::os::unix::fs::symlink;
        self.generation += 1;
        let dir_name = format!(
            "..2026_11_23_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        let dir = self.root.join(&dir_name);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in files {
            std::fs::write(dir.join(name), body).unwrap();
        }
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&dir_name, &tmp).unwrap();
        let old = std::fs::read_link(self.root.join("..data")).ok();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        let names: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
        for name in &names {
            let link = self.root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        for gone in self.names.iter().filter(|n| !names.contains(n)) {
            let _ = std::fs::remove_file(self.root.join(gone));
        }
        self.names = names;
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(self.root.join(old));
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// Polls `check` until it holds, for at most 15 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until a new connection's answer to `review` at /validate says `allowed`: what a
/// policy reload changes is seen by connections opened after it.
pub async fn eventually_validated(
    what: &str,
    addr: SocketAddr,
    ca: &str,
    review: &Json,
    allowed: bool,
) {
    eventually(what, || {
        let (ca, review) = (ca.to_string(), review.clone());
        async move {
            let mut c = Conn::open(addr, trusting(&ca)).await.unwrap();
            c.review("/validate", &review).await["allowed"] == allowed
        }
    })
    .await;
}

/// The value of one sample line (`name{labels}`) in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A server on certificates of its own CA, as a cluster's Secret holds them; `ca` is what a
/// client (the API server) trusts.
pub struct TlsSetup {
    pub server: TestServer,
    pub ca: String,
    _dir: tempfile::TempDir,
}

/// Starts `mlguard serve` with `--tls-cert`/`--tls-key` from a fresh CA, plus `extra` flags.
pub async fn with_own_ca(extra: &[&str]) -> TlsSetup {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = TestServer::start(&args).await;
    TlsSetup {
        server,
        ca,
        _dir: dir,
    }
}

/// A POST to /validate declaring a body of `declared` bytes of which only `sent` arrives: the
/// connection is left open, as a client that stalls.
pub async fn stalled_upload(
    s: &TlsSetup,
    declared: usize,
    sent: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let tcp = TcpStream::connect(s.server.webhook).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVICE_DNS).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(trusting(&s.ca))
        .connect(name, tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /validate HTTP/1.1\r\nhost: {SERVICE_DNS}\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n{sent}"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

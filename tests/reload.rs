//! Hot reload as it happens in a cluster: the kubelet swaps the `..data` symlink of the
//! mounted Secret (certificate) or ConfigMap (policies) while the API server keeps calling.
//! New connections see the new certificate and new policies, old connections keep working,
//! no request fails, and a broken update keeps the last good state serving.
#![cfg(unix)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{eventually, fixture, http_get, metric, trusting, Conn, KubeletVolume, TestServer};
use mlguard::certs::{generate, service_dns_names, CertBundle};
use serde_json::Value as Json;

fn bundle() -> CertBundle {
    generate(&service_dns_names("mlguard", "mlguard-system"), &[]).unwrap()
}

fn secret(b: &CertBundle) -> Vec<(&'static str, String)> {
    vec![
        ("ca.crt", b.ca_pem.clone()),
        ("tls.crt", b.cert_pem.clone()),
        ("tls.key", b.key_pem.clone()),
    ]
}

/// Keeps calling /validate on fresh connections until stopped; counts failures. Trusts both
/// CAs, as an API server does while its caBundle holds the old and the new CA.
fn spawn_caller(
    addr: std::net::SocketAddr,
    cas: String,
    stop: Arc<AtomicBool>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    let review: Json = serde_json::from_slice(&fixture("gpu-job.json")).unwrap();
    let handle = tokio::spawn(async move {
        let tls = trusting(&cas);
        while !stop.load(Ordering::Relaxed) {
            match Conn::open(addr, tls.clone()).await {
                Ok(mut conn) => {
                    let (status, _) = conn
                        .post(
                            "/validate",
                            "application/json",
                            serde_json::to_vec(&review).unwrap(),
                        )
                        .await;
                    if status == 200 { &ok2 } else { &failed2 }.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    failed2.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    (handle, ok, failed)
}

#[tokio::test]
async fn certificate_rotation_through_a_symlink_swap_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (bundle(), bundle());
    let mut volume = KubeletVolume::new(dir.path(), &secret(&old));
    let (cert, key) = (volume.path("tls.crt"), volume.path("tls.key"));
    let server = TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--reload-interval",
        "0.05",
    ])
    .await;
    let review: Json = serde_json::from_slice(&fixture("gpu-job.json")).unwrap();
    let mut kept_open = Conn::open(server.webhook, trusting(&old.ca_pem))
        .await
        .unwrap();
    assert_eq!(
        kept_open.review("/validate", &review).await["allowed"],
        true
    );

    let stop = Arc::new(AtomicBool::new(false));
    let both = format!("{}{}", old.ca_pem, new.ca_pem);
    let (caller, ok, failed) = spawn_caller(server.webhook, both, stop.clone());

    volume.update(&secret(&new));
    let only_new = trusting(&new.ca_pem);
    eventually("the new certificate on new connections", || {
        let tls = only_new.clone();
        async move { Conn::open(server.webhook, tls).await.is_ok() }
    })
    .await;
    // The connection opened before the rotation keeps its session and keeps working.
    assert_eq!(
        kept_open.review("/validate", &review).await["allowed"],
        true
    );

    // A broken update (key of another pair) is refused; the new certificate keeps serving.
    let mut broken = secret(&new);
    broken[2].1 = old.key_pem.clone();
    volume.update(&broken);
    eventually("the failed reload to be counted", || async {
        let (_, m) = http_get(server.probe, "/metrics").await.unwrap();
        metric(&m, r#"mlguard_certificate_reloads_total{result="failure"}"#) == Some(1.0)
    })
    .await;
    let (_, status) = http_get(server.probe, "/status").await.unwrap();
    let status: Json = serde_json::from_str(&status).unwrap();
    let error = status["certificate"]["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("does not belong to the certificate"),
        "{error}"
    );
    let mut after = Conn::open(server.webhook, only_new.clone()).await.unwrap();
    assert_eq!(after.review("/validate", &review).await["allowed"], true);
    assert_eq!(http_get(server.probe, "/readyz").await.unwrap().0, 200);

    stop.store(true, Ordering::Relaxed);
    caller.await.unwrap();
    let (_, m) = http_get(server.probe, "/metrics").await.unwrap();
    assert_eq!(
        metric(&m, r#"mlguard_certificate_reloads_total{result="success"}"#),
        Some(1.0)
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the rotation"
    );
    server.stop().await.unwrap();
}

fn default_policies() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn as_files(v: &[(String, String)]) -> Vec<(&str, String)> {
    v.iter().map(|(n, b)| (n.as_str(), b.clone())).collect()
}

#[tokio::test]
async fn policy_changes_through_a_symlink_swap_apply_and_a_broken_set_keeps_the_last_good_one() {
    let certs = tempfile::tempdir().unwrap();
    let ca = common::write_certs(certs.path());
    let policies = tempfile::tempdir().unwrap();
    let mut files = default_policies();
    let mut volume = KubeletVolume::new(policies.path(), &as_files(&files));
    let server = TestServer::start(&[
        "--tls-cert",
        certs.path().join("tls.crt").to_str().unwrap(),
        "--tls-key",
        certs.path().join("tls.key").to_str().unwrap(),
        "--policies",
        policies.path().to_str().unwrap(),
        "--reload-interval",
        "0.05",
    ])
    .await;
    let job: Json = serde_json::from_slice(&fixture("gpu-job.json")).unwrap();
    let mut conn = Conn::open(server.webhook, trusting(&ca)).await.unwrap();
    assert_eq!(conn.review("/validate", &job).await["allowed"], true);

    let stop = Arc::new(AtomicBool::new(false));
    let (caller, ok, failed) = spawn_caller(server.webhook, ca.clone(), stop.clone());

    // A new policy: Jobs need a team label.
    files.push((
        "team_label.rego".into(),
        "package mlguard.policies.team_label\n\nimport rego.v1\n\n\
         deny contains \"Jobs need a team label\" if {\n  not input.review.object.metadata.labels.team\n}\n"
            .into(),
    ));
    volume.update(&as_files(&files));
    common::eventually_validated("the new policy to decide", server.webhook, &ca, &job, false)
        .await;
    let response = conn.review("/validate", &job).await;
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("[team_label] Jobs need a team label"),
        "{response}"
    );
    let (_, m) = http_get(server.probe, "/metrics").await.unwrap();
    assert_eq!(metric(&m, "mlguard_policy_generation"), Some(2.0));

    // A broken set: the previous one (with team_label) keeps deciding.
    files.push((
        "zz_broken.rego".into(),
        "package mlguard.policies.zz\n\nimport rego.v1\n\ndeny contains x if {\n".into(),
    ));
    volume.update(&as_files(&files));
    eventually("the failed reload to be counted", || async {
        let (_, m) = http_get(server.probe, "/metrics").await.unwrap();
        metric(&m, r#"mlguard_policy_reloads_total{result="failure"}"#) == Some(1.0)
    })
    .await;
    let (_, status) = http_get(server.probe, "/status").await.unwrap();
    let status: Json = serde_json::from_str(&status).unwrap();
    assert!(
        status["policies"]["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("zz_broken.rego"),
        "{status}"
    );
    assert_eq!(status["policies"]["generation"], 2);
    assert_eq!(conn.review("/validate", &job).await["allowed"], false);
    assert_eq!(http_get(server.probe, "/readyz").await.unwrap().0, 200);

    stop.store(true, Ordering::Relaxed);
    caller.await.unwrap();
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the policy swaps"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn readiness_fails_while_the_served_certificate_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["mlguard.mlguard-system.svc".into()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    let server = TestServer::spawn(&[
        "--tls-cert",
        dir.path().join("tls.crt").to_str().unwrap(),
        "--tls-key",
        dir.path().join("tls.key").to_str().unwrap(),
    ])
    .await;
    eventually("a readiness answer", || async {
        matches!(http_get(server.probe, "/readyz").await, Ok((503, ref b)) if b.contains("expired"))
    })
    .await;
    server.stop().await.unwrap();
}

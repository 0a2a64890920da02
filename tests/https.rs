//! mlguard over real HTTPS, as the API server calls it: a client that trusts only the
//! generated CA and checks the Service DNS name, real AdmissionReview v1 fixtures with
//! managedFields, and the returned patch applied to the object.

mod common;

use common::{
    apply, fixture, http_get, patch_of, trusting, with_own_ca, write_certs, Conn, TlsSetup,
};
use serde_json::{json, Value as Json};

async fn setup(extra: &[&str]) -> TlsSetup {
    with_own_ca(extra).await
}

fn with_object(review: &Json, object: &Json) -> Json {
    let mut r = review.clone();
    r["request"]["object"] = object.clone();
    r
}

#[tokio::test]
async fn a_gpu_pod_is_mutated_the_patch_applies_and_mutating_again_changes_nothing() {
    let s = setup(&[]).await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let review: Json = serde_json::from_slice(&fixture("gpu-training-pod.json")).unwrap();
    let object = &review["request"]["object"];

    let response = conn.review("/mutate", &review).await;
    assert_eq!(response["allowed"], true);
    let mutated = apply(object, &response);

    let tolerations = mutated["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(
        tolerations.len(),
        3,
        "the two default tolerations stay: {tolerations:?}"
    );
    assert!(tolerations
        .contains(&json!({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})));
    let terms = &mutated["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][0]["key"],
        "nvidia.com/gpu.present"
    );
    let mounts = mutated["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/dev/shm"),
        "{mounts:?}"
    );
    assert_eq!(mounts.len(), 2, "the service-account mount stays");
    let volumes = mutated["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.contains(&json!({"name": "mlguard-dshm", "emptyDir": {"medium": "Memory"}})));
    assert_eq!(
        mutated["metadata"]["managedFields"], object["metadata"]["managedFields"],
        "the patch leaves what policies never read alone"
    );

    // reinvocationPolicy: IfNeeded sends the mutated object again: nothing more to do.
    let again = conn
        .review("/mutate", &with_object(&review, &mutated))
        .await;
    assert_eq!(again["allowed"], true);
    assert!(
        patch_of(&again).is_none(),
        "second mutation patched: {again}"
    );

    let validated = conn
        .review("/validate", &with_object(&review, &mutated))
        .await;
    assert_eq!(validated["allowed"], true, "{validated}");
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_denial_is_http_200_with_status_403_naming_every_violation() {
    let s = setup(&[]).await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let review: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    let response = conn.review("/validate", &review).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(response["status"]["reason"], "Forbidden");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("mlguard denied Pod default/notebook: [gpu_limits] ")
            && message
                .contains(r#"container "trainer" requests 2 nvidia.com/gpu but sets no limit"#),
        "{message}"
    );
    // Warnings travel with the denial: the memory limit, and the playbook's CPU request.
    let warnings = common::warnings_of(&response);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("[gpu_memory_limit] ")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().all(|w| w.starts_with('[')),
        "every warning names its policy: {warnings:?}"
    );
    assert!(patch_of(&response).is_none(), "validation never patches");
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn jobs_get_ttl_and_deadline_said_in_a_warning_and_workload_templates_are_not_mutated() {
    let s = setup(&[]).await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();

    let job: Json = serde_json::from_slice(&fixture("gpu-job.json")).unwrap();
    let response = conn.review("/mutate", &job).await;
    let mutated = apply(&job["request"]["object"], &response);
    assert_eq!(mutated["spec"]["ttlSecondsAfterFinished"], 86400);
    assert_eq!(mutated["spec"]["activeDeadlineSeconds"], 259200);
    assert_eq!(
        mutated["spec"]["template"],
        job["request"]["object"]["spec"]["template"]
    );
    // The mutating webhook's answer says what changes how the Job runs: its deadline.
    let warnings = response["warnings"].to_string();
    assert!(
        warnings.contains("mlguard set spec.activeDeadlineSeconds=259200 (3 days)"),
        "{response}"
    );

    // A Deployment is judged whole, and its pod template is never patched.
    let deployment: Json = serde_json::from_slice(&fixture("deployment.json")).unwrap();
    for path in ["/mutate", "/validate"] {
        let response = conn.review(path, &deployment).await;
        assert!(patch_of(&response).is_none(), "{response}");
    }
    let mut delete: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    delete["request"]["operation"] = json!("DELETE");
    assert_eq!(conn.review("/validate", &delete).await["allowed"], true);
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers_and_the_server_keeps_serving() {
    let s = setup(&[]).await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let json_type = "application/json";

    let (status, body) = conn
        .post("/validate", json_type, b"{not json".to_vec())
        .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not valid JSON"));

    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec();
    let (status, body) = conn.post("/validate", json_type, no_request).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("no `request`"));

    let no_uid = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#.to_vec();
    let (status, body) = conn.post("/mutate", json_type, no_uid).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("no `uid`"));

    let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec();
    let (status, body) = conn.post("/mutate", json_type, v1beta1).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("admissionReviewVersions: [v1]"));

    let (status, _) = conn
        .post("/mutate", "text/plain", fixture("gpu-job.json"))
        .await;
    assert_eq!(status, 415);

    let mut huge = fixture("gpu-job.json");
    huge.resize(mlguard::serve::MAX_BODY_BYTES + 1, b' ');
    let mut fresh = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let (status, _) = fresh.post("/mutate", json_type, huge).await;
    assert_eq!(status, 413);

    // Still up, and the same connection still answers.
    let review: Json = serde_json::from_slice(&fixture("gpu-job.json")).unwrap();
    assert_eq!(conn.review("/validate", &review).await["allowed"], true);

    let (status, metrics) = http_get(s.server.probe, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"mlguard_admission_requests_total{endpoint="validate",kind="",operation="",outcome="error"} 2"#),
        "{metrics}"
    );
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn tls_is_trusted_only_through_the_ca_and_the_service_name() {
    let s = setup(&[]).await;
    // Another CA: the handshake fails, as it does for an API server with a stale caBundle.
    let other = tempfile::tempdir().unwrap();
    let other_ca = write_certs(other.path());
    let err = Conn::open(s.server.webhook, trusting(&other_ca))
        .await
        .err()
        .unwrap();
    // Both CAs share a name, so rustls reports the signature, not the issuer.
    assert!(err.contains("invalid peer certificate"), "{err}");

    // TLS 1.2, which older API servers may negotiate, works; the server speaks HTTP/1.1.
    let v12 = common::trusting_over(&s.ca, &[&rustls::version::TLS12]);
    let mut conn = Conn::open(s.server.webhook, v12).await.unwrap();
    let review: Json = serde_json::from_slice(&fixture("deployment.json")).unwrap();
    assert_eq!(conn.review("/validate", &review).await["allowed"], true);
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn probes_report_health_readiness_and_metrics() {
    let s = setup(&[]).await;
    assert_eq!(http_get(s.server.probe, "/healthz").await.unwrap().0, 200);
    let (status, body) = http_get(s.server.probe, "/readyz").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));

    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let review: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    for _ in 0..3 {
        conn.review("/validate", &review).await;
    }
    conn.review("/mutate", &review).await;
    let (_, metrics) = http_get(s.server.probe, "/metrics").await.unwrap();
    for line in [
        r#"mlguard_admission_requests_total{endpoint="validate",kind="Pod",operation="CREATE",outcome="denied"} 3"#,
        r#"mlguard_admission_requests_total{endpoint="mutate",kind="Pod",operation="CREATE",outcome="patched"} 1"#,
        r#"mlguard_policy_violations_total{policy="gpu_limits",action="deny"} 3"#,
        r#"mlguard_policy_violations_total{policy="gpu_memory_limit",action="warn"} 3"#,
        r#"mlguard_admission_request_duration_seconds_count{endpoint="validate"} 3"#,
        "mlguard_policy_generation 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let (status, body) = http_get(s.server.probe, "/status").await.unwrap();
    assert_eq!(status, 200);
    let status: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(status["policies"]["evaluator"], "vm");
    assert_eq!(status["ready"], "ready");
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_with_keep_alive_connections_open() {
    let s = setup(&[]).await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let review: Json = serde_json::from_slice(&fixture("gpu-job.json")).unwrap();
    assert_eq!(conn.review("/validate", &review).await["allowed"], true);
    // The idle keep-alive connection must not hold the shutdown up until the drain timeout.
    let started = std::time::Instant::now();
    s.server.stop().await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

//! What no single request may do, checked through the real HTTPS server as the API server
//! would call it: take memory in proportion to anything but its size, hold a connection with a
//! body that never arrives, keep the answer past the review's deadline, or be admitted because
//! mlguard could not read it. The figures (peak memory, latencies under load) are measured by
//! scripts/hardening.sh against the release binary, not here.

mod common;

use std::time::{Duration, Instant};

use common::{fixture, repo, stalled_upload, trusting, with_own_ca, Conn, TlsSetup};
use serde_json::{json, Value as Json};
use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, MutexGuard};

/// The tests of this file run one at a time. Their servers share this process, and with it the
/// process-wide memory limit regorus enforces (`--memory-limit`): an 8 MB review or a policy
/// that builds large arrays in one test would otherwise count against another test's policy
/// load or evaluation, and make it fail for a reason that is not its own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn alone() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

async fn setup(extra: &[&str]) -> TlsSetup {
    with_own_ca(extra).await
}

fn pod_review(uid: &str, object: Json) -> Json {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ml", "name": "p", "operation": "CREATE",
            "userInfo": {"username": "alice"}, "object": object
        }
    })
}

/// A forged review of an 8 MB ConfigMap that leaves the names out: no policy reads a
/// ConfigMap, and naming it must not build it. The next, ordinary review is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_unnamed_review_no_policy_reads_is_answered_without_building_it() {
    let _alone = alone().await;
    let s = setup(&[]).await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    // Written as text: built as a JSON value in this process, the test itself would take
    // a hundred MB.
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"big","kind":{{"group":"","version":"v1","kind":"ConfigMap"}},"resource":{{"group":"","version":"v1","resource":"configmaps"}},"operation":"CREATE","object":{{"metadata":{{"generateName":"web-","namespace":"ml"}},"data":{{"x":[{}1]}}}}}}}}"#,
        "1,".repeat(3_500_000)
    );
    assert!(body.len() > 7_000_000);
    let started = Instant::now();
    let (status, reply) = conn
        .post("/validate", "application/json", body.into_bytes())
        .await;
    assert_eq!(status, 200);
    let reply: Json = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["response"]["allowed"], true, "{reply}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let pod: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    let response = conn.review("/validate", &pod).await;
    assert_eq!(response["allowed"], false, "{response}");
}

/// An object of one-character values would cost tens of times its size to build: it is
/// refused with a denial that says so, never evaluated as if it were empty. In the envelope,
/// where no reply can be built without it, it is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_beyond_what_the_size_allows_are_refused_with_the_reason() {
    let _alone = alone().await;
    let s = setup(&[]).await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let dense = json!({"metadata": {"name": "p", "namespace": "ml"},
        "spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"limits": {"nvidia.com/gpu": "1"}}}], "x": vec![1; 200_000]}});
    let response = conn.review("/validate", &pod_review("dense", dense)).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("more values than its size allows"),
        "{message}"
    );
    assert!(message.contains("does not admit"), "{message}");

    let mut envelope = pod_review("dense-envelope", json!({"metadata": {"name": "p"}}));
    envelope["request"]["options"] = json!(vec![1; 200_000]);
    let (status, body) = conn
        .post(
            "/validate",
            "application/json",
            serde_json::to_vec(&envelope).unwrap(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("more values than its size allows"));
}

/// A number mlguard cannot represent: the same, a denial naming the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_mlguard_cannot_read_is_denied_never_admitted_as_empty() {
    let _alone = alone().await;
    let s = setup(&[]).await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"ml","name":"p","operation":"CREATE","object":{"metadata":{"name":"p"},"spec":{"priority":1e400,"containers":[{"name":"c","image":"i","resources":{"limits":{"nvidia.com/gpu":"8"}}}]}}}}"#;
    let (status, reply) = conn
        .post("/validate", "application/json", body.to_vec())
        .await;
    assert_eq!(status, 200);
    let reply: Json = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["response"]["allowed"], false);
    let message = reply["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot read the review's `object`"),
        "{message}"
    );
    assert!(message.contains("out of range"), "{message}");
}

/// A body that stops arriving is cut off at the body timeout with a 408, and the server goes
/// on answering everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_cut_off() {
    let _alone = alone().await;
    let s = setup(&["--body-timeout", "0.5"]).await;
    let mut tls = stalled_upload(&s, 1_000_000, r#"{"apiVersion":"#).await;
    let started = Instant::now();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut answer))
        .await
        .expect("the server answered within its body timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let pod: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    assert_eq!(conn.review("/validate", &pod).await["allowed"], false);
}

fn slow_pod(uid: &str) -> Json {
    pod_review(
        uid,
        json!({"metadata": {"name": "p", "namespace": "ml", "labels": {"slow": "yes"}},
               "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
}

/// A review whose evaluation outlasts the deadline gets the deadline answer in time: a
/// denial by default, naming the deadline; with `--on-deadline warn`, an admission that says
/// so in a warning and an audit annotation. Never a silent admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_past_its_deadline_gets_the_deadline_answer() {
    let _alone = alone().await;
    let policies = repo().join("tests/fixtures/policies-slow");
    for (answer, allowed) in [("deny", false), ("warn", true)] {
        let s = setup(&[
            "--no-default-policies",
            "--policies",
            policies.to_str().unwrap(),
            "--review-deadline",
            "0.1",
            "--on-deadline",
            answer,
        ])
        .await;
        let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
        let started = Instant::now();
        let response = conn.review("/validate", &slow_pod(answer)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(response["allowed"], allowed, "{response}");
        let text = response.to_string();
        assert!(text.contains("review deadline"), "{text}");
        if allowed {
            assert!(response["warnings"][0]
                .as_str()
                .unwrap()
                .contains("WITHOUT its policy checks"));
            assert!(response["auditAnnotations"]["not-evaluated"].is_string());
        } else {
            assert_eq!(response["status"]["code"], 500);
        }
        s.server.stop().await.unwrap();
    }
}

/// While expensive reviews run, the probes and an ordinary review are still answered: the
/// evaluation runs on the blocking pool, not on the threads that accept connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_cheap_reviews_are_answered_while_expensive_ones_run() {
    let _alone = alone().await;
    let policies = repo().join("tests/fixtures/policies-slow");
    let s = setup(&[
        "--no-default-policies",
        "--policies",
        policies.to_str().unwrap(),
        "--review-deadline",
        "2",
    ])
    .await;
    let mut slow = Vec::new();
    for i in 0..4 {
        let (addr, ca) = (s.server.webhook, s.ca.clone());
        slow.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr, trusting(&ca)).await.unwrap();
            conn.review("/validate", &slow_pod(&format!("slow-{i}")))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = common::http_get(s.server.probe, "/healthz").await.unwrap();
    assert_eq!(status, 200);
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let cheap = pod_review(
        "cheap",
        json!({"metadata": {"name": "q", "namespace": "ml"},
               "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    );
    assert_eq!(conn.review("/validate", &cheap).await["allowed"], true);
    // Each slow review finished (the policy denies nothing), got the deadline answer, or, on a
    // slow machine, hit the per-policy evaluation time or memory limit, a denial naming it.
    for task in slow {
        let response = task.await.unwrap();
        let text = response.to_string();
        let stopped = response["allowed"] == false
            && (text.contains("review deadline")
                || text.contains("exceeded time limit")
                || text.contains("exceeded memory limit"));
        assert!(response["allowed"] == true || stopped, "{response}");
    }
}

/// A policy set that would grow without bound is refused at load, quickly, with the reason;
/// the server never starts on it (and a reload keeps the last good set; see tests/reload.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_grows_without_bound_is_refused_at_load() {
    let _alone = alone().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("huge.rego"),
        "package mlguard.policies.huge\n\nimport rego.v1\n\n\
         deny contains \"big\" if {\n\tcount(numbers.range(1, 20000000)) > 0\n\tinput.review.kind.kind == \"Pod\"\n}\n",
    )
    .unwrap();
    let args = [
        "mlguard",
        "serve",
        "--no-default-policies",
        "--policies",
        dir.path().to_str().unwrap(),
        "--cluster-state",
        "none",
    ];
    let mlguard::cli::Command::Serve(serve) =
        <mlguard::cli::Cli as clap::Parser>::try_parse_from(args)
            .unwrap()
            .command
    else {
        unreachable!()
    };
    let config = mlguard::config::ServeConfig::from_args(&serve).unwrap();
    let localhost = "127.0.0.1:0".parse().unwrap();
    let listeners = mlguard::serve::Listeners::bind(localhost, localhost)
        .await
        .unwrap();
    let started = Instant::now();
    let err = mlguard::serve::run(config, listeners, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("memory limit"), "{err}");
    assert!(err.contains("policy huge"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Before its body is read, a review takes its share of the review memory by its declared
/// size. An 8 MB upload takes almost all of it: a small review still finds its share and is
/// answered at once, while a second 8 MB upload waits until the first lets go of its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_waits_for_its_share_of_the_review_memory() {
    let _alone = alone().await;
    let s = setup(&["--review-deadline", "1", "--body-timeout", "2"]).await;
    let stall = || stalled_upload(&s, 8_000_000, "[");
    let answered = |mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>| async move {
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        (
            Instant::now(),
            String::from_utf8_lossy(&answer[..n]).to_string(),
        )
    };
    let first = stall().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = stall().await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let small: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    let started = Instant::now();
    assert_eq!(conn.review("/validate", &small).await["allowed"], false);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let (first_at, first) = answered(first).await;
    let (second_at, second) = answered(second).await;
    assert!(first.starts_with("HTTP/1.1 408"), "{first}");
    assert!(
        second.starts_with("HTTP/1.1 408") || second.starts_with("HTTP/1.1 503"),
        "{second}"
    );
    assert!(
        second_at >= first_at,
        "the second upload was answered before the first let go"
    );
}

//! Operating mlguard as a cluster admin does, over real HTTPS as the API server calls it:
//! exemptions (configured in the policy configuration, reloaded without a restart, counted
//! and annotated), and policy layers (the embedded defaults plus the admin's directories,
//! each watched for changes).

mod common;

use common::KubeletVolume;
use common::{
    eventually, eventually_validated, fixture, http_get, metric, patch_of, trusting, with_own_ca,
    Conn,
};
use serde_json::{json, Value as Json};

fn in_namespace(review: &Json, namespace: &str) -> Json {
    let mut r = review.clone();
    r["request"]["namespace"] = json!(namespace);
    r["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    r
}

fn as_user(review: &Json, username: &str, groups: &[&str]) -> Json {
    let mut r = review.clone();
    r["request"]["userInfo"] = json!({"username": username, "groups": groups});
    r
}

fn labelled(review: &Json, key: &str, value: &str) -> Json {
    let mut r = review.clone();
    r["request"]["object"]["metadata"]["labels"][key] = json!(value);
    r
}

const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: sandbox, labels: {mlguard.io/exempt: \"true\"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {tier: prod}}
";

fn exemptions_config(users: &str) -> String {
    format!(
        "exemptions:\n  users: [{users}]\n  groups: [platform-admins]\n  service_accounts: [ci/deployer]\n  \
         namespace_selector: {{matchLabels: {{mlguard.io/exempt: \"true\"}}}}\n"
    )
}

/// Every kind of exemption admits a review the policies would deny or patch, unchanged, with
/// an audit annotation naming it, a metric by reason and nothing admitted on its own say-so
/// otherwise; the section reloads, and a malformed one keeps the last good set serving.
#[tokio::test]
async fn exemptions_admit_unchanged_say_why_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let mut volume = KubeletVolume::new(
        &policies,
        &[("config.yaml", exemptions_config("breakglass@example.com"))],
    );
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, CLUSTER).unwrap();
    let s = with_own_ca(&[
        "--policies",
        policies.to_str().unwrap(),
        "--cluster-state",
        "snapshot",
        "--cluster-snapshot",
        cluster.to_str().unwrap(),
        "--reload-interval",
        "0.05",
    ])
    .await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let denied: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    let response = conn.review("/validate", &denied).await;
    assert_eq!(response["allowed"], false, "the control: {response}");
    assert!(response["auditAnnotations"].get("exempted").is_none());

    let cases = [
        (
            in_namespace(&denied, "kube-system"),
            "namespace kube-system",
        ),
        (in_namespace(&denied, "sandbox"), "namespace_label sandbox"),
        (
            as_user(&denied, "breakglass@example.com", &[]),
            "user breakglass@example.com",
        ),
        (
            as_user(&denied, "carol", &["platform-admins"]),
            "group platform-admins",
        ),
        (
            as_user(&denied, "system:serviceaccount:ci:deployer", &[]),
            "service_account ci/deployer",
        ),
        (
            labelled(&denied, "mlguard.io/exempt", "true"),
            "object_label mlguard.io/exempt=true",
        ),
    ];
    for (review, why) in &cases {
        for endpoint in ["/mutate", "/validate"] {
            let response = conn.review(endpoint, review).await;
            assert_eq!(response["allowed"], true, "{why} {endpoint}: {response}");
            assert!(patch_of(&response).is_none(), "{why}: no patch");
            assert!(response.get("warnings").is_none(), "{why}: no policy ran");
            assert_eq!(response["auditAnnotations"]["exempted"], *why);
        }
    }
    // What is not exempt goes to the policies: another namespace, a label with another value,
    // a namespace the cluster state does not hold (no labels to match).
    for review in [
        in_namespace(&denied, "prod"),
        labelled(&denied, "mlguard.io/exempt", "false"),
        in_namespace(&denied, "unknown"),
    ] {
        assert_eq!(conn.review("/validate", &review).await["allowed"], false);
    }
    let (_, m) = http_get(s.server.probe, "/metrics").await.unwrap();
    for reason in [
        "namespace",
        "namespace_label",
        "user",
        "group",
        "service_account",
        "object_label",
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("mlguard_reviews_exempted_total{{reason=\"{reason}\"}}")
            ),
            Some(2.0),
            "{reason}\n{m}"
        );
    }

    // The section reloads: another break-glass user, without a restart.
    volume.update(&[("config.yaml", exemptions_config("oncall@example.com"))]);
    let oncall = as_user(&denied, "oncall@example.com", &[]);
    eventually_validated(
        "the new exemption to apply",
        s.server.webhook,
        &s.ca,
        &oncall,
        true,
    )
    .await;
    let breakglass = as_user(&denied, "breakglass@example.com", &[]);
    assert_eq!(
        conn.review("/validate", &breakglass).await["allowed"],
        false
    );

    // A malformed section is refused, with what to fix; the last good set keeps serving.
    volume.update(&[(
        "config.yaml",
        "exemptions:\n  service_accounts: [deployer]\n".to_string(),
    )]);
    eventually("the failed reload", || async {
        let (_, m) = http_get(s.server.probe, "/metrics").await.unwrap();
        metric(&m, r#"mlguard_policy_reloads_total{result="failure"}"#) == Some(1.0)
    })
    .await;
    let (_, status) = http_get(s.server.probe, "/status").await.unwrap();
    let status: Json = serde_json::from_str(&status).unwrap();
    let error = status["policies"]["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("data.mlguard.config.exemptions")
            && error.contains("\"deployer\" is not NAMESPACE/NAME"),
        "{error}"
    );
    assert_eq!(conn.review("/validate", &oncall).await["allowed"], true);
    s.server.stop().await.unwrap();
}

const WARN_LIMITS: &str = "package mlguard.policies.gpu_limits\n\nimport rego.v1\n\n\
    warn contains \"limits are only advised here\" if input.review.kind.kind == \"Pod\"\n";

const TEAM_LABEL: &str = "package mlguard.policies.team_label\n\nimport rego.v1\n\n\
    deny contains \"Jobs need a team label\" if {\n  input.review.kind.kind == \"Job\"\n  \
    not input.review.object.metadata.labels.team\n}\n";

/// The defaults stay on under the admin's directories: a file replaces the default policy of
/// its package, a config.yaml merges over the defaults' (a map key by key), a new policy adds,
/// and every directory is watched.
#[tokio::test]
async fn policy_directories_layer_over_the_defaults_and_each_is_watched() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&second).unwrap();
    std::fs::write(first.join("limits.rego"), WARN_LIMITS).unwrap();
    std::fs::write(
        first.join("config.yaml"),
        "jobs:\n  ttl_seconds_after_finished: 600\n",
    )
    .unwrap();
    let mut volume = KubeletVolume::new(&second, &[]);
    let s = with_own_ca(&[
        "--policies",
        first.to_str().unwrap(),
        "--policies",
        second.to_str().unwrap(),
        "--reload-interval",
        "0.05",
    ])
    .await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();

    // gpu_limits is the admin's (a warning, not the default's denial); gpu_memory_limit and
    // the mutating defaults are still on.
    let pod: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    let response = conn.review("/validate", &pod).await;
    assert_eq!(response["allowed"], true, "{response}");
    let warnings = common::warnings_of(&response);
    assert!(
        warnings.contains(&"[gpu_limits] limits are only advised here"),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("[gpu_memory_limit] ")),
        "{warnings:?}"
    );

    // The admin's config.yaml changed one key of `jobs`; the others are the defaults'.
    let job: Json = serde_json::from_slice(&fixture("gpu-job.json")).unwrap();
    let mutated = common::apply(
        &job["request"]["object"],
        &conn.review("/mutate", &job).await,
    );
    assert_eq!(mutated["spec"]["ttlSecondsAfterFinished"], 600);
    assert_eq!(mutated["spec"]["activeDeadlineSeconds"], 259200);
    assert_eq!(conn.review("/validate", &job).await["allowed"], true);

    let (_, status) = http_get(s.server.probe, "/status").await.unwrap();
    let status: Json = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["policies"]["layers"],
        json!([
            "embedded",
            first.display().to_string(),
            second.display().to_string()
        ])
    );

    // A policy added to the second directory, picked up without a restart.
    volume.update(&[("team_label.rego", TEAM_LABEL.to_string())]);
    eventually_validated(
        "the added policy to decide",
        s.server.webhook,
        &s.ca,
        &job,
        false,
    )
    .await;
    let response = conn.review("/validate", &job).await;
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("[team_label] Jobs need a team label"),
        "{response}"
    );
    s.server.stop().await.unwrap();
}

/// With the defaults turned off, the first directory is the whole set, as before layering.
#[tokio::test]
async fn without_the_defaults_the_directory_is_the_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("team_label.rego"), TEAM_LABEL).unwrap();
    let s = with_own_ca(&[
        "--no-default-policies",
        "--policies",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let mut conn = Conn::open(s.server.webhook, trusting(&s.ca)).await.unwrap();
    let pod: Json = serde_json::from_slice(&fixture("gpu-pod-no-limit.json")).unwrap();
    let response = conn.review("/validate", &pod).await;
    assert_eq!(
        response["allowed"], true,
        "no default policy runs: {response}"
    );
    assert!(response.get("warnings").is_none(), "{response}");
    let job: Json = serde_json::from_slice(&fixture("gpu-job.json")).unwrap();
    assert!(patch_of(&conn.review("/mutate", &job).await).is_none());
    assert_eq!(conn.review("/validate", &job).await["allowed"], false);
    s.server.stop().await.unwrap();
}

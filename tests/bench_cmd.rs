//! `mlguard bench` as an admin runs it: the real binary on the review fixtures.

use std::path::Path;
use std::process::Command;

fn mlguard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mlguard"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn json_report_has_totals_reviews_and_policies() {
    let out = mlguard()
        .args([
            "bench",
            "--policies",
            "benches/policies",
            "-f",
            "tests/fixtures/reviews",
        ])
        .args([
            "--iterations",
            "3",
            "--concurrency",
            "2",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fixtures =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reviews"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count();
    assert_eq!(r["objects"], fixtures);
    assert_eq!(r["iterations"], 3);
    assert_eq!(r["concurrency"], 2);
    assert_eq!(r["total"]["reviews"], fixtures * 3 * 2, "{r:#}");
    for key in [
        "reviews_per_second",
        "p50_us",
        "p99_us",
        "alloc_bytes_per_review",
    ] {
        assert!(
            r["total"][key].as_f64().unwrap() > 0.0,
            "total.{key}: {r:#}"
        );
    }
    assert_eq!(r["reviews"].as_array().unwrap().len(), fixtures);
    let policies: Vec<&str> = r["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["gpu_limits", "gpu_toleration", "job_ttl"]);
    let shares: f64 = r["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["share_percent"].as_f64().unwrap())
        .sum();
    assert!((shares - 100.0).abs() < 1.0, "shares add up to {shares}");
    assert_eq!(r["memory"]["counted_allocations"], true);
    assert!(r["memory"]["peak_rss_kib"].as_u64().unwrap() > 0);
    assert_eq!(r["errors"], serde_json::json!([]));
}

#[test]
fn text_report_names_every_policy() {
    let out = mlguard()
        .args([
            "bench",
            "--policies",
            "benches/policies",
            "-f",
            "tests/fixtures/reviews/pod-gpu-job.json",
        ])
        .args(["-n", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "reviews/s",
        "per review (whole pipeline)",
        "Pod ml-team/llm-pretrain-8b-0-* (CREATE)",
        "per policy (evaluated alone)",
        "gpu_limits",
        "gpu_toleration",
        "job_ttl",
        "KiB",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn manifests_become_reviews() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pods.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    image: x\n    resources: {requests: {nvidia.com/gpu: 1}}\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: batch/v1, kind: Job, metadata: {name: j}, spec: {template: {spec: {containers: [{name: c, image: x}]}}}}\n",
    )
    .unwrap();
    let out = mlguard()
        .args([
            "bench",
            "--policies",
            "benches/policies",
            "-n",
            "1",
            "-o",
            "json",
            "--namespace",
            "ml",
        ])
        .arg("-f")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = r["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["review"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Pod ml/a (CREATE)", "Job ml/j (CREATE)"]);
}

#[test]
fn unreadable_policies_exit_2() {
    let out = mlguard()
        .args([
            "bench",
            "--policies",
            "/nonexistent",
            "-f",
            "tests/fixtures/reviews",
            "-n",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

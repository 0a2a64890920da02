//! `mlguard bench` as an admin runs it: the real binary on the review fixtures.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

/// `mlguard bench --policies POLICIES ARGS...`, run from the repository root.
fn bench<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(policies: &str, args: I) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlguard"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--no-default-policies", "--policies", policies])
        .args(args)
        .output()
        .unwrap()
}

/// Standard output of a run that must have succeeded.
fn stdout_of(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn json_report_has_totals_reviews_and_policies() {
    let out = bench(
        "benches/policies",
        [
            "-f",
            "tests/fixtures/reviews",
            "--iterations",
            "3",
            "--concurrency",
            "2",
            "--output",
            "json",
        ],
    );
    let r: serde_json::Value = serde_json::from_slice(&stdout_of(out)).unwrap();
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
    let out = bench(
        "benches/policies",
        ["-f", "tests/fixtures/reviews/pod-gpu-job.json", "-n", "2"],
    );
    let text = String::from_utf8(stdout_of(out)).unwrap();
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
    let out = bench(
        "benches/policies",
        [
            OsStr::new("-n"),
            OsStr::new("1"),
            OsStr::new("-o"),
            OsStr::new("json"),
            OsStr::new("--namespace"),
            OsStr::new("ml"),
            OsStr::new("-f"),
            manifest.as_os_str(),
        ],
    );
    let r: serde_json::Value = serde_json::from_slice(&stdout_of(out)).unwrap();
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
    let out = bench("/nonexistent", ["-f", "tests/fixtures/reviews", "-n", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

//! `mlguard audit` end to end: the built binary over real-world ML manifests in
//! tests/fixtures/audit/ with the test policies in tests/fixtures/audit-policies/, in every
//! output format, checking exit codes and contents.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value as Json;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn mlguard(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlguard"))
        .args(args)
        .env_remove("MLGUARD_POLICIES")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// `mlguard audit -f PATH --policies <test policies> EXTRA...`.
fn with_test_policies(path: &str, extra: &[&str], stdin: Option<&str>) -> Output {
    let policies = fixture("audit-policies");
    let mut args = vec![
        "audit",
        "-f",
        path,
        "--no-default-policies",
        "--policies",
        policies.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    mlguard(&args, stdin)
}

/// `mlguard audit` over the fixtures with the test policies and cluster snapshot.
fn audit(extra: &[&str]) -> Output {
    let (dir, cluster) = (fixture("audit"), fixture("audit-cluster.yaml"));
    let mut args = vec!["--cluster-snapshot", cluster.to_str().unwrap()];
    args.extend_from_slice(extra);
    with_test_policies(dir.to_str().unwrap(), &args, None)
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const SUMMARY: &str = "18 objects: 4 denied, 3 warned, 5 mutated, 2 clean, 3 skipped, 1 error";

#[test]
fn text_report_groups_objects_and_exits_1_on_denials() {
    let out = audit(&[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        !text.contains('\x1b'),
        "no colors when stdout is not a terminal"
    );
    assert_eq!(text.lines().last().unwrap(), SUMMARY, "{text}");
    for line in [
        "namespace ml-research",
        "namespace serving",
        "DENIED   Pod/jupyter-gpu",
        "DENIED   Deployment/llm-serve",
        "DENIED   Job/resnet-sweep",
        "DENIED   Pod/sneaky-gpu",
        "WARNED   Pod/scratch-notebook",
        "WARNED   Pod/trial-gpu",
        "MUTATED  CronJob/nightly-eval",
        "MUTATED  StatefulSet/ray-worker",
        "CLEAN    Pod/cpu-preprocess",
        "SKIPPED  Service/triton-inference",
        "ERROR    (no kind)",
        "not a Kubernetes object: no apiVersion and kind",
        "would-deny  [gpu_namespace] namespace trial does not allow GPUs",
        "Pod ml-research/ray-worker-0  mutated",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // The denial of a Deployment names the pod its ReplicaSet would create.
    assert!(
        text.contains("Pod serving/llm-serve-")
            && text.contains(
                "[gpu_limits] container \"tgi\" requests 2 nvidia.com/gpu without a limit"
            ),
        "{text}"
    );
    // Grouped by namespace: every namespace heading appears once, in order.
    let headings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("namespace "))
        .collect();
    let mut sorted = headings.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(headings, sorted);
}

fn json_report(extra: &[&str]) -> (Output, Json) {
    let mut args = vec!["-o", "json"];
    args.extend_from_slice(extra);
    let out = audit(&args);
    let v: Json = serde_json::from_str(&stdout(&out)).expect("the JSON report parses");
    (out, v)
}

fn object<'a>(report: &'a Json, kind: &str, name: &str) -> &'a Json {
    report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == kind && o["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the report"))
}

#[test]
fn json_report_follows_the_documented_schema() {
    let (out, v) = json_report(&["--show-patched"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["schemaVersion"], 1);
    assert_eq!(v["mode"], "enforce");
    let s = &v["summary"];
    assert_eq!(
        [
            &s["objects"],
            &s["denied"],
            &s["warned"],
            &s["mutated"],
            &s["clean"],
            &s["skipped"],
            &s["errors"]
        ],
        [18, 4, 3, 5, 2, 3, 1]
    );
    let pod = object(&v, "Pod", "pytorch-train");
    assert_eq!(pod["status"], "mutated");
    assert_eq!(pod["apiVersion"], "v1");
    assert!(pod["file"].as_str().unwrap().ends_with("audit/pods.yaml"));
    assert_eq!(pod["index"], 1);
    let a = &pod["admissions"][0];
    assert_eq!(a["patch"][1]["policy"], "gpu_toleration");
    assert_eq!(
        a["patched"]["spec"]["tolerations"][0]["key"],
        "nvidia.com/gpu"
    );

    // A CronJob: its Job is left alone (owned by a CronJob), its pod is mutated and belongs
    // to that Job, as the controllers would create them.
    let cron = object(&v, "CronJob", "nightly-eval");
    let (job, pod) = (&cron["admissions"][0], &cron["admissions"][1]);
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["status"], "clean");
    assert_eq!(pod["kind"], "Pod");
    let owner = &pod["patched"]["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Job");
    assert_eq!(owner["name"], job["name"]);
    assert_eq!(pod["patched"]["metadata"]["namespace"], "ml-research");

    // A Job's pods are made from the Job as mutated and stored.
    let bert = object(&v, "Job", "bert-finetune");
    assert_eq!(
        bert["admissions"][0]["patch"][0]["path"],
        "/spec/ttlSecondsAfterFinished"
    );
    assert_eq!(bert["admissions"][1]["name"], "bert-finetune-*");

    let denied = object(&v, "Deployment", "llm-serve");
    assert_eq!(denied["status"], "denied");
    assert!(denied["admissions"][0]["denials"][0]
        .as_str()
        .unwrap()
        .contains("[gpu_limits]"));

    let trial = object(&v, "Pod", "trial-gpu");
    assert_eq!(trial["status"], "warned");
    assert_eq!(
        trial["admissions"][0]["wouldDeny"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let skipped = object(&v, "ConfigMap", "training-config");
    assert_eq!(
        skipped["namespace"], "default",
        "--namespace default applies"
    );
    assert_eq!(skipped["status"], "skipped");

    let error = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["status"] == "error")
        .unwrap();
    assert!(error["kind"].is_null());
    assert!(error["file"]
        .as_str()
        .unwrap()
        .ends_with("not-k8s/values.yaml"));
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("not a Kubernetes object"));
}

/// Checks that `xml` is well-formed enough for a JUnit consumer: one root, balanced tags,
/// quoted attributes, no raw `<` or `&` outside markup and entities.
fn check_xml(xml: &str) -> Vec<String> {
    let body = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
        .expect("XML declaration");
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = body;
    while let Some(start) = rest.find('<') {
        let text = &rest[..start];
        assert!(!text.contains('>'), "raw > in text: {text}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
                "bad entity {entity}"
            );
        }
        let end = start + rest[start..].find('>').expect("unclosed tag");
        let tag = &rest[start + 1..end];
        assert!(!tag.contains('<'), "raw < in markup: {tag}");
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in {tag}"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else {
            let name = tag
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string();
            if stack.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
    assert_eq!(roots, 1);
    assert!(rest.trim().is_empty());
    let mut names = Vec::new();
    let mut s = body;
    while let Some(i) = s.find("<testcase ") {
        let tag = &s[i..i + s[i..].find('>').unwrap()];
        let name = tag
            .split(" name=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        names.push(name.to_string());
        s = &s[i + 1..];
    }
    names
}

#[test]
fn junit_report_is_well_formed_with_a_case_per_object() {
    let out = audit(&["-o", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    let xml = stdout(&out);
    let cases = check_xml(&xml);
    assert_eq!(cases.len(), 18, "{cases:?}");
    assert!(cases.contains(&"Deployment/llm-serve".to_string()));
    assert!(xml.contains(
        "<testsuites name=\"mlguard audit\" tests=\"18\" failures=\"4\" errors=\"1\" skipped=\"3\">"
    ), "{xml}");
    assert!(xml.contains("<testsuite name=\"namespace serving\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\">"), "{xml}");
    assert_eq!(xml.matches("<failure ").count(), 4);
    // Messages are escaped: the policy's quotes around the container name.
    assert!(
        xml.contains("container &quot;tgi&quot; requests 2 nvidia.com/gpu without a limit"),
        "{xml}"
    );
    assert!(xml.contains("<skipped message=\"Service is not admitted by mlguard"));
    assert!(xml.contains(
        "<error type=\"error\" message=\"not a Kubernetes object: no apiVersion and kind\">"
    ));
}

#[test]
fn broken_yaml_exits_2_naming_the_file_and_position() {
    let dir = fixture("audit-broken");
    let out = with_test_policies(dir.to_str().unwrap(), &[], None);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("audit-broken/pods.yaml: line 13, column 5"),
        "{err}"
    );
    assert!(
        stdout(&out).is_empty(),
        "no report when the input cannot be read"
    );
}

#[test]
fn usage_errors_exit_2() {
    let policies = fixture("audit-policies");
    let out = with_test_policies("/nonexistent/k8s", &[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/k8s: no such file or directory"));
    let out = mlguard(
        &[
            "audit",
            "--no-default-policies",
            "--policies",
            policies.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "-f is required");
    let out = audit(&["--cluster-snapshot", "/nonexistent/cluster.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/cluster.yaml"));
}

#[test]
fn stdin_manifests_use_the_given_namespace() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: gpu}\nspec:\n  containers:\n  - name: c\n    image: i\n    resources: {limits: {nvidia.com/gpu: 1, memory: 1Gi}}\n";
    let out = with_test_policies("-", &["--namespace", "team-a", "--show-patched"], Some(pod));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("namespace team-a\n  MUTATED  Pod/gpu") && text.contains("<stdin>#1"),
        "{text}"
    );
    // --show-patched: the mutated pod as YAML after the summary.
    let yaml = &text[text.find("\n---\n").expect("patched manifests") + 1..];
    let docs = mlguard::cluster::snapshot::parse_objects(yaml).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["metadata"]["namespace"], "team-a");
    assert_eq!(docs[0]["spec"]["tolerations"][0]["key"], "nvidia.com/gpu");
}

#[test]
fn warn_and_dryrun_modes_deny_nothing() {
    let (out, v) = json_report(&["--mode", "warn"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["mode"], "warn");
    assert_eq!(v["summary"]["denied"], 0);
    let pod = object(&v, "Pod", "jupyter-gpu");
    assert_eq!(pod["status"], "warned");
    assert!(pod["admissions"][0]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("[gpu_limits]"));

    let (out, v) = json_report(&["--mode", "dryrun"]);
    assert_eq!(out.status.code(), Some(0));
    let pod = object(&v, "Pod", "pytorch-train");
    assert_eq!(
        pod["status"], "warned",
        "a held-back patch is a dry-run record"
    );
    assert!(pod["admissions"][0]["patch"].as_array().unwrap().is_empty());
    assert_eq!(
        pod["admissions"][0]["wouldPatch"][0],
        "[gpu_toleration] add /spec/tolerations/-"
    );
    let text = stdout(&audit(&["--mode", "dryrun"]));
    assert!(
        text.contains("mode dryrun: every policy is capped at dryrun"),
        "{text}"
    );
}

/// Thousands of manifests take seconds: one evaluator, all cores. The time is printed for the
/// record (`cargo test --test audit -- --nocapture`).
#[test]
fn two_thousand_manifests_take_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = std::fs::read_to_string(fixture("audit/serving/inference.yaml")).unwrap();
    let jobs = std::fs::read_to_string(fixture("audit/training-jobs.yaml")).unwrap();
    let pods = std::fs::read_to_string(fixture("audit/pods.yaml")).unwrap();
    let mut count = 0;
    for i in 0..250 {
        // 3 + 2 + 4 = 9 objects per round, 10 admissions; renamed so every one is distinct.
        let text = format!("{deployment}\n---\n{jobs}\n---\n{pods}")
            .replace("name: ", &format!("name: r{i}-"));
        std::fs::write(dir.path().join(format!("team-{i:03}.yaml")), text).unwrap();
        count += 9;
    }
    let started = std::time::Instant::now();
    let out = with_test_policies(dir.path().to_str().unwrap(), &["-o", "json"], None);
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["objects"], count);
    eprintln!("audited {count} manifests in {elapsed:.2?}");
    assert!(elapsed.as_secs() < 60, "{count} manifests took {elapsed:?}");
}

/// The embedded default policies (no --policies) over the same manifests: the GPU pod without
/// a GPU limit and the Deployment whose pods lack one are denied, CPU pods pass unchanged,
/// GPU pods are mutated.
#[test]
fn embedded_default_policies_audit_the_fixtures() {
    let dir = fixture("audit");
    let out = mlguard(&["audit", "-f", dir.to_str().unwrap(), "-o", "json"], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    for (kind, name) in [("Pod", "jupyter-gpu"), ("Deployment", "llm-serve")] {
        let o = object(&v, kind, name);
        assert_eq!(o["status"], "denied", "{o}");
        let denials = o["admissions"][0]["denials"].to_string();
        assert!(denials.contains("[gpu_limits]"), "{denials}");
    }
    assert_eq!(object(&v, "Pod", "cpu-preprocess")["status"], "clean");
    let train = object(&v, "Pod", "pytorch-train");
    assert_eq!(train["status"], "mutated");
    assert!(train["admissions"][0]["patch"]
        .to_string()
        .contains("nvidia.com/gpu"));
}

/// A claim template shipped in the same files as the pods that name it is created with them:
/// NVIDIA's own example audits whole, its pods judged as GPU pods, with no claim "not known
/// yet". Without the template in the files, the pods say so.
#[test]
fn dra_claim_templates_in_the_manifests_count_for_their_pods() {
    let example = fixture("dra-examples/gpu-test1.yaml");
    let cluster = fixture("cluster-dra.yaml");
    let out = mlguard(
        &[
            "audit",
            "-f",
            example.to_str().unwrap(),
            "--cluster-snapshot",
            cluster.to_str().unwrap(),
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    for name in ["pod1", "pod2"] {
        let pod = object(&v, "Pod", name);
        let text = pod.to_string();
        assert!(
            text.contains("nvidia.com/gpu.present"),
            "{name}: no GPU node affinity: {text}"
        );
        assert!(text.contains("/dev/shm"), "{name}: no /dev/shm: {text}");
        assert!(!text.contains("not hold yet"), "{name}: {text}");
    }
    assert_eq!(
        object(&v, "ResourceClaimTemplate", "single-gpu")["status"],
        "clean"
    );

    let pods_only: String = std::fs::read_to_string(&example)
        .unwrap()
        .split("\n---\n")
        .filter(|d| !d.contains("kind: ResourceClaimTemplate"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    let out = mlguard(
        &[
            "audit",
            "-f",
            "-",
            "--cluster-snapshot",
            cluster.to_str().unwrap(),
        ],
        Some(&pods_only),
    );
    let text = stdout(&out);
    assert!(
        text.contains("ResourceClaimTemplate gpu-test1/single-gpu, which mlguard's view of the cluster does not hold yet"),
        "{text}"
    );
}

/// Where the PolicyReport streams are written for tests/schema/test_policy_reports.py, which
/// validates them against the PolicyReport CRDs (scripts/test runs this file first).
fn keep_for_schema_check(name: &str, text: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/policy-reports");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

fn results_of<'a>(reports: &'a [Json], kind: &str, name: &str, policy: &str) -> &'a Json {
    reports
        .iter()
        .flat_map(|r| r["results"].as_array().unwrap())
        .find(|r| {
            r["resources"][0]["kind"] == kind
                && r["resources"][0]["name"] == name
                && r["policy"] == policy
        })
        .unwrap_or_else(|| panic!("no result for {kind}/{name} and {policy}"))
}

#[test]
fn policy_reports_one_per_namespace_and_one_for_the_cluster() {
    let out = audit(&["-o", "policyreport"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    keep_for_schema_check("fixtures.yaml", &text);
    let reports = mlguard::cluster::snapshot::parse_objects(&text).unwrap();
    let heads: Vec<(&str, &str)> = reports
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["metadata"]["namespace"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let namespaces = [
        "cpu-only",
        "default",
        "ml-research",
        "sandbox",
        "serving",
        "trial",
    ];
    let mut expected: Vec<(&str, &str)> =
        namespaces.iter().map(|ns| ("PolicyReport", *ns)).collect();
    expected.push(("ClusterPolicyReport", ""));
    assert_eq!(heads, expected);

    // One result per object and policy; the summaries count them.
    let policies = 5;
    let mut total = 0;
    for r in &reports {
        assert_eq!(r["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        let results = r["results"].as_array().unwrap();
        for what in ["pass", "fail", "warn", "error", "skip"] {
            let n = results.iter().filter(|x| x["result"] == what).count();
            assert_eq!(r["summary"][what], n, "{what} in {}", r["metadata"]);
        }
        assert!(results.iter().all(|x| x["source"] == "mlguard"
            && x["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000));
        total += results.len();
    }
    assert_eq!(total, 18 * policies);

    let denied = results_of(&reports, "Deployment", "llm-serve", "gpu_limits");
    assert_eq!(denied["result"], "fail");
    assert_eq!(
        denied["resources"][0],
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "serving", "name": "llm-serve"})
    );
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("container \"tgi\" requests 2 nvidia.com/gpu without a limit"),
        "{denied}"
    );
    let dryrun = results_of(&reports, "Pod", "trial-gpu", "gpu_namespace");
    assert_eq!(dryrun["result"], "warn");
    assert!(
        dryrun["message"]
            .as_str()
            .unwrap()
            .starts_with("dryrun, would deny: namespace trial does not allow GPUs"),
        "{dryrun}"
    );
    assert_eq!(
        results_of(&reports, "Pod", "cpu-preprocess", "gpu_limits")["result"],
        "pass"
    );
    assert_eq!(
        results_of(&reports, "Service", "triton-inference", "gpu_limits")["result"],
        "skip"
    );
    let patched = results_of(&reports, "Pod", "pytorch-train", "gpu_toleration");
    assert_eq!(patched["result"], "pass");
    assert!(
        patched["message"].as_str().unwrap().starts_with(
            "admitted with changes: Pod ml-research/pytorch-train add /spec/tolerations"
        ),
        "{patched}"
    );

    // The document that is not a Kubernetes object: an error in the cluster report, with its file.
    let cluster = reports.last().unwrap();
    let errors: Vec<&Json> = cluster["results"].as_array().unwrap().iter().collect();
    assert_eq!(errors.len(), policies);
    assert!(errors
        .iter()
        .all(|e| e["result"] == "error" && e.get("resources").is_none()));
    assert!(
        errors[0]["properties"]["source"]
            .as_str()
            .unwrap()
            .contains("not-k8s/values.yaml"),
        "{}",
        errors[0]
    );
}

#[test]
fn cluster_scoped_objects_are_in_the_cluster_policy_report() {
    let manifests = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\n\
        apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: reader}\nrules: []\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: gpu}\nspec:\n  containers:\n  - {name: c, image: i, resources: {limits: {nvidia.com/gpu: 1}}}\n";
    let out = with_test_policies(
        "-",
        &["--namespace", "team-a", "-o", "policyreport"],
        Some(manifests),
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    keep_for_schema_check("cluster-scoped.yaml", &text);
    let reports = mlguard::cluster::snapshot::parse_objects(&text).unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["metadata"]["namespace"], "team-a");
    let cluster = &reports[1];
    assert_eq!(cluster["kind"], "ClusterPolicyReport");
    let kinds: Vec<&str> = cluster["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resources"][0]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Namespace").count(), 5);
    assert_eq!(kinds.iter().filter(|k| **k == "ClusterRole").count(), 5);
    assert!(cluster["results"][0]["resources"][0]
        .get("namespace")
        .is_none());
    assert_eq!(cluster["summary"]["skip"], 10);
}

#[test]
fn failures_only_lists_denied_and_error_objects_and_the_full_summary() {
    let out = audit(&["--failures-only"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert_eq!(text.lines().last().unwrap(), SUMMARY, "{text}");
    let statuses: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_uppercase()))
        .collect();
    assert_eq!(statuses.len(), 5, "{text}");
    assert_eq!(
        statuses.iter().filter(|s| **s == "DENIED").count(),
        4,
        "{text}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == "ERROR").count(),
        1,
        "{text}"
    );
    for absent in ["WARNED", "MUTATED", "CLEAN", "SKIPPED", "pytorch-train"] {
        assert!(!text.contains(absent), "{absent} in\n{text}");
    }
    let out = audit(&["--failures-only", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--failures-only applies to the text report"));
}

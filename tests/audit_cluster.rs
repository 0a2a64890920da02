//! `mlguard audit --cluster` and the one-time reads of a cluster behind it, against the fake
//! API server of tests/common/fake_api.rs: the cluster state and the running workloads read
//! once (directly and through a kubeconfig), a read that cannot finish is bounded in time, and
//! the built binary audits what runs. Every wait is bounded.

mod common;

use std::time::Duration;

use common::fake_api::{
    claim_template, cluster, gpu_slice, key, namespace, node, nvidia_device_classes, quota,
    start_fake, write_kubeconfig,
};
use common::live::WAIT;
use mlguard::cluster::list;
use serde_json::{json, Value as Json};

/// The cluster state read once, as `mlguard audit --cluster` reads it.
async fn read_state(client: &kube::Client) -> mlguard::cluster::ClusterState {
    tokio::time::timeout(WAIT, list::read_state(client))
        .await
        .unwrap()
        .unwrap()
}

/// The DRA objects are read where resource.k8s.io/v1 is served, and the devices of the
/// slices merged into the nodes; where it is not, the state is read as before, without a list
/// of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_reads_include_the_dra_objects_where_served() {
    let mut objects = cluster();
    objects.extend(nvidia_device_classes());
    objects.push(("resourceslices", gpu_slice("gpu-1", 4)));
    objects.push((
        "resourceclaimtemplates",
        claim_template("ml", "one-gpu", "gpu.nvidia.com"),
    ));
    objects.push((
        "resourceclaims",
        json!({"metadata": {"name": "shared", "namespace": "ml"},
               "spec": {"devices": {"requests": [{"name": "gpu",
                   "exactly": {"deviceClassName": "mig.nvidia.com", "count": 2}}]}}}),
    ));
    let server = start_fake(objects).await;
    server.open();
    let client = server.client();
    let state = read_state(&client).await;
    assert_eq!(state.dra.device_classes.len(), 2);
    assert!(state.dra.claim_templates["ml"].contains_key("one-gpu"));
    assert_eq!(state.dra.claims["ml"]["shared"].reserved_for, 0);
    assert!(!state.dra.claims["ml"]["shared"].allocated);
    assert_eq!(state.dra.capacity["gpu.nvidia.com"].largest, 4);
    assert_eq!(
        state.largest_allocatable()["gpu.nvidia.com.deviceclass.resource.k8s.io/devices"],
        4.0
    );

    server.fake.serve_dra(false);
    let state = read_state(&client).await;
    assert!(state.dra.device_classes.is_empty());
    assert_eq!(state.nodes.len(), 1);
    assert_eq!(
        server.fake.lists("deviceclasses"),
        1,
        "listed only while served"
    );
    assert_eq!(server.fake.discoveries(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_reads_for_the_audit_command() {
    let mut objects = cluster();
    objects.push(("namespaces", namespace("web")));
    for (name, ns, phase) in [
        ("a", "ml", "Running"),
        ("b", "ml", "Succeeded"),
        ("c", "web", "Pending"),
    ] {
        objects.push((
            "pods",
            json!({"metadata": {"name": name, "namespace": ns,
            "managedFields": [{"manager": "kubectl"}]},
            "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"phase": phase}}),
        ));
    }
    for (name, done) in [("active", false), ("done", true)] {
        let conditions = if done {
            json!([{"type": "Complete", "status": "True"}])
        } else {
            json!([])
        };
        objects.push((
            "jobs",
            json!({"metadata": {"name": name, "namespace": "ml"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "x"}]}}},
            "status": {"conditions": conditions}}),
        ));
    }
    let server = start_fake(objects).await;
    server.open();
    let client = server.client();

    let state = read_state(&client).await;
    assert_eq!(state.quotas["ml"][0].hard["requests.nvidia.com/gpu"], 4.0);
    assert_eq!(state.nodes.len(), 1);
    assert_eq!(state.namespaces.len(), 2);

    let names = |objects: Vec<Json>| -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                assert!(o["metadata"].get("managedFields").is_none());
                format!("{} {}", o["kind"].as_str().unwrap(), key(o))
            })
            .collect()
    };
    let all = tokio::time::timeout(WAIT, list::list_workloads(&client, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(all), vec!["Pod ml/a", "Pod web/c", "Job ml/active"]);
    let ml = list::list_workloads(&client, Some("ml")).await.unwrap();
    assert_eq!(names(ml), vec!["Pod ml/a", "Job ml/active"]);

    // The same through a kubeconfig, from synchronous code.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), server.addr);
    let (state, objects) = tokio::task::spawn_blocking(move || {
        list::read_blocking(Some(&kubeconfig), Some("ml"), true, WAIT)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(state.quota_count(), 1);
    assert_eq!(names(objects), vec!["Pod ml/a", "Job ml/active"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_read_is_bounded_in_time() {
    let server = start_fake(cluster()).await; // never opened: lists hang
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), server.addr);
    let error = tokio::task::spawn_blocking(move || {
        list::read_blocking(Some(&kubeconfig), None, false, Duration::from_millis(300))
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(error, list::ListError::Timeout(_)), "{error}");
}

/// `mlguard audit --cluster` as a user runs it: the binary reads the fake API server through a
/// kubeconfig and audits the running Pods and Jobs with the default policies. A running pod is
/// not found to exceed a quota it is itself counted in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_cluster_audits_the_running_workloads() {
    let gpu_pod = |name: &str, gpus: u32, limits: bool| {
        let resources = if limits {
            json!({"limits": {"nvidia.com/gpu": gpus.to_string(), "memory": "8Gi"},
                   "requests": {"nvidia.com/gpu": gpus.to_string()}})
        } else {
            json!({"requests": {"nvidia.com/gpu": gpus.to_string()}})
        };
        json!({"metadata": {"name": name, "namespace": "ml"},
               "spec": {"containers": [{"name": "trainer", "image": "x", "resources": resources}],
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
               "status": {"phase": "Running"}})
    };
    let objects = vec![
        ("namespaces", namespace("ml")),
        ("nodes", node("gpu-1", 8)),
        // 4 of the 6 used GPUs are the running pod `big`.
        ("resourcequotas", quota(8, 6)),
        ("pods", gpu_pod("big", 4, true)),
        ("pods", gpu_pod("no-limit", 2, false)),
        (
            "jobs",
            json!({"metadata": {"name": "sweep", "namespace": "ml"},
                   "spec": {"ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 600,
                            "template": {"spec": {"restartPolicy": "Never",
                                "containers": [{"name": "c", "image": "x"}]}}},
                   "status": {}}),
        ),
    ];
    let server = start_fake(objects).await;
    server.open();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), server.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mlguard"))
            .args(["audit", "--cluster", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--output", "json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Json = serde_json::from_str(&stdout).unwrap();
    let status_of = |name: &str| {
        report["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .map(|o| o["status"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{name} not in {report}"))
    };
    assert_eq!(status_of("no-limit"), "denied");
    // 6 used, 2 left; `big` asks for 4 but holds 4 of the 6 itself.
    assert_ne!(status_of("big"), "denied", "{report}");
    assert_eq!(status_of("sweep"), "clean", "{report}");
    assert_eq!(report["objects"].as_array().unwrap().len(), 3);

    // The same audit as PolicyReports, ready for `kubectl apply -f -`.
    let kubeconfig = write_kubeconfig(dir.path(), server.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mlguard"))
            .args(["audit", "--cluster", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["-o", "policyreport"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let reports =
        mlguard::cluster::snapshot::parse_objects(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let kinds: Vec<&str> = reports
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["PolicyReport", "ClusterPolicyReport"]);
    assert_eq!(reports[0]["metadata"]["namespace"], "ml");
    let no_limit = reports[0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0]["name"] == "no-limit" && r["policy"] == "gpu_limits")
        .unwrap();
    assert_eq!(no_limit["result"], "fail");
    assert_eq!(no_limit["resources"][0]["kind"], "Pod");
    assert_eq!(reports[0]["summary"]["fail"], 1, "{}", reports[0]);
}

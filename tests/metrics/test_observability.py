"""mlguard's /metrics, read by the reference OpenMetrics parser after real reviews, and its
decision log.

Starts the debug binary (`cargo test` builds it; scripts/test runs that first) on loopback
with development certificates, sends AdmissionReviews over HTTPS, and checks that the
exposition parses strictly, that counters and histograms moved by exactly what was sent,
and that the metrics the alerts and dashboard use (tests/manifests/test_monitoring.py) are
the ones mlguard exports.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "debug" / "mlguard"
FIXTURES = REPO / "tests" / "fixtures" / "admission"


def monitoring_metrics() -> dict:
    spec = importlib.util.spec_from_file_location(
        "test_monitoring", REPO / "tests" / "manifests" / "test_monitoring.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.METRICS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not BINARY.exists():
        pytest.fail(f"{BINARY} missing: run `cargo test` first (scripts/test does)", pytrace=False)
    work = tmp_path_factory.mktemp("mlguard")
    webhook, probe = free_port(), free_port()
    log = (work / "mlguard.log").open("w")
    proc = subprocess.Popen(
        [str(BINARY), "serve", f"--listen=127.0.0.1:{webhook}", f"--probe-listen=127.0.0.1:{probe}",
         f"--dev-certs-dir={work / 'certs'}", "--log-format=json"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(probe, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlguard did not become ready"
            assert proc.poll() is None, "mlguard exited"
            time.sleep(0.05)
        yield {"webhook": webhook, "probe": probe, "ca": work / "certs" / "ca.crt", "log": work / "mlguard.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict, family: str, suffix: str = "", **labels) -> float | None:
    if family not in fams:  # a family without samples is not exposed
        return None
    for s in fams[family].samples:
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_counters_and_histograms_move_by_exactly_what_was_sent(server):
    before = families(get(server["probe"], "/metrics")[1])
    assert sample(before, "mlguard_admission_requests", "_total", endpoint="validate", outcome="denied") is None

    ctx = ssl.create_default_context(cafile=str(server["ca"]))
    conn = http.client.HTTPSConnection("localhost", server["webhook"], context=ctx, timeout=10)
    denied = (FIXTURES / "gpu-pod-no-limit.json").read_bytes()
    job = (FIXTURES / "gpu-job.json").read_bytes()
    sent = [("/validate", denied)] * 3 + [("/mutate", job)] * 2 + [("/validate", b"{broken")]
    for path, body in sent:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == (400 if body == b"{broken" else 200)

    status, text = get(server["probe"], "/metrics")
    assert status == 200
    after = families(text)  # raises on anything that is not valid OpenMetrics

    requests = "mlguard_admission_requests"
    assert sample(after, requests, "_total", endpoint="validate", kind="Pod", operation="CREATE", outcome="denied") == 3
    assert sample(after, requests, "_total", endpoint="mutate", kind="Job", operation="CREATE", outcome="patched") == 2
    assert sample(after, requests, "_total", endpoint="validate", kind="", outcome="error") == 1
    duration = "mlguard_admission_request_duration_seconds"
    assert sample(after, duration, "_count", endpoint="validate") == 4
    assert sample(after, duration, "_count", endpoint="mutate") == 2
    assert sample(after, duration, "_bucket", endpoint="mutate", le="+Inf") == 2
    bounds = sorted(float(s.labels["le"]) for s in after[duration].samples if s.name.endswith("_bucket") and s.labels["endpoint"] == "mutate")
    assert bounds[0] == 0.0001, "the first bucket resolves sub-millisecond answers"
    violations = "mlguard_policy_violations"
    assert sample(after, violations, "_total", policy="gpu_limits", action="deny") == 3
    assert sample(after, violations, "_total", policy="gpu_memory_limit", action="warn") == 3
    # A review in an exempt namespace (policies/config.yaml): admitted unevaluated, counted by reason.
    exempt = json.loads(denied)
    exempt["request"]["namespace"] = "kube-system"
    exempt["request"]["uid"] = "exempt-1"
    conn.request("POST", "/validate", body=json.dumps(exempt), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())["response"]
    assert answer["allowed"] is True and answer["auditAnnotations"]["exempted"] == "namespace kube-system"
    exempted = families(get(server["probe"], "/metrics")[1])
    assert sample(exempted, "mlguard_reviews_exempted", "_total", reason="namespace") == 1
    build = after["mlguard_build"]
    assert build.type == "info" and build.samples[0].labels["version"]


def test_alerts_and_dashboard_use_the_metrics_mlguard_exports(server):
    """Runs after the test above, so every labelled family has samples."""
    exported = families(get(server["probe"], "/metrics")[1])
    # OpenMetrics names a family without its _total suffix, and info metrics without _info.
    names = set()
    for name, fam in exported.items():
        names.add(name + {"counter": "_total", "info": "_info"}.get(fam.type, ""))
    # Families that only get samples in dryrun mode or from a live cluster are absent here.
    unsampled = {"mlguard_policy_dryrun_patches_total"}
    expected = set(monitoring_metrics()) - unsampled
    assert expected == names, f"only in the monitoring tests: {expected - names}; only exported: {names - expected}"


def test_the_decision_log_says_who_was_denied_by_which_policy_and_why(server):
    """Runs after the first test, which sent the denied pod three times."""
    lines = [json.loads(line) for line in server["log"].read_text().splitlines() if line.startswith("{")]
    decisions = [l for l in lines if l.get("target") == "mlguard::decision"]
    denied = [d for d in decisions if d.get("uid") == "7e3c1d2b-0a4f-4b6e-9c8d-2f1e0a9b8c77"]
    assert len(denied) == 3, decisions
    d = denied[0]
    assert d["level"] == "INFO"
    assert (d["endpoint"], d["kind"], d["namespace"], d["name"], d["operation"]) == (
        "validate", "Pod", "default", "notebook", "CREATE")
    assert d["user"] == "alice@example.com"
    assert d["decision"] == "denied" and d["patch_ops"] == 0 and d["dry_run"] is False
    assert isinstance(d["latency_us"], int)
    # Structured fields are JSON values, not strings holding JSON.
    assert isinstance(d["policies"], list) and isinstance(d["would_deny"], list), d
    assert d["policy_layers"] == ["embedded"] and d["exempted"] is None
    fired = {p["policy"]: p for p in d["policies"]}
    assert fired["gpu_limits"]["finding"] == "deny" and fired["gpu_limits"]["action"] == "deny"
    assert "requests 2 nvidia.com/gpu but sets no limit" in fired["gpu_limits"]["messages"][0]
    assert fired["gpu_memory_limit"]["action"] == "warn"
    patched = [d for d in decisions if d["endpoint"] == "mutate"]
    assert len(patched) == 2 and all(p["decision"] == "patched" and p["patch_ops"] == 2 for p in patched)
    # A patch finding is logged as a patch, not with the policy's configured action (deny).
    assert all(f["action"] == "patch" for p in patched for f in p["policies"] if f["finding"] == "patch")
    (exempt,) = [d for d in decisions if d.get("uid") == "exempt-1"]
    assert exempt["exempted"] == {"reason": "namespace", "matched": "kube-system"}
    assert exempt["decision"] == "allowed" and exempt["policies"] == []
    # Every line of the JSON log is a JSON object.
    for line in server["log"].read_text().splitlines():
        assert isinstance(json.loads(line), dict), line

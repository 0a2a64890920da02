"""The Helm chart charts/mlguard, with the real Helm (v4, as a library: helm-python-sdk).

- `helm lint --strict` passes, with the default values and with every option switched;
- with its default values the chart renders the same objects as `kubectl kustomize
  manifests/base`, except two differences that Helm imposes (normalized below, each for a
  stated reason);
- everything it renders is valid against the Kubernetes API schemas and the cert-manager
  CRDs, and a client-side `helm install --dry-run` accepts it;
- the values do what values.yaml says;
- the policy ConfigMap is the admin's layer over the embedded defaults: empty by default,
  the files of `policies.files` otherwise; the packaged chart (.tgz) needs nothing else.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import MANIFESTS, POLICIES, REPO, Rendered, render
from test_cert_manager import validate_cr

helm = pytest.importorskip(
    "helm_python",
    reason="helm-python-sdk ships Helm for Linux x86_64 only (tests/manifests/requirements.txt)",
)

CHART = REPO / "charts" / "mlguard"
NAMESPACE = "mlguard-system"
RELEASE = "mlguard"
K8S_VERSIONS = ["1.33", "1.37"]

# Labels a Helm chart puts on every object's metadata: which chart and release made it,
# and the app version. The kustomize install has no release, so it cannot carry them; they
# are the only labels removed before comparing. (Selectors and pod template labels are not
# touched by the chart, so that they stay those of the kustomize install: a Deployment's
# selector cannot change, and switching between the two installs must keep working.)
HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
}

# Every option switched away from its default, for lint and schema validation.
ALL_ON = {
    "certManager": {"enabled": False},
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
        "labels": {"release": "kube-prometheus-stack"},
    },
    "webhooks": {
        "exemptNamespaces": ["kube-system", "gpu-operator"],
        "namespaceSelector": {
            "matchLabels": {"team": "ml"},
            "matchExpressions": [{"key": "mlguard.io/ignore", "operator": "DoesNotExist"}],
        },
        "objectSelector": {
            "matchExpressions": [{"key": "mlguard.io/ignore", "operator": "DoesNotExist"}]
        },
        "match": "all",
        "mutating": {"timeoutSeconds": 3, "failurePolicy": "Ignore", "otherFailurePolicy": "Fail"},
        "validating": {"timeoutSeconds": 2, "failurePolicy": "Ignore", "otherFailurePolicy": "Fail"},
    },
    "replicaCount": 5,
    "image": {"repository": "registry.example.com/mlguard", "tag": "1.2.3", "pullPolicy": "Always"},
    "resources": {"requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
    "extraArgs": ["--mode=warn"],
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "podAnnotations": {"example.com/owner": "platform"},
    "imagePullSecrets": [{"name": "regcred"}],
    "policies": {"files": {"config.yaml": "policies:\n  gpu_memory_limit: {action: deny}\n"}},
}
# The opt-out label both webhooks skip by default: mlguard's own exemptions.object_labels.
EXEMPT_LABEL = {"key": "mlguard.io/exempt", "operator": "NotIn", "values": ["true"]}
VARIANTS = {"defaults": None, "all-on": ALL_ON, "no-cert-manager": {"certManager": {"enabled": False}}}


def helm_render(values: dict | None = None, chart: Path = CHART, namespace: str = NAMESPACE) -> Rendered:
    with helm.Chart.load(chart) as c:
        manifests = c.render(values, name=RELEASE, namespace=namespace, is_install=True)
    objs = []
    for name, text in sorted(manifests.items()):
        if name.endswith("NOTES.txt"):
            continue
        objs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objs)


@pytest.fixture(scope="module")
def chart_defaults() -> Rendered:
    return helm_render()


@pytest.fixture(scope="module")
def kustomize_base() -> Rendered:
    return Rendered(render(MANIFESTS / "base"))


def normalized(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    labels = obj["metadata"].get("labels", {})
    for key in HELM_LABELS:
        labels.pop(key, None)
    return obj


def key(obj: dict) -> tuple[str, str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


# --- helm lint ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict_passes(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_helm_lint_catches_a_broken_chart(tmp_path):
    """The lint above can fail: a template that does not parse is an error."""
    broken = tmp_path / "mlguard"
    shutil.copytree(CHART, broken, symlinks=False)
    (broken / "templates" / "broken.yaml").write_text("{{ if }}\n")
    report = helm.lint(broken, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report


# --- the same objects as the kustomize install ---------------------------------------------


def test_defaults_render_the_objects_of_the_kustomize_base(chart_defaults, kustomize_base):
    # The one object the chart does not render: the Namespace. Helm stores the release in
    # its namespace, so that namespace must exist before any of the chart's objects
    # (`helm install --namespace mlguard-system --create-namespace`), and a chart that
    # also created it would fail ("already exists"). Its Pod Security labels are set with
    # kubectl label (manifests/README.md, "Install with Helm").
    expected = {key(o): normalized(o) for o in kustomize_base if o["kind"] != "Namespace"}
    got = {key(o): normalized(o) for o in chart_defaults}
    assert sorted(got) == sorted(expected)
    for k, want in expected.items():
        assert got[k] == want, f"{k} differs:\nchart: {json.dumps(got[k], indent=1)[:3000]}\nbase: {json.dumps(want, indent=1)[:3000]}"


def test_only_the_helm_labels_are_normalized(chart_defaults):
    """Every object carries Helm's labels and mlguard's part-of label; nothing else was
    removed before the comparison above."""
    for o in chart_defaults:
        labels = o["metadata"]["labels"]
        assert HELM_LABELS <= set(labels), key(o)
        assert labels["app.kubernetes.io/part-of"] == "mlguard", key(o)
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["helm.sh/chart"] == "mlguard-0.1.0"
    pod_labels = chart_defaults.one("Deployment", "mlguard")["spec"]["template"]["metadata"]["labels"]
    assert not HELM_LABELS & set(pod_labels)


def test_monitoring_renders_the_objects_of_manifests_monitoring():
    chart = helm_render({"monitoring": {k: {"enabled": True} for k in ("serviceMonitor", "prometheusRule", "dashboard")}})
    kustomized = Rendered(render(MANIFESTS / "monitoring"))
    monitoring = [o for o in chart if o["kind"] in {"ServiceMonitor", "PrometheusRule"} or o["metadata"]["name"] == "mlguard-dashboard"]
    assert sorted(key(o) for o in monitoring) == sorted(key(o) for o in kustomized)
    got = {key(o): normalized(o) for o in monitoring}
    for o in kustomized:
        assert got[key(o)] == normalized(o), key(o)
    assert not [o for o in helm_render() if o["kind"] in {"ServiceMonitor", "PrometheusRule"}], "off by default"


def test_monitoring_follows_the_release_namespace_and_labels():
    chart = helm_render(ALL_ON, namespace="gpu-guard")
    rule = chart.one("PrometheusRule", "mlguard")
    assert rule["metadata"]["namespace"] == "gpu-guard"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all("mlguard-system" not in e for e in exprs)
    assert any('namespace="gpu-guard"' in e for e in exprs)
    # Prometheus's own templates survive Helm untouched.
    annotations = json.dumps(rule["spec"])
    assert "{{ $labels" in annotations or "{{$labels" in annotations
    monitor = chart.one("ServiceMonitor", "mlguard")
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["gpu-guard"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- schemas and a client-side install ----------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_are_valid(variant, version):
    failures = []
    for o in helm_render(VARIANTS[variant]):
        if o["apiVersion"].startswith("cert-manager.io/"):
            validate_cr(o)
            continue
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # no CRD schema here; tests/manifests/test_monitoring.py checks the source
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{key(o)}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_install_client_dry_run(variant):
    empty_kubeconfig = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"
    with helm.Config(namespace=NAMESPACE, kubeconfig_content=empty_kubeconfig) as cfg:
        release = cfg.install(CHART, RELEASE, VARIANTS[variant], namespace=NAMESPACE, dry_run="client")
    kinds = {d["kind"] for d in yaml.safe_load_all(release["manifest"]) if d}
    assert {"Deployment", "MutatingWebhookConfiguration", "ConfigMap"} <= kinds, kinds
    assert release["app_version"] == "0.1.0"


# --- values ---------------------------------------------------------------------------


def test_values_reach_the_objects():
    chart = helm_render(ALL_ON)
    d = chart.one("Deployment", "mlguard")
    assert d["spec"]["replicas"] == 5
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example.com/mlguard:1.2.3" and c["imagePullPolicy"] == "Always"
    assert c["resources"] == ALL_ON["resources"]
    assert c["args"][-1] == "--mode=warn"
    pod = d["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/owner": "platform"}
    assert pod["spec"]["tolerations"] == ALL_ON["tolerations"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    hooks = {
        hook["name"]: hook
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for hook in chart.one(kind, "mlguard")["webhooks"]
    }
    mutating, validating = ALL_ON["webhooks"]["mutating"], ALL_ON["webhooks"]["validating"]
    assert {name: (h["timeoutSeconds"], h["failurePolicy"]) for name, h in hooks.items()} == {
        "mutate.mlguard.io": (3, "Ignore"),
        "mutate-other.mlguard.io": (3, "Fail"),
        "validate.mlguard.io": (2, "Ignore"),
        "validate-other.mlguard.io": (2, "Fail"),
    }
    assert (mutating["timeoutSeconds"], validating["otherFailurePolicy"]) == (3, "Fail")
    for hook in hooks.values():
        assert hook["objectSelector"] == {
            "matchExpressions": [EXEMPT_LABEL] + ALL_ON["webhooks"]["objectSelector"]["matchExpressions"]
        }
        selector = hook["namespaceSelector"]
        assert selector["matchLabels"] == {"team": "ml"}
        assert selector["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "gpu-operator", NAMESPACE]},
            {"key": "mlguard.io/ignore", "operator": "DoesNotExist"},
        ]
    defaults = helm_render()
    (hook,) = defaults.one("ValidatingWebhookConfiguration", "mlguard")["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["objectSelector"] == {"matchExpressions": [EXEMPT_LABEL]}
    every_object = helm_render({"webhooks": {"exemptLabel": None}})
    (hook,) = every_object.one("ValidatingWebhookConfiguration", "mlguard")["webhooks"]
    assert "objectSelector" not in hook
    labels_only = helm_render({"webhooks": {"exemptLabel": None, "objectSelector": {"matchLabels": {"a": "b"}}}})
    (hook,) = labels_only.one("ValidatingWebhookConfiguration", "mlguard")["webhooks"]
    assert hook["objectSelector"] == {"matchLabels": {"a": "b"}}


def test_match_all_widens_the_fail_open_webhooks_only():
    """webhooks.match=all: every Pod and workload of the table without GPUs goes to fail-open
    webhooks (the admin's own policies see them); GPU workloads still go to the fail-closed
    ones, with the same rules and condition as by default."""
    default = helm_render()
    wide = helm_render({"webhooks": {"match": "all"}})
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        gpu_hook = default.one(kind, "mlguard")["webhooks"][0]
        hooks = {h["name"]: h for h in wide.one(kind, "mlguard")["webhooks"]}
        assert hooks[gpu_hook["name"]] == gpu_hook
        other = hooks[gpu_hook["name"].replace(".mlguard.io", "-other.mlguard.io")]
        assert other["failurePolicy"] == "Ignore"
        assert other["rules"] == gpu_hook["rules"], "every kind the GPU webhooks register"
        assert other["matchConditions"][0]["expression"] == "!(\n" + gpu_hook["matchConditions"][0]["expression"] + "\n)"
    with pytest.raises(Exception, match="webhooks.match"):
        helm_render({"webhooks": {"match": "everything"}})


def test_the_all_objects_component_widens_as_match_all_does(tmp_path):
    """manifests/components/all-objects, the kustomize counterpart of webhooks.match=all,
    renders the same webhooks, from an overlay as manifests/README.md shows it."""
    from conftest import copy_repo, render as kustomize
    repo = copy_repo(tmp_path)
    overlay = repo / "manifests" / "overlays" / "all-objects"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../base"],
        "components": ["../../components/all-objects"],
    }))
    got = Rendered(kustomize(overlay))
    wide = helm_render({"webhooks": {"match": "all"}})
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert got.one(kind, "mlguard")["webhooks"] == wide.one(kind, "mlguard")["webhooks"], kind


def test_the_release_namespace_is_always_exempt_and_in_the_certificate():
    chart = helm_render(namespace="gpu-guard")
    hook = chart.one("MutatingWebhookConfiguration", "mlguard")["webhooks"][0]
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", "gpu-guard"]
    assert hook["clientConfig"]["service"]["namespace"] == "gpu-guard"
    cert = chart.one("Certificate", "mlguard-tls")
    assert "mlguard.gpu-guard.svc" in cert["spec"]["dnsNames"]
    annotations = chart.one("ValidatingWebhookConfiguration", "mlguard")["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == "gpu-guard/mlguard-tls"


def test_switches_leave_their_objects_out():
    chart = helm_render({"rbac": {"create": False}, "priorityClass": {"create": False}, "podDisruptionBudget": {"enabled": False}, "policies": {"create": False}})
    kinds = {o["kind"] for o in chart}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "PodDisruptionBudget", "ConfigMap"}, kinds


def test_without_cert_manager_helm_generates_a_ca_and_a_serving_certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to check the generated certificate")
    chart = helm_render({"certManager": {"enabled": False}})
    assert not [o for o in chart if o["apiVersion"].startswith("cert-manager.io/")]
    secret = chart.one("Secret", "mlguard-tls")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(data) == {"ca.crt", "tls.crt", "tls.key"}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        cfg = chart.one(kind, "mlguard")
        assert "annotations" not in cfg["metadata"], "no cert-manager injection"
        for hook in cfg["webhooks"]:
            assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    for name, body in data.items():
        (tmp_path / name).write_bytes(body)
    verify = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "tls.crt"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", tmp_path / "tls.crt"], capture_output=True, text=True, check=True).stdout
    assert "DNS:mlguard.mlguard-system.svc" in text and "id-ecPublicKey" in text, text
    key_pub = subprocess.run(["openssl", "pkey", "-pubout", "-in", tmp_path / "tls.key"], capture_output=True, text=True, check=True).stdout
    cert_pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", tmp_path / "tls.crt"], capture_output=True, text=True, check=True).stdout
    assert key_pub == cert_pub, "tls.key belongs to tls.crt"


# --- the policies: the admin's layer, no copy of the defaults ------------------------------


def test_the_chart_reads_the_monitoring_files_through_a_symlink():
    assert (CHART / "monitoring").is_symlink() and (CHART / "monitoring").resolve() == (MANIFESTS / "monitoring").resolve()
    assert not (CHART / "policies").exists(), "the default policies are built into mlguard"


def test_the_policy_configmap_is_empty_by_default_and_holds_policies_files(chart_defaults):
    assert "data" not in chart_defaults.one("ConfigMap", "mlguard-policies")
    files = {"config.yaml": "exemptions:\n  users: [oncall]\n", "team_label.rego": "package mlguard.policies.team_label\n"}
    chart = helm_render({"policies": {"files": files}})
    assert chart.one("ConfigMap", "mlguard-policies")["data"] == files


def test_the_packaged_chart_renders_on_its_own(tmp_path):
    """`helm package` follows the monitoring symlink; the .tgz needs nothing of the repository."""
    archive = helm.package(CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert not [n for n in names if n.startswith("mlguard/policies/")], names
        assert not [m.name for m in tar.getmembers() if m.issym()], "no symlinks in the archive"
    with helm.Chart.load(archive) as c:
        manifests = c.render(None, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objs = Rendered(d for text in manifests.values() for d in yaml.safe_load_all(text) if d)
    assert "data" not in objs.one("ConfigMap", "mlguard-policies")

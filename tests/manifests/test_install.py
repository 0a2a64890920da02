"""Properties every mlguard install must have, for each entry point (base, no-cert-manager)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml
from conftest import POLICIES
from kubernetes_validate.utils import latest_version

NAMESPACE = "mlguard-system"
SERVICE = "mlguard"
# The oldest Kubernetes minor the manifests are written for, and the newest schema the
# installed kubernetes-validate ships.
K8S_VERSIONS = sorted({"1.33", ".".join(latest_version().split(".")[:2])})
CLUSTER_SCOPED = {
    "Namespace",
    "PriorityClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
INSTALLS = ["base", "no-cert-manager"]


@pytest.fixture(params=INSTALLS)
def objs(request, installs):
    return installs[request.param]


def core_objects(objs):
    return [o for o in objs if not o["apiVersion"].startswith("cert-manager.io/")]


def deployment(objs):
    return objs.one("Deployment", "mlguard")


def container(objs):
    containers = deployment(objs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["mlguard"]
    return containers[0]


def webhooks(objs):
    """(kind, webhook) for every webhook in both configurations."""
    out = []
    for kind in WEBHOOK_KINDS:
        cfg = objs.one(kind, "mlguard")
        assert cfg["webhooks"], f"{kind} has no webhooks"
        out.extend((kind, hook) for hook in cfg["webhooks"])
    return out


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are expected here"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


# --- schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_strictly_against_kubernetes_schema(objs, version):
    failures = []
    for obj in core_objects(objs):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            failures.append(f"{name}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{name}: {e.message}")
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_unknown_fields(base):
    """Guards the test above: a typo in a field name must not pass unnoticed."""
    bad = copy.deepcopy(base.one("Deployment", "mlguard"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_only_expected_kinds(objs):
    expected = {
        "Namespace",
        "PriorityClass",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
    assert expected <= objs.kinds()
    assert objs.kinds() - expected <= {"Certificate", "Issuer", "Secret"}


def test_namespaced_objects_live_in_mlguard_system(objs):
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{obj['kind']}/{meta['name']} is cluster-scoped"
        else:
            assert meta.get("namespace") == NAMESPACE, f"{obj['kind']}/{meta['name']}"
    assert objs.one("Namespace")["metadata"]["name"] == NAMESPACE


def test_namespace_enforces_restricted_pod_security(objs):
    labels = objs.one("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- webhook configurations ----------------------------------------------------------------


def test_webhook_common_settings(objs):
    for kind, hook in webhooks(objs):
        where = f"{kind} {hook['name']}"
        assert hook["admissionReviewVersions"] == ["v1"], where
        assert hook["sideEffects"] == "None", where
        assert 1 <= hook["timeoutSeconds"] <= 10, where
        assert hook["matchPolicy"] == "Equivalent", where
        assert hook.get("failurePolicy") in ("Ignore", "Fail"), f"{where}: set failurePolicy explicitly"
        # The opt-out label of mlguard's own exemptions (policies/config.yaml), so that the two
        # agree on which objects mlguard leaves alone.
        labels = yaml.safe_load((POLICIES / "config.yaml").read_text())["exemptions"]["object_labels"]
        assert hook["objectSelector"] == {
            "matchExpressions": [
                {"key": k, "operator": "NotIn", "values": [v]} for k, v in labels.items()
            ]
        }, where


def test_failure_policies_are_the_documented_ones(objs):
    # manifests/README.md ("If mlguard is down") explains these; change both together. GPU
    # workloads fail closed; what mlguard does to the rest fails open.
    policies = {hook["name"]: hook["failurePolicy"] for _, hook in webhooks(objs)}
    assert policies == {
        "mutate.mlguard.io": "Fail",
        "mutate-other.mlguard.io": "Ignore",
        "validate.mlguard.io": "Fail",
    }


def test_reinvocation_policy(objs):
    for kind, hook in webhooks(objs):
        if kind == "MutatingWebhookConfiguration":
            assert hook["reinvocationPolicy"] == "IfNeeded"
        else:
            assert "reinvocationPolicy" not in hook


def config() -> dict:
    return yaml.safe_load((POLICIES / "config.yaml").read_text())


def registered(hook) -> dict[tuple[str, str, str], list[str]]:
    """(group, version, resource) -> operations, for one webhook."""
    seen = {}
    for rule in hook["rules"]:
        assert rule["scope"] == "Namespaced", rule
        assert len(rule["apiGroups"]) == len(rule["apiVersions"]) == 1, rule
        for resource in rule["resources"]:
            key = (rule["apiGroups"][0], rule["apiVersions"][0], resource)
            assert key not in seen, f"{key} registered twice"
            seen[key] = rule["operations"]
    return seen


def test_rules_follow_the_kinds_table(objs):
    """Recomputed here from policies/config.yaml, independently of the generator: the GPU
    webhooks register CREATE of Pods and of every kind of workloads.kinds, and UPDATE of the
    kinds marked `update: true`; the fail-open mutating webhook registers CREATE of the kinds
    mlguard gives a TTL whatever they run (a lifecycle ttl_seconds_after_finished that is not
    `set_default: false`)."""
    kinds = config()["workloads"]["kinds"]
    gpu = {("", "v1", "pods"): ["CREATE"]}
    gpu.update({(k["group"], "*", k["resource"]): ["CREATE", "UPDATE"] if k.get("update") else ["CREATE"] for k in kinds})
    ttl = {
        (k["group"], "*", k["resource"]): ["CREATE"]
        for k in kinds
        if (k.get("lifecycle") or {}).get("ttl_seconds_after_finished", {"set_default": False}).get("set_default", True) is not False
    }
    assert {r for (_, _, r) in ttl} == {"jobs", "pytorchjobs", "tfjobs", "mpijobs", "jobsets"}
    for _, hook in webhooks(objs):
        want = ttl if hook["name"] == "mutate-other.mlguard.io" else gpu
        assert registered(hook) == want, hook["name"]
    updated = {r for (_, _, r), ops in gpu.items() if "UPDATE" in ops}
    # What manifests/README.md says: the two whose specs are immutable after creation are
    # the only workload kinds without UPDATE.
    assert {k["resource"] for k in kinds} - updated == {"jobsets", "rayjobs"}


def test_match_conditions_select_gpu_workloads(objs):
    """The GPU webhooks carry the GPU condition, the fail-open one its negation; the condition
    names every GPU resource pattern and every kind of the table (tests/match_conditions.rs
    evaluates it against the golden cases)."""
    cfg = config()
    conditions = {hook["name"]: hook["matchConditions"] for _, hook in webhooks(objs)}
    gpu, changed = conditions["validate.mlguard.io"]
    assert gpu["name"] == "gpu-workload"
    assert changed["name"] == "spec-changed" and "object.spec != oldObject.spec" in changed["expression"]
    assert conditions["mutate.mlguard.io"] == [gpu, changed]
    (other,) = conditions["mutate-other.mlguard.io"]
    assert other == {"name": "not-gpu-workload", "expression": "!(\n" + gpu["expression"] + "\n)"}
    patterns = set(cfg["gpu"]["resources"]) | {p for v in cfg["gpu"]["vendors"] for p in v["resources"]}
    for p in patterns:
        literal = f"r.startsWith('{p[:-1]}')" if p.endswith("*") else f"r == '{p}'"
        assert literal in gpu["expression"], p
    for k in cfg["workloads"]["kinds"]:
        assert f"request.kind.group == '{k['group']}' && request.kind.kind == '{k['kind']}'" in gpu["expression"], k["kind"]
    assert len(gpu["expression"]) < 64 * 1024


def test_namespace_selector_excludes_system_namespaces(objs):
    for kind, hook in webhooks(objs):
        selector = hook["namespaceSelector"]
        assert "matchLabels" not in selector, kind
        excluded = [
            e
            for e in selector["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"
        ]
        assert len(excluded) == 1, kind
        assert {"kube-system", NAMESPACE} <= set(excluded[0]["values"]), kind
        # No other expression may select kube-system or mlguard-system back in; the only
        # expression allowed is the exclusion itself.
        assert selector["matchExpressions"] == excluded, kind


def test_webhooks_call_the_service(objs):
    service = objs.one("Service", SERVICE)
    service_ports = {p["port"] for p in service["spec"]["ports"]}
    for kind, hook in webhooks(objs):
        ref = hook["clientConfig"]["service"]
        assert "url" not in hook["clientConfig"], kind
        assert ref["name"] == SERVICE and ref["namespace"] == NAMESPACE, kind
        assert ref["port"] == 443 and ref["port"] in service_ports, kind
        want = "/mutate" if kind == "MutatingWebhookConfiguration" else "/validate"
        assert ref["path"] == want, hook["name"]


def test_webhook_names_are_unique_and_qualified(objs):
    names = [hook["name"] for _, hook in webhooks(objs)]
    assert len(names) == len(set(names))
    for name in names:
        assert name.count(".") >= 2, f"{name}: webhook names must be fully qualified"


# --- Deployment ----------------------------------------------------------------------------


def test_deployment_shape(objs):
    dep = deployment(objs)
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert selects(spec["selector"], spec["template"]["metadata"]["labels"])
    assert pod["serviceAccountName"] == objs.one("ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["priorityClassName"] == objs.one("PriorityClass")["metadata"]["name"]
    assert pod["terminationGracePeriodSeconds"] >= 10


def test_priority_class_is_not_a_system_class(objs):
    pc = objs.one("PriorityClass")
    assert not pc["metadata"]["name"].startswith("system-")
    assert pc["value"] <= 1_000_000_000  # the highest value a non-system class may use
    assert pc.get("globalDefault", False) is False


def test_pod_anti_affinity_spreads_replicas_over_nodes(objs):
    template = deployment(objs)["spec"]["template"]
    anti = template["spec"]["affinity"]["podAntiAffinity"]
    terms = [t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    by_host = [t for t in terms if t["topologyKey"] == "kubernetes.io/hostname"]
    assert by_host, "no anti-affinity across nodes"
    assert all(selects(t["labelSelector"], template["metadata"]["labels"]) for t in by_host)


def test_container_command_and_image(objs):
    c = container(objs)
    assert c["image"].split("/")[-1].split(":")[0].split("@")[0] == "mlguard"
    assert c["command"] == ["/mlguard"]
    assert c["args"] == [
        "serve",
        "--tls-cert=/etc/mlguard/tls/tls.crt",
        "--tls-key=/etc/mlguard/tls/tls.key",
        "--policies=/etc/mlguard/policies",
        "--log-format=json",
    ]


def test_container_ports(objs):
    ports = {p["name"]: p["containerPort"] for p in container(objs)["ports"]}
    assert ports == {"webhook": 8443, "probes": 8080}


def test_probes(objs):
    c = container(objs)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert "scheme" not in c["readinessProbe"]["httpGet"]  # plain HTTP on the probe port


def test_resources(objs):
    res = container(objs)["resources"]
    assert set(res["requests"]) == {"cpu", "memory"}
    assert "memory" in res["limits"]


def test_pre_stop_gives_endpoints_time_to_update(objs):
    c = container(objs)
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = deployment(objs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    timeout = max(hook["timeoutSeconds"] for _, hook in webhooks(objs))
    assert 1 <= sleep and sleep + timeout < grace
    # mlguard's --shutdown-timeout defaults to 25s; the kubelet must not kill it earlier.
    assert sleep + 25 <= grace


def test_security_context_is_restricted(objs):
    pod = deployment(objs)["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key, False)
    sc = container(objs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged", False)


def test_volumes_and_mounts(objs):
    pod = deployment(objs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(objs)["volumeMounts"]}
    tls = volumes[mounts["/etc/mlguard/tls"]["name"]]
    assert tls["secret"]["secretName"] == "mlguard-tls"
    policies = volumes[mounts["/etc/mlguard/policies"]["name"]]
    assert policies["configMap"]["name"] == "mlguard-policies"
    tmp = volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in tmp
    for path, mount in mounts.items():
        # subPath mounts never see updates, which would defeat hot reload.
        assert "subPath" not in mount and "subPathExpr" not in mount, path
        if path != "/tmp":
            assert mount["readOnly"] is True, path


def test_mounted_objects_are_installed(objs):
    """Every Secret/ConfigMap the pod mounts is rendered here or written by cert-manager."""
    pod = deployment(objs)["spec"]["template"]["spec"]
    certificates = {c["spec"]["secretName"] for c in objs.of_kind("Certificate")}
    secrets = {s["metadata"]["name"] for s in objs.of_kind("Secret")}
    configmaps = {c["metadata"]["name"] for c in objs.of_kind("ConfigMap")}
    for volume in pod["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] in secrets | certificates
        if "configMap" in volume:
            assert volume["configMap"]["name"] in configmaps


# --- Service, PDB, RBAC --------------------------------------------------------------------


def test_service_targets_the_webhook_port(objs):
    svc = objs.one("Service", SERVICE)
    pod_labels = deployment(objs)["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    ports = {p["port"]: p for p in svc["spec"]["ports"]}
    assert ports[443]["targetPort"] == "webhook"
    assert ports[8080]["targetPort"] == "probes"
    assert ports[8080]["name"] == "metrics"
    container_ports = {p["name"] for p in container(objs)["ports"]}
    for port in ports.values():
        assert port["targetPort"] in container_ports


def test_pdb_covers_the_deployment(objs):
    pdb = objs.one("PodDisruptionBudget", "mlguard")["spec"]
    dep = deployment(objs)
    assert selects(pdb["selector"], dep["spec"]["template"]["metadata"]["labels"])
    assert pdb["selector"] == dep["spec"]["selector"]
    if "maxUnavailable" in pdb:
        assert pdb["maxUnavailable"] == 1
    else:
        assert 1 <= pdb["minAvailable"] < dep["spec"]["replicas"]


def test_rbac_is_list_and_watch_on_the_cluster_state_and_get_on_pods(objs):
    role = objs.one("ClusterRole", "mlguard")
    assert len(role["rules"]) == 3
    watched, dra, pods = role["rules"]
    assert watched["apiGroups"] == [""]
    assert sorted(watched["resources"]) == ["namespaces", "nodes", "resourcequotas"]
    assert sorted(watched["verbs"]) == ["list", "watch"]
    # The Dynamic Resource Allocation objects the cluster state holds (src/cluster/dra.rs).
    assert dra["apiGroups"] == ["resource.k8s.io"]
    assert sorted(dra["resources"]) == [
        "deviceclasses", "resourceclaims", "resourceclaimtemplates", "resourceslices"]
    assert sorted(dra["verbs"]) == ["list", "watch"]
    # Confirming quota reservations reads single pods; nothing lists, watches or writes them.
    assert pods == {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
    assert not objs.of_kind("Role") and not objs.of_kind("RoleBinding")


def test_rbac_binding(objs):
    binding = objs.one("ClusterRoleBinding", "mlguard")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "mlguard",
    }
    sa = objs.one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
    ]

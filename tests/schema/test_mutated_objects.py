"""Every object the golden policy cases produce after mutation must be one the API server
accepts: what mlguard patches in has to pass the object's own schema.

Built-in kinds are checked against the Kubernetes OpenAPI schema (kubernetes_validate); the
workload CRD kinds (PyTorchJob, TFJob, MPIJob, JobSet, RayJob, RayCluster, LeaderWorkerSet)
against their project's published CRD in tests/schemas/workloads/, with unknown fields as
errors: the API server would prune them, and with them the patch (workload_schemas.py).

`cargo test --test policy_cases` writes the mutated objects to target/mutated-objects/;
scripts/test runs it first, then this file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from workload_schemas import validate

REPO = Path(__file__).resolve().parents[2]
MUTATED = REPO / "target" / "mutated-objects"
EXAMPLES = REPO / "tests" / "fixtures" / "workload-examples"
# The oldest and newest Kubernetes versions mlguard supports.
VERSIONS = ["1.30", "1.37"]
# Dynamic Resource Allocation's GA API (resource.k8s.io/v1, and the pod's
# spec.resourceClaims[].resourceClaimTemplateName) is served from 1.34: objects that use it
# are checked against 1.34 where the others are checked against the oldest version.
DRA_OLDEST = "1.34"


def uses_dra(obj: dict) -> bool:
    if obj.get("apiVersion", "").startswith("resource.k8s.io/"):
        return True
    text = json.dumps(obj.get("spec", {}))
    return '"resourceClaims"' in text


def version_for(obj: dict, version: str) -> str:
    if uses_dra(obj) and version == VERSIONS[0]:
        return DRA_OLDEST
    return version


def mutated_objects() -> list[Path]:
    files = sorted(MUTATED.glob("*.json"))
    if not files:
        pytest.fail(
            f"no mutated objects in {MUTATED}: run `cargo test --test policy_cases` first "
            "(scripts/test does)",
            pytrace=False,
        )
    return files


@pytest.mark.parametrize("version", VERSIONS)
def test_mutated_objects_are_valid_kubernetes_objects(version):
    failures = []
    files = mutated_objects()
    for path in files:
        obj = json.loads(path.read_text())
        failures.extend(f"{path.name}: {e}" for e in validate(obj, version_for(obj, version)))
    assert not failures, "\n".join(failures)
    assert len(files) >= 20, f"only {len(files)} mutated objects; the golden cases write one each"


def example(kind: str) -> dict:
    docs = yaml.safe_load_all((EXAMPLES / f"{kind.lower()}.yaml").read_text())
    return next(d for d in docs if d["kind"] == kind)


def errors(obj: dict) -> list[str]:
    return validate(obj, VERSIONS[-1])


def test_a_broken_object_is_caught():
    """The check above can fail: an invalid toleration is rejected."""
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "i"}], "tolerations": [{"key": 5}]},
    }
    assert any(e.startswith("spec.tolerations.0.key:") for e in errors(bad)), errors(bad)


def test_a_wrong_type_in_a_crd_kind_is_caught():
    job = example("PyTorchJob")
    assert errors(job) == []
    job["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": "x"}
    assert errors(job) == ["spec.runPolicy.ttlSecondsAfterFinished: 'x' is not of type 'integer'"]

    ray = example("RayJob")
    assert errors(ray) == []
    ray["spec"]["activeDeadlineSeconds"] = "3d"
    assert errors(ray) == ["spec.activeDeadlineSeconds: '3d' is not of type 'integer'"]

    # format: int32 (the operators' Go fields would not decode it).
    job = example("TFJob")
    job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 2**31
    assert errors(job) == ["spec.runPolicy.ttlSecondsAfterFinished: 2147483648 is not a 'int32'"]

    lws = example("LeaderWorkerSet")
    lws["spec"]["replicas"] = -1
    assert errors(lws) == ["spec.replicas: -1 is less than the minimum of 0"]


def test_an_unknown_field_in_a_crd_kind_is_caught():
    """The API server prunes it silently: for a mutation, the patch would be lost."""
    jobset = example("JobSet")
    assert errors(jobset) == []
    jobset["spec"]["ttlSecondAfterFinished"] = 86400  # sic
    [e] = errors(jobset)
    assert e.startswith("spec: Additional properties are not allowed") and "'ttlSecondAfterFinished'" in e

    # Deep inside: a pod template of a replica spec (an object under additionalProperties).
    job = example("PyTorchJob")
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["tolerationz"] = []
    [e] = errors(job)
    assert e.startswith("spec.pytorchReplicaSpecs.Worker.template.spec: Additional properties")

    # At the top, next to spec.
    ray = example("RayCluster")
    ray["ttlSecondsAfterFinished"] = 60
    [e] = errors(ray)
    assert e.startswith("(root): Additional properties are not allowed")


def test_where_a_crd_preserves_unknown_fields_they_pass():
    """x-kubernetes-preserve-unknown-fields: the API server keeps them, and so does the check."""
    from workload_schemas import CrdValidator, FORMATS, strict

    schema = strict(
        {
            "type": "object",
            "properties": {
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            },
        }
    )
    ok = CrdValidator(schema, format_checker=FORMATS)
    assert list(ok.iter_errors({"free": {"anything": {"at": 1}}, "closed": {"a": "x"}})) == []
    assert len(list(ok.iter_errors({"closed": {"b": "x"}}))) == 1
    assert len(list(ok.iter_errors({"other": 1}))) == 1


def test_duplicate_keys_in_a_map_list_are_caught():
    """x-kubernetes-list-type: map, as the API server checks it (keys defaulted first)."""
    job = example("MPIJob")
    containers = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    containers.append(copy.deepcopy(containers[0]))
    [e] = errors(job)
    assert "mpiReplicaSpecs.Worker.template.spec.containers" in e and "duplicate entries [0] and [1]" in e

    job = example("MPIJob")
    ports = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    ports["ports"] = [{"containerPort": 22}, {"containerPort": 22, "protocol": "TCP"}]
    [e] = errors(job)
    assert "protocol='TCP'" in e


def test_a_kind_or_version_without_a_schema_is_an_error_not_a_skip():
    obj = {"apiVersion": "kubeflow.org/v1", "kind": "XGBoostJob", "metadata": {"name": "x"}, "spec": {}}
    [e] = errors(obj)
    assert "no schema for kind XGBoostJob of group 'kubeflow.org'" in e and "PyTorchJob.kubeflow.org" in e

    ray = example("RayJob")
    ray["apiVersion"] = "ray.io/v1alpha1"
    assert errors(ray) == ["(root): no schema for ray.io/v1alpha1 RayJob: the stored CRDs serve ray.io/v1"]

    jobset = example("JobSet")
    jobset["apiVersion"] = "jobset.x-k8s.io/v1"
    [e] = errors(jobset)
    assert "no schema for jobset.x-k8s.io/v1 JobSet" in e

    # Two CRDs of MPIJob: the Training Operator's v1 and the MPI Operator's v2beta1.
    mpi = example("MPIJob")
    assert mpi["apiVersion"] == "kubeflow.org/v2beta1" and errors(mpi) == []
    mpi["spec"]["launcherCreationPolicy"] = "WaitForWorkersReady"
    assert errors(mpi) == []
    mpi["apiVersion"] = "kubeflow.org/v1"
    [e] = errors(mpi)
    assert e.startswith("spec: Additional properties") and "launcherCreationPolicy" in e, "v2beta1 only"


def test_metadata_of_a_crd_kind_is_checked_as_object_meta():
    job = example("PyTorchJob")
    job["metadata"]["labels"] = {"team": 7}
    [e] = errors(job)
    assert e.startswith("metadata.labels.team: 7 is not of type 'string'"), e


def test_a_rayjob_ttl_without_shutdown_is_caught():
    """KubeRay's operator fails such a RayJob (not the CRD: it has no CEL rule for it)."""
    ray = example("RayJob")
    del ray["spec"]["shutdownAfterJobFinishes"]
    assert errors(ray) == []
    ray["spec"]["ttlSecondsAfterFinished"] = 86400
    assert errors(ray) == [
        "spec.ttlSecondsAfterFinished: a RayJob with shutdownAfterJobFinishes false cannot "
        "have ttlSecondsAfterFinished (KubeRay)"
    ]
    ray["spec"]["shutdownAfterJobFinishes"] = True
    ray["spec"]["activeDeadlineSeconds"] = 0
    assert errors(ray) == ["spec.activeDeadlineSeconds: must be a positive integer (KubeRay)"]


def test_a_negative_mpijob_ttl_is_caught():
    """The MPI Operator refuses it (the CRD has no minimum)."""
    job = example("MPIJob")
    job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = -1
    assert errors(job) == [
        "spec.runPolicy.ttlSecondsAfterFinished: must be greater than or equal to 0 (MPI Operator)"
    ]

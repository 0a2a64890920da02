"""The workload examples (tests/fixtures/workload-examples/, one per kind, from each
project's own docs or samples) are valid as written, against the same checks as the mutated
objects; so are the lifecycle fields a mutation adds to them, where the kind has them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workload_schemas import WORKLOAD_CRDS, stored_crds, validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "tests" / "fixtures" / "workload-examples"
VERSIONS = ["1.30", "1.37"]

KINDS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "CronJob": "batch/v1",
    "PyTorchJob": "kubeflow.org/v1",
    "TFJob": "kubeflow.org/v1",
    "MPIJob": "kubeflow.org/v2beta1",
    "JobSet": "jobset.x-k8s.io/v1alpha2",
    "RayJob": "ray.io/v1",
    "RayCluster": "ray.io/v1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
}


def load(kind: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((EXAMPLES / f"{kind.lower()}.yaml").read_text()) if d]


def test_there_is_one_example_per_kind():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(k.lower() for k in KINDS)
    for kind, api_version in KINDS.items():
        main = [d for d in load(kind) if d["kind"] == kind]
        assert len(main) == 1 and main[0]["apiVersion"] == api_version, kind


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_example_is_valid(kind, version):
    for doc in load(kind):
        assert validate(doc, version) == [], f"{kind.lower()}.yaml: {doc['kind']}"


def test_the_crd_examples_name_their_source():
    for kind, api_version in KINDS.items():
        if "." not in api_version.split("/")[0]:
            continue
        head = (EXAMPLES / f"{kind.lower()}.yaml").read_text().splitlines()[:3]
        assert head[0].startswith("# From https://github.com/"), kind
        assert "commit" in head[1] and "Apache License 2.0" in head[2], kind


def test_every_stored_crd_has_its_license_and_source():
    projects = {path.parent for path, _ in stored_crds()}
    assert {p.name for p in projects} == {
        "training-operator", "mpi-operator", "jobset", "kuberay", "lws", "in-house",
    }
    for project in projects:
        assert "Apache License" in (project / "LICENSE").read_text()
        source = (project / "SOURCE").read_text()
        # Taken from a project at a commit, or (the golden cases' in-house kind) written here.
        assert "Commit:" in source or "Written for mlguard's tests" in source, project
        for json_file in project.glob("*.json"):
            assert json_file.name in source, f"{json_file} not in {project}/SOURCE"
    kinds = {crd["spec"]["names"]["kind"] for _, crd in stored_crds()}
    assert kinds == {k for k, v in KINDS.items() if "." in v.split("/")[0]} | {"Trainer"}
    assert sum(p.stat().st_size for p in WORKLOAD_CRDS.rglob("*")) < 4_000_000


def with_field(kind: str, path: str, value) -> dict:
    obj = next(d for d in load(kind) if d["kind"] == kind)
    *parents, leaf = path.split(".")
    node = obj
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return obj


# Where each kind has its lifecycle fields. RayJob's TTL takes effect only with
# shutdownAfterJobFinishes: true, which the example sets.
LIFECYCLE = [
    ("PyTorchJob", "spec.runPolicy.ttlSecondsAfterFinished", 86400),
    ("PyTorchJob", "spec.runPolicy.activeDeadlineSeconds", 259200),
    ("TFJob", "spec.runPolicy.ttlSecondsAfterFinished", 86400),
    ("TFJob", "spec.runPolicy.activeDeadlineSeconds", 259200),
    ("MPIJob", "spec.runPolicy.ttlSecondsAfterFinished", 86400),
    ("MPIJob", "spec.runPolicy.activeDeadlineSeconds", 259200),
    ("JobSet", "spec.ttlSecondsAfterFinished", 86400),
    ("RayJob", "spec.ttlSecondsAfterFinished", 86400),
    ("RayJob", "spec.activeDeadlineSeconds", 259200),
]

# Fields these kinds do not have: a mutation that adds them would be pruned.
NOT_THERE = [
    ("PyTorchJob", "spec.ttlSecondsAfterFinished"),
    ("PyTorchJob", "spec.activeDeadlineSeconds"),
    ("JobSet", "spec.activeDeadlineSeconds"),
    ("JobSet", "spec.runPolicy.ttlSecondsAfterFinished"),
    ("RayCluster", "spec.ttlSecondsAfterFinished"),
    ("LeaderWorkerSet", "spec.ttlSecondsAfterFinished"),
]


@pytest.mark.parametrize(("kind", "path", "value"), LIFECYCLE)
def test_the_lifecycle_fields_a_mutation_adds_are_accepted(kind, path, value):
    assert validate(with_field(kind, path, value), VERSIONS[-1]) == []


@pytest.mark.parametrize(("kind", "path"), NOT_THERE)
def test_a_lifecycle_field_a_kind_does_not_have_is_refused(kind, path):
    errors = validate(with_field(kind, path, 86400), VERSIONS[-1])
    assert len(errors) == 1 and "Additional properties are not allowed" in errors[0], errors

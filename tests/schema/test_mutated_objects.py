"""Every object the golden policy cases produce after mutation must be a valid Kubernetes
object: what mlguard patches in has to pass the API server's own schema.

`cargo test --test policy_cases` writes the mutated objects to target/mutated-objects/;
scripts/test runs it first, then this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

REPO = Path(__file__).resolve().parents[2]
MUTATED = REPO / "target" / "mutated-objects"
# The oldest and newest Kubernetes versions mlguard supports.
VERSIONS = ["1.30", "1.37"]


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
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            failures.append(f"{path.name}: {where}: {e.message}")
    assert not failures, "\n".join(failures)
    assert len(files) >= 20, f"only {len(files)} mutated objects; the golden cases write one each"


def test_a_broken_object_is_caught():
    """The check above can fail: an invalid toleration is rejected."""
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "i"}], "tolerations": [{"key": 5}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)

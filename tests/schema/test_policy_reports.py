"""`mlguard audit -o policyreport` must produce PolicyReport and ClusterPolicyReport objects
that the wgpolicyk8s.io CRDs accept (tests/schemas/policyreport/), as `kubectl apply` with
strict field validation would.

`cargo test --test audit` writes the reports of the audit fixtures to
target/policy-reports/; scripts/test runs it first, then this file.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
REPORTS = REPO / "target" / "policy-reports"
CRDS = REPO / "tests" / "schemas" / "policyreport"
FILES = {
    "PolicyReport": "wgpolicyk8s.io_policyreports.yaml",
    "ClusterPolicyReport": "wgpolicyk8s.io_clusterpolicyreports.yaml",
}


def strict(schema):
    """Forbid unknown fields, as the API server's strict field validation does: CRD schemas
    leave additionalProperties open, the server does not."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


@lru_cache(maxsize=None)
def crd(kind: str) -> dict:
    return yaml.safe_load((CRDS / FILES[kind]).read_text())


def schema(kind: str, version: str) -> dict:
    spec = crd(kind)["spec"]
    assert spec["group"] == "wgpolicyk8s.io" and spec["names"]["kind"] == kind
    for v in spec["versions"]:
        if v["name"] == version:
            assert v["served"], f"{version} {kind} is not served"
            return strict(v["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no {version} {kind} in {FILES[kind]}")


def validate(obj: dict) -> None:
    group, version = obj["apiVersion"].split("/")
    assert group == "wgpolicyk8s.io"
    body = {k: v for k, v in obj.items() if k != "metadata"}
    jsonschema.Draft4Validator(schema(obj["kind"], version)).validate(body)
    # The CRD leaves metadata to the API server; check it as ObjectMeta.
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, "1.33", strict=True
    )
    scope = crd(obj["kind"])["spec"]["scope"]
    assert ("namespace" in obj["metadata"]) == (scope == "Namespaced"), obj["metadata"]


def streams() -> list[Path]:
    files = sorted(REPORTS.glob("*.yaml"))
    if not files:
        pytest.fail(
            f"no PolicyReports in {REPORTS}: run `cargo test --test audit` first (scripts/test does)",
            pytrace=False,
        )
    return files


def test_policy_reports_from_the_audit_fixtures_are_valid():
    kinds = set()
    results = 0
    for path in streams():
        for obj in yaml.safe_load_all(path.read_text()):
            validate(obj)
            kinds.add(obj["kind"])
            results += len(obj["results"])
    assert kinds == {"PolicyReport", "ClusterPolicyReport"}
    assert results >= 90, "the audit fixtures give one result per object and policy"


def test_every_result_value_mlguard_writes_is_one_the_crd_allows():
    allowed = None
    for v in crd("PolicyReport")["spec"]["versions"]:
        if v["name"] == "v1alpha2":
            allowed = v["schema"]["openAPIV3Schema"]["properties"]["results"]["items"]["properties"]["result"]["enum"]
    seen = {
        r["result"]
        for path in streams()
        for obj in yaml.safe_load_all(path.read_text())
        for r in obj["results"]
    }
    assert seen <= set(allowed)
    assert seen == {"pass", "fail", "warn", "error", "skip"}, "the fixtures exercise every mapping"


def test_a_wrong_report_is_caught():
    """The check above can fail: an unknown result value and an unknown field are refused."""
    path = streams()[0]
    obj = next(o for o in yaml.safe_load_all(path.read_text()) if o["kind"] == "PolicyReport")
    bad = copy.deepcopy(obj)
    bad["results"][0]["result"] = "denied"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = copy.deepcopy(obj)
    bad["results"][0]["policyName"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)

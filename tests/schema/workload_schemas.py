"""Validate a Kubernetes object by its kind, offline, as the API server would on create.

Built-in kinds (the core group, groups without a dot, and *.k8s.io except *.x-k8s.io) go to
kubernetes_validate, which bundles the upstream OpenAPI schemas. The workload CRD kinds go to
the openAPIV3Schema of their project's published CRD, stored in tests/schemas/workloads/
(see the README there), with the structural-schema rules the API server applies:

- a field the schema does not know is an error, unless the object it sits in has
  x-kubernetes-preserve-unknown-fields. The API server prunes such a field silently; for an
  object mlguard mutated that means the patch is lost, so here it fails;
- nullable, x-kubernetes-embedded-resource, x-kubernetes-list-type set and map (unique
  items, unique map keys), and the int32/int64 ranges of format;
- metadata is checked as ObjectMeta.

Not evaluated: the CRDs' CEL rules (x-kubernetes-validations; the README lists them) and
defaulting. Checked besides the schema: the few rules an operator enforces on fields that
mlguard sets (OPERATOR_RULES).

An object whose kind or version has no stored schema is an error, never a skip.
"""

from __future__ import annotations

from functools import lru_cache
import json
from pathlib import Path

import jsonschema
import kubernetes_validate

REPO = Path(__file__).resolve().parents[2]
WORKLOAD_CRDS = REPO / "tests" / "schemas" / "workloads"

INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def is_builtin_group(group: str) -> bool:
    """The groups Kubernetes itself serves: "" (core), unqualified ones (apps, batch, policy,
    autoscaling) and *.k8s.io. *.x-k8s.io is the Kubernetes SIGs' domain for CRDs."""
    return group == "" or "." not in group or (
        group.endswith(".k8s.io") and not group.endswith(".x-k8s.io")
    )


@lru_cache(maxsize=None)
def stored_crds() -> tuple[tuple[Path, dict], ...]:
    crds = []
    for path in sorted(WORKLOAD_CRDS.glob("*/*.json")):
        crd = json.loads(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition", path
        crds.append((path, crd))
    assert crds, f"no CRDs in {WORKLOAD_CRDS}"
    return tuple(crds)


class NoSchema(Exception):
    pass


def find_crd(group: str, version: str, kind: str) -> tuple[Path, dict, dict]:
    """The stored CRD of group and kind that serves version, with that version's entry."""
    same_kind = [
        (path, crd)
        for path, crd in stored_crds()
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    ]
    if not same_kind:
        known = sorted(
            f"{c['spec']['names']['kind']}.{c['spec']['group']}" for _, c in stored_crds()
        )
        raise NoSchema(
            f"no schema for kind {kind} of group {group!r}: tests/schemas/workloads has CRDs "
            f"for {', '.join(known)}; store the CRD of a new kind there"
        )
    served = []
    for path, crd in same_kind:
        for v in crd["spec"]["versions"]:
            if v["served"]:
                served.append(v["name"])
                if v["name"] == version:
                    return path, crd, v
    raise NoSchema(
        f"no schema for {group}/{version} {kind}: the stored CRDs serve "
        f"{', '.join(f'{group}/{s}' for s in served)}"
    )


def strict(schema):
    """The schema with unknown fields forbidden where the API server would prune them, and
    nullable and embedded resources spelled the way jsonschema understands."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(s) for s in value]
        else:
            out[key] = value
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-embedded-resource"):
        props = dict(out.get("properties", {}))
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
        out["properties"] = props
    # An object without properties gets none either: the API server prunes every field of
    # it. (The root's metadata is the exception; validate() checks it as ObjectMeta.)
    if (
        out.get("type") == "object"
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = []
        for i, item in enumerate(instance):
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate item {item!r} at [{i}] in a set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        item_props = schema.get("items", {}).get("properties", {})
        seen = {}
        for i, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            # A missing key takes its default, as the API server defaults before it checks.
            key = tuple(item.get(k, item_props.get(k, {}).get("default")) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(
                    f"duplicate entries [{seen[key]}] and [{i}] with "
                    + ", ".join(f"{k}={v!r}" for k, v in zip(keys, key))
                    + " in a map list"
                )
            seen.setdefault(key, i)


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type}
)

FORMATS = jsonschema.FormatChecker(formats=())
for _name, (_lo, _hi) in INT_RANGES.items():
    FORMATS.checks(_name)(
        lambda v, lo=_lo, hi=_hi: not isinstance(v, int) or isinstance(v, bool) or lo <= v <= hi
    )


@lru_cache(maxsize=None)
def crd_validator(group: str, version: str, kind: str):
    path, crd, v = find_crd(group, version, kind)
    schema = strict(v["schema"]["openAPIV3Schema"])
    # metadata is checked as ObjectMeta, apart from the schema.
    schema["properties"] = {k: s for k, s in schema["properties"].items() if k != "metadata"}
    CrdValidator.check_schema(schema)
    return crd, CrdValidator(schema, format_checker=FORMATS)


def _ray_job(obj: dict) -> list[str]:
    """kuberay ray-operator/controllers/ray/utils/validation.go, ValidateRayJobSpec: the
    operator marks a RayJob that breaks these failed (InvalidRayJobSpec) instead of running it."""
    spec = obj.get("spec") or {}
    errors = []
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if isinstance(ttl, int) and ttl < 0:
        errors.append("spec.ttlSecondsAfterFinished: must be a non-negative integer (KubeRay)")
    if isinstance(ttl, int) and ttl > 0 and not spec.get("shutdownAfterJobFinishes", False):
        errors.append(
            "spec.ttlSecondsAfterFinished: a RayJob with shutdownAfterJobFinishes false "
            "cannot have ttlSecondsAfterFinished (KubeRay)"
        )
    deadline = spec.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and deadline <= 0:
        errors.append("spec.activeDeadlineSeconds: must be a positive integer (KubeRay)")
    return errors


def _mpi_job_v2beta1(obj: dict) -> list[str]:
    """mpi-operator pkg/apis/kubeflow/validation/validation.go, validateRunPolicy: the
    operator refuses an MPIJob with a negative TTL or deadline."""
    run_policy = (obj.get("spec") or {}).get("runPolicy") or {}
    return [
        f"spec.runPolicy.{field}: must be greater than or equal to 0 (MPI Operator)"
        for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds")
        if isinstance(run_policy.get(field), int) and run_policy[field] < 0
    ]


# Rules an operator enforces (in its controller or webhook, not in the CRD) on fields mlguard
# sets, by (apiVersion, kind).
OPERATOR_RULES = {
    ("ray.io/v1", "RayJob"): _ray_job,
    ("kubeflow.org/v2beta1", "MPIJob"): _mpi_job_v2beta1,
}


def where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(root)"


def validate(obj: dict, k8s_version: str) -> list[str]:
    """Every reason obj would not be accepted, [] when it would."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [f"(root): no apiVersion and kind: {api_version!r} {kind!r}"]
    group, version = split_api_version(api_version)
    if is_builtin_group(group):
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{where(e)}: {e.message}"]
        except kubernetes_validate.SchemaNotFoundError as e:
            return [f"(root): no Kubernetes {k8s_version} schema for {api_version} {kind}: {e}"]
        return []

    try:
        crd, validator = crd_validator(group, version, kind)
    except NoSchema as e:
        return [f"(root): {e}"]
    body = {k: v for k, v in obj.items() if k != "metadata"}
    errors = [
        f"{where(e)}: {e.message}"
        for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.path)))
    ]
    metadata = obj.get("metadata", {})
    try:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}, k8s_version, strict=True
        )
    except kubernetes_validate.ValidationError as e:
        errors.append(f"{where(e)}: {e.message}")
    if crd["spec"]["scope"] == "Cluster" and isinstance(metadata, dict) and "namespace" in metadata:
        errors.append(f"metadata.namespace: {kind} is cluster-scoped")
    rule = OPERATOR_RULES.get((api_version, kind))
    if rule:
        errors.extend(rule(obj))
    return errors

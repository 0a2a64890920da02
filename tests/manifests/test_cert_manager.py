"""The cert-manager objects of manifests/base, against cert-manager's own CRD schemas."""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"

CRDS = {
    ("cert-manager.io", "Certificate"): "cert-manager.io_certificates.yaml",
    ("cert-manager.io", "Issuer"): "cert-manager.io_issuers.yaml",
}
SERVICE_DNS_NAMES = {
    "mlguard",
    "mlguard.mlguard-system",
    "mlguard.mlguard-system.svc",
    "mlguard.mlguard-system.svc.cluster.local",
}
INJECT = "cert-manager.io/inject-ca-from"


def strict(schema):
    """Forbid unknown fields, as the API server's strict field validation does (kubectl
    apply's default): CRD schemas leave additionalProperties open, the server does not."""
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
def crd_schema(group: str, kind: str, version: str) -> dict:
    crd = yaml.safe_load((SCHEMAS / "cert-manager" / CRDS[(group, kind)]).read_text())
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            assert v["served"], f"{group}/{version} {kind} is not served"
            return strict(v["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no {group}/{version} {kind} in {CRDS[(group, kind)]}")


def validate_cr(obj: dict) -> None:
    group, version = obj["apiVersion"].split("/")
    schema = crd_schema(group, obj["kind"], version)
    # The CRD leaves metadata to the API server; check it as ObjectMeta.
    body = {k: v for k, v in obj.items() if k != "metadata"}
    jsonschema.Draft4Validator(schema).validate(body)
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, "1.33", strict=True
    )


def cert_manager_objects(objs):
    return [o for o in objs if o["apiVersion"].startswith("cert-manager.io/")]


def go_duration_hours(value: str) -> float:
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    assert m and value, f"unexpected duration {value!r}"
    h, mi, s = (int(x or 0) for x in m.groups())
    return h + mi / 60 + s / 3600


def test_base_has_the_cert_manager_objects(base):
    names = {(o["kind"], o["metadata"]["name"]) for o in cert_manager_objects(base)}
    assert names == {
        ("Issuer", "mlguard-selfsigned"),
        ("Certificate", "mlguard-ca"),
        ("Issuer", "mlguard-ca"),
        ("Certificate", "mlguard-tls"),
    }


def test_cert_manager_objects_validate_against_crd_schemas(base):
    objs = cert_manager_objects(base)
    assert objs
    for obj in objs:
        validate_cr(obj)


def test_crd_schema_rejects_unknown_and_mistyped_fields(base):
    """Guards the test above."""
    good = base.one("Certificate", "mlguard-tls")
    typo = copy.deepcopy(good)
    typo["spec"]["dnsName"] = typo["spec"].pop("dnsNames")
    with pytest.raises(jsonschema.ValidationError):
        validate_cr(typo)
    wrong = copy.deepcopy(good)
    wrong["spec"]["privateKey"]["algorithm"] = "DSA"
    with pytest.raises(jsonschema.ValidationError):
        validate_cr(wrong)


def test_serving_certificate(base):
    spec = base.one("Certificate", "mlguard-tls")["spec"]
    assert spec["secretName"] == "mlguard-tls"
    assert set(spec["dnsNames"]) == SERVICE_DNS_NAMES
    assert spec["privateKey"]["algorithm"] == "ECDSA" and spec["privateKey"]["size"] == 256
    assert not spec.get("isCA", False)
    assert "server auth" in spec["usages"]
    duration, renew = go_duration_hours(spec["duration"]), go_duration_hours(spec["renewBefore"])
    # Renewal must start well before the 7-day MlguardCertificateExpiringSoon alert, so the
    # alert means "renewal failed", not "renewal is due".
    assert 7 * 24 < renew < duration


def test_dns_names_match_the_service(base):
    svc = base.one("Service", "mlguard")["metadata"]
    name, ns = svc["name"], svc["namespace"]
    assert SERVICE_DNS_NAMES == {name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"}


def test_issuer_chain(base):
    serving = base.one("Certificate", "mlguard-tls")["spec"]["issuerRef"]
    ca_issuer = base.one(serving["kind"], serving["name"])
    assert serving.get("group", "cert-manager.io") == "cert-manager.io"
    ca_cert = [c for c in base.of_kind("Certificate") if c["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]]
    assert len(ca_cert) == 1
    ca = ca_cert[0]["spec"]
    assert ca["isCA"] is True
    assert ca["privateKey"]["algorithm"] == "ECDSA" and ca["privateKey"]["size"] == 256
    assert go_duration_hours(ca["renewBefore"]) < go_duration_hours(ca["duration"])
    root = base.one(ca["issuerRef"]["kind"], ca["issuerRef"]["name"])
    assert root["spec"] == {"selfSigned": {}}


def test_ca_is_injected_from_the_serving_certificate(base):
    pod = base.one("Deployment", "mlguard")["spec"]["template"]["spec"]
    mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        cfg = base.one(kind, "mlguard")
        ref = cfg["metadata"]["annotations"][INJECT]
        ns, name = ref.split("/")
        cert = base.one("Certificate", name)
        assert cert["metadata"]["namespace"] == ns
        # The injected CA must be the one that signed what the pods serve.
        assert cert["spec"]["secretName"] in mounted
        for hook in cfg["webhooks"]:
            assert "caBundle" not in hook["clientConfig"], "cainjector fills caBundle"

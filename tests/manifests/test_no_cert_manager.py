"""manifests/overlays/no-cert-manager: TLS from `mlguard certs` files instead of cert-manager."""

from __future__ import annotations

import base64
import copy
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "manifests" / "overlays" / "no-cert-manager"
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
INJECT = "cert-manager.io/inject-ca-from"


def test_no_cert_manager_objects(no_cert_manager):
    assert not [o for o in no_cert_manager if o["apiVersion"].startswith("cert-manager.io/")]
    for obj in no_cert_manager:
        annotations = obj["metadata"].get("annotations", {})
        assert not [a for a in annotations if a.startswith("cert-manager.io/")], obj["kind"]


def test_tls_secret_comes_from_the_files(no_cert_manager, overlay_certs):
    secret = no_cert_manager.one("Secret", "mlguard-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["namespace"] == "mlguard-system"
    data = {k: decode(v) for k, v in secret["data"].items()}
    assert data == overlay_certs


def decode(value: str) -> str:
    # kustomize wraps long base64 values over lines; the API server's base64 decoding (Go's
    # encoding/base64) skips newlines, and so does this. Anything else must be strict base64.
    return base64.b64decode(value.replace("\n", ""), validate=True).decode()


def test_ca_bundle_is_the_ca_file(no_cert_manager, overlay_certs):
    for kind in WEBHOOK_KINDS:
        for hook in no_cert_manager.one(kind, "mlguard")["webhooks"]:
            bundle = hook["clientConfig"]["caBundle"]
            assert decode(bundle) == overlay_certs["ca.crt"], f"{kind} {hook['name']}"


def strip_tls(objs):
    """The install without whatever provides TLS, to compare the two entry points."""
    out = []
    for obj in objs:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            continue
        if obj["kind"] == "Secret" and obj["metadata"]["name"] == "mlguard-tls":
            continue
        obj = copy.deepcopy(obj)
        obj["metadata"].get("annotations", {}).pop(INJECT, None)
        if obj["metadata"].get("annotations") == {}:
            del obj["metadata"]["annotations"]
        for hook in obj.get("webhooks", []):
            hook["clientConfig"].pop("caBundle", None)
        out.append(obj)
    return sorted(out, key=lambda o: (o["kind"], o["metadata"]["name"]))


def test_only_tls_differs_from_base(base, no_cert_manager):
    assert strip_tls(no_cert_manager) == strip_tls(base)


def test_certificate_files_are_git_ignored():
    for name in ("ca.crt", "tls.crt", "tls.key"):
        path = OVERLAY / "certs" / name
        proc = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", str(path)], cwd=REPO, capture_output=True
        )
        assert proc.returncode == 0, f"{path.relative_to(REPO)} is not git-ignored"

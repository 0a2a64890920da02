"""Shared fixtures: render the kustomizations with `kubectl kustomize` and index the objects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
POLICIES = REPO / "policies"
SCHEMAS = REPO / "tests" / "schemas"

# Fake PEM files for rendering the no-cert-manager overlay; kustomize does not parse them.
FAKE_CERTS = {
    "ca.crt": "-----BEGIN CERTIFICATE-----\nZmFrZSBjYQ==\n-----END CERTIFICATE-----\n",
    "tls.crt": "-----BEGIN CERTIFICATE-----\nZmFrZSBjZXJ0\n-----END CERTIFICATE-----\n",
    "tls.key": "-----BEGIN PRIVATE KEY-----\nZmFrZSBrZXk=\n-----END PRIVATE KEY-----\n",
}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl not found on PATH: the manifest tests render manifests/ with "
            "`kubectl kustomize` (kubectl >= 1.27 bundles kustomize v5). Install kubectl.",
            pytrace=False,
        )
    return path


def render(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`, exactly what `kubectl apply -k DIR` would send."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{proc.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def copy_repo(into: Path) -> Path:
    """Copy manifests/ and policies/ into `into`, keeping their places relative to each other
    (manifests/common includes ../../policies), and return `into`."""
    shutil.copytree(MANIFESTS, into / "manifests")
    shutil.copytree(POLICIES, into / "policies")
    return into


class Rendered(list):
    """The objects of one rendered kustomization, with look-ups by kind and name."""

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self}


@pytest.fixture(scope="session")
def base() -> Rendered:
    return Rendered(render(MANIFESTS / "base"))


@pytest.fixture(scope="session")
def monitoring() -> Rendered:
    return Rendered(render(MANIFESTS / "monitoring"))


@pytest.fixture(scope="session")
def overlay_certs() -> dict[str, str]:
    return dict(FAKE_CERTS)


@pytest.fixture(scope="session")
def no_cert_manager(tmp_path_factory, overlay_certs) -> Rendered:
    """The no-cert-manager overlay, rendered from a copy of manifests/ with certificate files
    in place, as after `mlguard certs --out manifests/overlays/no-cert-manager/certs`."""
    copy = copy_repo(tmp_path_factory.mktemp("repo")) / "manifests"
    certs = copy / "overlays" / "no-cert-manager" / "certs"
    certs.mkdir(exist_ok=True)
    for name, content in overlay_certs.items():
        (certs / name).write_text(content)
    return Rendered(render(copy / "overlays" / "no-cert-manager"))


@pytest.fixture(scope="session")
def installs(base, no_cert_manager) -> dict[str, Rendered]:
    """Every entry point that installs mlguard."""
    return {"base": base, "no-cert-manager": no_cert_manager}


def pytest_sessionstart(session):
    # Stop with one clear message instead of an error per test.
    if shutil.which("kubectl") is None:
        raise pytest.UsageError(
            "kubectl not found on PATH: the manifest tests render manifests/ with "
            "`kubectl kustomize` (kubectl >= 1.27 bundles kustomize v5). Install kubectl."
        )

"""ConfigMap mlguard-policies must carry exactly the repository's policies/ directory."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
SYNC = REPO / "manifests" / "sync-policies.py"


def policy_files() -> dict[str, bytes]:
    if not POLICIES.is_dir():
        return {}
    return {
        p.name: p.read_bytes()
        for p in sorted(POLICIES.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def configmap_files(cm: dict) -> dict[str, bytes]:
    files = {k: v.encode() for k, v in cm.get("data", {}).items()}
    files.update({k: base64.b64decode(v) for k, v in cm.get("binaryData", {}).items()})
    return files


@pytest.mark.parametrize("install", ["base", "no-cert-manager"])
def test_configmap_holds_every_policy_file(installs, install):
    cm = installs[install].one("ConfigMap", "mlguard-policies")
    assert cm["metadata"]["namespace"] == "mlguard-system"
    have, want = configmap_files(cm), policy_files()
    missing, stale = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    changed = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    assert not (missing or stale or changed), (
        f"ConfigMap mlguard-policies is out of date with policies/ (missing {missing}, "
        f"stale {stale}, changed {changed}): run `python3 manifests/sync-policies.py`"
    )


def test_configmap_name_is_stable(base):
    # mlguard hot-reloads policies; a hashed name would roll the Deployment instead and
    # leave old ConfigMaps behind on every change.
    names = [c["metadata"]["name"] for c in base.of_kind("ConfigMap")]
    assert "mlguard-policies" in names


def test_policies_dir_is_flat():
    if POLICIES.is_dir():
        dirs = [p.name for p in POLICIES.iterdir() if p.is_dir()]
        assert not dirs, f"policies/ must stay flat to fit one ConfigMap, found {dirs}"


def test_sync_script_reports_no_drift():
    proc = subprocess.run([sys.executable, str(SYNC), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

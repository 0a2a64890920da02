"""ConfigMap mlguard-policies: the admin's policy layer, mounted over the default policies
built into mlguard (policies/README.md, "Layers"). The installs ship it empty: the defaults are
embedded, so a copy in the ConfigMap could only drift. An overlay adds files to it.

The files of policies/ are still checked as ConfigMap material (an admin copies one to
override it): valid keys, UTF-8, read by the rules of src/policy/source.rs.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from conftest import POLICIES, copy_repo, render, Rendered

# ConfigMap keys must match this (and be at most 253 characters); a policy file whose name
# does not could not be mounted.
KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_KEY_LEN = 253
# A ConfigMap holds at most 1 MiB; stay clearly below.
MAX_BYTES = 900 * 1024


# --- The rules of src/policy/source.rs ------------------------------------------------------


def classify(name: str) -> str | None:
    """`classify`: what the server compiles and serves. Rego unit tests are not served."""
    if name.endswith("_test.rego"):
        return None
    if name.endswith(".rego"):
        return "rego"
    if name.endswith((".yaml", ".yml", ".json")):
        return "data"
    return None


def classify_test(name: str) -> str | None:
    """`classify_test`: Rego unit tests, run by `mlguard test`."""
    return "rego" if name.endswith("_test.rego") else None


def read_by_mlguard(name: str) -> bool:
    """Whether `read` or `read_tests` picks up a file of this name."""
    return classify(name) is not None or classify_test(name) is not None


def is_hidden(name: str) -> bool:
    """`is_hidden`, applied by `read_dir` to every path component below the directory (the
    kubelet's `..data` and timestamped directories). The embedded set does not apply it."""
    return any(part.startswith(".") for part in name.split("/"))


def embedded(policies: Path) -> dict[str, bytes]:
    """The files `embedded()` and `read_tests(Embedded)` yield: `include_dir!` takes every
    file under policies/, hidden or not, recursively, named by its path relative to
    policies/; `collect_embedded` keeps those a classifier accepts."""
    return {
        p.relative_to(policies).as_posix(): p.read_bytes()
        for p in sorted(policies.rglob("*"))
        if p.is_file() and read_by_mlguard(p.relative_to(policies).as_posix())
    }


def configmap_files(cm: dict) -> dict[str, bytes]:
    files = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return files


def mounted(cm: dict) -> dict[str, bytes]:
    """The files `read_dir` yields from the ConfigMap mounted as a volume: every key becomes
    a file; hidden ones are skipped, then the classifiers apply."""
    return {
        k: v for k, v in configmap_files(cm).items() if not is_hidden(k) and read_by_mlguard(k)
    }


# --- Tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("install", ["base", "no-cert-manager"])
def test_the_installs_ship_an_empty_policy_layer(installs, install):
    cm = installs[install].one("ConfigMap", "mlguard-policies")
    assert cm["metadata"]["namespace"] == "mlguard-system"
    assert configmap_files(cm) == {}, "the default policies are built in; the ConfigMap holds only additions"


def test_an_overlay_adds_files_to_the_policy_layer(tmp_path):
    """What manifests/README.md tells an admin to write: a configMapGenerator merged into
    mlguard-policies from an overlay."""
    repo = copy_repo(tmp_path)
    overlay = repo / "manifests" / "overlays" / "team"
    overlay.mkdir(parents=True)
    (overlay / "config.yaml").write_text("policies:\n  gpu_memory_limit: {action: deny}\n")
    (overlay / "team_label.rego").write_text("package mlguard.policies.team_label\n")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../base"],
        "configMapGenerator": [{
            "name": "mlguard-policies", "namespace": "mlguard-system", "behavior": "merge",
            "files": ["config.yaml", "team_label.rego"],
        }],
    }))
    cm = Rendered(render(overlay)).one("ConfigMap", "mlguard-policies")
    assert sorted(mounted(cm)) == ["config.yaml", "team_label.rego"]
    assert cm["metadata"]["name"] == "mlguard-policies", "the name the Deployment mounts"


def test_classification_follows_source_rs():
    assert classify("gpu_limits.rego") == "rego"
    assert classify("lib_workload_test.rego") is None
    assert classify_test("lib_workload_test.rego") == "rego"
    assert {classify(n) for n in ("config.yaml", "a.yml", "a.json")} == {"data"}
    for name in ("README.md", "notes.txt"):
        assert not read_by_mlguard(name), name
    assert is_hidden("..data/a.rego") and not is_hidden("a.rego")


def test_policy_file_names_are_configmap_keys():
    bad = [
        p.name
        for p in POLICIES.iterdir()
        if p.is_file()
        and not is_hidden(p.name)
        and (not KEY_RE.match(p.name) or len(p.name) > MAX_KEY_LEN)
    ]
    assert not bad, f"policies/{bad}: not valid ConfigMap keys ({KEY_RE.pattern}, at most {MAX_KEY_LEN} characters)"


def test_policy_files_are_utf8():
    # The embedded set silently skips a file that is not UTF-8; read from the mounted
    # ConfigMap the same file fails the load.
    for name, content in embedded(POLICIES).items():
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            pytest.fail(f"policies/{name} is not UTF-8")


def test_the_default_policies_would_fit_one_configmap():
    """An admin may copy every default file into the layer; a ConfigMap holds at most 1 MiB."""
    total = sum(len(v) for v in embedded(POLICIES).values())
    assert total <= MAX_BYTES, f"policies/ holds {total} bytes of policy files"

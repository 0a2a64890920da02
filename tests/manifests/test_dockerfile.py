"""The Dockerfile, parsed with BuildKit's own parser (the `dockerfile` package) and linted
with hadolint. No Docker engine is needed; building the image is not tested here."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def commands():
    return dockerfile.parse_file(str(DOCKERFILE))


def stages():
    out = []
    for c in commands():
        if c.cmd == "FROM":
            out.append([c])
        else:
            assert out, f"{c.original} before the first FROM"
            out[-1].append(c)
    return out


def test_multi_stage_with_locked_release_build():
    build, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert build[0].value[0].startswith("rust:")
    runs = " ".join(c.value[0] for c in build if c.cmd == "RUN")
    assert "cargo build" in runs and "--release" in runs and "--locked" in runs
    base = final[0].value[0]
    assert base.startswith("gcr.io/distroless/cc-debian12") or base.startswith("debian:bookworm")


def test_final_stage_runs_mlguard_as_non_root():
    final = stages()[-1]
    [entrypoint] = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and entrypoint.value == ("/mlguard",)
    [user] = [c for c in final if c.cmd == "USER"]
    # The Deployment runs as 65532 and sets runAsNonRoot, which needs a numeric user.
    assert user.value[0].split(":")[0] == "65532"
    copies = [c for c in final if c.cmd == "COPY"]
    assert any(c.value[-1] == "/mlguard" and "--from=build" in c.flags for c in copies)
    exposed = {p for c in final if c.cmd == "EXPOSE" for p in c.value}
    assert {"8443", "8080"} <= exposed


def test_dockerignore_keeps_the_crate_and_drops_the_rest():
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path):
        return any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in patterns)

    for needed in ("Cargo.toml", "Cargo.lock", "src/main.rs", "policies/gpu.rego"):
        assert not ignored(needed), needed
    for unwanted in ("target", ".git", "certs", ".venv"):
        assert ignored(unwanted), unwanted


def test_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install -r tests/manifests/requirements.txt)"
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

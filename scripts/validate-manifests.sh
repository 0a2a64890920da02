#!/usr/bin/env bash
# Validate manifests/, the Dockerfile and the policies ConfigMap, offline.
# Creates .venv (or reuses it) with tests/manifests/requirements.txt, then runs the tests.
#   scripts/validate-manifests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null 2>&1; then
  echo "validate-manifests: kubectl is required (kubectl kustomize renders the manifests)" >&2
  exit 1
fi

req=tests/manifests/requirements.txt
stamp=.venv/.manifests-requirements
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi

exec .venv/bin/python -m pytest tests/manifests -q "$@"

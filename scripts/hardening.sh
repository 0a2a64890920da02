#!/usr/bin/env bash
# The bounds of README, Operating: Bounds, measured as figures against the release binary:
# peak memory for the largest reviews, stalled uploads, and the latency of a cheap review and
# of /healthz while expensive reviews run. The thresholds live here (scripts/hardening.py),
# not in timed unit tests. Talks only to 127.0.0.1; every attack is bounded; about a minute.
#
#   scripts/hardening.sh [--binary BINARY]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BINARY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --binary) BINARY="$(realpath "$2")"; shift 2 ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$BINARY" ]]; then
  cargo build --release --quiet --bin mlguard
  BINARY="$ROOT/target/release/mlguard"
fi
TMP="$(mktemp -d)"
PORT=18543; PROBE=18180
"$BINARY" serve --listen "127.0.0.1:$PORT" --probe-listen "127.0.0.1:$PROBE" \
  --dev-certs-dir "$TMP/certs" --cluster-snapshot tests/fixtures/cluster.yaml \
  --reload-interval 3600 > "$TMP/mlguard.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
for _ in $(seq 1 200); do
  curl -sf -o /dev/null "http://127.0.0.1:$PROBE/readyz" && break
  sleep 0.05
done
python3 scripts/hardening.py "$PID" "$PORT" "$PROBE" "$TMP/certs/ca.crt"

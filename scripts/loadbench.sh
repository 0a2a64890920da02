#!/usr/bin/env bash
# Load benchmark of `mlguard serve` over TLS, side by side with a bare TLS echo server on the
# same stack (examples/tls_echo.rs), on 127.0.0.1 only. Bounded: every load run has a fixed
# duration and the whole script stops by itself (about 4 minutes with the defaults).
#
#   scripts/loadbench.sh [--policies DIR] [--reps N] [--seconds S] [--soak S] [--quick]
#                        [--baseline BINARY] [--binary BINARY] [--only GLOB]
#
# --only limits the mixed load to the review fixtures (tests/fixtures/reviews) whose file name
# matches GLOB, e.g. 'pod-*' for Pod reviews only.
#
# --baseline runs a second mlguard binary (for example one built from the commit before a
# change) beside this one, on the same CPU, and measures its saturation in every repetition
# right after this one's, so that a change's ratio before and after comes from one run.
# --binary measures a given mlguard binary instead of building this checkout's.
#
# The server is pinned to CPU 0 and the load generator (oha, installed into target/tools on
# first use) to CPU 1 with taskset. Prints, for each measurement, min / median / max over the
# repetitions, and a summary against the targets in BENCHMARKS.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

POLICIES=""          # empty: the embedded default policy set
REPS=3
SECONDS_PER_RUN=8
SOAK=150
CONNECTIONS=32
SERVER_CPU=0
LOAD_CPU=1
BASELINE=""         # empty: no baseline binary
BINARY=""           # empty: this checkout's release build
ONLY="*"            # review fixtures in the mixed load, by file name
while [[ $# -gt 0 ]]; do
  case "$1" in
    --policies) POLICIES="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
    --soak) SOAK="$2"; shift 2 ;;
    --quick) REPS=1; SECONDS_PER_RUN=3; SOAK=10; shift ;;
    --baseline) BASELINE="$(realpath "$2")"; shift 2 ;;
    --binary) BINARY="$(realpath "$2")"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [[ "$(nproc)" -lt 2 ]]; then SERVER_CPU=0; LOAD_CPU=0; fi

echo "== build (release)"
cargo build --release --quiet --bin mlguard --example tls_echo
MLGUARD="${BINARY:-$ROOT/target/release/mlguard}"
ECHO="$ROOT/target/release/examples/tls_echo"
OHA="$ROOT/target/tools/bin/oha"
if [[ ! -x "$OHA" ]]; then
  echo "== installing oha into target/tools (once)"
  cargo install oha --locked --quiet --root "$ROOT/target/tools"
fi

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

PORT_ML=18443; PROBE_ML=18080; PORT_ECHO=18444; PORT_BASE=18445; PROBE_BASE=18081
POLICY_ARGS=()
[[ -n "$POLICIES" ]] && POLICY_ARGS=(--policies "$POLICIES")

# The mixed payload set: every fixture but the 256 KB pod (measured on its own), one body a
# line, sent to /mutate and /validate alike.
FIX="$ROOT/tests/fixtures/reviews"
for f in "$FIX"/$ONLY.json; do
  [[ "$(basename "$f")" == pod-large.json ]] && continue
  tr -d '\n' < "$f"; echo
done > "$TMP/mixed.lines"
printf 'https://127.0.0.1:%s/mutate\nhttps://127.0.0.1:%s/validate\n' "$PORT_ML" "$PORT_ML" > "$TMP/urls.ml"
printf 'https://127.0.0.1:%s/mutate\nhttps://127.0.0.1:%s/validate\n' "$PORT_ECHO" "$PORT_ECHO" > "$TMP/urls.echo"
printf 'https://127.0.0.1:%s/mutate\nhttps://127.0.0.1:%s/validate\n' "$PORT_BASE" "$PORT_BASE" > "$TMP/urls.base"

start_mlguard() {
  taskset -c "$SERVER_CPU" "$MLGUARD" serve --listen "127.0.0.1:$PORT_ML" \
    --probe-listen "127.0.0.1:$PROBE_ML" --dev-certs-dir "$TMP/certs" "${POLICY_ARGS[@]}" \
    --reload-interval 3600 --shutdown-timeout 2 > "$TMP/mlguard.log" 2>&1 &
  ML_PID=$!
  PIDS+=("$ML_PID")
}
start_baseline() { # the --baseline binary, on the same CPU and certificates
  taskset -c "$SERVER_CPU" "$BASELINE" serve --listen "127.0.0.1:$PORT_BASE" \
    --probe-listen "127.0.0.1:$PROBE_BASE" --dev-certs-dir "$TMP/certs" "${POLICY_ARGS[@]}" \
    --reload-interval 3600 --shutdown-timeout 2 > "$TMP/baseline.log" 2>&1 &
  BASE_PID=$!
  PIDS+=("$BASE_PID")
  for _ in $(seq 1 2000); do
    curl -sf -o /dev/null "http://127.0.0.1:$PROBE_BASE/readyz" 2>/dev/null && return 0
    sleep 0.005
  done
  echo "the baseline did not become ready; log:" >&2; cat "$TMP/baseline.log" >&2; return 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
wait_ready() { # prints milliseconds until /readyz answered 200, or fails after 10 s
  local start now
  start=$(date +%s%N)
  for _ in $(seq 1 2000); do
    if curl -sf -o /dev/null "http://127.0.0.1:$PROBE_ML/readyz" 2>/dev/null; then
      now=$(date +%s%N); echo $(( (now - start) / 1000000 )); return 0
    fi
    sleep 0.005
  done
  echo "mlguard did not become ready; log:" >&2; cat "$TMP/mlguard.log" >&2; return 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# oha RUN_SECONDS URLS_FILE BODY_ARGS... EXTRA... -> JSON summary on stdout
oha() {
  local secs="$1" urls="$2"; shift 2
  taskset -c "$LOAD_CPU" "$OHA" --no-tui --output-format json -z "${secs}s" -m POST \
    -T application/json --cacert "$TMP/certs/ca.crt" --urls-from-file "$urls" \
    --worker-threads 1 "$@"
}
# A field of oha's JSON: rps, p50, p99, p999 (ms), ok (2xx count), total
field() {
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); f = sys.argv[2]
s = r["summary"]; p = r.get("latencyPercentiles", {})
codes = r.get("statusCodeDistribution", {})
v = {"rps": s.get("requestsPerSec", 0),
     "p50": (p.get("p50") or 0) * 1000, "p99": (p.get("p99") or 0) * 1000,
     "p999": (p.get("p99.9") or 0) * 1000,
     "ok": sum(n for c, n in codes.items() if c.startswith("2")),
     "bad": sum(n for c, n in codes.items() if not c.startswith("2"))}[f]
print(f"{v:.3f}" if isinstance(v, float) else v)' "$1" "$2"
}
stats() { # min / median / max of the numbers given
  python3 -c '
import statistics, sys
xs = sorted(float(x) for x in sys.argv[1:])
print(f"min {xs[0]:.2f}  median {statistics.median(xs):.2f}  max {xs[-1]:.2f}" if xs else "n/a")' "$@"
}
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.3f}")' "$@"; }
# Server-side share of reviews answered within LE seconds, from two /metrics scrapes.
scrape() { curl -sf "http://127.0.0.1:$PROBE_ML/metrics" > "$1"; }
within() { # BEFORE AFTER LE
  python3 -c '
import re, sys
def read(path, le):
    b = t = 0.0
    for line in open(path):
        if not line.startswith("mlguard_admission_request_duration_seconds_bucket"): continue
        m = re.search(r"le=\"([^\"]+)\".*\} (\S+)", line)
        if not m: continue
        if m.group(1) == "+Inf": t += float(m.group(2))
        elif float(m.group(1)) == float(le): b += float(m.group(2))
    return b, t
b0, t0 = read(sys.argv[1], sys.argv[3]); b1, t1 = read(sys.argv[2], sys.argv[3])
print(f"{100 * (b1 - b0) / max(t1 - t0, 1):.2f}")' "$1" "$2" "$3"
}

echo "== machine"
echo "nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); kernel: $(uname -r)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (the machine may be shared with other builds)"
echo "policies: ${POLICIES:-embedded default set}; server on CPU $SERVER_CPU, oha on CPU $LOAD_CPU; $REPS repetitions of ${SECONDS_PER_RUN}s"

echo "== start-up (ready within 200 ms with existing certificates; compile within 50 ms)"
start_mlguard; wait_ready > /dev/null; stop "$ML_PID"   # writes the dev certificates once
READY=()
for _ in 1 2 3 4 5; do
  start_mlguard; READY+=("$(wait_ready)"); stop "$ML_PID"
done
echo "ready after (ms): ${READY[*]}  -> $(stats "${READY[@]}")"
COMPILE=()
for _ in 1 2 3 4 5; do
  COMPILE+=("$("$MLGUARD" bench "${POLICY_ARGS[@]}" -f "$FIX/pod-small.json" -n 1 -o json | jq .load_ms)")
done
echo "policy set read + compiled + probed (ms): ${COMPILE[*]}  -> $(stats "${COMPILE[@]}")"

taskset -c "$SERVER_CPU" "$ECHO" "$TMP/certs" "127.0.0.1:$PORT_ECHO" 900 > "$TMP/echo.log" 2>&1 &
ECHO_PID=$!; PIDS+=("$ECHO_PID")
start_mlguard; wait_ready > /dev/null
[[ -n "$BASELINE" ]] && start_baseline
for _ in $(seq 1 100); do grep -q listening "$TMP/echo.log" && break; sleep 0.05; done

echo "== warm-up"
oha 2 "$TMP/urls.ml" -Z "$TMP/mixed.lines" -c "$CONNECTIONS" > /dev/null
oha 2 "$TMP/urls.echo" -Z "$TMP/mixed.lines" -c "$CONNECTIONS" > /dev/null
[[ -n "$BASELINE" ]] && oha 2 "$TMP/urls.base" -Z "$TMP/mixed.lines" -c "$CONNECTIONS" > /dev/null

declare -a SAT_BASE RATIO_BASE SAT_ML SAT_ECHO RATIO P99_1K P999_1K P50_1K SRV_1MS LARGE_P50 LARGE_P99 LARGE_SRV
for rep in $(seq 1 "$REPS"); do
  echo "== repetition $rep/$REPS"
  oha "$SECONDS_PER_RUN" "$TMP/urls.echo" -Z "$TMP/mixed.lines" -c "$CONNECTIONS" > "$TMP/echo.json"
  oha "$SECONDS_PER_RUN" "$TMP/urls.ml" -Z "$TMP/mixed.lines" -c "$CONNECTIONS" > "$TMP/sat.json"
  e=$(field "$TMP/echo.json" rps); m=$(field "$TMP/sat.json" rps)
  SAT_ECHO+=("$e"); SAT_ML+=("$m"); RATIO+=("$(python3 -c "print(f'{100*$m/$e:.1f}')")")
  echo "saturation, $CONNECTIONS connections: echo $e/s, mlguard $m/s (non-2xx: $(field "$TMP/sat.json" bad)), ratio ${RATIO[-1]}%, mlguard p99 $(field "$TMP/sat.json" p99) ms"
  if [[ -n "$BASELINE" ]]; then
    oha "$SECONDS_PER_RUN" "$TMP/urls.base" -Z "$TMP/mixed.lines" -c "$CONNECTIONS" > "$TMP/base.json"
    b=$(field "$TMP/base.json" rps)
    SAT_BASE+=("$b"); RATIO_BASE+=("$(python3 -c "print(f'{100*$b/$e:.1f}')")")
    echo "baseline saturation: $b/s (non-2xx: $(field "$TMP/base.json" bad)), ratio ${RATIO_BASE[-1]}%, this binary / baseline $(python3 -c "print(f'{100*$m/$b:.1f}')")%"
  fi

  scrape "$TMP/m0"
  oha "$SECONDS_PER_RUN" "$TMP/urls.ml" -Z "$TMP/mixed.lines" -c 8 -q 1000 --latency-correction > "$TMP/fixed.json"
  scrape "$TMP/m1"
  P50_1K+=("$(field "$TMP/fixed.json" p50)"); P99_1K+=("$(field "$TMP/fixed.json" p99)"); P999_1K+=("$(field "$TMP/fixed.json" p999)")
  SRV_1MS+=("$(within "$TMP/m0" "$TMP/m1" 0.001)")
  echo "1000/s: $(field "$TMP/fixed.json" rps)/s, client p50 ${P50_1K[-1]} ms, p99 ${P99_1K[-1]} ms, p99.9 ${P999_1K[-1]} ms; server-side within 1 ms: ${SRV_1MS[-1]}%"

  scrape "$TMP/m0"
  oha "$SECONDS_PER_RUN" "$TMP/urls.ml" -D "$FIX/pod-large.json" -c 1 -q 50 --latency-correction > "$TMP/large.json"
  scrape "$TMP/m1"
  LARGE_P50+=("$(field "$TMP/large.json" p50)"); LARGE_P99+=("$(field "$TMP/large.json" p99)")
  LARGE_SRV+=("$(within "$TMP/m0" "$TMP/m1" 0.005)")
  echo "256 KB pod at 50/s: client p50 ${LARGE_P50[-1]} ms, p99 ${LARGE_P99[-1]} ms; server-side within 5 ms: ${LARGE_SRV[-1]}%"
done
stop "$ECHO_PID"
[[ -n "$BASELINE" ]] && stop "$BASE_PID"

echo "== soak: ${SOAK}s at saturation, RSS sampled every 5 s"
RSS=("$(rss_kib "$ML_PID")")
oha "$SOAK" "$TMP/urls.ml" -Z "$TMP/mixed.lines" -c "$CONNECTIONS" > "$TMP/soak.json" &
SOAK_PID=$!; PIDS+=("$SOAK_PID")
while kill -0 "$SOAK_PID" 2>/dev/null; do
  sleep 5; RSS+=("$(rss_kib "$ML_PID")")
done
wait "$SOAK_PID" || true
echo "RSS samples (KiB): ${RSS[*]}"
echo "soak: $(field "$TMP/soak.json" rps)/s, non-2xx $(field "$TMP/soak.json" bad); peak RSS $(hwm_kib "$ML_PID") KiB"
QUARTER=$(( ${#RSS[@]} / 4 ))
EARLY=$(median "${RSS[@]:1:$QUARTER}" 2>/dev/null || echo 0)
LATE=$(median "${RSS[@]: -$QUARTER}" 2>/dev/null || echo 0)
stop "$ML_PID"

echo
echo "== summary (min / median / max over $REPS repetitions)"
echo "mlguard saturation (reviews/s):        $(stats "${SAT_ML[@]}")"
echo "echo saturation (requests/s):          $(stats "${SAT_ECHO[@]}")"
echo "mlguard / echo (%):                    $(stats "${RATIO[@]}")"
if [[ -n "$BASELINE" ]]; then
  echo "baseline saturation (reviews/s):       $(stats "${SAT_BASE[@]}")"
  echo "baseline / echo (%):                   $(stats "${RATIO_BASE[@]}")"
fi
echo "1000/s client p50 (ms):                $(stats "${P50_1K[@]}")"
echo "1000/s client p99 (ms):                $(stats "${P99_1K[@]}")"
echo "1000/s client p99.9 (ms):              $(stats "${P999_1K[@]}")"
echo "1000/s server-side within 1 ms (%):    $(stats "${SRV_1MS[@]}")"
echo "256 KB pod client p50 (ms):            $(stats "${LARGE_P50[@]}")"
echo "256 KB pod client p99 (ms):            $(stats "${LARGE_P99[@]}")"
echo "256 KB pod server-side within 5 ms (%): $(stats "${LARGE_SRV[@]}")"
echo "ready after start (ms):                $(stats "${READY[@]}")"
echo "policy compile (ms):                   $(stats "${COMPILE[@]}")"
echo "RSS early / late in soak (KiB):        $EARLY / $LATE"

#!/usr/bin/env python3
"""Figures for the bounds in README, Operating: Bounds, measured against a running
`mlguard serve` on 127.0.0.1 (started by scripts/hardening.sh). Every attack is bounded in
count and time. Prints each figure with its threshold and exits 1 if one is missed.

    hardening.py PID WEBHOOK_PORT PROBE_PORT CA_FILE
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

PID, PORT, PROBE, CA = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
HOST = "mlguard.mlguard-system.svc"
FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reviews"
CTX = ssl.create_default_context(cafile=CA)
MIB = 1024 * 1024
failures: list[str] = []


def status_kib(field: str) -> int:
    for line in Path(f"/proc/{PID}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def connect() -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    return CTX.wrap_socket(raw, server_hostname=HOST)


def post(body: bytes, path: str = "/validate") -> tuple[int, bytes, float]:
    conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=CTX, timeout=30)
    conn._create_connection = lambda *a, **k: socket.create_connection(("127.0.0.1", PORT), timeout=30)  # noqa: SLF001
    conn.sock = connect()
    started = time.monotonic()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", "Host": HOST})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data, time.monotonic() - started


def probe(path: str) -> float:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", PROBE, timeout=30)
    conn.request("GET", path)
    conn.getresponse().read()
    conn.close()
    return time.monotonic() - started


def check(name: str, value: float, limit: float, unit: str) -> None:
    ok = value <= limit
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.1f} {unit} (at most {limit:.0f})")
    if not ok:
        failures.append(name)


def review(kind: dict, obj_text: str, uid: str, named: bool = True) -> bytes:
    names = '"namespace":"ml","name":"p",' if named else ""
    return (
        '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"%s",'
        '"kind":%s,"resource":{"group":"","version":"v1","resource":"x"},%s"operation":"CREATE",'
        '"userInfo":{"username":"attacker"},"object":%s}}' % (uid, json.dumps(kind), names, obj_text)
    ).encode()


base_kib = status_kib("VmHWM:")
print(f"baseline peak RSS {base_kib / 1024:.1f} MiB")

# 1. An 8.3 MB review of a Deployment that leaves the names out: nothing is built.
deployment = {"group": "apps", "version": "v1", "kind": "Deployment"}
text = '{"metadata":{"generateName":"web-","namespace":"ml"},"spec":{"x":[%s1]}}' % ("1," * 4_150_000)
body = review(deployment, text, "big-deployment", named=False)
status, _, secs = post(body)
assert status == 200, status
check("peak RSS after an 8.3 MB unnamed Deployment review (MiB over baseline)",
      (status_kib("VmHWM:") - base_kib) / 1024, 4 * len(body) / MIB, "MiB")

# 2. An 8.3 MB Pod review of short strings, built in full: 16 bytes a byte at most.
before = status_kib("VmHWM:")
text = '{"metadata":{"name":"p","namespace":"ml"},"spec":{"containers":[{"name":"c","image":"i"}],"x":[%s"abcd"]}}' % ('"abcd",' * 1_180_000)
body = review({"group": "", "version": "v1", "kind": "Pod"}, text, "big-pod")
status, _, _ = post(body)
assert status == 200, status
check("peak RSS after an 8.3 MB Pod review built in full (MiB over the peak before it)",
      (status_kib("VmHWM:") - before) / 1024, 16 * len(body) / MIB, "MiB")

# 3. 16 uploads that declare 8 MB and stall: one takes a share of the review memory, the
#    others wait for it and are refused; the bodies never arrive and are cut off.
rss_before = status_kib("VmRSS:")
stalled = []
for i in range(16):
    s = connect()
    s.sendall(b"POST /validate HTTP/1.1\r\nHost: " + HOST.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: 8000000\r\n\r\n" + b"[" + b"1," * 500_000)
    stalled.append(s)
time.sleep(1)
cheap = (FIX / "pod-small.json").read_bytes()
check("a cheap review while 16 uploads of 8 MB stall (ms)", post(cheap)[2] * 1000, 500, "ms")
check("RSS while 16 uploads of 8 MB stall (MiB over the RSS before them)",
      (status_kib("VmRSS:") - rss_before) / 1024, 32, "MiB")
started = time.monotonic()
answers = []
for s in stalled:
    s.settimeout(15)
    try:
        answers.append(s.recv(64).split(b" ")[1].decode())
    except Exception as e:  # noqa: BLE001
        answers.append(type(e).__name__)
    s.close()
print(f"     stalled uploads answered: {answers} within {time.monotonic() - started:.1f} s")
check("seconds until every stalled upload was answered", time.monotonic() - started, 10, "s")

# 4. While 8 expensive reviews are in flight, a cheap review and /healthz are answered.
inits = [{"name": f"i{i}", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}} for i in range(500)]
expensive = review({"group": "", "version": "v1", "kind": "Pod"}, json.dumps(
    {"metadata": {"name": "p", "namespace": "ml"},
     "spec": {"initContainers": inits, "containers": [{"name": "c", "image": "i"}]}}), "expensive")
stop = time.monotonic() + 6
def hammer() -> None:
    while time.monotonic() < stop:
        post(expensive)
threads = [threading.Thread(target=hammer) for _ in range(8)]
for t in threads:
    t.start()
time.sleep(1)
cheap_times, health_times = [], []
for _ in range(10):
    cheap_times.append(post(cheap)[2])
    health_times.append(probe("/healthz"))
    time.sleep(0.2)
for t in threads:
    t.join()
check("slowest of 10 cheap reviews beside 8 expensive ones (ms)", max(cheap_times) * 1000, 3000, "ms")
check("slowest of 10 /healthz beside 8 expensive reviews (ms)", max(health_times) * 1000, 100, "ms")
print(f"     expensive review alone: {post(expensive)[2] * 1000:.0f} ms")

check("peak RSS over the whole run (MiB)", status_kib("VmHWM:") / 1024, 256, "MiB")
sys.exit(1 if failures else 0)

"""Ingestion benchmark: events/s for batches of 100 and single-event POST latency at 16 connections.

Starts the real service (uvicorn, 1 worker, Redis store on a unique prefix, removed afterwards) and drives it over
loopback with `wrk` when it is on PATH (a C client leaves the CPU to the server; the Python client costs a third of
the single-event throughput on 2 cores), else with the asyncio client in loadgen.py. Bounded in count and time.
Usage: python benchmarks/ingest.py [--runs 3] [--client auto|wrk|python] [--redis redis://127.0.0.1:6379/14]
Each run measures batched, single and hello in turn on the same server; the table row has the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import redis

sys.path.insert(0, os.path.dirname(__file__))
from loadgen import request, run  # noqa: E402

KEY = "bench-key"


@dataclass
class Measured:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: str  # "all 2xx" or what else came back

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(server: subprocess.Popen[bytes], port: int, timeout_s: float = 30.0) -> None:
    """Until GET /ready answers 200; fail fast if the server process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode} before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server was not ready within {timeout_s:.0f} s")


def event(n: int, run_id: str) -> dict[str, object]:
    return {
        "type": ("view", "view", "click", "add_to_cart", "purchase")[n % 5],
        "channel": ("web", "app", "email")[n % 3],
        "customer_id": f"c{(n * 7919) % 20000}",
        "item_id": f"i{(n * 104729) % 4000}",
        "event_id": f"{run_id}-{n}",
        "value": 3.5,
        "context": {"country": ("UK", "FR", "DE")[n % 3]},
    }


# ---- the Python client (loadgen.py) ----


def python_runs(port: int, batches: int, singles: int) -> tuple[Measured, Measured, Measured]:
    auth = {"Authorization": f"Bearer {KEY}"}
    run_id = uuid.uuid4().hex[:6]
    batch_bodies = [json.dumps([event(b * 100 + i, run_id) for i in range(100)]).encode() for b in range(batches)]
    single_bodies = [json.dumps(event(10_000_000 + n, run_id)).encode() for n in range(singles)]

    def measured(res: object) -> Measured:
        other = {s: n for s, n in res.statuses.items() if not 200 <= s < 300}  # type: ignore[attr-defined]
        return Measured(len(res.latencies), res.wall, res.median_ms, res.pct(99),  # type: ignore[attr-defined]
                        "all 2xx" if not other else f"non-2xx: {other}")

    asyncio.run(run("127.0.0.1", port, lambda n: request("POST", "/v1/events", single_bodies[n], auth), 500, 4))
    batched = asyncio.run(run("127.0.0.1", port, lambda n: request("POST", "/v1/events", batch_bodies[n], auth), batches, 4))
    single = asyncio.run(run("127.0.0.1", port, lambda n: request("POST", "/v1/events", single_bodies[n], auth), singles, 16))
    hello = asyncio.run(run("127.0.0.1", port, lambda n: request("GET", "/health"), singles, 16))
    return measured(batched), measured(single), measured(hello)


# ---- wrk: the same bodies built in Lua, results reported by done() as one JSON line ----

WRK_LUA = r"""
wrk.method = "%(method)s"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
local types = {"view", "view", "click", "add_to_cart", "purchase"}
local channels = {"web", "app", "email"}
local countries = {"UK", "FR", "DE"}
local n = 0
local function event(i)
  return string.format('{"type":"%%s","channel":"%%s","customer_id":"c%%d","item_id":"i%%d","event_id":"%(run)s-%%d",'
    .. '"value":3.5,"context":{"country":"%%s"}}', types[i %% 5 + 1], channels[i %% 3 + 1], (i * 7919) %% 20000,
    (i * 104729) %% 4000, i, countries[i %% 3 + 1])
end
request = function()
  if "%(method)s" == "GET" then return wrk.format(nil, "%(path)s") end
  local parts = {}
  for _ = 1, %(per_request)d do
    n = n + 1
    parts[#parts + 1] = event(n)
  end
  local body = %(batch)s and ("[" .. table.concat(parts, ",") .. "]") or parts[1]
  return wrk.format(nil, "%(path)s", nil, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\nRESULT {"requests":%%d,"us":%%d,"p50":%%d,"p99":%%d,"non2xx":%%d,"errors":%%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def wrk_run(port: int, path: str, connections: int, seconds: int, per_request: int = 1, method: str = "POST") -> Measured:
    script = WRK_LUA % {"method": method, "key": KEY, "path": path, "per_request": per_request,
                        "batch": "true" if per_request > 1 else "false", "run": f"w{uuid.uuid4().hex[:6]}"}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", f.name,
             f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, timeout=seconds + 30, check=True,
        ).stdout
    finally:
        Path(f.name).unlink()
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[7:])
    bad = r["non2xx"] + r["errors"]
    return Measured(r["requests"], r["us"] / 1e6, r["p50"] / 1000, r["p99"] / 1000,
                    "all 2xx" if not bad else f"{r['non2xx']} non-2xx, {r['errors']} socket errors")


def wrk_runs(port: int, seconds: int, warm: bool = True) -> tuple[Measured, Measured, Measured]:
    if warm:
        wrk_run(port, "/v1/events", 4, 2)  # warm-up
    batched = wrk_run(port, "/v1/events", 4, seconds, per_request=100)
    single = wrk_run(port, "/v1/events", 16, seconds)
    hello = wrk_run(port, "/health", 16, seconds, method="GET")
    return batched, single, hello


def median_of(runs: list[Measured]) -> Measured:
    """The medians of several rounds, field by field (requests/s through the median rate)."""
    rate = statistics.median(m.rps for m in runs)
    bad = [m.statuses for m in runs if m.statuses != "all 2xx"]
    return Measured(round(rate * 1000), 1000.0, statistics.median(m.p50_ms for m in runs),
                    statistics.median(m.p99_ms for m in runs), bad[0] if bad else "all 2xx")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--batches", type=int, default=400, help="python client: batched requests")
    ap.add_argument("--singles", type=int, default=8000, help="python client: single-event requests")
    ap.add_argument("--seconds", type=int, default=8, help="wrk: seconds per measurement")
    ap.add_argument("--runs", type=int, default=3, help="rounds of (batched, single, hello) on one server; medians")
    args = ap.parse_args()
    client = ("wrk" if shutil.which("wrk") else "python") if args.client == "auto" else args.client
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "RECSVC_REDIS_URL": args.redis, "RECSVC_REDIS_PREFIX": prefix,
           "RECSVC_API_KEYS": f"{KEY}=events:write", "RECSVC_REDIS_TIMEOUT_MS": "1000", "RECSVC_LOG_JSON": "true",
           "RECSVC_RATE_LIMIT": os.environ.get("BENCH_RATE_LIMIT", "100000000"), "RECSVC_LOAD_MODELS": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "recsvc.app:app_from_env", "--port", str(port),
         "--workers", "1", "--log-level", "warning", "--no-access-log"],
        env=env,
    )
    try:
        wait_ready(server, port)
        rounds = [wrk_runs(port, args.seconds, warm=not n) if client == "wrk"
                  else python_runs(port, args.batches, args.singles) for n in range(args.runs)]
    finally:
        server.terminate()
        server.wait(10)
        r = redis.Redis.from_url(args.redis)
        chunk: list[bytes] = []
        for key in r.scan_iter(match=f"{prefix}:*", count=5000):
            chunk.append(key)
            if len(chunk) == 1000:
                r.unlink(*chunk)
                chunk.clear()
        if chunk:
            r.unlink(*chunk)
        r.close()
    batched, single, hello = (median_of([r[i] for r in rounds]) for i in range(3))
    for name, m in (("batched", batched), ("single", single), ("hello", hello)):
        if m.statuses != "all 2xx":
            raise SystemExit(f"{name}: {m.statuses}; the numbers would be meaningless")
    ev_s = batched.rps * 100
    print(f"client: {client}; medians of {len(rounds)} rounds")
    print(f"rounds: batched events/s {[round(r[0].rps * 100) for r in rounds]}, single p99 ms "
          f"{[round(r[1].p99_ms, 2) for r in rounds]}, single req/s {[round(r[1].rps) for r in rounds]}, "
          f"/health req/s {[round(r[2].rps) for r in rounds]}")
    print(f"batched: {ev_s:,.0f} events/s (100 events/request, 4 connections), "
          f"p50 {batched.p50_ms:.1f} ms/batch, p99 {batched.p99_ms:.1f} ms/batch")
    print(f"single:  {single.rps:,.0f} req/s at 16 connections, p50 {single.p50_ms:.2f} ms, p99 {single.p99_ms:.2f} ms")
    print(f"hello:   {hello.rps:,.0f} req/s at 16 connections (GET /health, same server), p50 {hello.p50_ms:.2f} ms, "
          f"p99 {hello.p99_ms:.2f} ms; single-event ingest = {single.rps / hello.rps:.0%} of it")
    print()
    print("| date | machine | client | batched events/s (100/batch) | single p50 ms | single p99 ms | single req/s "
          "| /health req/s |")
    print(f"| {date.today()} | {platform.machine()} {os.cpu_count()} cores, Redis on loopback, uvicorn 1 worker "
          f"| {client} | {ev_s:,.0f} | {single.p50_ms:.2f} | {single.p99_ms:.2f} | {single.rps:,.0f} | {hello.rps:,.0f} |")


if __name__ == "__main__":
    main()

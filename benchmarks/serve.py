"""Serving benchmark: GET /v1/customers/{id}/recommendations (k=10) beside GET /health on the same server.

Imports the bundled Online Retail data into real Redis under a unique prefix (removed afterwards), starts the service
(uvicorn, N workers, the recommender champion from MLflow, an API key with the rate limiter on), and drives it over
loopback with wrk at 32 connections, rotating over the Online Retail customers so no answer is served twice in a
row. Hello-world and recommendations alternate for `--rounds` rounds; the medians and the ratio of medians are
reported, as measured side by side in one run (these machines are shared and noisy).

Usage: python benchmarks/serve.py [--workers 1] [--rounds 3] [--seconds 8] [--redis redis://127.0.0.1:6379/14]
Needs: wrk on PATH, a recommender champion (`recsvc train all`), the data import takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ingest import free_port, wait_ready  # noqa: E402

from features.clock import parse_instant, replay_clock  # noqa: E402
from features.importers import import_online_retail  # noqa: E402
from features.redis_store import RedisFeatureStore  # noqa: E402

KEY = "bench-key"
DATA = Path(__file__).resolve().parent.parent / "data" / "online_retail.csv.gz"
AS_OF = "2011-12-10"

WRK_LUA = r"""
local ids = {%(ids)s}
local n = 0
wrk.headers["Authorization"] = "Bearer %(key)s"
request = function()
  n = n + 1
  local path = "%(path)s"
  if path == "" then
    path = "/v1/customers/" .. ids[(n %% #ids) + 1] .. "/recommendations?k=10&channel=web"
  end
  return wrk.format("GET", path)
end
%(delay)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\nRESULT {"requests":%%d,"us":%%d,"p50":%%d,"p99":%%d,"non2xx":%%d,"errors":%%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    bad: int


def wrk(port: int, path: str, ids: list[str], connections: int, seconds: int, pause_ms: float = 0.0) -> Run:
    """Closed loop: each connection sends its next request when the last answer arrives, after `pause_ms` (0: at
    once, which measures the most the server can do; with a pause, latency at a load below saturation)."""
    delay = f"delay = function() return {pause_ms} end" if pause_ms else ""
    script = WRK_LUA % {"ids": ",".join(json.dumps(i) for i in ids), "key": KEY, "path": path, "delay": delay}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", f.name,
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 30,
                             check=True).stdout
    finally:
        Path(f.name).unlink()
    r = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
    return Run(r["requests"] / (r["us"] / 1e6), r["p50"] / 1000, r["p99"] / 1000, r["non2xx"] + r["errors"])


async def seed(url: str, prefix: str) -> list[str]:
    store = RedisFeatureStore.from_url(url, prefix=prefix, timeout_s=30, clock=replay_clock(parse_instant(AS_OF)))
    try:
        t = time.perf_counter()
        report = await import_online_retail(store, DATA, progress=True)
        print(f"imported {report.accepted:,} events in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        return imported(url, prefix)
    finally:
        await store.close()


def imported(url: str, prefix: str) -> list[str]:
    """The registered customers under `prefix` (guests are anonymous ids)."""
    r = redis.Redis.from_url(url)
    people = sorted({k.decode().split("{")[1].split("}")[0] for k in r.scan_iter(match=f"{prefix}:c:*:p", count=5000)})
    r.close()
    return [p for p in people if p.isdigit()]


def cleanup(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    chunk: list[bytes] = []
    for key in r.scan_iter(match=f"{prefix}:*", count=5000):
        chunk.append(key)
        if len(chunk) == 1000:
            r.unlink(*chunk)
            chunk.clear()
    if chunk:
        r.unlink(*chunk)
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--prefix", default=None, help="reuse an imported prefix (kept afterwards)")
    ap.add_argument("--paced-load", type=float, default=0.5,
                    help="also measure latency with each connection pausing so the offered load is this share of the "
                         "measured maximum (0: skip)")
    args = ap.parse_args()
    prefix = args.prefix or f"bench:{uuid.uuid4().hex[:8]}"
    ids = imported(args.redis, prefix) if args.prefix is not None else []
    if not ids:  # a new prefix, or a --prefix with nothing under it yet: import (a kept --prefix is reused next time)
        ids = asyncio.run(seed(args.redis, prefix))
    port = free_port()
    env = {**os.environ, "RECSVC_REDIS_URL": args.redis, "RECSVC_REDIS_PREFIX": prefix, "RECSVC_AS_OF": AS_OF,
           "RECSVC_API_KEYS": f"{KEY}=recs:read", "RECSVC_RATE_LIMIT": "100000000", "RECSVC_LOG_JSON": "true",
           "RECSVC_MODEL_POLL_S": "0", "OPENBLAS_NUM_THREADS": "1"}
    if args.server == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "recsvc.app:app_from_env", "--port", str(port),
               "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"]
    else:
        cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "recsvc.app:app_from_env",
               "--port", str(port), "--workers", str(args.workers), "--log-level", "warning", "--no-ws"]
    server = subprocess.Popen(cmd, env=env)
    hello: list[Run] = []
    recs: list[Run] = []
    paced: list[Run] = []
    pause_ms = 0.0
    try:
        wait_ready(server, port, timeout_s=120)
        wrk(port, "", ids, args.connections, 3)  # warm-up: snapshots, catalog, connection pool
        for _ in range(args.rounds):
            hello.append(wrk(port, "/health", ids, args.connections, args.seconds))
            recs.append(wrk(port, "", ids, args.connections, args.seconds))
        if args.paced_load:
            # each connection waits so that connections / (pause + latency) ~ share x the measured maximum
            target = args.paced_load * statistics.median(r.rps for r in recs)
            pause_ms = max(0.0, 1000 * args.connections / target - statistics.median(r.p50_ms for r in recs) / 2)
            paced = [wrk(port, "", ids, args.connections, args.seconds, pause_ms) for _ in range(args.rounds)]
    finally:
        server.terminate()
        server.wait(20)
        if args.prefix is None:
            cleanup(args.redis, prefix)
    if any(r.bad for r in hello + recs + (paced if args.paced_load else [])):
        raise SystemExit(f"non-2xx or socket errors: hello {[r.bad for r in hello]}, recs {[r.bad for r in recs]}")

    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    ratio = med(recs, "rps") / med(hello, "rps")
    print(f"server: {args.server}, {args.workers} worker(s); {args.connections} connections; {len(ids):,} customers "
          f"rotated; {args.rounds} rounds of {args.seconds} s each")
    print(f"hello  (/health):         {med(hello, 'rps'):8,.0f} req/s  p50 {med(hello, 'p50_ms'):.2f} ms  "
          f"p99 {med(hello, 'p99_ms'):.2f} ms   rounds: {[round(r.rps) for r in hello]}")
    print(f"recommendations (k=10):   {med(recs, 'rps'):8,.0f} req/s  p50 {med(recs, 'p50_ms'):.2f} ms  "
          f"p99 {med(recs, 'p99_ms'):.2f} ms   rounds: {[round(r.rps) for r in recs]}")
    print(f"recommendations / hello = {ratio:.0%}")
    if args.paced_load:
        print(f"paced ({args.connections} connections, {pause_ms:.1f} ms pause each): {med(paced, 'rps'):,.0f} req/s "
              f"p50 {med(paced, 'p50_ms'):.2f} ms  p99 {med(paced, 'p99_ms'):.2f} ms   "
              f"rounds p99: {[round(r.p99_ms, 1) for r in paced]}")
    print()
    paced_cols = (f"{med(paced, 'rps'):,.0f} | {med(paced, 'p50_ms'):.2f} | {med(paced, 'p99_ms'):.2f}"
                  if args.paced_load else "- | - | -")
    print("| date | machine | server | recs req/s (max) | recs p50 ms | recs p99 ms | /health req/s | ratio "
          "| paced req/s | paced p50 ms | paced p99 ms |")
    print(f"| {date.today()} | {platform.machine()} {os.cpu_count()} cores, Redis on loopback | {args.server} "
          f"{args.workers} worker(s), {args.connections} conn | {med(recs, 'rps'):,.0f} | {med(recs, 'p50_ms'):.2f} "
          f"| {med(recs, 'p99_ms'):.2f} | {med(hello, 'rps'):,.0f} | {ratio:.0%} | {paced_cols} |")


if __name__ == "__main__":
    main()

"""Ingestion benchmark: events/s for batches of 100 and single-event POST latency at 16 connections.

Starts the real service (uvicorn, 1 worker, Redis store on a unique prefix, removed afterwards) and drives it from
this process over loopback. Usage: python benchmarks/ingest.py [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from datetime import date

import redis

sys.path.insert(0, os.path.dirname(__file__))
from loadgen import request, run  # noqa: E402

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--singles", type=int, default=8000)
    args = ap.parse_args()
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "RECSVC_REDIS_URL": args.redis, "RECSVC_REDIS_PREFIX": prefix,
           "RECSVC_API_KEYS": f"{KEY}=events:write", "RECSVC_REDIS_TIMEOUT_MS": "1000"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "recsvc.app:app_from_env", "--port", str(port),
         "--workers", "1", "--log-level", "warning", "--no-access-log"],
        env=env,
    )
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        run_id = uuid.uuid4().hex[:6]
        batch_bodies = [json.dumps([event(b * 100 + i, run_id) for i in range(100)]).encode() for b in range(args.batches)]
        single_bodies = [json.dumps(event(10_000_000 + n, run_id)).encode() for n in range(args.singles)]
        asyncio.run(run("127.0.0.1", port, lambda n: request("POST", "/v1/events", single_bodies[n], auth), 500, 4))  # warm-up
        batched = asyncio.run(run("127.0.0.1", port, lambda n: request("POST", "/v1/events", batch_bodies[n], auth), args.batches, 4))
        single = asyncio.run(run("127.0.0.1", port, lambda n: request("POST", "/v1/events", single_bodies[n], auth), args.singles, 16))
        hello = asyncio.run(run("127.0.0.1", port, lambda n: request("GET", "/health"), args.singles, 16))
    finally:
        server.terminate()
        server.wait(10)
        r = redis.Redis.from_url(args.redis)
        for key in r.scan_iter(match=f"{prefix}:*", count=5000):
            r.delete(key)
    assert set(batched.statuses) == {202} and set(single.statuses) <= {202}, (batched.statuses, single.statuses)
    ev_s = args.batches * 100 / batched.wall
    print(f"batched: {ev_s:,.0f} events/s ({args.batches} x 100 events, 4 connections), "
          f"p50 {batched.median_ms:.1f} ms/batch, p99 {batched.pct(99):.1f} ms/batch")
    print(f"single:  {single.rps:,.0f} req/s at 16 connections, p50 {single.median_ms:.2f} ms, p99 {single.pct(99):.2f} ms")
    print(f"hello:   {hello.rps:,.0f} req/s at 16 connections (GET /health, same server), p50 {hello.median_ms:.2f} ms, "
          f"p99 {hello.pct(99):.2f} ms; single-event ingest = {single.rps / hello.rps:.0%} of it")
    print()
    print("| date | machine | batched events/s (100/batch) | single p50 ms | single p99 ms | single req/s | /health req/s |")
    print(f"| {date.today()} | {platform.machine()} {os.cpu_count()} cores, Redis on loopback, uvicorn 1 worker "
          f"| {ev_s:,.0f} | {single.median_ms:.2f} | {single.pct(99):.2f} | {single.rps:,.0f} | {hello.rps:,.0f} |")


if __name__ == "__main__":
    main()

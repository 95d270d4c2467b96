"""A small keep-alive HTTP/1.1 load generator on asyncio streams, light enough not to be the bottleneck on 2 cores.

Bounded: a fixed number of requests, a deadline, loopback targets only.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: dict[int, int] = field(default_factory=dict)
    wall: float = 0.0

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000 if xs else float("nan")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


async def _worker(host: str, port: int, make: Callable[[int], bytes], jobs: asyncio.Queue[int], res: Result, deadline: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            try:
                n = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            req = make(n)
            t0 = time.perf_counter()
            writer.write(req)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            res.latencies.append(time.perf_counter() - t0)
            status = int(status_line.split()[1])
            res.statuses[status] = res.statuses.get(status, 0) + 1
    finally:
        writer.close()


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    h = {"Host": "127.0.0.1", "Content-Length": str(len(body)), **({"Content-Type": "application/json"} if body else {}), **(headers or {})}
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + body


async def run(host: str, port: int, make: Callable[[int], bytes], requests: int, connections: int, max_seconds: float = 60) -> Result:
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        jobs.put_nowait(i)
    res = Result()
    deadline = time.perf_counter() + max_seconds
    t0 = time.perf_counter()
    await asyncio.gather(*[_worker(host, port, make, jobs, res, deadline) for _ in range(connections)])
    res.wall = time.perf_counter() - t0
    return res

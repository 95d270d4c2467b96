"""Next-best-offer benchmark: live p50/p99 at 32 connections and bulk export throughput (customers/s), against the
real service (uvicorn, 1 worker) and a real Redis under a prefix of its own.

Setup (once per prefix, kept between runs; --cleanup deletes it): the Online Retail data imported with
`features.importers.import_online_retail` (about a minute), the segments champion's traits (segment, churn risk,
90-day value) and email consent for every customer published with `publish_and_index`, and a catalog of 50 offers
built from the data (item, category, win-back, VIP, cross-sell and country offers on web, app and email).
Each run starts from empty contact ledgers, so every export customer is decided and reserved for real.
Usage: python benchmarks/offers.py [--redis redis://127.0.0.1:6379/14] [--runs 5] [--client auto|wrk|python]

`--cpu`: no HTTP and no server, the cost per customer instead of a rate (the machine is shared, wall clock says
little): the export and the live decision run in this process (`OfferService`), and each run reports this process's
CPU time (time.process_time) per customer and the Redis server time per customer from INFO commandstats (the
difference of two snapshots; other clients of the same server show up in it, so the EVALSHA calls are counted too).
`--profile FILE` writes a cProfile of the last export run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ingest import free_port, wait_ready
from loadgen import request, run

from features.bundle import load_bundle
from features.importers import import_online_retail
from features.offer_store import publish_and_index
from features.redis_store import RedisFeatureStore

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
PREFIX = "benchoffers:v1"
RETAIL = ROOT / "data" / "online_retail.csv.gz"
AS_OF = "2011-12-10T09:00:00Z"  # the day after the data ends: the service serves "then"
CONFIG = """
[policy]
exploration = 0.1
draws = {draws}
[caps]
total = {{ max = 3, days = 1 }}
[caps.channels]
email = {{ max = 1, days = 7 }}
sms = {{ max = 1, days = 7 }}
"""
# the live run reserves on every request: caps wide enough that answers keep offers (the worst case)
LIVE_CONFIG = """
[policy]
exploration = 0.1
draws = {draws}
[caps]
total = {{ max = 1000000, days = 1 }}
"""


def segments_bundle() -> Path | None:
    """The segments champion's bundle in mlruns/ (any recsvc-segments bundle found there)."""
    for meta in sorted((ROOT / "mlruns").rglob("bundle/meta.json")):
        if '"recsvc-segments"' in meta.read_text(encoding="utf-8")[:200]:
            return meta.parent
    return None


def catalog(items: list[tuple[str, str, list[str], float]], countries: list[str]) -> list[dict[str, Any]]:
    """50 offers over the most popular items and their categories: (item, title, categories, price)."""
    offers: list[dict[str, Any]] = []

    def add(oid: str, name: str, channels: list[str], **kw: Any) -> None:
        tr = {"web": {"headline": name, "cta": "Shop now", "url": f"/offers/{oid}"},
              "app": {"headline": name, "body": "Tap to see the offer"},
              "email": {"subject": name, "template": "offer-block-1"}}
        offers.append({"offer_id": oid, "name": name, "channels": {c: tr[c] for c in channels}, **kw})

    for n, (item, title, cats, price) in enumerate(items[:20]):
        add(f"item-{item}", f"15% off {title.title()}", ["web", "email", "app"] if n % 2 else ["web", "email"],
            items=[item], categories=cats[:1], value=round(price * 3 * 0.15 + 2, 2), lever=1.0 + (n % 3) * 0.25,
            limit={"count": 2, "days": 30}, cooldown_days=14)
    cats = sorted({c for _, _, cs, _ in items for c in cs[:1]})
    for n, cat in enumerate(cats[:10]):
        add(f"cat-{n}", f"Spend 30, save 5 on {cat}", ["web", "email", "app"], categories=[cat], value=5.0,
            eligibility={"exclude_segments": ["lost"]})
    for n, seg in enumerate(["at risk", "hibernating", "lost", "at risk", "hibernating"]):
        add(f"winback-{n}", f"We miss you: 20% off ({seg})", ["email", "web"], value=8.0 + n, lever=1.5,
            eligibility={"segments": [seg], "churn_risk": {"min": 0.3 + 0.1 * (n % 3)}})
    for n, seg in enumerate(["champions", "loyal", "champions", "loyal", "potential"]):
        add(f"vip-{n}", f"Early access for {seg}", ["email", "app", "web"], value=15.0 + 2 * n,
            eligibility={"segments": [seg], "cltv_90d": {"min": 100.0 * n}})
    for n in range(5):
        a, b = items[20 + 2 * n], items[21 + 2 * n]
        add(f"cross-{n}", f"Goes with your {a[1].title()}", ["web", "email"], items=[b[0]], value=6.0,
            eligibility={"owns_any": [a[0]], "owns_none": [b[0]]})
    for n, country in enumerate(countries[:5]):
        add(f"country-{n}", f"Free delivery to {country}", ["web", "email", "app"], value=4.0,
            eligibility={"countries": [country]}, valid_from="2011-01-01T00:00:00Z", valid_until="2030-01-01T00:00:00Z")
    assert len(offers) == 50, len(offers)
    return offers


async def setup(url: str, prefix: str) -> list[str]:
    """Import (if not there yet), publish traits and consent, upsert the catalog; returns the customer ids."""
    store = RedisFeatureStore.from_url(url, prefix=prefix, timeout_s=30)
    r = store.client
    try:
        if not await r.exists(f"{prefix}:bench:imported"):
            t = time.perf_counter()
            print(f"importing {RETAIL.name} into {prefix} ...", file=sys.stderr)
            await import_online_retail(store, RETAIL)
            await r.delete(store.keys.log)  # the offline log is not needed here
            await r.set(f"{prefix}:bench:imported", "1")
            print(f"imported in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        bundle = segments_bundle()
        if bundle is None:
            raise SystemExit("no recsvc-segments bundle under mlruns/: run `recsvc train segments` first")
        arrays, meta = load_bundle(bundle)
        from features.traits import traits_from_bundle

        traits = traits_from_bundle(arrays, meta)
        for values in traits.values():
            values["consent_email"] = "granted"
        await publish_and_index(store, traits)
        pop = [i for i, _ in await store.popular("all", k=60)]
        got = await store.get_items(pop)
        items = [(i, got[i].title or i, list(got[i].categories), got[i].price or 2.0) for i in pop if i in got]
        countries = [c for c, _ in Counter(
            [(await store.profile(cid)).country for cid in list(traits)[:800]]).most_common(6) if c != "United Kingdom"]
        from features.offer_store import offer_store_for
        from features.offers import decode_offers

        offers = decode_offers(json.dumps(catalog(items, [c for c in countries if c])).encode())
        await offer_store_for(store).upsert_offers(offers)
        return sorted(traits)
    finally:
        await store.close()


def clear_ledgers(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    try:
        for part in ("ol", "os", "oo", "ox"):
            batch = list(r.scan_iter(match=f"{prefix}:c:*:{part}", count=5000))
            for start in range(0, len(batch), 5000):
                r.delete(*batch[start: start + 5000])
        r.delete(f"{prefix}:log")
    finally:
        r.close()


def start_server(url: str, prefix: str, config: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    cfg = Path(tempfile.mkstemp(suffix=".toml")[1])
    cfg.write_text(config, encoding="utf-8")
    env = {**os.environ, "RECSVC_REDIS_URL": url, "RECSVC_REDIS_PREFIX": prefix, "RECSVC_API_KEYS": f"{KEY}=admin",
           "RECSVC_LOAD_MODELS": "false", "RECSVC_LOG_JSON": "true", "RECSVC_AS_OF": AS_OF,
           "RECSVC_OFFERS_CONFIG": str(cfg), "RECSVC_REDIS_TIMEOUT_MS": "2000", "OPENBLAS_NUM_THREADS": "1",
           "RECSVC_RATE_LIMIT": "1000000000"}  # the per-key limit would answer 429 to a load generator
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "recsvc.app:app_from_env", "--port",
                               str(port), "--log-level", "warning", "--no-access-log"], env=env, cwd=ROOT,
                              stderr=subprocess.DEVNULL)
    wait_ready(server, port)
    return server, port, cfg


def stop_server(server: subprocess.Popen[bytes], cfg: Path) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
    cfg.unlink(missing_ok=True)


def count_lines(lines: Iterable[bytes]) -> tuple[int, Counter[int]]:
    """An export's NDJSON: (customers decided, how many lines carry 0, 1, 2, ... offers); an error line stops the run."""
    n, offers = 0, Counter[int]()
    for line in lines:
        doc = json.loads(line)
        if "offers" in doc:
            n += 1
            offers[len(doc["offers"])] += 1
        elif "error" in doc:
            raise SystemExit(f"export failed: {doc}")
    return n, offers


def export_once(port: int) -> tuple[int, float, Counter[int]]:
    """POST /v1/offers/export for every consented customer; (customers written, seconds, offers per line)."""
    import http.client

    body = json.dumps({"channel": "email", "all_consented": True, "k": 3}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t = time.perf_counter()
    conn.request("POST", "/v1/offers/export", body, {"Authorization": f"Bearer {KEY}",
                                                      "Content-Type": "application/json"})
    resp = conn.getresponse()
    n, offers = count_lines(resp)
    secs = time.perf_counter() - t
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"export answered {resp.status}")
    return n, secs, offers


WRK_LUA = r"""
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer %(key)s"
local ids = {%(ids)s}
local channels = {"web", "app", "web", "email"}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/customers/" .. ids[(n * 7919) %% #ids + 1] .. "/offers?k=3&channel=" .. channels[n %% 4 + 1])
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %%d, "seconds": %%f, "p50_ms": %%f, "p99_ms": %%f, "non2xx": %%d, "errors": %%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def live_once(port: int, ids: list[str], client: str, seconds: int) -> dict[str, float]:
    if client == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(WRK_LUA % {"key": KEY, "ids": ",".join(f'"{i}"' for i in ids)})
        try:
            out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", f.name,
                                  f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(f.name)
        doc = json.loads(out.strip().splitlines()[-1])
        return {"rps": doc["requests"] / doc["seconds"], "p50_ms": doc["p50_ms"], "p99_ms": doc["p99_ms"],
                "non2xx": doc["non2xx"] + doc["errors"]}
    auth = {"Authorization": f"Bearer {KEY}"}
    chans = ["web", "app", "web", "email"]
    res = asyncio.run(run("127.0.0.1", port, lambda n: request(
        "GET", f"/v1/customers/{ids[(n * 7919) % len(ids)]}/offers?k=3&channel={chans[n % 4]}", headers=auth),
        seconds * 1500, 32, max_seconds=seconds))
    return {"rps": res.rps, "p50_ms": res.median_ms, "p99_ms": res.pct(99),
            "non2xx": sum(n for s, n in res.statuses.items() if s != 200)}


def commandstats(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec) from INFO commandstats."""
    return {k[len("cmdstat_"):]: (int(v["calls"]), int(v["usec"])) for k, v in r.info("commandstats").items()}


def redis_cpu(r: redis.Redis) -> float:
    """The Redis server's CPU seconds (user + system) so far: unlike commandstats' usec (wall time inside a
    command), not inflated when a busy machine deschedules Redis; but every client of the server counts."""
    cpu = r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def stats_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    out = {}
    for cmd, (calls, usec) in after.items():
        c0, u0 = before.get(cmd, (0, 0))
        if calls > c0:
            out[cmd] = (calls - c0, usec - u0)
    return out


async def cpu_export(url: str, prefix: str, draws: int, profile: str | None = None) -> dict[str, Any]:
    """One export of every consented customer in this process: CPU and Redis time per customer."""
    import cProfile

    from features.clock import parse_instant, replay_clock
    from recsvc.models import ModelRegistry
    from recsvc.offer_policy import OfferPolicy
    from recsvc.offer_service import ExportRequest, OfferService

    store = RedisFeatureStore.from_url(url, prefix=prefix, timeout_s=30, clock=replay_clock(parse_instant(AS_OF)))
    svc = OfferService(store, ModelRegistry(None, {}), OfferPolicy(exploration=0.1, draws=draws))
    req = ExportRequest(channel="email", all_consented=True, k=3)
    r = redis.Redis.from_url(url)
    try:
        await svc.catalog()  # as a server would have, before its first export
        prof = cProfile.Profile() if profile else None
        before, rcpu = commandstats(r), redis_cpu(r)
        t, c = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        chunks = [chunk async for chunk in svc.export(req, svc.start_export(req))]
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        cpu, wall = time.process_time() - c, time.perf_counter() - t
        delta, rcpu = stats_delta(before, commandstats(r)), redis_cpu(r) - rcpu
    finally:
        r.close()
        await store.close()
    n, offers = count_lines(b"".join(chunks).splitlines())
    return {"customers": n, "cpu_s": cpu, "wall_s": wall, "redis": delta, "redis_cpu_s": rcpu,
            "offers": dict(sorted(offers.items()))}


async def cpu_live(url: str, prefix: str, ids: list[str], draws: int, requests: int = 2000) -> dict[str, Any]:
    """Live decisions (k = 3, channels web/app/web/email, caps lifted as in the live run), 32 at a time."""
    from features.clock import parse_instant, replay_clock
    from recsvc.models import ModelRegistry
    from recsvc.offer_policy import Cap, OfferPolicy
    from recsvc.offer_service import OfferService

    store = RedisFeatureStore.from_url(url, prefix=prefix, timeout_s=30, clock=replay_clock(parse_instant(AS_OF)))
    svc = OfferService(store, ModelRegistry(None, {}), OfferPolicy(exploration=0.1, draws=draws,
                                                                  caps=(Cap("total", 1_000_000, 86400.0),)))
    chans = ["web", "app", "web", "email"]
    r = redis.Redis.from_url(url)
    try:
        await svc.decide(ids[0], "web", 3)  # warm: catalog, evidence
        sem = asyncio.Semaphore(32)

        async def one(n: int) -> int:
            async with sem:
                ans = await svc.decide(ids[(n * 7919) % len(ids)], chans[n % 4], 3)
                return len(ans.offers)

        before, rcpu = commandstats(r), redis_cpu(r)
        t, c = time.perf_counter(), time.process_time()
        made = sum(await asyncio.gather(*[one(n) for n in range(requests)]))
        cpu, wall = time.process_time() - c, time.perf_counter() - t
        delta, rcpu = stats_delta(before, commandstats(r)), redis_cpu(r) - rcpu
    finally:
        r.close()
        await store.close()
    return {"requests": requests, "offers": made, "cpu_s": cpu, "wall_s": wall, "redis": delta, "redis_cpu_s": rcpu}


def redis_report(res: dict[str, Any], per: int) -> str:
    """Redis server CPU per customer or request, and commandstats: scripts (EVALSHA, whose usec includes the
    commands they call) and the commands called directly or from scripts (their usec is counted twice)."""
    delta = res["redis"]
    top = sorted(delta.items(), key=lambda kv: -kv[1][1])[:6]
    return (f"redis cpu {res['redis_cpu_s'] * 1e6 / per:.1f} us ("
            + ", ".join(f"{cmd} {calls} calls {usec / per:.1f} us" for cmd, (calls, usec) in top) + ")")


def cpu_main(args: argparse.Namespace) -> None:
    ids = asyncio.run(setup(args.redis, args.prefix))
    print(f"# {platform.node()} ({os.cpu_count()} cores), {date.today()}, {len(ids)} customers, 50 offers, "
          f"draws {args.draws}, exploration 0.1, in-process (--cpu)", file=sys.stderr)
    per_customer, redis_per_customer = [], []
    for i in range(args.runs):
        clear_ledgers(args.redis, args.prefix)
        last = i == args.runs - 1
        res = asyncio.run(cpu_export(args.redis, args.prefix, args.draws, args.profile if last else None))
        n = res["customers"]
        per_customer.append(res["cpu_s"] / n * 1e6)
        redis_per_customer.append(res["redis_cpu_s"] / n * 1e6)
        print(f"export run {i + 1}: {n} customers, cpu {res['cpu_s'] / n * 1e6:.0f} us/customer "
              f"(wall {res['wall_s']:.2f} s), {redis_report(res, n)}; offers per line {res['offers']}",
              file=sys.stderr)
    print(f"export: median {statistics.median(per_customer):.0f} us CPU per customer over {len(per_customer)} runs "
          f"(min {min(per_customer):.0f}, max {max(per_customer):.0f}); Redis median "
          f"{statistics.median(redis_per_customer):.0f} us CPU per customer (min {min(redis_per_customer):.0f})")
    if args.skip != "live":
        per_request, redis_per_request = [], []
        for i in range(args.runs):
            clear_ledgers(args.redis, args.prefix)
            res = asyncio.run(cpu_live(args.redis, args.prefix, ids, args.draws))
            n = res["requests"]
            per_request.append(res["cpu_s"] / n * 1e6)
            redis_per_request.append(res["redis_cpu_s"] / n * 1e6)
            print(f"live run {i + 1}: {n} requests, cpu {res['cpu_s'] / n * 1e6:.0f} us/request "
                  f"(wall {res['wall_s']:.2f} s), {redis_report(res, n)}", file=sys.stderr)
        print(f"live: median {statistics.median(per_request):.0f} us CPU per request (decision only: no HTTP, no "
              f"rate limit) over {len(per_request)} runs (min {min(per_request):.0f}); Redis median "
              f"{statistics.median(redis_per_request):.0f} us CPU per request (min {min(redis_per_request):.0f})")
    clear_ledgers(args.redis, args.prefix)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    p.add_argument("--prefix", default=PREFIX)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=int, default=10, help="length of each live run")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--skip", choices=["live", "export"], default=None)
    p.add_argument("--cleanup", action="store_true", help="delete every key under the prefix and exit")
    p.add_argument("--cpu", action="store_true", help="in-process, no HTTP: CPU and Redis time per customer")
    p.add_argument("--profile", default=None, help="with --cpu: write a cProfile of the last export run here")
    args = p.parse_args()
    if args.cleanup:
        r = redis.Redis.from_url(args.redis)
        keys = list(r.scan_iter(match=f"{args.prefix}:*", count=10_000))
        n = sum(r.delete(*keys[i: i + 10_000]) for i in range(0, len(keys), 10_000))
        r.close()
        print(f"deleted {n} keys under {args.prefix}")
        return
    if args.cpu:
        cpu_main(args)
        return
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    ids = asyncio.run(setup(args.redis, args.prefix))
    print(f"# {platform.node()} ({os.cpu_count()} cores), {date.today()}, {len(ids)} customers, 50 offers, "
          f"draws {args.draws}, exploration 0.1", file=sys.stderr)
    if args.skip != "export":
        rates = []
        for i in range(args.runs):
            clear_ledgers(args.redis, args.prefix)
            server, port, cfg = start_server(args.redis, args.prefix, CONFIG.format(draws=args.draws))
            try:
                n, secs, offers = export_once(port)
            finally:
                stop_server(server, cfg)
            rates.append(n / secs)
            print(f"export run {i + 1}: {n} customers in {secs:.2f} s = {n / secs:,.0f} customers/s; "
                  f"offers per line {dict(sorted(offers.items()))}", file=sys.stderr)
        print(f"export: median {statistics.median(rates):,.0f} customers/s over {len(rates)} runs "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f})")
    if args.skip != "live":
        runs = []
        for i in range(args.runs):
            clear_ledgers(args.redis, args.prefix)
            server, port, cfg = start_server(args.redis, args.prefix, LIVE_CONFIG.format(draws=args.draws))
            try:
                live_once(port, ids, client, 2)  # warm-up
                m = live_once(port, ids, client, args.seconds)
            finally:
                stop_server(server, cfg)
            runs.append(m)
            print(f"live run {i + 1} ({client}): {m['rps']:,.0f} req/s, p50 {m['p50_ms']:.1f} ms, "
                  f"p99 {m['p99_ms']:.1f} ms, non-2xx {m['non2xx']:.0f}", file=sys.stderr)
        print(f"live (32 connections, {client}): median p99 {statistics.median(r['p99_ms'] for r in runs):.1f} ms, "
              f"median p50 {statistics.median(r['p50_ms'] for r in runs):.1f} ms, "
              f"median {statistics.median(r['rps'] for r in runs):,.0f} req/s over {len(runs)} runs")
    clear_ledgers(args.redis, args.prefix)


if __name__ == "__main__":
    main()

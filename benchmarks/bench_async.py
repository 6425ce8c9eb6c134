"""The event loop stays responsive while AsyncDataStorer's writer commits a backlog.

Needs the Firestore emulator (``make bench`` starts one, or set FIRESTORE_EMULATOR_HOST).

A probe task sleeps 1 ms in a loop and records how late it wakes up: first with the loop
idle, then while the writer commits a backlog of N steps (about 10 KB each, Sparsey-
shaped) to Firestore and to the embedded store, under asyncio and under trio. Prints the
p50 / p99 / max wake-up delay side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

import anyio

from asyncstore import AsyncDataStorer
from asyncstore._synthetic import SparseyLike, metric_config


def cfg(store: str, tmp: str) -> dict:
    if store == "firestore":
        db = {"name": "firestore", "project": "bench-" + uuid.uuid4().hex[:8],
              "emulator_host": os.environ["FIRESTORE_EMULATOR_HOST"]}
    else:
        db = {"name": "local", "path": os.path.join(tmp, uuid.uuid4().hex + ".db")}
    return {"wandb": {"mode": "disabled"},
            "database": {"read_database": db["name"], "write_databases": [db]},
            "writer": {"queue_size": 50_000}}


async def probe_while(work, delays: list[float]) -> float:
    done = False

    async def probe() -> None:
        while not done:
            t0 = time.perf_counter()
            await anyio.sleep(0.001)
            delays.append(time.perf_counter() - t0 - 0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(probe)
        t0 = time.perf_counter()
        await work()
        took = time.perf_counter() - t0
        done = True
    return took


async def scenario(store: str | None, steps, tmp: str) -> tuple[list[float], float]:
    delays: list[float] = []
    if store is None:
        took = await probe_while(lambda: anyio.sleep(2.0), delays)
        return delays, took
    async with AsyncDataStorer(metric_config(), cfg(store, tmp)) as ds:
        for s in steps:  # the backlog: accepted at once, committed while the probe runs
            await ds.save_training_step("backlog", s)
        took = await probe_while(ds.flush, delays)
    return delays, took


def pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args()
    if not os.environ.get("FIRESTORE_EMULATOR_HOST"):
        print("needs the Firestore emulator: run `make bench` or set FIRESTORE_EMULATOR_HOST")
        return 2
    gen = SparseyLike(work_ms=0)
    steps = [gen.step() for _ in range(args.steps)]
    tmp = tempfile.mkdtemp()
    print(f"probe: sleep 1 ms in a loop; backlog: {args.steps} Sparsey steps (~10 KB each)")
    print(f"{'backend':8}{'writer':22}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'drain s':>9}")
    for backend in ("asyncio", "trio"):
        for store in (None, "local", "firestore"):
            delays, took = anyio.run(scenario, store, steps, tmp, backend=backend)
            label = "idle" if store is None else f"committing to {store}"
            print(f"{backend:8}{label:22}{pct(delays, 50):9.2f}{pct(delays, 99):9.2f}"
                  f"{max(delays) * 1e3:9.2f}{took:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

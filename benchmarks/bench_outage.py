"""A Firestore outage in the middle of training, with ``on_full: spill``.

Needs the Firestore emulator (``make bench`` starts one, or set FIRESTORE_EMULATOR_HOST).

A torch loop (~1 ms of work a step, Sparsey-shaped 10 KB steps) stores 20,000 steps
through a TCP proxy in front of the emulator. After 4 s the proxy blackholes Firestore
for 15 s, then restores it. Prints, second by second: the loop's time per step, the
operations the writer holds in memory, those waiting in the spool, and the process's
resident memory; then whether every step was stored exactly once.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _proxy import TcpProxy

from asyncstore import DataFetcher, DataStorer, TrainingResult
from asyncstore._synthetic import SparseyLike, metric_config


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--outage-at", type=float, default=4.0)
    ap.add_argument("--outage", type=float, default=15.0)
    ap.add_argument("--queue", type=int, default=1000)
    args = ap.parse_args()
    host = os.environ.get("FIRESTORE_EMULATOR_HOST")
    if not host:
        print("needs the Firestore emulator: run `make bench` or set FIRESTORE_EMULATOR_HOST")
        return 2
    h, p = host.rsplit(":", 1)
    proxy = TcpProxy(h, int(p)).start()
    project = "outage-" + uuid.uuid4().hex[:8]
    tmp = tempfile.mkdtemp()
    cfg = {
        "wandb": {"mode": "disabled"},
        "database": {"read_database": "firestore", "write_databases": [
            {"name": "firestore", "project": project, "emulator_host": proxy.address}]},
        "writer": {"queue_size": args.queue, "on_full": "spill",
                   "spool_path": os.path.join(tmp, "spool.db"),
                   "retry": {"attempts": 10_000, "initial": 0.1, "max_wait": 1.0,
                             "deadline": 3600}},
    }
    model = SparseyLike(work_ms=1.0)
    for _ in range(200):
        model.step()
    ds = DataStorer(metric_config(), cfg)
    ds.create_experiment(TrainingResult("outage"))
    rows: list[tuple[float, int, str, float, int, int, float]] = []
    state = {"phase": "before"}
    start = time.perf_counter()

    def fault() -> None:
        time.sleep(args.outage_at)
        proxy.pause()
        state["phase"] = "OUTAGE"
        time.sleep(args.outage)
        proxy.resume()
        state["phase"] = "after"

    threading.Thread(target=fault, daemon=True).start()
    second, n, t0 = 1, 0, time.perf_counter()
    for _ in range(args.steps):
        ds.save_training_step("outage", model.step())
        n += 1
        now = time.perf_counter()
        if now - start >= second:
            spool = ds._journal.evicted if ds._journal else 0
            rows.append((now - start, n, state["phase"], (now - t0) / n * 1e3,
                         ds._writer.inflight, spool, rss_mb()))
            second, n, t0 = second + 1, 0, now
    loop_s = time.perf_counter() - start
    t_close = time.perf_counter()
    ds.close()
    drain = time.perf_counter() - t_close
    st = ds.stats()
    proxy.stop()

    print(f"{'t s':>5} {'phase':7} {'steps':>6} {'ms/step':>8} {'in memory':>10} "
          f"{'spilled':>8} {'RSS MB':>7}")
    for t, steps, phase, ms, inflight, spilled, rss in rows:
        print(f"{t:5.0f} {phase:7} {steps:6d} {ms:8.3f} {inflight:10d} {spilled:8d} {rss:7.0f}")
    by = {ph: [r[3] for r in rows if r[2] == ph] for ph in ("before", "OUTAGE", "after")}
    print("\nmedian ms/step: " + ", ".join(
        f"{ph} {sorted(v)[len(v) // 2]:.3f}" for ph, v in by.items() if v))
    print(f"loop {loop_s:.1f} s; the rest drained in {drain:.1f} s after the loop; "
          f"queue waits {ds._queue.waits}; stats {st}")
    read = dict(cfg)
    read["database"] = {"read_database": "firestore", "write_databases": [
        {"name": "firestore", "project": project, "emulator_host": host}]}
    got = [s for s in DataFetcher(read).get_training_result("outage").get_steps()]
    print(f"stored {len(got)} of {args.steps} steps; exactly once: {len(got) == args.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

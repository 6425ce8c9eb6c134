"""Side-by-side: asyncstore against a seed-style synchronous storer, in one run.

Needs the Firestore emulator: ``make bench`` starts one (or set FIRESTORE_EMULATOR_HOST).

Prints, for realistic Sparsey steps (2 layers, 13 MACs, about 10 KB each):
  1. p50 / p99 of one ``save_training_step`` call, asyncstore vs seed-style (one document
     read and one write per step, synchronously, against the same emulator), and ratio,
     on the same pre-made steps;
  2. Firestore document writes per stored step;
  3. wall time per step of a torch loop doing about 1 ms of work, alone and with
     asyncstore storing every step in the embedded store and in Firestore, in short
     blocks that take turns (see ``_paired.py``: this machine drifts more than the
     effect), with the paired ratio, the training thread's CPU per step, and the p50 /
     p99 of the saves made inside the loop (the step fresh in cache, as in training).

Options: --steps N (default 10000), --rounds N (default 16), --block N (default 500),
--torch-threads N (default: torch's own choice, every core), --large (the 1.2 MB
6-layer step instead).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

import torch

from asyncstore import DataStorer, TrainingResult
from asyncstore import _codec, load_config
from asyncstore._front import Front
from asyncstore._synthetic import LARGE, LARGE_PIXELS, SparseyLike, metric_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _paired import Arm, compare, report


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def config(project: str, host: str, tmp: str, store: str = "firestore") -> dict:
    db = (
        {"name": "firestore", "project": project, "emulator_host": host}
        if store == "firestore"
        else {"name": "local", "path": os.path.join(tmp, f"{uuid.uuid4().hex}.db")}
    )
    return {
        "wandb": {"mode": "disabled"},
        "database": {"read_database": db["name"], "write_databases": [db]},
        "writer": {"queue_size": 20000},
    }


def bench_save_asyncstore(steps, project, host, tmp):
    ds = DataStorer(metric_config(), config(project, host, tmp))
    exp = TrainingResult("bench-async")
    ds.create_experiment(exp)
    times = []
    clock = time.perf_counter_ns
    for s in steps:
        t0 = clock()
        ds.save_training_step("bench-async", s)
        times.append((clock() - t0) / 1e3)
    t0 = time.perf_counter()
    ds.close()
    drain = time.perf_counter() - t0
    return times, drain, ds.stats()


def bench_save_seed_style(steps, project, host):
    """What the seed did per step: read the experiment document, then write the step."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    from google.cloud import firestore

    client = firestore.Client(project=project)
    exp = client.collection("experiments").document("bench-seed")
    exp.set({"id": "bench-seed", "steps": 0})
    times = []
    clock = time.perf_counter_ns
    for i, s in enumerate(steps):
        t0 = clock()
        exp.get()
        data = _codec.encode({k: v for k, v in s.get_metrics().items()})
        client.collection("steps").document(f"bench-seed-{i}").set({"data": data})
        times.append((clock() - t0) / 1e3)
    client.close()
    return times


def count_batch_docs(project, host):
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    from google.cloud import firestore

    client = firestore.Client(project=project)
    n = sum(1 for _ in client.collection("batches").select([]).stream())
    client.close()
    return n


def timed_saves(ds, exp_id, times):
    clock = time.perf_counter_ns

    def save(step):
        t0 = clock()
        ds.save_training_step(exp_id, step)
        times.append((clock() - t0) / 1e3)

    return save


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--block", type=int, default=500)
    ap.add_argument("--torch-threads", type=int, default=0)
    ap.add_argument("--large", action="store_true")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    host = os.environ.get("FIRESTORE_EMULATOR_HOST")
    if not host:
        print("needs the Firestore emulator: run `make bench` or set FIRESTORE_EMULATOR_HOST")
        return 2
    shape = dict(macs=LARGE, pixels=LARGE_PIXELS) if args.large else {}
    tmp = tempfile.mkdtemp()
    project = "bench-" + uuid.uuid4().hex[:8]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, emulator {host}")

    gen = SparseyLike(work_ms=0, **shape)
    steps = [gen.step() for _ in range(args.steps)]
    step_bytes = len(_codec.encode({k: v for k, v in steps[0].get_metrics().items()}))
    print(f"step: {len(steps[0].get_metrics())} metrics, {step_bytes / 1024:.1f} KiB encoded")

    # 1 + 2: save latency and document writes
    a_times, drain, st = bench_save_asyncstore(steps, project, host, tmp)
    s_times = bench_save_seed_style(steps, project, host)
    docs = count_batch_docs(project, host)
    a50, a99 = percentile(a_times, 50), percentile(a_times, 99)
    s50, s99 = percentile(s_times, 50), percentile(s_times, 99)
    print(f"\n== save_training_step, {args.steps} steps ==")
    print(f"{'':22}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}")
    print(f"{'asyncstore':22}{a50:10.1f}{a99:10.1f}{statistics.mean(a_times):10.1f}")
    print(f"{'seed-style sync':22}{s50:10.1f}{s99:10.1f}{statistics.mean(s_times):10.1f}")
    print(f"{'ratio seed/async':22}{s50 / a50:10.0f}x{s99 / a99:9.0f}x")
    print(f"asyncstore drained the rest in {drain:.2f} s after the last call; stats: {st}")
    print(f"\n== Firestore document writes ==\n{docs} batch documents for {args.steps} steps:"
          f" 1 write per {args.steps / max(docs, 1):.0f} steps")

    # 3: the training loop, alone and storing every step, in blocks that take turns
    model = SparseyLike(work_ms=1.0, **shape)
    for _ in range(200):
        model.step()  # warm up
    storers = {store: DataStorer(metric_config(), config(project, host, tmp, store))
               for store in ("local", "firestore")}
    saves: dict[str, list[float]] = {"local": [], "firestore": []}
    alone = Arm("alone")
    # What the training thread does in a save, and nothing else: check and encode the
    # step (the snapshot). No queue, no writer thread: the rest of a save's cost.
    front = Front(load_config(config(project, host, tmp, "local")),
                  frozenset(m["name"] for m in metric_config()))
    arms = [alone, Arm("encoding only (no queue, no writer)",
                       lambda s: front.step("encode-only", s, "training"))] + [
        Arm(f"storing every step, {label}", timed_saves(ds, f"loop-{store}", saves[store]),
            ds.flush)
        for (store, ds), label in zip(storers.items(), ("embedded store", "Firestore"), strict=True)
    ]
    compare(model.step, arms, rounds=args.rounds, block=args.block)
    for ds in storers.values():
        ds.close()
    ratios = report(arms, alone, f"torch loop, ~1 ms work/step, {torch.get_num_threads()} "
                    f"torch thread(s), {args.rounds} rounds x {args.block} steps")
    for store, label in (("local", "embedded store"), ("firestore", "Firestore")):
        t = saves[store]
        print(f"save_training_step inside the loop, {label}: p50 {percentile(t, 50):.1f} us, "
              f"p99 {percentile(t, 99):.1f} us")
    print(f"(the Firestore emulator, a JVM, runs on this machine's {os.cpu_count()} cores too; "
          f"encoding alone {ratios[arms[1].name]:.3f}x, embedded {ratios[arms[2].name]:.3f}x, "
          f"Firestore {ratios[arms[3].name]:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

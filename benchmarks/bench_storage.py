"""Side-by-side: asyncstore against a seed-style synchronous storer, in one run.

Needs the Firestore emulator: ``make bench`` starts one (or set FIRESTORE_EMULATOR_HOST).

Prints, for realistic Sparsey steps (2 layers, 13 MACs, about 10 KB each):
  1. p50 / p99 of one ``save_training_step`` call, asyncstore vs seed-style (one document
     read and one write per step, synchronously, against the same emulator), and ratio;
  2. Firestore document writes per stored step;
  3. wall time per step of a torch loop doing about 1 ms of work, alone and with
     asyncstore storing every step (rounds interleaved to cancel drift), and the ratio.

Options: --steps N (default 10000), --loop-steps N (default 3000), --rounds N (default 3),
--large (use the 1.2 MB 6-layer step instead).
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
from asyncstore import _codec
from asyncstore._synthetic import LARGE, LARGE_PIXELS, SparseyLike, metric_config


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


def loop(model, n, ds=None, exp_id="loop"):
    t0 = time.perf_counter()
    for _ in range(n):
        step = model.step()
        if ds is not None:
            ds.save_training_step(exp_id, step)
    return (time.perf_counter() - t0) / n * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--loop-steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--large", action="store_true")
    args = ap.parse_args()
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

    # 3: the training loop, alone and storing every step, rounds interleaved
    model = SparseyLike(work_ms=1.0, **shape)
    loop(model, 200)  # warm up
    times: dict[str, list[float]] = {"alone": [], "local": [], "firestore": []}
    for r in range(args.rounds):
        times["alone"].append(loop(model, args.loop_steps))
        for store in ("local", "firestore"):
            ds = DataStorer(metric_config(), config(project, host, tmp, store))
            times[store].append(loop(model, args.loop_steps, ds, f"loop-{store}-{r}"))
            ds.close()
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items())
              + " ms/step")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n== torch loop, ~1 ms work/step, {args.loop_steps} steps x {args.rounds} rounds "
          "(median ms/step) ==")
    print(f"{'alone':34}{med['alone']:.3f}")
    print(f"{'storing every step, embedded store':34}{med['local']:.3f}   ratio "
          f"{med['local'] / med['alone']:.3f}")
    print(f"{'storing every step, Firestore':34}{med['firestore']:.3f}   ratio "
          f"{med['firestore'] / med['alone']:.3f}   (the emulator shares this machine's cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

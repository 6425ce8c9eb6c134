"""What W&B costs a training loop: a torch loop doing about 1 ms of work per step, storing
every step at ``wandb.data_resolution`` 2 (about 80 keys a row for the small model),
side by side, rounds interleaved to cancel drift:

  alone                  the loop, storing nothing (reference)
  W&B disabled           DataStorer to the embedded store, wandb.mode disabled
  W&B offline            the same with wandb.mode offline: every row logged by the
                         storer's W&B worker process
  wandb.log in the loop  W&B disabled in the storer, and the loop itself reduces the
                         step and calls ``run.log`` (what the seed did)
  wandb.log in a thread  the same calls from a background thread of the training
                         process (the design the worker process replaces)

Prints ms per step (median over rounds), the ratio to "W&B disabled", how long each
storer took to drain after its loop, and the W&B-on/W&B-off ratio of each round (the
two run back to back, so this pairing cancels most of a noisy machine's drift).
Needs no network and no API key.

Options: --steps N (per round, default 2000), --rounds N (default 3), --large (the 6-layer
28x28 model, about 1.2 MB a step), --skip-thread, --torch-threads N.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

os.environ.setdefault("WANDB_SILENT", "true")

import torch

from asyncstore import DataStorer, TrainingStepResult
from asyncstore._synthetic import LARGE, LARGE_PIXELS, SparseyLike, metric_config
from asyncstore._wandb_data import step_row


def config(tmp: str, mode: str) -> dict[str, Any]:
    return {
        "wandb": {"mode": mode, "dir": os.path.join(tmp, "runs"), "data_resolution": 2,
                  "project_name": "asyncstore-bench"},
        "database": {"read_database": "local", "write_databases": [
            {"name": "local", "path": os.path.join(tmp, f"{uuid.uuid4().hex}.db")}]},
        "writer": {"queue_size": 20000},
    }


def timed_loop(model: SparseyLike, n: int, each: Callable[[TrainingStepResult], None]) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        each(model.step())
    return (time.perf_counter() - t0) / n * 1e3


def run_storer(model: SparseyLike, n: int, tmp: str, mode: str, exp: str,
               extra: Callable[[TrainingStepResult], None] | None = None) -> tuple[float, float]:
    service = os.environ.pop("WANDB_SERVICE", None)  # the worker starts its own wandb
    ds = DataStorer(metric_config(), config(tmp, mode))
    if service is not None:
        os.environ["WANDB_SERVICE"] = service
    for _ in range(20):  # start the worker, outside the timing
        ds.save_training_step(exp, model.step())
    ds.flush()

    def each(step: TrainingStepResult) -> None:
        ds.save_training_step(exp, step)
        if extra is not None:
            extra(step)

    per_step = timed_loop(model, n, each)
    t0 = time.perf_counter()
    ds.close()
    return per_step, time.perf_counter() - t0


class ThreadLogger:
    """W&B from a thread of the training process: reduce and ``run.log`` there."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.q: queue.SimpleQueue[TrainingStepResult | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while (step := self.q.get()) is not None:
            self.run.log(step_row(step.get_metrics(), 2))

    def put(self, step: TrainingStepResult) -> None:
        self.q.put(step)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--skip-thread", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch.set_num_threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    import wandb

    shape: dict[str, Any] = dict(macs=LARGE, pixels=LARGE_PIXELS) if args.large else {}
    tmp = tempfile.mkdtemp(prefix="bench-wandb-")
    os.makedirs(os.path.join(tmp, "runs"), exist_ok=True)
    model = SparseyLike(work_ms=1.0, **shape)
    keys = len(step_row(model.step().get_metrics(), 2))
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), wandb "
          f"{wandb.__version__}, {os.cpu_count()} CPUs; {keys} keys a row at resolution 2")
    timed_loop(model, 300, lambda s: None)  # warm up

    names = ["alone", "W&B disabled", "W&B offline", "wandb.log in the loop"]
    if not args.skip_thread:
        names.append("wandb.log in a thread")
    times: dict[str, list[float]] = {k: [] for k in names}
    drains: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        times["alone"].append(timed_loop(model, args.steps, lambda s: None))
        t, d = run_storer(model, args.steps, tmp, "disabled", f"off-{r}")
        times["W&B disabled"].append(t)
        drains["W&B disabled"].append(d)
        t, d = run_storer(model, args.steps, tmp, "offline", f"on-{r}")
        times["W&B offline"].append(t)
        drains["W&B offline"].append(d)

        run = wandb.init(project="asyncstore-bench", mode="offline", id=f"inloop-{r}",
                         dir=os.path.join(tmp, "runs"), reinit="create_new",
                         settings=wandb.Settings(silent=True, console="off"))
        t, d = run_storer(model, args.steps, tmp, "disabled", f"inloop-{r}",
                          lambda s, run=run: run.log(step_row(s.get_metrics(), 2)))
        t0 = time.perf_counter()
        run.finish()
        times["wandb.log in the loop"].append(t)
        drains["wandb.log in the loop"].append(d + time.perf_counter() - t0)

        if not args.skip_thread:
            run = wandb.init(project="asyncstore-bench", mode="offline", id=f"thread-{r}",
                             dir=os.path.join(tmp, "runs"), reinit="create_new",
                             settings=wandb.Settings(silent=True, console="off"))
            logger = ThreadLogger(run)
            t, d = run_storer(model, args.steps, tmp, "disabled", f"thread-{r}", logger.put)
            t0 = time.perf_counter()
            logger.close()
            run.finish()
            times["wandb.log in a thread"].append(t)
            drains["wandb.log in a thread"].append(d + time.perf_counter() - t0)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items())
              + " ms/step", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["W&B disabled"]
    print(f"\n== torch loop, ~1 ms work/step, resolution 2, {args.steps} steps x "
          f"{args.rounds} rounds (median) ==")
    print(f"{'':24}{'ms/step':>9}{'vs W&B disabled':>17}{'drain s':>9}")
    for k in names:
        drain = f"{statistics.median(drains[k]):9.2f}" if drains[k] else f"{'':9}"
        print(f"{k:24}{med[k]:9.3f}{(med[k] / base - 1) * 100:+16.1f}%{drain}")
    paired = [on / off for on, off in zip(times["W&B offline"], times["W&B disabled"],
                                          strict=True)]
    print(f"\nW&B on (offline) costs the loop {(med['W&B offline'] / base - 1) * 100:+.1f}% "
          "over W&B disabled (goal: <= 3 %); paired by round: median "
          f"{(statistics.median(paired) - 1) * 100:+.1f}%, rounds "
          + " ".join(f"{(p - 1) * 100:+.1f}%" for p in paired))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What W&B costs a training loop: a torch loop doing about 1 ms of work per step, storing
every step at ``wandb.data_resolution`` 2 (about 80 keys a row for the small model),
side by side in short blocks that take turns (see ``_paired.py``: this machine drifts
more than the effect):

  alone                  the loop, storing nothing
  W&B disabled           DataStorer to the embedded store, wandb.mode disabled (reference)
  W&B offline            the same with wandb.mode offline: every row logged by the
                         storer's W&B worker process
  wandb.log in the loop  W&B disabled in the storer, and the loop itself reduces the
                         step and calls ``run.log`` (what the seed did)
  wandb.log in a thread  the same calls from a background thread of the training
                         process (the design the worker process replaces)

Prints ms per step, the paired ratio to "W&B disabled" with its quartiles, and the
flush after each block: the rows the W&B worker had not yet logged when the block ended
(a worker slower than the loop shows here, and would hold a long run back once
``queue_size`` steps wait). Needs no network and no API key.

Options: --block N (default 500), --rounds N (default 12), --large (the 6-layer 28x28
model, about 1.2 MB a step), --skip-thread, --torch-threads N.

--sustained N instead runs one long loop of N steps with W&B on (default queue_size),
printing ms per step for each 1,000 steps: whether the worker keeps up with the loop,
or holds it to its own pace once the queue is full.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

os.environ.setdefault("WANDB_SILENT", "true")

import torch

from asyncstore import DataStorer, TrainingStepResult, load_config
from asyncstore._synthetic import LARGE, LARGE_PIXELS, SparseyLike, metric_config
from asyncstore._wandb_data import step_row

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _paired import Arm, compare, report


def config(tmp: str, mode: str) -> dict[str, Any]:
    return {
        "wandb": {"mode": mode, "dir": os.path.join(tmp, "runs"), "data_resolution": 2,
                  "project_name": "asyncstore-bench"},
        "database": {"read_database": "local", "write_databases": [
            {"name": "local", "path": os.path.join(tmp, f"{uuid.uuid4().hex}.db")}]},
        "writer": {"queue_size": 20000},
    }


def open_storer(tmp: str, mode: str, model: SparseyLike, exp: str) -> DataStorer:
    service = os.environ.pop("WANDB_SERVICE", None)  # the worker starts its own wandb
    ds = DataStorer(metric_config(), config(tmp, mode))
    if service is not None:
        os.environ["WANDB_SERVICE"] = service
    for _ in range(20):  # start the worker, outside the timing
        ds.save_training_step(exp, model.step())
    ds.flush()
    return ds


class ThreadLogger:
    """W&B from a thread of the training process: reduce and ``run.log`` there."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.q: queue.Queue[TrainingStepResult | None] = queue.Queue()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while (step := self.q.get()) is not None:
            self.run.log(step_row(step.get_metrics(), 2))
            self.q.task_done()

    def put(self, step: TrainingStepResult) -> None:
        self.q.put(step)

    def drain(self) -> None:
        self.q.join()

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()


def sustained(model: SparseyLike, tmp: str, steps: int) -> int:
    cfg = config(tmp, "offline")
    del cfg["writer"]["queue_size"]  # the default: what a long run meets
    ds = DataStorer(metric_config(), cfg)
    for _ in range(20):
        ds.save_training_step("warm", model.step())
    ds.flush()
    per_block = []
    for _ in range(0, steps, 1000):
        t0 = time.perf_counter()
        for _ in range(1000):
            ds.save_training_step("sustained", model.step())
        per_block.append(time.perf_counter() - t0)
    st = ds.stats()
    t0 = time.perf_counter()
    ds.close()
    print(f"\n== {steps} steps with W&B on (offline, resolution 2), queue_size "
          f"{load_config(cfg).writer.queue_size} ==")
    print("ms/step, each 1,000 steps: " + " ".join(f"{b:.2f}" for b in per_block))
    print(f"at the end: {st.pending} operation(s) pending; saves waited for room "
          f"{st.blocked} time(s), {st.blocked_seconds:.1f} s in all; close took "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--block", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--skip-thread", action="store_true")
    ap.add_argument("--sustained", type=int, default=0)
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
    for _ in range(300):
        model.step()  # warm up
    if args.sustained:
        return sustained(model, tmp, args.sustained)

    def offline_run(name: str) -> Any:
        return wandb.init(project="asyncstore-bench", mode="offline", id=name,
                          dir=os.path.join(tmp, "runs"), reinit="create_new",
                          settings=wandb.Settings(silent=True, console="off"))

    off = open_storer(tmp, "disabled", model, "off")
    on = open_storer(tmp, "offline", model, "on")
    inloop_ds = open_storer(tmp, "disabled", model, "inloop")
    inloop_run = offline_run("inloop")

    def in_loop(step: TrainingStepResult) -> None:
        inloop_ds.save_training_step("inloop", step)
        inloop_run.log(step_row(step.get_metrics(), 2))

    reference = Arm("W&B disabled", lambda s: off.save_training_step("off", s), off.flush)
    arms = [Arm("alone"), reference,
            Arm("W&B offline", lambda s: on.save_training_step("on", s), on.flush),
            Arm("wandb.log in the loop", in_loop, inloop_ds.flush)]
    closers: list[Callable[[], None]] = [off.close, on.close, inloop_ds.close,
                                         inloop_run.finish]
    if not args.skip_thread:
        thread_ds = open_storer(tmp, "disabled", model, "thread")
        logger = ThreadLogger(offline_run("thread"))

        def in_thread(step: TrainingStepResult) -> None:
            thread_ds.save_training_step("thread", step)
            logger.put(step)

        arms.append(Arm("wandb.log in a thread", in_thread,
                        lambda: (thread_ds.flush(), logger.drain())))
        closers += [thread_ds.close, logger.close, logger.run.finish]
    compare(model.step, arms, rounds=args.rounds, block=args.block)
    for close in closers:
        close()
    ratios = report(arms, reference, f"torch loop, ~1 ms work/step, resolution 2, "
                    f"{torch.get_num_threads()} torch thread(s), {args.rounds} rounds x "
                    f"{args.block} steps")
    print(f"\nW&B on (offline) costs the loop {(ratios['W&B offline'] - 1) * 100:+.1f}% over "
          "W&B disabled while its rows fit in the queue (paired median; goal: <= 3 %), and "
          f"{(ratios['W&B offline with flush'] - 1) * 100:+.1f}% counting the time the worker "
          "takes to log them: what a long run at this pace pays (see --sustained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

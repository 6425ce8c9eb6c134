"""``asyncstore demo``: a small Sparsey-shaped torch training loop that stores every
step, and what storing cost it."""

from __future__ import annotations

import glob
import os
import statistics
import time
import uuid
from collections.abc import Callable

import click
import torch

from ._config import SystemConfig
from ._fetcher import DataFetcher
from ._results import TrainingResult
from ._storer import DataStorer
from ._synthetic import SparseyLike, metric_config
from ._wandb_data import run_id


def run_demo(
    cfg: SystemConfig,
    *,
    steps: int,
    eval_steps: int,
    work_ms: float,
    where: Callable[[SystemConfig], str],
    command: str = "asyncstore",
) -> str:
    """Train, store, read back, print; returns the experiment id."""
    # torch's intra-op pool spins on every core it has; the writer's thread then steals
    # one of them and a step waits for the slowest (10x noise on a 2-core machine). One
    # core is left to the writer, as a training job sharing a machine should do.
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores - 1))
    model = SparseyLike(work_ms=work_ms)
    exp_id = f"demo-{uuid.uuid4().hex[:8]}"
    click.echo(f"training {steps} steps of a 2-layer, 13-MAC Sparsey-shaped model "
               f"(~{work_ms:g} ms of torch work a step, torch on {torch.get_num_threads()} "
               f"of {cores} cores)")

    metrics = {"match_accuracy": "max_by_layerwise_mean"}
    result = TrainingResult(exp_id, metrics=metrics,
                            configs={"model": {"macs": list(model.macs)}, "work_ms": work_ms})
    saves: list[float] = []

    def block(n: int, ds: DataStorer | None, into: TrainingResult) -> float:
        """n steps; each is added to ``into`` (the loop's own bookkeeping, with or
        without storage) and, with ``ds``, stored. Seconds per step."""
        t0 = time.perf_counter()
        for _ in range(n):
            step = model.step()
            into.add_step(step)
            if ds is not None:
                s0 = time.perf_counter()
                ds.save_training_step(exp_id, step)
                saves.append(time.perf_counter() - s0)
        return (time.perf_counter() - t0) / n

    block(min(steps, 100), None, TrainingResult("warm-up", metrics=metrics))
    # This machine's speed can drift by tens of percent within seconds: the loop runs
    # in blocks, alone and storing by turns, and each stored block is compared with the
    # block just before it.
    blocks = max(1, min(5, steps // 50))
    sizes = [steps // blocks + (1 if k < steps % blocks else 0) for k in range(blocks)]
    alone_times: list[float] = []
    stored_times: list[float] = []
    drain = 0.0
    with DataStorer(metric_config(), cfg) as ds:
        ds.create_experiment(result)
        t0 = time.perf_counter()
        ds.flush()  # the W&B worker starts (imports torch and wandb) before the timing
        if cfg.wandb.resolved_mode != "disabled":
            click.echo(f"W&B worker process ready in {time.perf_counter() - t0:.1f} s")
        for n in sizes:
            alone_times.append(block(n, None, TrainingResult("alone", metrics=metrics)))
            stored_times.append(block(n, ds, result))
            t0 = time.perf_counter()
            ds.flush()  # outside the timing, so the next "alone" block runs alone
            drain += time.perf_counter() - t0
        result.mark_finished()
        ds.save_training_result(result)
        evaluation = TrainingResult(exp_id, "evaluation", metrics=metrics)
        for _ in range(eval_steps):
            step = model.step()
            evaluation.add_step(step)
            ds.save_evaluation_step(exp_id, step)
        evaluation.mark_finished()
        ds.save_evaluation_result(evaluation)
        ds.flush()
        stats = ds.stats()
    alone = statistics.median(alone_times)
    stored = statistics.median(stored_times)
    ratio = statistics.median(s / a for s, a in zip(stored_times, alone_times, strict=True))
    with DataFetcher(cfg) as fetcher:
        fetched = fetcher.get_training_result(exp_id)
        evaluated = fetcher.get_evaluation_result(exp_id)
    saves_us = sorted(s * 1e6 for s in saves)
    click.echo(f"stored {len(fetched.get_steps())} of {steps} training and "
               f"{len(evaluated.get_steps())} of {eval_steps} evaluation steps of experiment "
               f"{exp_id} ({stats.written} operations written, {stats.failed} failed)")
    click.echo(f"per step: {alone * 1e3:.3f} ms without storage, {stored * 1e3:.3f} ms with "
               f"(x{ratio:.2f}, the median over {blocks} pairs of blocks taking turns)")
    click.echo(f"save_training_step on the hot path: p50 {statistics.median(saves_us):.0f} us, "
               f"p99 {saves_us[int(0.99 * (len(saves_us) - 1))]:.0f} us; "
               f"the flushes after the blocks took {drain * 1e3:.0f} ms in all")
    best = fetched.best_steps.get("match_accuracy")
    if best is not None:
        click.echo(f"best match_accuracy at training step {best['best_index']}")
    click.echo(f"data lives in {where(cfg)}")
    if cfg.wandb.resolved_mode != "disabled":
        base = cfg.wandb.dir or os.environ.get("WANDB_DIR") or "."
        pattern = "*-run-*-" + run_id(exp_id)  # wandb keeps runs in BASE/wandb/
        runs = sorted(glob.glob(os.path.join(base, "wandb", pattern))
                      + glob.glob(os.path.join(base, pattern)))
        if runs:
            run_dir = os.path.abspath(runs[-1])
            click.echo(f"W&B ({cfg.wandb.resolved_mode}) run: {run_dir}")
            if cfg.wandb.resolved_mode == "offline":
                click.echo(f"upload it later with:  wandb sync {run_dir}")
    click.echo(f"look at it:  {command} show {exp_id}\n"
               f"             {command} plot {exp_id} --metric match_accuracy")
    return exp_id

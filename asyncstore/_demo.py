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

    def run(ds: DataStorer | None, result: TrainingResult | None) -> tuple[float, list[float]]:
        saves = []
        t0 = time.perf_counter()
        for _ in range(steps):
            step = model.step()
            if ds is not None and result is not None:
                result.add_step(step)
                s0 = time.perf_counter()
                ds.save_training_step(exp_id, step)
                saves.append(time.perf_counter() - s0)
        return (time.perf_counter() - t0) / steps, saves

    run(None, None)  # warm up
    alone, _ = run(None, None)
    metrics = {"match_accuracy": "max_by_layerwise_mean"}
    result = TrainingResult(exp_id, metrics=metrics,
                            configs={"model": {"macs": list(model.macs)}, "work_ms": work_ms})
    with DataStorer(metric_config(), cfg) as ds:
        ds.create_experiment(result)
        t0 = time.perf_counter()
        ds.flush()  # the W&B worker starts (imports torch and wandb) before the timing
        if cfg.wandb.resolved_mode != "disabled":
            click.echo(f"W&B worker process ready in {time.perf_counter() - t0:.1f} s")
        stored, saves = run(ds, result)
        result.mark_finished()
        ds.save_training_result(result)
        t0 = time.perf_counter()
        ds.flush()
        drain = time.perf_counter() - t0
        evaluation = TrainingResult(exp_id, "evaluation", metrics=metrics)
        for _ in range(eval_steps):
            step = model.step()
            evaluation.add_step(step)
            ds.save_evaluation_step(exp_id, step)
        evaluation.mark_finished()
        ds.save_evaluation_result(evaluation)
        ds.flush()
        stats = ds.stats()
    with DataFetcher(cfg) as fetcher:
        fetched = fetcher.get_training_result(exp_id)
        evaluated = fetcher.get_evaluation_result(exp_id)
    saves_us = sorted(s * 1e6 for s in saves)
    click.echo(f"stored {len(fetched.get_steps())} of {steps} training and "
               f"{len(evaluated.get_steps())} of {eval_steps} evaluation steps of experiment "
               f"{exp_id} ({stats.written} operations written, {stats.failed} failed)")
    click.echo(f"per step: {alone * 1e3:.3f} ms without storage, {stored * 1e3:.3f} ms with "
               f"(x{stored / alone:.2f})")
    click.echo(f"save_training_step on the hot path: p50 {statistics.median(saves_us):.0f} us, "
               f"p99 {saves_us[int(0.99 * (len(saves_us) - 1))]:.0f} us; "
               f"flush after the loop took {drain * 1e3:.0f} ms")
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

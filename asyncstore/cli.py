"""The ``asyncstore`` command line."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import click

from ._config import SystemConfig, load_config
from ._exceptions import ConfigError


def _config(path: str | None) -> SystemConfig:
    if path is not None:
        return load_config(path)
    if Path("system.yaml").exists():
        return load_config("system.yaml")
    return load_config({"wandb": {"mode": "disabled"}})


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="system.yaml to use (default: ./system.yaml if present, else the "
                   "embedded store ./asyncstore.db).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Store and inspect Sparsey experiment results."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@main.command()
@click.option("--steps", default=500, show_default=True, help="Training steps to run.")
@click.option("--work-ms", default=1.0, show_default=True,
              help="Torch work per step, in milliseconds.")
@click.pass_context
def demo(ctx: click.Context, steps: int, work_ms: float) -> None:
    """Run a small Sparsey-shaped training loop that stores every step, then read it back."""
    from ._fetcher import DataFetcher
    from ._results import TrainingResult
    from ._storer import DataStorer
    from ._synthetic import SparseyLike, metric_config

    try:
        cfg = _config(ctx.obj["config_path"])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    model = SparseyLike(work_ms=work_ms)
    exp_id = f"demo-{uuid.uuid4().hex[:8]}"
    click.echo(f"training {steps} steps of a 2-layer, 13-MAC Sparsey-shaped model "
               f"(~{work_ms:g} ms of torch work a step)")

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
    result = TrainingResult(exp_id, metrics={"match_accuracy": "max_by_layerwise_mean"},
                            configs={"model": {"macs": list(model.macs)}})
    with DataStorer(metric_config(), cfg) as ds:
        ds.create_experiment(result)
        stored, saves = run(ds, result)
        result.mark_finished()
        ds.save_training_result(result)
        t0 = time.perf_counter()
        ds.flush()
        drain = time.perf_counter() - t0
        stats = ds.stats()
    fetched = DataFetcher(cfg).get_training_result(exp_id)
    where = _where(cfg)
    saves_us = sorted(s * 1e6 for s in saves)
    click.echo(f"stored {len(fetched.get_steps())} of {steps} steps of experiment {exp_id} "
               f"({stats.written} operations written, {stats.failed} failed)")
    click.echo(f"per step: {alone * 1e3:.3f} ms without storage, {stored * 1e3:.3f} ms with "
               f"(x{stored / alone:.2f})")
    click.echo(f"save_training_step on the hot path: p50 {statistics.median(saves_us):.0f} us, "
               f"p99 {saves_us[int(0.99 * (len(saves_us) - 1))]:.0f} us; "
               f"flush after the loop took {drain * 1e3:.0f} ms")
    best = fetched.best_steps.get("match_accuracy")
    if best is not None:
        click.echo(f"best match_accuracy at step {best['best_index']}")
    click.echo(f"data lives in {where}")


@main.command()
@click.argument("spool", type=click.Path(dir_okay=False))
@click.option("--timeout", type=float, default=None,
              help="Give up after this many seconds (what is left stays in the spool).")
@click.pass_context
def recover(ctx: click.Context, spool: str, timeout: float | None) -> None:
    """Store what a crashed or stopped process left in its spool SPOOL.

    Uses the configuration recorded in the spool unless --config is given. Replays
    dead letters too; safe to run again.
    """
    from ._recover import recover as replay
    from ._spool import SpoolBusy

    config = load_config(ctx.obj["config_path"]) if ctx.obj["config_path"] else None
    try:
        report = replay(spool, config, timeout=timeout)
    except (ConfigError, SpoolBusy, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    except TimeoutError:
        raise click.ClickException(
            f"not done within {timeout} s; what is left stays in {spool}"
        ) from None
    click.echo(f"{report.found} operation(s) in the spool: {report.stored} stored, "
               f"{report.failed} still failing")
    if report.failed:
        for text in report.failures[:20]:
            click.echo(f"  {text}", err=True)
        ctx.exit(1)


def _where(cfg: SystemConfig) -> str:
    db: Any = cfg.read_db
    if db.name == "local":
        return os.path.abspath(str(db.path))
    return f"Firestore project {db.project}" + (
        f" (emulator {db.resolved_emulator_host})" if db.resolved_emulator_host else ""
    )


if __name__ == "__main__":
    main()

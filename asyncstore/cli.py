"""The ``asyncstore`` command line: ``demo``, ``ls``, ``show``, ``show-sweep``, ``plot``,
``recover``.

Every command reads ``--config FILE`` (default ``./system.yaml`` when present, else the
embedded store ``./asyncstore.db``). Bad input, an unknown id or a store that cannot be
read ends with one line on stderr and exit status 1, never a traceback. Heavy imports
(torch, matplotlib, the Firestore client) happen inside the commands.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._exceptions import CodecError, ConfigError, NotFoundError
from ._present import (
    experiment_json,
    experiment_text,
    listing_json,
    listing_text,
    sweep_json,
    sweep_text,
)

if TYPE_CHECKING:
    from ._config import SystemConfig
    from ._fetcher import DataFetcher

log = logging.getLogger("asyncstore")


class _Group(click.Group):
    """Turns the errors a user can cause into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (LookupError, ValueError, OSError) as exc:  # NotFound, Config, Codec, ids
            raise click.ClickException(_one_line(exc)) from None
        except Exception as exc:
            if type(exc).__module__.startswith("google."):  # Firestore unreachable, denied
                raise click.ClickException(f"Firestore: {_one_line(exc)}") from None
            raise


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="system.yaml to use (default: ./system.yaml if present, else the "
                   "embedded store ./asyncstore.db).")
@click.option("-v", "--verbose", count=True,
              help="Log what asyncstore does (-v: info, -vv: debug).")
@click.version_option(package_name="asyncstore")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Store and inspect Sparsey experiment results.

    \b
    Try it:   asyncstore demo
    Browse:   asyncstore ls;  asyncstore show EXPERIMENT;  asyncstore show-sweep SWEEP
    Draw:     asyncstore plot EXPERIMENT --metric match_accuracy
    """
    _setup_logging(verbose)
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


def _setup_logging(verbose: int) -> None:
    """The library only logs; the command line shows its warnings (more with -v)."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def _config(path: str | None) -> SystemConfig:
    from ._config import load_config

    if path is not None:
        return load_config(path)
    if Path("system.yaml").exists():
        return load_config("system.yaml")
    return load_config({"wandb": {"mode": "disabled"}})


def _where(cfg: SystemConfig) -> str:
    db: Any = cfg.read_db
    if db.name == "local":
        return os.path.abspath(str(db.path))
    return f"Firestore project {db.project}" + (
        f" (emulator {db.resolved_emulator_host})" if db.resolved_emulator_host else ""
    )


@contextmanager
def _fetcher(ctx: click.Context) -> Iterator[tuple[DataFetcher, str]]:
    """A fetcher on the configured read database, and where that is. Never creates an
    embedded store that is not there."""
    from ._fetcher import DataFetcher

    cfg = _config(ctx.obj["config_path"])
    db: Any = cfg.read_db
    where = _where(cfg)
    if db.name == "local" and not Path(db.path).exists():
        raise click.ClickException(
            f"no store at {where}: nothing stored there yet (run `asyncstore demo`, or "
            "pass --config FILE naming your system.yaml)"
        )
    fetcher = DataFetcher(cfg)
    try:
        yield fetcher, where
    except NotFoundError as exc:
        raise click.ClickException(f"{_one_line(exc)} in {where}") from None
    finally:
        fetcher.close()


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a bar on stderr when it is a terminal
    and there is more than one read to wait for; silent otherwise."""
    state: dict[str, Any] = {"bar": None, "shown": 0}

    def update(done: int, total: int) -> None:
        bar = state["bar"]
        if bar is None:
            # Only once a first read has come back and more are due: a read that is
            # over at once never flashes a bar.
            if not 0 < done < total or not sys.stderr.isatty():
                return
            bar = state["bar"] = click.progressbar(
                length=total, label=label, file=sys.stderr, show_pos=True
            ).__enter__()
        bar.update(done - state["shown"])
        state["shown"] = done

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)


def _emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False))


# --------------------------------------------------------------------------- demo


@main.command()
@click.option("--steps", default=500, show_default=True, type=click.IntRange(1),
              help="Training steps to run.")
@click.option("--eval-steps", default=50, show_default=True, type=click.IntRange(0),
              help="Evaluation steps stored after training.")
@click.option("--work-ms", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Torch work per step, in milliseconds.")
@click.option("--wandb/--no-wandb", "use_wandb", default=True, show_default=True,
              help="Also log every step to an offline W&B run in ./wandb (without "
                   "--config and ./system.yaml; a configuration file decides otherwise).")
@click.pass_context
def demo(ctx: click.Context, steps: int, eval_steps: int, work_ms: float,
         use_wandb: bool) -> None:
    """Run a small Sparsey-shaped training loop that stores every step, then read it back.

    Prints the steps stored, the time per step with and without storage, the hot-path
    cost of save_training_step, and where the data lives. Stores in ./asyncstore.db
    (and an offline W&B run in ./wandb) unless --config or ./system.yaml says otherwise.
    """
    from ._config import load_config
    from ._demo import run_demo

    path = ctx.obj["config_path"]
    if path is None and not Path("system.yaml").exists():
        cfg = load_config({"wandb": {"mode": "offline" if use_wandb else "disabled",
                                     "project_name": "asyncstore-demo"}})
    else:
        cfg = _config(path)
    run_demo(cfg, steps=steps, eval_steps=eval_steps, work_ms=work_ms, where=_where,
             command="asyncstore" + (f" --config {path}" if path else ""))


# --------------------------------------------------------------------------- browsing


@main.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List the experiments and HPO sweeps in the store, newest first."""
    with _fetcher(ctx) as (fetcher, where):
        experiments, sweeps = fetcher.list_experiments(), fetcher.list_sweeps()
    if as_json:
        _emit_json(listing_json(experiments, sweeps, where))
    else:
        click.echo(listing_text(experiments, sweeps, where))


@main.command()
@click.argument("experiment")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.pass_context
def show(ctx: click.Context, experiment: str, as_json: bool) -> None:
    """Summarise EXPERIMENT: phases, step counts, start and end, best steps, configs.

    Reads the experiment's document and its batches' metadata (and the first run of
    steps, to name the metrics stored), not every step.
    """
    with _fetcher(ctx) as (fetcher, where):
        summary = fetcher.get_experiment_summary(experiment)
    if as_json:
        _emit_json(experiment_json(summary, where))
    else:
        click.echo(experiment_text(summary, where))


@main.command("show-sweep")
@click.argument("sweep")
@click.option("--top", type=click.IntRange(1), default=None,
              help="Show only the best N trials.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.pass_context
def show_sweep(ctx: click.Context, sweep: str, top: int | None, as_json: bool) -> None:
    """Show HPO sweep SWEEP with its trials ranked by objective (best first)."""
    with _fetcher(ctx) as (fetcher, where):
        summary = fetcher.get_sweep_summary(sweep)
    if as_json:
        _emit_json(sweep_json(summary, where, top))
    else:
        click.echo(sweep_text(summary, where, top))


@main.command()
@click.argument("experiment")
@click.option("-m", "--metric", required=True,
              help="The metric to draw (`asyncstore show EXPERIMENT` lists them).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="PNG file to write (default: EXPERIMENT-METRIC.png here).")
@click.option("--smooth", type=click.IntRange(1), default=1, show_default=True,
              help="Draw a moving average over this many steps (the raw values faint).")
@click.option("--phase", "phases", type=click.Choice(["training", "evaluation"]),
              multiple=True, help="Only this phase (repeatable; default: every phase stored).")
@click.pass_context
def plot(ctx: click.Context, experiment: str, metric: str, output: str | None, smooth: int,
         phases: tuple[str, ...]) -> None:
    """Draw METRIC over EXPERIMENT's training (and evaluation) steps as a PNG.

    A layered metric (a nested tensor or a list with one entry per layer) gets one line
    per layer, each the mean over its elements, and the mean over layers; any other
    metric one line, its mean. Training and evaluation get a panel each.
    """
    from ._plot import collect, render

    with _fetcher(ctx) as (fetcher, _):
        summary = fetcher.get_experiment_summary(experiment)
        wanted = [p for p in summary.phases.values()
                  if p.steps and (not phases or p.name in phases)]
        known = sorted({m for p in wanted for m in p.stored_metrics})
        if not wanted:
            raise click.ClickException(f"experiment {experiment!r} has no steps stored"
                                       + (f" in phase {', '.join(phases)}" if phases else ""))
        if metric not in known:
            raise click.ClickException(
                f"experiment {experiment!r} has no metric {metric!r}; its steps hold: "
                + (", ".join(known) or "no metrics")
            )
        series = {}
        for phase in wanted:
            with _progress(f"reading {phase.name} steps") as progress:
                steps = fetcher.iter_steps(experiment, phase.name, progress=progress)
                try:
                    series[phase.name] = collect(steps, metric)
                except TypeError as exc:
                    raise click.ClickException(
                        f"metric {metric!r} of experiment {experiment!r} cannot be drawn: {exc}"
                    ) from None
    path = Path(output) if output else Path(f"{_file_safe(experiment)}-{_file_safe(metric)}.png")
    try:
        written = render(series, experiment, metric, path, smooth=smooth)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    counts = ", ".join(f"{len(s.steps)} {name}" for name, s in series.items())
    click.echo(f"wrote {written} ({metric} over {counts} steps of {experiment})")


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "plot"


# --------------------------------------------------------------------------- recover


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
    import sqlite3

    from ._config import load_config
    from ._recover import recover as replay
    from ._spool import SpoolBusy

    config = load_config(ctx.obj["config_path"]) if ctx.obj["config_path"] else None
    try:
        with _watch_spool(spool):
            report = replay(spool, config, timeout=timeout)
    except (ConfigError, SpoolBusy, FileNotFoundError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    except (sqlite3.Error, CodecError) as exc:
        raise click.ClickException(f"cannot read spool {spool}: {_one_line(exc)}") from None
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


@contextmanager
def _watch_spool(path: str) -> Iterator[None]:
    """On a terminal, a status line while ``recover`` replays the spool at ``path``: the
    operations still in it (read from a read-only connection of our own) and the time
    spent. Shown after a second; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty() or not os.path.exists(path):
        yield
        return
    import sqlite3
    import threading
    import time

    stop = threading.Event()
    start = time.monotonic()

    def watch() -> None:
        shown = False
        total: int | None = None
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error:
            return
        try:
            while not stop.wait(0.25):
                try:
                    left = int(conn.execute("SELECT COUNT(*) FROM ops").fetchone()[0])
                except sqlite3.Error:
                    continue  # not created yet, or busy: try again
                total = left if total is None else max(total, left)
                elapsed = time.monotonic() - start
                if elapsed >= 1.0:
                    sys.stderr.write(f"\rreplaying {path}: {left} of {total} operation(s) "
                                     f"left, {elapsed:.0f} s ")
                    sys.stderr.flush()
                    shown = True
        finally:
            conn.close()
            if shown:
                sys.stderr.write("\n")

    thread = threading.Thread(target=watch, name="asyncstore-recover-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(1.0)


if __name__ == "__main__":
    main()

"""What a store holds, read cheaply: lists of experiments and sweeps, and the summary of
one experiment or sweep.

Everything here reads the experiment and sweep documents and the *metadata* of the batch
documents (``first``, ``count``, ``chunk``, ``chunks``), never step payloads; the one
exception is an experiment's summary, which decodes the first run of each phase to name
the metrics its steps hold. :func:`iter_steps` reads a phase's steps a few documents at a
time, for a caller that shows progress or cannot hold them all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import _codec
from ._documents import BATCHES, EXPERIMENTS, HPO_RUNS, DocumentReader, rank_order
from ._exceptions import CodecError, NotFoundError
from ._layout import PHASES, ExperimentInfo, assemble_steps, check_id, group_id, parse_experiment
from ._sweeps import parse_sweep, parse_trial

log = logging.getLogger("asyncstore")

Run = tuple[int, int]  # (first step, step count) of one run of steps
Progress = Callable[[int, int], None]  # (steps read so far, steps in all)

_RUN_FIELDS = ["phase", "first", "count", "chunk", "chunks"]
_DOCS_PER_READ = 8  # batch documents per request (each up to 900 KB)
_TRIALS_PER_READ = 100


@dataclass(frozen=True)
class ExperimentListing:
    """One line of :meth:`DataFetcher.list_experiments`."""

    id: str
    start_time: datetime | None  # the earliest phase's start
    end_time: datetime | None  # the latest phase's end, once every phase is completed
    phases: dict[str, bool]  # phase -> completed
    sweep: str | None  # the sweep it is a trial of


@dataclass(frozen=True)
class SweepListing:
    """One line of :meth:`DataFetcher.list_sweeps`."""

    id: str
    name: str
    start_time: datetime | None
    end_time: datetime | None
    completed: bool
    trials: int
    best_run_id: str | None
    best_total: float | None


@dataclass(frozen=True)
class PhaseSummary:
    name: str
    steps: int  # distinct step indices stored
    start_time: datetime | None
    end_time: datetime | None
    completed: bool
    resolution: int
    metrics: dict[str, str]  # tracked metric -> comparison name
    best_steps: dict[str, dict[str, Any]]  # metric -> best_index, best_value, best_function
    stored_metrics: list[str]  # the metrics its first stored step holds


@dataclass(frozen=True)
class ExperimentSummary:
    """What :meth:`DataFetcher.get_experiment_summary` returns."""

    id: str
    configs: dict[str, Any]
    phases: dict[str, PhaseSummary]
    sweep: str | None = None
    objective: dict[str, Any] | None = None
    trial_configs: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrialSummary:
    rank: int | None  # 1 is the best; None for a trial without a total
    id: str
    total: float | None
    objective: dict[str, Any]
    configs: dict[str, Any]


@dataclass(frozen=True)
class SweepSummary:
    """What :meth:`DataFetcher.get_sweep_summary` returns: trials best first."""

    id: str
    name: str
    configs: dict[str, Any]
    start_time: datetime | None
    end_time: datetime | None
    completed: bool
    best_run_id: str | None
    trials: list[TrialSummary] = field(default_factory=list)


# --------------------------------------------------------------------------- runs


def complete_runs(metas: list[tuple[str, dict[str, Any]]]) -> dict[Run, int]:
    """The runs whose every chunk is stored (a commit in flight leaves some out), with
    their chunk counts."""
    seen: dict[Run, set[int]] = {}
    expected: dict[Run, int] = {}
    for _, m in metas:
        run = (m["first"], m["count"])
        seen.setdefault(run, set()).add(m["chunk"])
        expected[run] = m["chunks"]
    return {run: expected[run] for run, chunks in seen.items() if len(chunks) == expected[run]}


def count_steps(runs: Mapping[Run, int]) -> int:
    """Distinct step indices in ``runs`` (a replay may have cut runs that overlap)."""
    total, end = 0, 0
    for first, count in sorted(runs):
        start = max(first, end)
        if first + count > start:
            total += first + count - start
            end = first + count
    return total


def _phase_runs(reader: DocumentReader, experiment_id: str) -> dict[str, dict[Run, int]]:
    metas = reader.query(BATCHES, {"experiment": experiment_id}, fields=_RUN_FIELDS)
    by_phase: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for doc_id, m in metas:
        if not all(type(m.get(k)) is int for k in _RUN_FIELDS[1:]) or not isinstance(
            m.get("phase"), str
        ):
            raise CodecError(f"document {doc_id!r}: malformed batch fields")
        by_phase.setdefault(m["phase"], []).append((doc_id, m))
    return {phase: complete_runs(docs) for phase, docs in by_phase.items()}


def _read_runs(
    reader: DocumentReader, experiment_id: str, phase: str, runs: list[tuple[Run, int]]
) -> list[dict[str, Any]]:
    ids = [group_id(experiment_id, phase, first, count, k)
           for (first, count), chunks in runs for k in range(chunks)]
    docs = reader.get_many(BATCHES, ids)
    return assemble_steps((i, d) for i, d in zip(ids, docs, strict=True) if d is not None)


def iter_records(
    reader: DocumentReader, experiment_id: str, phase: str, progress: Progress | None = None
) -> Iterator[dict[str, Any]]:
    """The step records of one phase, in order, each index once, reading at most
    :data:`_DOCS_PER_READ` documents at a time (a run larger than that in one read).

    :raises NotFoundError: neither the experiment nor any of its steps is stored.
    """
    runs = _phase_runs(reader, experiment_id).get(phase, {})
    if not runs and reader.get(EXPERIMENTS, experiment_id) is None:
        raise NotFoundError(f"no experiment {experiment_id!r}")
    total, done, end = count_steps(runs), 0, 0
    if progress is not None:
        progress(0, total)
    pending: list[tuple[Run, int]] = []
    ordered = sorted(runs.items())
    for k, item in enumerate(ordered):
        pending.append(item)
        more = k + 1 < len(ordered)
        if more and sum(c for _, c in pending) + ordered[k + 1][1] <= _DOCS_PER_READ:
            continue
        for rec in _read_runs(reader, experiment_id, phase, pending):
            # Runs are sorted by first step and contiguous, so skipping what was already
            # yielded keeps the indices increasing (see docs/format.md on replays).
            if rec["i"] >= end:
                end = rec["i"] + 1
                done += 1
                yield rec
        pending = []
        if progress is not None:
            progress(done, total)


# --------------------------------------------------------------------------- experiments


def _first_metrics(
    reader: DocumentReader, experiment_id: str, phase: str, runs: Mapping[Run, int]
) -> list[str]:
    """The metric names of the phase's first stored step, decoding that step alone: from
    the first document of its run, or the whole run when the step spans documents."""
    if not runs:
        return []
    first = min(runs)
    doc = reader.get(BATCHES, group_id(experiment_id, phase, first[0], first[1], 0))
    data = doc.get("data") if doc is not None else None
    if isinstance(data, bytes):
        try:
            rec = next(_codec.iter_decode(data))
        except (CodecError, StopIteration):
            rec = None  # the step goes on in the next document
        if isinstance(rec, dict) and isinstance(rec.get("m"), dict):
            return [str(k) for k in rec["m"]]
    records = _read_runs(reader, experiment_id, phase, [(first, runs[first])])
    return list(records[0]["m"]) if records else []


def experiment_summary(reader: DocumentReader, experiment_id: str) -> ExperimentSummary:
    """Phases with their step counts, times and best steps; configs; the HPO trial part.

    :raises NotFoundError: neither the experiment nor any of its steps is stored.
    """
    check_id(experiment_id, "experiment_id")
    doc = reader.get(EXPERIMENTS, experiment_id)
    runs = _phase_runs(reader, experiment_id)
    if doc is None and not runs:
        raise NotFoundError(f"no experiment {experiment_id!r}")
    info = parse_experiment(experiment_id, doc) if doc is not None else ExperimentInfo(
        experiment_id, {}, {})
    names = [p for p in PHASES if p in info.phases or p in runs]
    names += sorted((set(info.phases) | set(runs)) - set(names))
    phases = {}
    for name in names:
        p = info.phases.get(name)
        phase_runs = runs.get(name, {})
        phases[name] = PhaseSummary(
            name=name,
            steps=count_steps(phase_runs),
            start_time=p.start_time if p else None,
            end_time=p.end_time if p else None,
            completed=p.completed if p else False,
            resolution=p.resolution if p else 1,
            metrics=dict(p.metrics) if p else {},
            best_steps={m: dict(b) for m, b in p.best_steps.items()} if p else {},
            stored_metrics=_first_metrics(reader, experiment_id, name, phase_runs),
        )
    trial = parse_trial(experiment_id, doc) if doc is not None else None
    return ExperimentSummary(
        id=experiment_id,
        configs=info.configs,
        phases=phases,
        sweep=trial.sweep if trial else None,
        objective=trial.objective if trial else None,
        trial_configs=trial.configs if trial else None,
    )


def list_experiments(reader: DocumentReader) -> list[ExperimentListing]:
    """Every experiment, newest first (by its earliest phase's start; those without one
    last). Reads only the experiment documents; a foreign document is skipped."""
    out = []
    for doc_id, doc in reader.query(EXPERIMENTS, {}, fields=["v", "id", "phases", "hpo"]):
        try:
            info = parse_experiment(doc_id, doc)
        except CodecError as exc:
            log.warning("asyncstore: skipping %s", exc)
            continue
        starts = [p.start_time for p in info.phases.values() if p.start_time is not None]
        ends = [p.end_time for p in info.phases.values() if p.end_time is not None]
        done = bool(info.phases) and all(p.completed for p in info.phases.values())
        hpo = doc.get("hpo")
        sweep = hpo.get("sweep") if isinstance(hpo, Mapping) else None
        out.append(ExperimentListing(
            id=doc_id,
            start_time=min(starts) if starts else None,
            end_time=max(ends) if done and ends else None,
            phases={name: p.completed for name, p in info.phases.items()},
            sweep=sweep if isinstance(sweep, str) else None,
        ))
    return _newest_first(out)


def _newest_first(items: list[Any]) -> list[Any]:
    items.sort(key=lambda x: x.id)
    timed = sorted((x for x in items if x.start_time is not None),
                   key=lambda x: x.start_time, reverse=True)
    return timed + [x for x in items if x.start_time is None]


# --------------------------------------------------------------------------- sweeps


def list_sweeps(reader: DocumentReader) -> list[SweepListing]:
    """Every sweep, newest first. Reads only the sweep documents (about 100 bytes per
    trial); a foreign document is skipped."""
    fields = ["v", "id", "name", "start_time", "end_time", "completed", "runs",
              "best_run_id", "best_total"]
    out = []
    for doc_id, doc in reader.query(HPO_RUNS, {}, fields=fields):
        try:
            info = parse_sweep(doc_id, doc)
        except CodecError as exc:
            log.warning("asyncstore: skipping %s", exc)
            continue
        best_total = doc.get("best_total")
        out.append(SweepListing(
            id=doc_id,
            name=info.name,
            start_time=info.start_time,
            end_time=info.end_time,
            completed=info.completed,
            trials=len(info.runs),
            best_run_id=info.best_run_id,
            best_total=float(best_total) if isinstance(best_total, (int, float)) else None,
        ))
    return _newest_first(out)


def sweep_summary(reader: DocumentReader, sweep_id: str) -> SweepSummary:
    """A sweep and its trials ranked by ``objective["total"]`` (``HPOResult``'s rule),
    each with its objective and configs: the sweep's document and the trials' experiment
    documents, no steps.

    :raises NotFoundError: no sweep has this id.
    """
    check_id(sweep_id, "hpo_run_id")
    doc = reader.get(HPO_RUNS, sweep_id)
    if doc is None:
        raise NotFoundError(f"no HPO sweep {sweep_id!r}")
    info = parse_sweep(sweep_id, doc)
    by_id = {run.id: run for run in info.runs}
    order = rank_order({r.id: {"total": r.total, "n": r.n} for r in info.runs}, "total")
    details: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for i in range(0, len(order), _TRIALS_PER_READ):
        ids = order[i : i + _TRIALS_PER_READ]
        for run_id, exp in zip(ids, reader.get_many(EXPERIMENTS, ids), strict=True):
            trial = parse_trial(run_id, exp) if exp is not None else None
            if trial is not None and trial.sweep == sweep_id:
                details[run_id] = (trial.objective, trial.configs)
    trials = []
    for k, run_id in enumerate(order):
        run = by_id[run_id]
        objective, configs = details.get(run_id, ({"total": run.total}, {}))
        ranked = run.total is not None and run.total != -math.inf  # as rank_order ranks
        trials.append(TrialSummary(rank=k + 1 if ranked else None, id=run_id,
                                   total=run.total, objective=objective, configs=configs))
    return SweepSummary(
        id=sweep_id, name=info.name, configs=info.configs, start_time=info.start_time,
        end_time=info.end_time, completed=info.completed, best_run_id=info.best_run_id,
        trials=trials,
    )

"""``DataFetcher``: reads back what the storers wrote, from ``database.read_database``.

Completed phases and completed sweeps are cached (a repeated read costs no database
read); a phase or sweep still in progress is read afresh every time, so it is never
served stale.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from . import _catalog, comparisons
from ._blobs import ResolvingReader
from ._catalog import (
    ExperimentListing,
    ExperimentSummary,
    Progress,
    SweepListing,
    SweepSummary,
)
from ._config import SystemConfig
from ._defaults import resolve_config
from ._documents import BATCHES, EXPERIMENTS, HPO_RUNS, MODELS
from ._exceptions import NotFoundError
from ._layout import (
    ExperimentInfo,
    PhaseInfo,
    assemble_steps,
    check_id,
    group_id,
    parse_experiment,
    step_from_record,
)
from ._models import assemble_weights, parse_model
from ._results import HPOResult, HPOStepResult, TrainingResult, TrainingStepResult
from ._sweeps import TrialInfo, parse_sweep, parse_trial
from .stores import open_store

_CHUNKS_PER_READ = 8  # weight chunks fetched per request (each up to 900 KB)


class DataFetcher:
    def __init__(
        self, config: Mapping[str, Any] | str | os.PathLike[str] | SystemConfig | None = None
    ) -> None:
        self.config = resolve_config(config, "DataFetcher")
        self._store = ResolvingReader(open_store(self.config.read_db))
        self._cache: dict[tuple[str, str], TrainingResult] = {}
        self._sweeps: dict[str, HPOResult] = {}  # completed sweeps whose trials are too

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> DataFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ experiments

    def _experiment(self, experiment_id: str) -> ExperimentInfo | None:
        doc = self._store.get(EXPERIMENTS, experiment_id)
        return None if doc is None else parse_experiment(experiment_id, doc)

    def get_training_result(
        self, experiment_id: str, result_type: str = "training"
    ) -> TrainingResult:
        """Every step of one phase of an experiment, with its times, configs and best steps.

        :raises NotFoundError: no experiment has this id.
        """
        check_id(experiment_id, "experiment_id")
        cached = self._cache.get((experiment_id, result_type))
        if cached is not None:
            return cached
        result = self._load_phase(experiment_id, result_type, self._experiment(experiment_id))
        if result is None:
            raise NotFoundError(f"no experiment {experiment_id!r}")
        return result

    def _load_phase(
        self,
        experiment_id: str,
        result_type: str,
        info: ExperimentInfo | None,
        *,
        only_if_any: bool = False,
    ) -> TrainingResult | None:
        """One phase of an experiment whose document (``info``) is already read. None
        when there is no experiment, or (``only_if_any``) when it has no such phase."""
        cached = self._cache.get((experiment_id, result_type))
        if cached is not None:
            return cached
        phase = info.phases.get(result_type) if info is not None else None
        docs = self._store.query(BATCHES, {"experiment": experiment_id, "phase": result_type})
        if (info is None or (only_if_any and phase is None)) and not docs:
            return None
        result = _build(experiment_id, result_type, info, phase or PhaseInfo())
        for rec in assemble_steps(docs):
            result._append_step_no_best(step_from_record(rec))
        if phase is not None and phase.completed:
            self._cache[(experiment_id, result_type)] = result
        return result

    def get_evaluation_result(self, experiment_id: str) -> TrainingResult:
        return self.get_training_result(experiment_id, "evaluation")

    def get_training_step_result(
        self, experiment_id: str, step_index: int, result_type: str = "training"
    ) -> TrainingStepResult:
        """One step, reading only the documents that hold it.

        :raises ValueError: ``step_index`` is out of range.
        :raises NotFoundError: no experiment has this id.
        """
        check_id(experiment_id, "experiment_id")
        if type(step_index) is not int:
            raise TypeError("step_index must be an int")
        cached = self._cache.get((experiment_id, result_type))
        if cached is not None:
            steps = cached.get_steps()
            if not 0 <= step_index < len(steps):
                raise ValueError(f"step {step_index} is out of range (0..{len(steps) - 1})")
            return steps[step_index]
        metas = self._store.query(
            BATCHES,
            {"experiment": experiment_id, "phase": result_type},
            fields=["first", "count", "chunk", "chunks"],
        )
        seen: dict[tuple[int, int], set[int]] = {}
        for _, m in metas:
            seen.setdefault((m["first"], m["count"]), set()).add(m["chunk"])
        complete = {
            (m["first"], m["count"]): m["chunks"]
            for _, m in metas
            if len(seen[(m["first"], m["count"])]) == m["chunks"]
        }
        for (first, count), chunks in complete.items():
            if first <= step_index < first + count:
                ids = [group_id(experiment_id, result_type, first, count, k)
                       for k in range(chunks)]
                docs = self._store.get_many(BATCHES, ids)
                found = [(i, d) for i, d in zip(ids, docs, strict=True) if d is not None]
                for rec in assemble_steps(found):
                    if rec["i"] == step_index:
                        return step_from_record(rec)
        if not complete and self._experiment(experiment_id) is None:
            raise NotFoundError(f"no experiment {experiment_id!r}")
        total = len({i for first, count in complete for i in range(first, first + count)})
        raise ValueError(
            f"step {step_index} is out of range: experiment {experiment_id!r} has "
            f"{total} {result_type} step(s)"
        )

    @staticmethod
    def convert_firestore_timestamp(firestore_timestamp: datetime) -> datetime:
        """A plain, timezone-aware ``datetime`` for a Firestore timestamp."""
        ts = firestore_timestamp
        if not isinstance(ts, datetime):
            raise TypeError(f"expected a datetime, not {type(ts).__name__}")
        plain = datetime(
            ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond,
            tzinfo=ts.tzinfo or timezone.utc,
        )
        return plain

    # ------------------------------------------------------------------ sweeps

    def get_hpo_step_result(self, hpo_run_id: str, experiment_id: str) -> HPOStepResult:
        """One trial of a sweep: its objective, its own configs, and its experiment's
        training and evaluation results (None for a phase it does not have).

        :raises NotFoundError: ``experiment_id`` is not a stored trial of ``hpo_run_id``.
        """
        check_id(hpo_run_id, "hpo_run_id")
        check_id(experiment_id, "experiment_id")
        cached = self._sweeps.get(hpo_run_id)
        if cached is not None:
            for step in cached.get_steps():
                if step.id == experiment_id:
                    return step
        doc = self._store.get(EXPERIMENTS, experiment_id)
        trial = parse_trial(experiment_id, doc) if doc is not None else None
        if trial is None or trial.sweep != hpo_run_id:
            raise NotFoundError(
                f"experiment {experiment_id!r} is not a stored trial of sweep {hpo_run_id!r}"
            )
        step, _ = self._trial(hpo_run_id, experiment_id, doc, trial, None)
        return step

    def get_hpo_result(self, hpo_run_id: str) -> HPOResult:
        """A sweep with every trial stored (in the order they reached the store), its
        best run (the highest ``objective["total"]``), start and end times.

        :raises NotFoundError: no sweep has this id.
        """
        check_id(hpo_run_id, "hpo_run_id")
        cached = self._sweeps.get(hpo_run_id)
        if cached is not None:
            return cached
        doc = self._store.get(HPO_RUNS, hpo_run_id)
        if doc is None:
            raise NotFoundError(f"no HPO sweep {hpo_run_id!r}")
        info = parse_sweep(hpo_run_id, doc)
        result = HPOResult(info.configs, hpo_run_id, info.name)
        if info.start_time is not None:
            result.start_time = info.start_time
        result.end_time = info.end_time
        ids = [run.id for run in info.runs]
        docs = self._store.get_many(EXPERIMENTS, ids) if ids else []
        complete = info.completed
        for run, exp_doc in zip(info.runs, docs, strict=True):
            trial = parse_trial(run.id, exp_doc) if exp_doc is not None else None
            if trial is not None and trial.sweep != hpo_run_id:
                trial = None  # the experiment was since made a trial of another sweep
            step, done = self._trial(hpo_run_id, run.id, exp_doc, trial, run.total)
            result.add_step(step)  # ranks as the stored best_run_id does
            complete = complete and done
        if complete:
            self._sweeps[hpo_run_id] = result
        return result

    def _trial(
        self,
        hpo_run_id: str,
        experiment_id: str,
        doc: Mapping[str, Any] | None,
        trial: TrialInfo | None,
        total: float | None,
    ) -> tuple[HPOStepResult, bool]:
        """The trial's result, and whether it is complete (every phase it has saved)."""
        info = parse_experiment(experiment_id, doc) if doc is not None else None
        step = HPOStepResult(hpo_run_id, experiment_id, trial.configs if trial else {})
        training = self._load_phase(experiment_id, "training", info, only_if_any=True)
        evaluation = self._load_phase(experiment_id, "evaluation", info, only_if_any=True)
        objective = trial.objective if trial is not None else {"total": total}
        step.populate(objective, training, evaluation)
        complete = (
            trial is not None
            and info is not None
            and all(p.completed for p in info.phases.values())
            and (training is None or (experiment_id, "training") in self._cache)
            and (evaluation is None or (experiment_id, "evaluation") in self._cache)
        )
        return step, complete

    # ------------------------------------------------------------------ browsing

    def list_experiments(self) -> list[ExperimentListing]:
        """Every experiment in the store, newest first: id, start and end time, phases
        (completed or not), the sweep it is a trial of. Reads the experiment documents
        only, never steps."""
        return _catalog.list_experiments(self._store)

    def list_sweeps(self) -> list[SweepListing]:
        """Every HPO sweep in the store, newest first: id, name, times, completed, the
        number of trials and the best one. Reads the sweep documents only."""
        return _catalog.list_sweeps(self._store)

    def get_experiment_summary(self, experiment_id: str) -> ExperimentSummary:
        """An experiment's phases (step counts from the batches' metadata, times,
        completion, best steps, the metrics its first step holds), configs and HPO trial
        part, without reading every step.

        :raises NotFoundError: no experiment has this id.
        """
        return _catalog.experiment_summary(self._store, experiment_id)

    def get_sweep_summary(self, hpo_run_id: str) -> SweepSummary:
        """A sweep with its trials ranked by objective (best first), each with its
        objective and configs, without reading the trials' steps.

        :raises NotFoundError: no sweep has this id.
        """
        return _catalog.sweep_summary(self._store, hpo_run_id)

    def iter_steps(
        self,
        experiment_id: str,
        result_type: str = "training",
        *,
        progress: Progress | None = None,
    ) -> Iterator[TrainingStepResult]:
        """The steps of one phase in order, read a few documents at a time: for an
        experiment too large to hold at once, or to show progress. ``progress(done,
        total)`` is called before the first read and after each one. A completed phase
        already read comes from the cache.

        :raises NotFoundError: no experiment has this id.
        """
        check_id(experiment_id, "experiment_id")
        cached = self._cache.get((experiment_id, result_type))
        if cached is not None:
            steps = cached.get_steps()
            if progress is not None:
                progress(len(steps), len(steps))
            yield from steps
            return
        for rec in _catalog.iter_records(self._store, experiment_id, result_type, progress):
            yield step_from_record(rec)

    # ------------------------------------------------------------------ models

    def _model(self, model_id: str) -> Any:
        check_id(model_id, "model_id")
        doc = self._store.get(MODELS, model_id)
        if doc is None:
            raise NotFoundError(f"no model {model_id!r}")
        return parse_model(model_id, doc)

    def get_model_weights(self, model_id: str) -> dict[str, Any]:
        """The state dict saved as model ``model_id`` (``f"{experiment}-model"``), as an
        ``OrderedDict`` of tensors equal in dtype, shape and values. Decoded by the value
        codec: nothing stored is ever unpickled or executed.

        :raises NotFoundError: no such model, or this database keeps no weights for it
            (``save_models`` off).
        :raises CodecError: the stored weights are incomplete, altered or not asyncstore's.
        """
        info = self._model(model_id)
        if info.weights is None:
            raise NotFoundError(
                f"model {model_id!r} has no weights in database "
                f"{self.config.read_db.name!r} (its save_models is off, or they are still "
                "being written)"
            )
        ids: list[str] = info.weights["ids"]
        docs: list[Mapping[str, Any] | None] = []
        for i in range(0, len(ids), _CHUNKS_PER_READ):
            docs.extend(self._store.get_many(MODELS, ids[i : i + _CHUNKS_PER_READ]))
        return assemble_weights(info, docs)

    def get_model_config(self, model_id: str) -> dict[str, Any]:
        """The ``model_config`` saved with model ``model_id``.

        :raises NotFoundError: no such model.
        """
        config: dict[str, Any] = self._model(model_id).config
        return config


def _build(
    experiment_id: str, phase_name: str, info: ExperimentInfo | None, phase: PhaseInfo
) -> TrainingResult:
    metrics = {name: comparisons.resolve(fn) for name, fn in phase.metrics.items()}
    best = {
        name: {
            "best_index": b["best_index"],
            "best_value": b["best_value"],
            "best_function": metrics.get(name) or comparisons.resolve(b["best_function"]),
        }
        for name, b in phase.best_steps.items()
    }
    return TrainingResult._restore(
        experiment_id,
        result_type=phase_name,
        resolution=phase.resolution,
        metrics=metrics,
        configs=info.configs if info is not None else {},
        best_steps=best,
        start_time=phase.start_time,
        end_time=phase.end_time,
    )

"""``DataFetcher``: reads back what the storers wrote, from ``database.read_database``.

Completed phases are cached (a repeated read costs no database read); a phase still in
progress is read afresh every time, so it is never served stale.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from . import comparisons
from ._config import SystemConfig
from ._defaults import resolve_config
from ._documents import BATCHES, EXPERIMENTS
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
from ._results import HPOResult, HPOStepResult, TrainingResult, TrainingStepResult
from .stores import open_store


class DataFetcher:
    def __init__(
        self, config: Mapping[str, Any] | str | os.PathLike[str] | SystemConfig | None = None
    ) -> None:
        self.config = resolve_config(config, "DataFetcher")
        self._store = open_store(self.config.read_db)
        self._cache: dict[tuple[str, str], TrainingResult] = {}

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
        info = self._experiment(experiment_id)
        phase = info.phases.get(result_type) if info is not None else None
        docs = self._store.query(BATCHES, {"experiment": experiment_id, "phase": result_type})
        if info is None and not docs:
            raise NotFoundError(f"no experiment {experiment_id!r}")
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

    # ------------------------------------------------------------------ later issues

    def get_hpo_step_result(self, hpo_run_id: str, experiment_id: str) -> HPOStepResult:
        raise NotImplementedError("get_hpo_step_result is not implemented in this version")

    def get_hpo_result(self, hpo_run_id: str) -> HPOResult:
        raise NotImplementedError("get_hpo_result is not implemented in this version")

    def get_model_weights(self, model_id: str) -> dict[str, Any]:
        raise NotImplementedError("get_model_weights is not implemented in this version")


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

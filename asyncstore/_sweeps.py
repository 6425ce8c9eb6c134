"""The document layout of hyperparameter sweeps and their trials.

``hpo_runs/{sweep}``
    ``{"v": 1, "id", "name", "start_time", "end_time", "configs": <codec bytes>,
    "completed", "runs": {key: {"id": experiment, "total": float | None, "n": int}},
    "best_run_id", "best_total", "runs_by_objective": [experiment, ...]}``. Shared by every
    worker of the sweep: each trial is a *ranked* write (:func:`asyncstore._documents.ranking`)
    that adds its entry to ``runs`` and recomputes ``best_run_id`` / ``best_total`` from
    the whole map, atomically. ``runs`` is a map, not a list, so a retried or replayed
    trial rewrites its own entry (``n``, its arrival number, is kept) and never adds a
    second one. Its keys are ``"r"`` + a hash of the experiment id: always a simple
    field name, whatever the id holds. ``runs_by_objective`` is written by
    ``save_hpo_result``.

``experiments/{experiment}``
    A trial adds ``"hpo": {"sweep", "objective": <codec bytes>, "configs": <codec bytes>,
    "total": float | None}`` to its experiment's document (merged).

The ranking rule is :class:`asyncstore.HPOResult`'s: the highest ``objective["total"]``
wins, a missing or NaN total never does, ties go to the earliest trial.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import torch

from . import _codec
from ._documents import EXPERIMENTS, HPO_RUNS, Write, ranking
from ._exceptions import CodecError
from ._layout import LAYOUT_VERSION, _as_datetime
from ._results import HPOResult, HPOStepResult

RUNS = "runs"
BEST = "best_run_id"
BEST_TOTAL = "best_total"
ORDER = "runs_by_objective"


def run_key(experiment_id: str) -> str:
    """The key of a trial in its sweep's ``runs`` map."""
    return "r" + hashlib.blake2b(experiment_id.encode(), digest_size=10).hexdigest()


def objective_total(objective: Mapping[str, Any]) -> float | None:
    """``objective["total"]`` as a float (None when absent or NaN).

    :raises TypeError: the total is not a real number (a one-element tensor or array is).
    """
    total = objective.get("total")
    if total is None:
        return None
    if isinstance(total, torch.Tensor):
        if total.numel() != 1 or total.is_complex():
            raise TypeError("objective['total'] must be a real number or a one-element tensor")
        total = total.item()
    elif isinstance(total, np.ndarray):
        if total.size != 1 or total.dtype.kind not in "biuf":
            raise TypeError("objective['total'] must be a real number or a one-element array")
        total = total.item()
    if isinstance(total, (str, bytes, complex, np.complexfloating)):
        raise TypeError(f"objective['total'] must be a real number, not {type(total).__name__}")
    try:
        value = float(total)
    except (TypeError, ValueError):
        raise TypeError(
            f"objective['total'] must be a real number, not {type(total).__name__}"
        ) from None
    return None if math.isnan(value) else value


def _check_time(value: Any, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{what} is a naive datetime; give it a timezone")


def _sweep_fields(sweep: HPOResult) -> dict[str, Any]:
    if not isinstance(sweep.name, str):
        raise TypeError(f"the sweep's name must be a str, not {type(sweep.name).__name__}")
    if sweep.configs is not None and not isinstance(sweep.configs, Mapping):
        raise TypeError("the sweep's configs must be a dict")
    _check_time(sweep.start_time, "the sweep's start_time")
    return {
        "v": LAYOUT_VERSION,
        "id": sweep.id,
        "name": sweep.name,
        "start_time": sweep.start_time,
        "configs": _codec.encode_snapshot(dict(sweep.configs or {})),
    }


def sweep_write(sweep: HPOResult) -> Write:
    """``create_hpo_sweep``: name, start time, configs, not completed. Ranked with no
    entries, so a sweep that workers already wrote trials into keeps them (and its best);
    a new one gets an empty ``runs`` and no best run."""
    fields = _sweep_fields(sweep)
    fields["completed"] = False
    return Write(HPO_RUNS, sweep.id, fields, merge=True, rank=ranking(RUNS, {}),
                 size=1024 + len(fields["configs"]) + len(sweep.name))


def result_write(result: HPOResult) -> Write:
    """``save_hpo_result``: end time, completion, and the best run and the runs ordered
    by objective, computed from every trial stored (not only those ``result`` holds)."""
    fields = _sweep_fields(result)
    _check_time(result.end_time, "the sweep's end_time")
    fields["end_time"] = result.end_time
    fields["completed"] = True
    return Write(HPO_RUNS, result.id, fields, merge=True,
                 rank=ranking(RUNS, {}, order=ORDER),
                 size=1024 + len(fields["configs"]) + len(result.name))


def trial_writes(parent: str, result: HPOStepResult) -> list[Write]:
    """``save_hpo_step``: the trial's objective and configs on its experiment, and its
    entry in the sweep (the experiment's document first: a sweep never names a trial
    whose data is not stored before it).

    :raises TypeError: no objective yet (``populate`` it), or values the codec refuses.
    """
    objective = result.objective
    if not isinstance(objective, Mapping):
        raise TypeError(
            "the trial has no objective: call result.populate(objective, ...) before saving"
        )
    configs = result.configs
    if configs is not None and not isinstance(configs, Mapping):
        raise TypeError("the trial's configs must be a dict")
    total = objective_total(objective)
    objective_bytes = _codec.encode_snapshot(dict(objective))
    configs_bytes = _codec.encode_snapshot(dict(configs or {}))
    hpo = {"sweep": parent, "objective": objective_bytes, "configs": configs_bytes,
           "total": total}
    experiment = Write(
        EXPERIMENTS, result.id, {"v": LAYOUT_VERSION, "id": result.id, "hpo": hpo},
        merge=True, size=512 + len(objective_bytes) + len(configs_bytes),
    )
    entry = {"id": result.id, "total": total}
    sweep = Write(
        HPO_RUNS, parent, {"v": LAYOUT_VERSION, "id": parent}, merge=True,
        rank=ranking(RUNS, {run_key(result.id): entry}),
        size=512 + 2 * len(result.id.encode()),
    )
    return [experiment, sweep]


# --------------------------------------------------------------------------- reading


@dataclass
class RunInfo:
    id: str
    total: float | None
    n: int


@dataclass
class SweepInfo:
    id: str
    name: str
    configs: dict[str, Any]
    start_time: datetime | None
    end_time: datetime | None
    completed: bool
    runs: list[RunInfo]  # in arrival order
    best_run_id: str | None


@dataclass
class TrialInfo:
    sweep: str
    objective: dict[str, Any]
    configs: dict[str, Any]


def _bad(doc_id: str, why: str) -> CodecError:
    return CodecError(f"document {doc_id!r}: {why}")


def _decode_map(doc_id: str, raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, bytes):
        raise _bad(doc_id, f"{what} is not codec bytes")
    try:
        value = _codec.decode(raw)
    except CodecError as exc:
        raise _bad(doc_id, f"{what}: {exc}") from None
    if not isinstance(value, dict):
        raise _bad(doc_id, f"{what} is not a mapping")
    return value


def parse_sweep(doc_id: str, doc: Mapping[str, Any]) -> SweepInfo:
    """:raises CodecError: not an asyncstore sweep document of this version."""
    if doc.get("v") != LAYOUT_VERSION:
        raise _bad(doc_id, "not an asyncstore sweep document")
    raw_runs = doc.get(RUNS) or {}
    if not isinstance(raw_runs, Mapping):
        raise _bad(doc_id, "runs is not a map")
    runs = []
    for key, entry in raw_runs.items():
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("id"), str)
            or type(entry.get("n")) is not int
            or not (entry.get("total") is None or isinstance(entry.get("total"), (int, float)))
        ):
            raise _bad(doc_id, f"malformed run entry {key!r}")
        total = entry.get("total")
        runs.append(RunInfo(entry["id"], None if total is None else float(total), entry["n"]))
    runs.sort(key=lambda r: (r.n, r.id))
    name = doc.get("name")
    best = doc.get(BEST)
    try:
        start_time = _as_datetime(doc.get("start_time"))
        end_time = _as_datetime(doc.get("end_time"))
    except TypeError as exc:
        raise _bad(doc_id, str(exc)) from None
    return SweepInfo(
        id=doc_id,
        name=name if isinstance(name, str) else doc_id,
        configs=_decode_map(doc_id, doc.get("configs"), "configs"),
        start_time=start_time,
        end_time=end_time,
        completed=doc.get("completed") is True,
        runs=runs,
        best_run_id=best if isinstance(best, str) else None,
    )


def parse_trial(doc_id: str, doc: Mapping[str, Any]) -> TrialInfo | None:
    """The HPO part of an experiment document; None when it is not a trial.

    :raises CodecError: the part is malformed.
    """
    hpo = doc.get("hpo")
    if hpo is None:
        return None
    if not isinstance(hpo, Mapping) or not isinstance(hpo.get("sweep"), str):
        raise _bad(doc_id, "malformed hpo fields")
    return TrialInfo(
        sweep=hpo["sweep"],
        objective=_decode_map(doc_id, hpo.get("objective"), "hpo objective"),
        configs=_decode_map(doc_id, hpo.get("configs"), "hpo configs"),
    )

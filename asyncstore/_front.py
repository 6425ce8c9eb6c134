"""The front: what runs on the caller's thread. It checks ids and values, snapshots the
step by encoding it (or, for accelerator tensors, by cloning them on the device), and
builds the operation to queue. Nothing here waits on I/O.

Shared by ``DataStorer`` and ``AsyncDataStorer``; they differ only in how they queue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from . import _codec, _layout
from ._config import SystemConfig
from ._queue import StepOp, WritesOp
from ._results import TrainingResult, TrainingStepResult


def saved_metric_names(metric_config: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The names of the metrics whose entry says ``save: true``.

    :raises TypeError: ``metric_config`` is not a list of ``{"name", "save"}`` mappings.
    """
    if isinstance(metric_config, (str, bytes)) or not isinstance(metric_config, Iterable):
        raise TypeError("metric_config must be a list of {'name': str, 'save': bool} entries")
    names = set()
    for i, entry in enumerate(metric_config):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise TypeError(f"metric_config[{i}] must be a mapping with a str 'name'")
        save = entry.get("save", False)
        if not isinstance(save, bool):
            raise TypeError(f"metric_config[{i}]['save'] must be a bool")
        if save:
            names.add(entry["name"])
    return frozenset(names)


def _check_result(result: object, cls: type, what: str) -> None:
    if not isinstance(result, cls):
        raise TypeError(f"{what} must be a {cls.__name__}, not {type(result).__name__}")


class Front:
    def __init__(self, config: SystemConfig, saved: frozenset[str]) -> None:
        self.config = config
        self.saved = saved
        self._next: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()  # step numbering from several threads stays dense

    def step(self, parent: str, result: TrainingStepResult, phase: str) -> StepOp:
        _layout.check_id(parent, "parent")
        _check_result(result, TrainingStepResult, "result")
        key = (parent, phase)
        with self._lock:
            index = self._next.get(key, 0)
            record = _layout.step_record(index, result, self.saved)
            try:
                op = StepOp(parent, phase, index, _codec.encode(record))
            except _codec.NeedsDevice:
                op = StepOp(parent, phase, index, None, _codec.snapshot(record))
            self._next[key] = index + 1  # only once the step is known to be storable
        return op

    def experiment(self, experiment: TrainingResult) -> WritesOp:
        _check_result(experiment, TrainingResult, "experiment")
        _layout.check_id(experiment.id, "experiment id")
        phase = experiment.result_type
        _layout.check_id(phase, "result_type")
        return WritesOp(
            f"experiment {experiment.id!r}",
            [_layout.experiment_write(experiment, phase, finished=False)],
        )

    def result(self, result: TrainingResult, phase: str) -> WritesOp:
        _check_result(result, TrainingResult, "result")
        _layout.check_id(result.id, "result id")
        return WritesOp(
            f"{phase} result of experiment {result.id!r}",
            [_layout.experiment_write(result, phase, finished=True)],
        )

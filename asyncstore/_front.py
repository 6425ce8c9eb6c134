"""The front: what runs on the caller's thread. It checks ids and values, snapshots the
step by encoding it (or, for accelerator tensors, by cloning them on the device), and
builds the operation to queue. Nothing here waits on I/O.

Shared by ``DataStorer`` and ``AsyncDataStorer``; they differ only in how they queue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from . import _blobs, _codec, _layout, _models, _sweeps, _wandb
from ._config import SystemConfig
from ._documents import Write
from ._queue import StepOp, WritesOp
from ._wandb_data import active_run
from ._results import HPOResult, HPOStepResult, TrainingResult, TrainingStepResult


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


def _writes_op(what: str, writes: list[Write], extra: dict[str, Any] | None = None) -> WritesOp:
    """The op of writes, with values too large for their document moved beside it."""
    return WritesOp(what, _blobs.externalize(writes), extra=extra or {})


def _check_result(result: object, cls: type, what: str) -> None:
    if not isinstance(result, cls):
        raise TypeError(f"{what} must be a {cls.__name__}, not {type(result).__name__}")


class Front:
    def __init__(self, config: SystemConfig, saved: frozenset[str]) -> None:
        self.config = config
        self.saved = saved
        self._next: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()  # step numbering from several threads stays dense
        self._wandb = config.wandb.resolved_mode != "disabled"

    def _wandb_extra(self, event: str, experiment: str, **fields: Any) -> dict[str, Any]:
        """What the W&B sink needs beyond the documents (``WritesOp.extra``): the event,
        its experiment, the caller's active ``wandb.run`` if any (read, never called)."""
        if not self._wandb:
            return {}
        return {"event": event, "experiment": experiment, "wandb_run": active_run(), **fields}

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
        write = _layout.experiment_write(experiment, phase, finished=False)
        return _writes_op(
            f"experiment {experiment.id!r}", [write],
            extra=self._wandb_extra("experiment", experiment.id, phase=phase,
                                    configs=write.fields.get("configs")),
        )

    def result(self, result: TrainingResult, phase: str) -> WritesOp:
        _check_result(result, TrainingResult, "result")
        _layout.check_id(result.id, "result id")
        write = _layout.experiment_write(result, phase, finished=True)
        return _writes_op(
            f"{phase} result of experiment {result.id!r}", [write],
            extra=self._wandb_extra("result", result.id, phase=phase,
                                    configs=write.fields.get("configs")),
        )

    # ------------------------------------------------------------------ sweeps and models

    def hpo_sweep(self, sweep: HPOResult) -> WritesOp:
        """``create_hpo_sweep``: the sweep's document (name, start time, configs)."""
        _check_result(sweep, HPOResult, "sweep")
        _layout.check_id(sweep.id, "sweep id")
        return _writes_op(f"HPO sweep {sweep.id!r}", [_sweeps.sweep_write(sweep)])

    def hpo_step(self, parent: str, result: HPOStepResult) -> WritesOp:
        """``save_hpo_step``: the trial's objective and configs on its experiment, and its
        entry in sweep ``parent`` (which keeps its best run current)."""
        _layout.check_id(parent, "parent")
        _check_result(result, HPOStepResult, "result")
        _layout.check_id(result.id, "trial id")
        writes = _sweeps.trial_writes(parent, result)
        hpo = writes[0].fields["hpo"]  # the trial's objective and configs, encoded once
        return _writes_op(
            f"HPO trial {result.id!r} of sweep {parent!r}", writes,
            extra=self._wandb_extra("hpo_step", result.id, sweep=parent,
                                    objective=hpo["objective"], configs=hpo["configs"],
                                    total=hpo["total"]),
        )

    def hpo_result(self, result: HPOResult) -> WritesOp:
        """``save_hpo_result``: end time, completion, best run, runs by objective."""
        _check_result(result, HPOResult, "result")
        _layout.check_id(result.id, "sweep id")
        return _writes_op(f"HPO result of sweep {result.id!r}", [_sweeps.result_write(result)])

    def model(
        self, experiment: str, m: Any, model_config: Mapping[str, Any] | None = None
    ) -> WritesOp:
        """``save_model``: the model and registry documents and the weights (encoded
        now: the state dict as it is at this call is what is stored)."""
        _layout.check_id(experiment, "experiment")
        artifact = _wandb.model_artifact(self.config.wandb, experiment)
        writes = _models.model_writes(experiment, m, model_config, artifact=artifact)
        extra = {}
        if artifact is not None:
            model = writes[0].fields  # the model document: its registry name and config
            extra = self._wandb_extra("model", experiment, artifact=artifact["name"],
                                      registry=model["registry_name"], config=model["config"])
        return _writes_op(f"model of experiment {experiment!r}", writes, extra)

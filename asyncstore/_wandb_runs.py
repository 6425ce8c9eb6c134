"""What the W&B worker process does with each event: the runs and every W&B call.

One run per experiment: the caller's own run when the event names one (attached to
through wandb's service: a sweep agent's trial run, say), else a run this process starts
with the experiment's id (resumed if it exists). Runs this process started are finished
when the storer closes (or, past :data:`MAX_OPEN_RUNS`, the least recently used one is
finished early and resumed if needed again); the caller's runs are the caller's to finish.

Events (built by :mod:`asyncstore._wandb` from the writer's units):

``steps``      training steps: one ``run.log`` row each, in order (``step=`` the step index
               in a run of ours); evaluation steps: each metric's average, added up for
               the evaluation summary (returned to the parent in ``eval``)
``experiment`` the experiment's configs into the run's config (in a caller's run, under
               the one key ``asyncstore_configs``: a sweep's values are never changed)
``result``     training: ``dataset_description``; evaluation: ``evaluation_<metric>``
``hpo_step``   ``hpo_objective`` logged; its details, the trial's configs and sweep in
               the summary
``model``      an artifact of type ``model`` with ``model.pt`` (the state dict) and
               ``model_config.json``; linked to the registry when online
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _codec
from ._wandb_data import jsonable, run_id, step_records, step_row
from ._wandb_worker import short as _short
from .comparisons import average_nested_data

MAX_OPEN_RUNS = 8
REGISTRY = "wandb-registry-model"
CALLER_CONFIG_KEY = "asyncstore_configs"  # the experiment's configs in a caller's run
Totals = dict[str, dict[str, list[float]]]  # experiment -> metric -> [sum, count]


@dataclass
class _Entry:
    run: Any
    own: bool
    last_step: int = -1


class Worker:
    def __init__(self, settings: Mapping[str, Any], log: Callable[[list[Any]], None]) -> None:
        import wandb

        self.wandb: Any = wandb
        self.settings = dict(settings)
        self.resolution = int(settings["resolution"])
        self._log = log
        self._runs: OrderedDict[str, _Entry] = OrderedDict()
        self._attached: dict[str, Any] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self.needs_restart = False
        if settings.get("dir"):
            os.makedirs(settings["dir"], exist_ok=True)  # else wandb falls back to /tmp

    def info(self, text: str) -> None:
        self._log([20, text])

    def warn(self, text: str) -> None:
        self._log([30, text])

    # ------------------------------------------------------------------ events

    def handle(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Run ``events`` in order; stop at the first that fails. ``done`` counts the
        events completed; ``eval`` holds what they added to evaluation averages."""
        totals: Totals = {}
        for done, event in enumerate(events):
            added: Totals = {}
            try:
                self._event(event, totals, added)
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which retries
                return {"ok": False, "done": done, "error": _short(exc),
                        "transient": self._transient(exc), "eval": totals,
                        "restart": self.needs_restart}
            _merge(totals, added)
        return {"ok": True, "done": len(events), "error": None, "transient": False,
                "eval": totals}

    def _event(self, ev: dict[str, Any], totals: Totals, added: Totals) -> None:
        kind = ev["k"]
        if kind == "steps" and ev["phase"] != "training":
            _add_evaluation(added.setdefault(ev["exp"], {}), ev["blob"])
            return
        entry = self._run(ev)
        if kind == "steps":
            self._log_steps(entry, ev["blob"])
        elif kind == "experiment":
            self._experiment(entry, ev)
        elif kind == "result":
            self._result(entry, ev, totals.get(ev["exp"], {}))
        elif kind == "hpo_step":
            self._hpo_step(entry, ev)
        elif kind == "model":
            self._model(entry, ev)
        else:
            raise ValueError(f"unknown event {kind!r}")

    def _log_steps(self, entry: _Entry, blob: bytes) -> None:
        for rec in step_records(blob):
            index = rec["i"]
            row = step_row(rec["m"], self.resolution)
            if not entry.own:
                entry.run.log(row)
                continue
            if index <= entry.last_step:
                continue  # logged already (the same batch, retried)
            entry.run.log(row, step=index)
            entry.last_step = index

    def _experiment(self, entry: _Entry, ev: dict[str, Any]) -> None:
        configs = self._remember_configs(ev)
        if not configs:
            return
        values = jsonable(configs)
        if not entry.own:  # the caller's run (a sweep's trial): never touch its own keys
            values = {CALLER_CONFIG_KEY: values}
        entry.run.config.update(values, allow_val_change=True)

    def _result(self, entry: _Entry, ev: dict[str, Any], batch: dict[str, list[float]]) -> None:
        configs = self._remember_configs(ev) or self._configs.get(ev["exp"])
        if ev["phase"] == "training":
            description = _dataset_description(configs)
            if description is not None:
                entry.run.summary["dataset_description"] = description
        elif ev["phase"] == "evaluation":
            sums: dict[str, list[float]] = {k: list(v) for k, v in ev["eval"].items()}
            _merge({"": sums}, {"": batch})
            for metric, (total, count) in sums.items():
                if count:
                    entry.run.summary[f"evaluation_{metric}"] = total / count

    def _hpo_step(self, entry: _Entry, ev: dict[str, Any]) -> None:
        total = ev.get("total")
        if total is not None:
            if entry.own:
                entry.last_step += 1
                entry.run.log({"hpo_objective": total}, step=entry.last_step)
            else:
                entry.run.log({"hpo_objective": total})
        summary = entry.run.summary
        summary["hpo_objective"] = total
        summary["hpo_objective_details"] = jsonable(_codec.decode(ev["objective"]))
        summary["hpo_configs"] = jsonable(_codec.decode(ev["configs"]))
        summary["hpo_sweep"] = ev["sweep"]

    def _model(self, entry: _Entry, ev: dict[str, Any]) -> None:
        import torch

        wandb = self.wandb
        state = _codec.decode(ev["weights"])
        config = jsonable(_codec.decode(ev["config"]))
        name = ev["artifact"]
        with tempfile.TemporaryDirectory(prefix="asyncstore-model-") as tmp:
            torch.save(state, os.path.join(tmp, "model.pt"))
            with open(os.path.join(tmp, "model_config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f, sort_keys=True)
            artifact = wandb.Artifact(name, type="model",
                                      metadata={"experiment": ev["exp"], "model_config": config})
            artifact.add_file(os.path.join(tmp, "model.pt"), name="model.pt")
            artifact.add_file(os.path.join(tmp, "model_config.json"), name="model_config.json")
            entry.run.log_artifact(artifact, aliases=["latest"])
        target = f"{REGISTRY}/{ev['registry']}"
        if self.settings["mode"] == "online":
            entry.run.link_artifact(artifact, target)
        else:
            self.warn(f"W&B: model artifact {name!r} of experiment {ev['exp']!r} was logged "
                      f"offline and not linked to the registry ({target}): upload the run "
                      "with `wandb sync`, then link the artifact")

    def _remember_configs(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        raw = ev.get("configs")
        configs = _codec.decode(raw) if isinstance(raw, bytes) else None
        if isinstance(configs, dict) and configs:
            self._configs[ev["exp"]] = configs
            return configs
        return None

    # ------------------------------------------------------------------ runs

    def _run(self, ev: dict[str, Any]) -> _Entry:
        experiment = ev["exp"]
        entry = self._runs.get(experiment)
        if entry is not None:
            self._runs.move_to_end(experiment)
            return entry
        attach = ev.get("run")
        run = self._attach(attach, experiment) if attach else None
        if run is not None:
            entry = _Entry(run, own=False)
        else:
            entry = _Entry(self._start(experiment), own=True)
        self._runs[experiment] = entry
        self._finish_idle()
        return entry

    def _attach(self, attach: str, experiment: str) -> Any:
        run = self._attached.get(attach)
        if run is None or getattr(run, "_is_finished", False):
            try:
                run = self.wandb.attach(attach_id=attach)
            except Exception as exc:  # noqa: BLE001 - fall back to a run of our own
                self.warn(f"W&B: cannot attach to the caller's run for experiment "
                          f"{experiment!r} ({_short(exc)}); logging to a run of its own")
                return None
            self._attached[attach] = run
        return run

    def _start(self, experiment: str) -> Any:
        try:
            return self._init(experiment)
        except Exception:
            # wandb's service keeps a run that failed to start (an unreachable server):
            # a retry in this process would fail with "run ID is in use", so the
            # parent replaces this process before it tries again.
            self.needs_restart = True
            raise

    def _init(self, experiment: str) -> Any:
        s = self.settings
        return self.wandb.init(
            project=s["project"], entity=s["entity"], dir=s["dir"], mode=s["mode"],
            id=run_id(experiment), name=experiment, resume="allow", reinit="create_new",
            settings=self.wandb.Settings(silent=True, console="off"),
        )

    def _finish_idle(self) -> None:
        own = [k for k, e in self._runs.items() if e.own]
        for experiment in own[: max(0, len(own) - MAX_OPEN_RUNS)]:
            self._runs.pop(experiment).run.finish()

    def close(self) -> None:
        """Finish the runs this process started, then stop wandb's service if ours."""
        runs, self._runs = self._runs, OrderedDict()
        for experiment, entry in runs.items():
            if entry.own:
                try:
                    entry.run.finish()
                except Exception as exc:  # noqa: BLE001 - finish the others
                    self.warn(f"W&B: finishing the run of {experiment!r} failed: "
                              f"{_short(exc)}")
        try:
            self.wandb.teardown()
        except Exception as exc:  # noqa: BLE001
            self.warn(f"W&B: teardown failed: {_short(exc)}")

    def _transient(self, exc: BaseException) -> bool:
        comm = getattr(getattr(self.wandb, "errors", None), "CommError", OSError)
        return isinstance(exc, (OSError, TimeoutError, comm))


def _add_evaluation(sums: dict[str, list[float]], blob: bytes) -> None:
    for rec in step_records(blob):
        for metric, value in rec["m"].items():
            try:
                avg = average_nested_data(value)
            except (TypeError, ValueError, RuntimeError):
                continue
            if math.isnan(avg):
                continue
            entry = sums.setdefault(str(metric), [0.0, 0.0])
            entry[0] += avg
            entry[1] += 1


def _merge(into: Totals, more: Totals) -> None:
    for experiment, metrics in more.items():
        target = into.setdefault(experiment, {})
        for metric, (total, count) in metrics.items():
            t = target.setdefault(metric, [0.0, 0.0])
            t[0] += total
            t[1] += count


def _dataset_description(configs: Mapping[str, Any] | None) -> Any:
    dataset = configs.get("dataset_config") if isinstance(configs, Mapping) else None
    description = dataset.get("description") if isinstance(dataset, Mapping) else None
    return jsonable(description) if description is not None else None


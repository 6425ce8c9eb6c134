"""Plain in-memory result objects, shaped like the seed's ``sparseypy.core.results``.

No I/O happens here. Attributes are plain and public so that the fetcher can rebuild a
stored result (times, best steps, steps) without recomputing anything; see
:meth:`TrainingResult._restore` and :meth:`TrainingResult._append_step_no_best`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

from asyncstore import comparisons
from asyncstore.comparisons import Comparison

# The built-in comparisons rank by average_nested_data: True when higher is better.
_BY_MEAN: dict[Any, bool] = {
    comparisons.max_by_layerwise_mean: True,
    comparisons.min_by_layerwise_mean: False,
}


def _by_mean(fn: object) -> bool | None:
    """True / False when ``fn`` is a built-in comparison (higher / lower is better)."""
    try:
        return _BY_MEAN.get(fn)
    except TypeError:  # an unhashable callable: not one of ours
        return None

__all__ = [
    "HPOResult",
    "HPOStepResult",
    "MetricLike",
    "TrainingResult",
    "TrainingStepResult",
]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@runtime_checkable
class MetricLike(Protocol):
    """What TrainingResult needs from a seed ``Metric`` object."""

    def get_name(self) -> str: ...

    def get_best_comparison_function(self) -> Comparison | str: ...


class TrainingStepResult:
    """The metric values of one training or evaluation step."""

    def __init__(self, resolution: int = 1) -> None:
        self.resolution = resolution
        self.metrics: dict[str, Any] = {}
        self.start_time: datetime = _now()
        self.end_time: datetime | None = None

    def add_metric(self, name: str, values: Any) -> None:
        """Record (or replace) the value of metric ``name`` for this step."""
        self.metrics[name] = values

    def get_metric(self, name: str) -> Any:
        """The value of metric ``name``, or None if this step has none."""
        return self.metrics.get(name)

    def get_metrics(self) -> dict[str, Any]:
        """All metric values of this step, by name (the live dict)."""
        return self.metrics

    def mark_finished(self) -> None:
        """Set ``end_time`` to now (UTC)."""
        self.end_time = _now()

    def __repr__(self) -> str:
        return (
            f"TrainingStepResult(resolution={self.resolution!r}, "
            f"metrics={sorted(self.metrics)!r}, finished={self.end_time is not None})"
        )


def _metric_functions(
    metrics: Mapping[str, Comparison | str] | Iterable[MetricLike],
) -> dict[str, Comparison]:
    if isinstance(metrics, Mapping):
        pairs = list(metrics.items())
    else:
        pairs = []
        for m in metrics:
            if not (hasattr(m, "get_name") and hasattr(m, "get_best_comparison_function")):
                raise TypeError(
                    "metrics must be a mapping {name: comparison} or objects with "
                    f"get_name() and get_best_comparison_function(), got {m!r}"
                )
            pairs.append((m.get_name(), m.get_best_comparison_function()))
    out: dict[str, Comparison] = {}
    for name, fn in pairs:
        if not isinstance(name, str):
            raise TypeError(f"a metric name must be a str, not {type(name).__qualname__}")
        out[name] = comparisons.get(fn)
    return out


class TrainingResult:
    """A training (or evaluation) run: its steps, configs and best step per metric.

    ``best_steps`` maps each metric seen so far to ``{"best_index": int (0-based),
    "best_value": value, "best_function": comparison}``.
    """

    def __init__(
        self,
        id: str,
        result_type: str = "training",
        resolution: int = 1,
        metrics: Mapping[str, Comparison | str] | Iterable[MetricLike] = (),
        configs: dict[str, Any] | None = None,
    ) -> None:
        """:raises ValueError: if a comparison is named but not registered."""
        self.id = id
        self.result_type = result_type
        self.resolution = resolution
        self.metrics: dict[str, Comparison | str] = dict(_metric_functions(metrics))
        self.configs: dict[str, Any] = dict(configs) if configs is not None else {}
        self.steps: list[TrainingStepResult] = []
        self.best_steps: dict[str, dict[str, Any]] = {}
        self._best_means: dict[str, tuple[Any, float]] = {}  # metric -> (best value, mean)
        self.start_time: datetime = _now()
        self.end_time: datetime | None = None

    @classmethod
    def _restore(
        cls,
        id: str,
        *,
        result_type: str = "training",
        resolution: int = 1,
        metrics: Mapping[str, Comparison | str] | None = None,
        configs: dict[str, Any] | None = None,
        steps: Iterable[TrainingStepResult] = (),
        best_steps: dict[str, dict[str, Any]] | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> TrainingResult:
        """Rebuild a stored result as it was, without recomputing best steps.

        For the fetcher: comparisons may be unresolved names (``str``), as
        :func:`asyncstore.comparisons.resolve` returns them; such a metric keeps its
        stored best step.
        """
        self = cls(id, result_type=result_type, resolution=resolution, configs=configs)
        self.metrics = dict(metrics) if metrics is not None else {}
        self.steps = list(steps)
        self.best_steps = dict(best_steps) if best_steps is not None else {}
        if start_time is not None:
            self.start_time = start_time
        self.end_time = end_time
        return self

    def _append_step_no_best(self, step: TrainingStepResult) -> None:
        """Append a stored step without touching ``best_steps`` (for the fetcher)."""
        self.steps.append(step)

    def add_step(self, step: TrainingStepResult) -> None:
        """Append ``step`` and update the best step of each metric it has a value for.

        The first value seen becomes the best; a later one replaces it when
        ``comparison(new, best)`` is true. A metric whose comparison is an unresolved
        name cannot be ranked and keeps its best step.
        """
        index = len(self.steps)
        self.steps.append(step)
        for name, fn in self.metrics.items():
            value = step.get_metric(name)
            if value is None:
                continue
            best = self.best_steps.get(name)
            higher = _by_mean(fn)
            mean = None
            if higher is not None:
                # A built-in comparison: the same answer as fn(value, best), without
                # averaging the best value again on every step (a nested tensor's mean
                # costs tens of microseconds inside a training loop).
                mean = comparisons.average_nested_data(value)
                if best is None:
                    better = True
                else:
                    cached = self._best_means.get(name)
                    best_mean = (cached[1] if cached is not None and cached[0] is best["best_value"]
                                 else comparisons.average_nested_data(best["best_value"]))
                    better = mean > best_mean if higher else mean < best_mean
            elif best is None:
                better = True
            elif callable(fn):
                better = bool(fn(value, best["best_value"]))
            else:
                better = False
            if better:
                self.best_steps[name] = {
                    "best_index": index,
                    "best_value": value,
                    "best_function": fn,
                }
                if mean is not None:
                    self._best_means[name] = (value, mean)

    def get_step(self, i: int) -> TrainingStepResult:
        """The step at 0-based index ``i``; raises IndexError when out of range."""
        return self.steps[i]

    def get_steps(self) -> list[TrainingStepResult]:
        """All steps, in the order they were added."""
        return self.steps

    def get_best_step(self, metric: str) -> TrainingStepResult | None:
        """The best step for ``metric``, or None if no step had a value for it yet.

        :raises KeyError: if ``metric`` is not tracked by this result.
        """
        best = self.best_steps.get(metric)
        if best is None:
            if metric in self.metrics:
                return None
            raise KeyError(f"metric {metric!r} is not tracked; tracked: {sorted(self.metrics)}")
        step: TrainingStepResult = self.steps[best["best_index"]]
        return step

    def add_config(self, name: str, cfg: Any) -> None:
        """Store configuration ``cfg`` under ``name``."""
        self.configs[name] = cfg

    def get_configs(self) -> dict[str, Any]:
        """All configurations, by name (the live dict)."""
        return self.configs

    def mark_finished(self) -> None:
        """Set ``end_time`` to now (UTC)."""
        self.end_time = _now()

    def __repr__(self) -> str:
        return (
            f"TrainingResult(id={self.id!r}, result_type={self.result_type!r}, "
            f"steps={len(self.steps)}, metrics={sorted(self.metrics)!r}, "
            f"finished={self.end_time is not None})"
        )


class HPOStepResult:
    """One trial of a hyperparameter sweep: its configs, objective and results."""

    def __init__(self, parent_run: str, id: str, configs: dict[str, Any]) -> None:
        self.parent_run = parent_run
        self.id = id
        self.configs = configs
        self.objective: dict[str, Any] | None = None
        self.training_results: TrainingResult | None = None
        self.eval_results: TrainingResult | None = None

    def populate(
        self,
        objective: dict[str, Any],
        training_results: TrainingResult | None,
        eval_results: TrainingResult | None,
    ) -> None:
        """Attach the trial's objective (``objective["total"]`` ranks it) and results."""
        self.objective = objective
        self.training_results = training_results
        self.eval_results = eval_results

    def get_objective(self) -> dict[str, Any] | None:
        """The objective dict, or None before :meth:`populate`."""
        return self.objective

    def get_training_results(self) -> TrainingResult | None:
        """The trial's training results, or None."""
        return self.training_results

    def get_eval_results(self) -> TrainingResult | None:
        """The trial's evaluation results, or None."""
        return self.eval_results

    def __repr__(self) -> str:
        total = self.objective.get("total") if self.objective is not None else None
        return f"HPOStepResult(parent_run={self.parent_run!r}, id={self.id!r}, total={total!r})"


def _total(step: HPOStepResult) -> float:
    """The ranking value of a trial; a missing or NaN total ranks last."""
    objective = step.objective
    if not objective or objective.get("total") is None:
        return -math.inf
    value = float(objective["total"])
    return -math.inf if math.isnan(value) else value


class HPOResult:
    """A hyperparameter sweep: its trials and the best one (highest objective total)."""

    def __init__(self, configs: dict[str, Any], id: str, name: str) -> None:
        self.configs = configs
        self.id = id
        self.name = name
        self.steps: list[HPOStepResult] = []
        self.best_run: HPOStepResult | None = None
        self.start_time: datetime = _now()
        self.end_time: datetime | None = None

    def add_step(self, step: HPOStepResult) -> None:
        """Append a trial; it becomes ``best_run`` if its total beats the best so far.

        Ties keep the earlier trial; trials without a total never become ``best_run``.
        """
        self.steps.append(step)
        total = _total(step)
        if total == -math.inf:
            return
        if self.best_run is None or total > _total(self.best_run):
            self.best_run = step

    def get_steps(self) -> list[HPOStepResult]:
        """All trials, in the order they were added."""
        return self.steps

    def get_top_k_steps(self, k: int) -> list[HPOStepResult]:
        """The ``k`` trials with the highest totals, best first (ties in added order).

        :raises ValueError: if ``k`` is negative.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return sorted(self.steps, key=_total, reverse=True)[:k]

    def mark_finished(self) -> None:
        """Set ``end_time`` to now (UTC)."""
        self.end_time = _now()

    def __repr__(self) -> str:
        best = self.best_run.id if self.best_run is not None else None
        return (
            f"HPOResult(id={self.id!r}, name={self.name!r}, steps={len(self.steps)}, "
            f"best_run={best!r}, finished={self.end_time is not None})"
        )

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import torch

import asyncstore.comparisons as comparisons
from asyncstore._results import HPOResult, HPOStepResult, TrainingResult, TrainingStepResult


def _step(**metrics: Any) -> TrainingStepResult:
    step = TrainingStepResult()
    for name, value in metrics.items():
        step.add_metric(name, value)
    return step


class _Metric:
    """Stands in for a seed Metric object."""

    def __init__(self, name: str, fn: Any) -> None:
        self._name = name
        self._fn = fn

    def get_name(self) -> str:
        return self._name

    def get_best_comparison_function(self) -> Any:
        return self._fn


# --- TrainingStepResult --------------------------------------------------------------


def test_step_stores_metrics_and_returns_none_for_absent_ones() -> None:
    step = TrainingStepResult(resolution=4)
    step.add_metric("acc", [0.5, 0.25])
    assert step.resolution == 4
    assert step.get_metric("acc") == [0.5, 0.25]
    assert step.get_metric("missing") is None
    assert step.get_metrics() == {"acc": [0.5, 0.25]}


def test_step_start_time_is_aware_utc_and_end_time_set_by_mark_finished() -> None:
    before = datetime.now(timezone.utc)
    step = TrainingStepResult()
    assert step.start_time.tzinfo is not None
    assert step.start_time.utcoffset() == timedelta(0)
    assert before <= step.start_time
    assert step.end_time is None
    step.mark_finished()
    assert step.end_time is not None
    assert step.end_time.utcoffset() == timedelta(0)
    assert step.start_time <= step.end_time


# --- TrainingResult best steps -------------------------------------------------------


def test_best_index_is_zero_based_and_get_best_step_returns_it() -> None:
    result = TrainingResult("exp", metrics={"acc": "max_by_layerwise_mean"})
    steps = [_step(acc=v) for v in (0.2, 0.9, 0.5)]
    for s in steps:
        result.add_step(s)
    best = result.best_steps["acc"]
    assert best["best_index"] == 1
    assert best["best_value"] == 0.9
    assert best["best_function"] is comparisons.max_by_layerwise_mean
    assert result.get_best_step("acc") is steps[1]


def test_first_step_is_best_until_beaten() -> None:
    result = TrainingResult("exp", metrics={"acc": comparisons.max_by_layerwise_mean})
    first = _step(acc=0.3)
    result.add_step(first)
    assert result.best_steps["acc"]["best_index"] == 0
    assert result.get_best_step("acc") is first
    # An equal value does not replace the best (the comparison is strict).
    result.add_step(_step(acc=0.3))
    assert result.best_steps["acc"]["best_index"] == 0


def test_min_comparison_tracks_the_lowest_layerwise_mean() -> None:
    result = TrainingResult("exp", metrics={"loss": "min_by_layerwise_mean"})
    values = [[[1.0, 1.0], [1.0]], [[0.0, 0.0, 0.0], [0.8]], [[0.5], [0.5]], [[0.9], [0.9]]]
    for v in values:
        result.add_step(_step(loss=v))
    # Layerwise means: 1.0, 0.4, 0.5, 0.9.
    assert result.best_steps["loss"]["best_index"] == 1
    assert result.get_best_step("loss") is result.get_step(1)


def test_max_comparison_on_tensors_uses_layerwise_mean() -> None:
    result = TrainingResult("exp", metrics={"acc": "max_by_layerwise_mean"})
    result.add_step(_step(acc=torch.tensor([[1.0, 0.0], [0.0, 0.0]])))  # 0.25
    result.add_step(_step(acc=[torch.ones(3), torch.zeros(1)]))  # 0.5
    result.add_step(_step(acc=torch.tensor([0.4, float("nan")])))  # 0.2
    assert result.best_steps["acc"]["best_index"] == 1


def test_custom_registered_comparison_picks_the_best_step() -> None:
    @comparisons.register
    def test_results_closest_to_half(a: float, b: float) -> bool:
        return abs(a - 0.5) < abs(b - 0.5)

    result = TrainingResult("exp", metrics={"score": "test_results_closest_to_half"})
    for v in (0.9, 0.1, 0.45, 0.6):
        result.add_step(_step(score=v))
    assert result.metrics["score"] is test_results_closest_to_half
    assert result.best_steps["score"]["best_index"] == 2
    assert result.best_steps["score"]["best_value"] == 0.45
    assert result.best_steps["score"]["best_function"] is test_results_closest_to_half


def test_metrics_given_as_objects_with_get_name_and_comparison() -> None:
    metrics = [
        _Metric("acc", comparisons.max_by_layerwise_mean),
        _Metric("loss", "min_by_layerwise_mean"),
    ]
    result = TrainingResult("exp", metrics=metrics)
    assert result.metrics == {
        "acc": comparisons.max_by_layerwise_mean,
        "loss": comparisons.min_by_layerwise_mean,
    }
    result.add_step(_step(acc=0.5, loss=2.0))
    result.add_step(_step(acc=0.7, loss=3.0))
    result.add_step(_step(acc=0.6, loss=1.0))
    assert result.best_steps["acc"]["best_index"] == 1
    assert result.best_steps["loss"]["best_index"] == 2


def test_each_metric_tracks_its_best_independently_and_skips_none() -> None:
    result = TrainingResult(
        "exp", metrics={"acc": "max_by_layerwise_mean", "loss": "min_by_layerwise_mean"}
    )
    result.add_step(_step(acc=0.1))  # no loss at all
    result.add_step(_step(acc=None, loss=5.0))  # acc present but None
    result.add_step(_step(acc=0.05, loss=4.0))
    assert result.best_steps["acc"]["best_index"] == 0
    assert result.best_steps["acc"]["best_value"] == 0.1
    assert result.best_steps["loss"]["best_index"] == 2
    assert result.best_steps["loss"]["best_value"] == 4.0


def test_untracked_metrics_get_no_best_step() -> None:
    result = TrainingResult("exp", metrics={"acc": "max_by_layerwise_mean"})
    result.add_step(_step(acc=0.5, other=1.0))
    assert set(result.best_steps) == {"acc"}
    with pytest.raises(KeyError, match="other"):
        result.get_best_step("other")


def test_tracked_metric_without_values_has_no_best_step_yet() -> None:
    result = TrainingResult("exp", metrics={"acc": "max_by_layerwise_mean"})
    result.add_step(_step(loss=1.0))
    assert result.best_steps == {}
    assert result.get_best_step("acc") is None


def test_unknown_comparison_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match="no_such_comparison"):
        TrainingResult("exp", metrics={"acc": "no_such_comparison"})
    with pytest.raises(ValueError, match="no_such_comparison"):
        TrainingResult("exp", metrics=[_Metric("acc", "no_such_comparison")])


def test_metrics_of_the_wrong_shape_raise_type_error() -> None:
    with pytest.raises(TypeError):
        TrainingResult("exp", metrics=["acc"])  # type: ignore[list-item]


# --- TrainingResult plain parts ------------------------------------------------------


def test_training_result_defaults_and_configs() -> None:
    result = TrainingResult("exp-1")
    assert result.id == "exp-1"
    assert result.result_type == "training"
    assert result.resolution == 1
    assert result.configs == {}
    assert result.metrics == {}
    assert result.best_steps == {}
    assert result.end_time is None
    assert result.start_time.utcoffset() == timedelta(0)
    result.add_config("model", {"layers": 2})
    assert result.get_configs() == {"model": {"layers": 2}}
    result.mark_finished()
    assert result.end_time is not None and result.end_time >= result.start_time


def test_configs_passed_in_are_copied_not_shared() -> None:
    given = {"a": 1}
    result = TrainingResult("exp", result_type="evaluation", resolution=3, configs=given)
    result.add_config("b", 2)
    assert given == {"a": 1}
    assert result.configs == {"a": 1, "b": 2}
    assert result.result_type == "evaluation"
    assert result.resolution == 3


def test_steps_come_back_in_order_and_get_step_raises_out_of_range() -> None:
    result = TrainingResult("exp")
    steps = [_step(x=i) for i in range(3)]
    for s in steps:
        result.add_step(s)
    assert result.get_steps() == steps
    assert result.get_step(2) is steps[2]
    with pytest.raises(IndexError):
        result.get_step(3)


def test_restore_keeps_stored_best_steps_and_times_without_recomputing() -> None:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    end = datetime(2024, 1, 2, tzinfo=timezone.utc)
    steps = [_step(acc=0.9), _step(acc=0.1)]
    stored_best = {
        "acc": {"best_index": 1, "best_value": 0.1, "best_function": "some_unregistered_fn"}
    }
    result = TrainingResult._restore(
        "exp",
        result_type="evaluation",
        metrics={"acc": "some_unregistered_fn"},
        steps=steps,
        best_steps=stored_best,
        start_time=start,
        end_time=end,
    )
    assert result.start_time == start
    assert result.end_time == end
    assert result.get_best_step("acc") is steps[1]
    # A metric whose comparison is an unresolved name keeps its stored best.
    result.add_step(_step(acc=0.95))
    assert result.best_steps["acc"]["best_index"] == 1


def test_append_step_no_best_leaves_best_steps_alone() -> None:
    result = TrainingResult("exp", metrics={"acc": "max_by_layerwise_mean"})
    result.add_step(_step(acc=0.1))
    result._append_step_no_best(_step(acc=0.99))
    assert len(result.get_steps()) == 2
    assert result.best_steps["acc"]["best_index"] == 0


def test_reprs_name_the_essentials() -> None:
    result = TrainingResult("exp-7", metrics={"acc": "max_by_layerwise_mean"})
    result.add_step(_step(acc=1.0))
    assert repr(result) == (
        "TrainingResult(id='exp-7', result_type='training', steps=1, metrics=['acc'], "
        "finished=False)"
    )
    assert repr(_step(b=1, a=2)) == (
        "TrainingStepResult(resolution=1, metrics=['a', 'b'], finished=False)"
    )
    sweep = HPOResult({}, "sweep-1", "my sweep")
    trial = _trial("t1", 0.5)
    sweep.add_step(trial)
    assert repr(trial) == "HPOStepResult(parent_run='sweep-1', id='t1', total=0.5)"
    assert repr(sweep) == (
        "HPOResult(id='sweep-1', name='my sweep', steps=1, best_run='t1', finished=False)"
    )


# --- HPO -----------------------------------------------------------------------------


def _trial(id: str, total: float | None, parent: str = "sweep-1") -> HPOStepResult:
    trial = HPOStepResult(parent, id, {"lr": 0.1})
    if total is not None:
        trial.populate({"total": total, "acc": total / 2}, None, None)
    return trial


def test_hpo_step_populate_stores_objective_and_results() -> None:
    training = TrainingResult("t1")
    evaluation = TrainingResult("t1", result_type="evaluation")
    trial = HPOStepResult("sweep", "t1", {"lr": 0.01})
    assert trial.get_objective() is None
    trial.populate({"total": 0.8}, training, evaluation)
    assert trial.parent_run == "sweep"
    assert trial.id == "t1"
    assert trial.configs == {"lr": 0.01}
    assert trial.get_objective() == {"total": 0.8}
    assert trial.get_training_results() is training
    assert trial.get_eval_results() is evaluation


def test_hpo_top_k_orders_by_total_descending() -> None:
    sweep = HPOResult({"method": "random"}, "sweep-1", "sweep")
    for id, total in [("a", 0.3), ("b", 0.9), ("c", 0.1), ("d", 0.6)]:
        sweep.add_step(_trial(id, total))
    assert [s.id for s in sweep.get_top_k_steps(3)] == ["b", "d", "a"]
    assert [s.id for s in sweep.get_top_k_steps(10)] == ["b", "d", "a", "c"]
    assert sweep.get_top_k_steps(0) == []
    assert [s.id for s in sweep.get_steps()] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError):
        sweep.get_top_k_steps(-1)


def test_hpo_best_run_is_the_highest_total_and_ties_keep_the_earlier() -> None:
    sweep = HPOResult({}, "sweep-1", "sweep")
    assert sweep.best_run is None
    sweep.add_step(_trial("a", 0.5))
    assert sweep.best_run is not None and sweep.best_run.id == "a"
    sweep.add_step(_trial("b", 0.7))
    sweep.add_step(_trial("c", 0.7))
    sweep.add_step(_trial("d", 0.2))
    assert sweep.best_run.id == "b"
    assert [s.id for s in sweep.get_top_k_steps(2)] == ["b", "c"]


def test_hpo_trials_without_a_total_rank_last_and_never_become_best() -> None:
    sweep = HPOResult({}, "sweep-1", "sweep")
    sweep.add_step(_trial("none", None))
    assert sweep.best_run is None
    sweep.add_step(_trial("nan", float("nan")))
    sweep.add_step(_trial("neg", -3.0))
    assert sweep.best_run is not None and sweep.best_run.id == "neg"
    assert [s.id for s in sweep.get_top_k_steps(3)] == ["neg", "none", "nan"]


def test_hpo_totals_may_be_tensors() -> None:
    sweep = HPOResult({}, "sweep-1", "sweep")
    for id, total in [("a", 0.25), ("b", 0.75)]:
        trial = HPOStepResult("sweep-1", id, {})
        trial.populate({"total": torch.tensor(total)}, None, None)
        sweep.add_step(trial)
    assert sweep.best_run is not None and sweep.best_run.id == "b"


def test_hpo_result_attributes_and_mark_finished() -> None:
    sweep = HPOResult({"method": "grid"}, "sweep-9", "nine")
    assert (sweep.configs, sweep.id, sweep.name) == ({"method": "grid"}, "sweep-9", "nine")
    assert sweep.start_time.utcoffset() == timedelta(0)
    assert sweep.end_time is None
    sweep.mark_finished()
    assert sweep.end_time is not None and sweep.end_time >= sweep.start_time


def test_built_in_comparisons_pick_the_same_best_steps_as_calling_them():
    """add_step averages each new value once for the built-in comparisons (not the best
    value again every step); the best steps are those calling the comparison gives,
    also after best_steps is replaced from outside."""
    import random

    from asyncstore import TrainingResult, TrainingStepResult, comparisons

    rng = random.Random(5)

    def value() -> object:
        kind = rng.randrange(4)
        if kind == 0:
            return rng.random()
        if kind == 1:
            return [[rng.random() for _ in range(rng.randrange(1, 4))] for _ in range(2)]
        if kind == 2:
            return torch.rand(rng.randrange(1, 5))
        return float("nan")

    for builtin in (comparisons.max_by_layerwise_mean, comparisons.min_by_layerwise_mean):
        fast = TrainingResult("a", metrics={"m": builtin})
        called = TrainingResult("b", metrics={"m": lambda x, y, f=builtin: f(x, y)})
        for i in range(300):
            step = TrainingStepResult()
            step.add_metric("m", value())
            fast.add_step(step)
            called.add_step(step)
            if i == 150:  # replaced from outside: the cached mean must not be used
                fast.best_steps["m"] = dict(fast.best_steps["m"], best_value=10.0 if
                                            builtin is comparisons.max_by_layerwise_mean
                                            else -10.0)
                called.best_steps["m"] = dict(fast.best_steps["m"])
            assert fast.best_steps["m"]["best_index"] == called.best_steps["m"]["best_index"]

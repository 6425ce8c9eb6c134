from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

import asyncstore.comparisons as comparisons
from asyncstore.comparisons import (
    average_nested_data,
    max_by_layerwise_mean,
    min_by_layerwise_mean,
)


def _nested(*parts: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch warns that the strided nested layout is a prototype.
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.nested_tensor(list(parts))


# --- average_nested_data -------------------------------------------------------------


def test_ragged_list_weighs_each_layer_equally() -> None:
    # Flattened it would be (1+1+1+0)/4 = 0.75; per layer it is (1+0)/2.
    assert average_nested_data([[1, 1, 1], [0]]) == pytest.approx((1.0 + 0.0) / 2)
    assert average_nested_data([[1.0, 2.0, 3.0], [10.0]]) == pytest.approx(6.0)


def test_deeply_nested_ragged_list_averages_level_by_level() -> None:
    data = [[[1, 3], [5]], [2]]  # [[2, 5] -> 3.5, 2] -> 2.75
    assert average_nested_data(data) == pytest.approx(2.75)


def test_nan_counts_as_zero_in_lists_scalars_arrays_and_tensors() -> None:
    assert average_nested_data([1.0, float("nan"), 3.0, 4.0]) == pytest.approx(2.0)
    assert average_nested_data(float("nan")) == 0.0
    assert average_nested_data(np.float32("nan")) == 0.0
    assert average_nested_data(np.array([np.nan, 2.0])) == pytest.approx(1.0)
    assert average_nested_data(torch.tensor([np.nan, 2.0, 4.0, np.nan])) == pytest.approx(1.5)


def test_infinity_is_kept() -> None:
    assert average_nested_data(torch.tensor([1.0, math.inf])) == math.inf


@pytest.mark.parametrize(
    "empty",
    [[], (), {}, [[], []], np.array([]), torch.tensor([]), torch.zeros(0, 3, dtype=torch.int64)],
)
def test_empty_values_average_to_zero(empty: Any) -> None:
    assert average_nested_data(empty) == 0.0


def test_empty_layer_counts_as_a_zero_layer() -> None:
    assert average_nested_data([[], [2.0, 4.0]]) == pytest.approx(1.5)


def test_none_counts_as_zero() -> None:
    assert average_nested_data(None) == 0.0
    assert average_nested_data([None, 4]) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (torch.tensor([True, False, True, True]), 0.75),
        (torch.tensor([1, 2, 3, 6], dtype=torch.int64), 3.0),
        (torch.tensor([1, 2], dtype=torch.uint8), 1.5),
        (torch.tensor([0.5, 1.5, float("nan"), 2.0], dtype=torch.float16), 1.0),
        (torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16), 2.5),
        (torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float32), 2.75),
        (torch.tensor(7.0, dtype=torch.float64), 7.0),
    ],
)
def test_tensor_of_any_dtype_averages_its_elements(tensor: torch.Tensor, expected: float) -> None:
    result = average_nested_data(tensor)
    assert type(result) is float
    assert result == pytest.approx(expected)


def test_float16_mean_does_not_overflow() -> None:
    # The sum, 4 * 60000, is beyond float16's range; the mean is not.
    t = torch.full((4,), 60000.0, dtype=torch.float16)
    assert average_nested_data(t) == pytest.approx(60000.0, rel=1e-3)


def test_tensor_requiring_grad_is_averaged() -> None:
    t = torch.tensor([1.0, 3.0], requires_grad=True)
    assert average_nested_data(t) == pytest.approx(2.0)


def test_nested_tensor_weighs_each_component_equally() -> None:
    nt = _nested(torch.ones(2, 3), torch.zeros(2, 5))
    # Element-wise it would be 6/16; per component it is (1 + 0) / 2.
    assert average_nested_data(nt) == pytest.approx(0.5)


def test_nested_tensor_nan_counts_as_zero() -> None:
    nt = _nested(torch.tensor([[float("nan"), 2.0]]), torch.tensor([[4.0, 4.0, 4.0]]))
    assert average_nested_data(nt) == pytest.approx((1.0 + 4.0) / 2)


def test_list_of_tensors_of_different_lengths_weighs_layers_equally() -> None:
    data = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([3.0])]
    assert average_nested_data(data) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([1, 2, 3, 4], dtype=np.int64), 2.5),
        (np.array([[True, False], [False, False]]), 0.25),
        (np.array([1.0, np.nan, 5.0], dtype=np.float16), 2.0),
        (np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32), 3.0),
    ],
)
def test_numpy_array_averages_its_elements(array: np.ndarray, expected: float) -> None:
    assert average_nested_data(array) == pytest.approx(expected)


def test_numpy_object_array_of_ragged_rows_weighs_rows_equally() -> None:
    rows = np.empty(2, dtype=object)
    rows[0] = [1, 1, 1, 1]
    rows[1] = [3]
    assert average_nested_data(rows) == pytest.approx(2.0)


def test_scalars_are_themselves() -> None:
    assert average_nested_data(3) == 3.0
    assert average_nested_data(2.5) == 2.5
    assert average_nested_data(True) == 1.0
    assert average_nested_data(np.int64(4)) == 4.0
    assert average_nested_data(np.bool_(True)) == 1.0


def test_dict_is_the_mean_of_its_values_averages() -> None:
    data = {"a": [1.0, 3.0], "b": 6, "c": torch.tensor([0.0])}
    assert average_nested_data(data) == pytest.approx((2.0 + 6.0 + 0.0) / 3)


def test_non_numeric_values_raise_type_error() -> None:
    with pytest.raises(TypeError):
        average_nested_data("abc")
    with pytest.raises(TypeError):
        average_nested_data(torch.tensor([1 + 1j]))


# --- built-in comparisons ------------------------------------------------------------


def test_max_by_layerwise_mean_prefers_the_higher_mean() -> None:
    assert max_by_layerwise_mean([[1.0], [1.0, 1.0, 1.0]], [[0.0], [2.0]]) is False
    assert max_by_layerwise_mean([[3.0], [0.0]], [1.0, 1.0]) is True
    assert max_by_layerwise_mean(1.0, 1.0) is False


def test_min_by_layerwise_mean_prefers_the_lower_mean() -> None:
    assert min_by_layerwise_mean(torch.tensor([0.1, 0.2]), np.array([0.5])) is True
    assert min_by_layerwise_mean(torch.tensor([0.9]), 0.5) is False
    assert min_by_layerwise_mean(0.5, 0.5) is False


# --- registry ------------------------------------------------------------------------


def test_builtins_are_registered_under_their_names() -> None:
    assert comparisons.resolve("max_by_layerwise_mean") is max_by_layerwise_mean
    assert comparisons.resolve("min_by_layerwise_mean") is min_by_layerwise_mean
    assert comparisons.name_of(max_by_layerwise_mean) == "max_by_layerwise_mean"
    assert comparisons.name_of(min_by_layerwise_mean) == "min_by_layerwise_mean"


def test_register_as_decorator_makes_the_name_resolve_to_the_function() -> None:
    @comparisons.register
    def test_registry_closest_to_one(a: float, b: float) -> bool:
        return abs(a - 1) < abs(b - 1)

    assert comparisons.resolve("test_registry_closest_to_one") is test_registry_closest_to_one
    assert comparisons.name_of(test_registry_closest_to_one) == "test_registry_closest_to_one"
    assert comparisons.get("test_registry_closest_to_one") is test_registry_closest_to_one


def test_register_under_an_explicit_name() -> None:
    def fn(a: float, b: float) -> bool:
        return a > b

    assert comparisons.register(fn, name="test_registry_explicit") is fn
    assert comparisons.resolve("test_registry_explicit") is fn
    assert comparisons.name_of(fn) == "test_registry_explicit"

    @comparisons.register(name="test_registry_keyword_decorator")
    def other(a: float, b: float) -> bool:
        return a < b

    assert comparisons.resolve("test_registry_keyword_decorator") is other


def test_registering_the_same_function_twice_is_allowed() -> None:
    def fn(a: float, b: float) -> bool:
        return a > b

    comparisons.register(fn, "test_registry_twice")
    comparisons.register(fn, "test_registry_twice")
    assert comparisons.resolve("test_registry_twice") is fn


def test_registering_a_taken_name_for_another_function_raises_value_error() -> None:
    with pytest.raises(ValueError, match="max_by_layerwise_mean"):
        comparisons.register(lambda a, b: True, name="max_by_layerwise_mean")
    # The built-in is still there.
    assert comparisons.get("max_by_layerwise_mean") is max_by_layerwise_mean


def test_name_of_an_unregistered_callable_is_its_qualname_without_warning() -> None:
    def local_cmp(a: float, b: float) -> bool:
        return a > b

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        name = comparisons.name_of(local_cmp)
    assert name == local_cmp.__qualname__
    assert name.endswith("local_cmp")


def test_name_of_a_str_is_itself() -> None:
    assert comparisons.name_of("anything") == "anything"


def test_resolve_of_an_unregistered_name_returns_the_str_and_warns() -> None:
    with pytest.warns(UserWarning, match="not registered"):
        result = comparisons.resolve("os.system")
    assert result == "os.system"
    assert type(result) is str


def test_get_of_an_unknown_name_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="no_such_comparison"):
        comparisons.get("no_such_comparison")


def test_get_passes_a_callable_through_and_rejects_other_types() -> None:
    def fn(a: float, b: float) -> bool:
        return a > b

    assert comparisons.get(fn) is fn
    with pytest.raises(TypeError):
        comparisons.get(42)  # type: ignore[arg-type]

"""Realistic Sparsey metrics and an exact-equality check, shared by the tests."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from asyncstore import DataFetcher, TrainingStepResult
from asyncstore._documents import BATCHES

LAYERS = (16, 11, 7)  # MACs per layer: ragged
MACS = 16  # per layer, for the metric with a ragged list per MAC
METRIC_CONFIG = [
    {"name": "basis_set_size", "save": True},
    {"name": "feature_coverage", "save": True},
    {"name": "match_accuracy", "save": True},
    {"name": "activations", "save": True},
    {"name": "input_counts", "save": True},
    {"name": "maybe", "save": True},
    {"name": "basis_average", "save": True},
    {"name": "mac_inputs", "save": True},
    {"name": "not_saved", "save": False},
]


def nested(parts: list[torch.Tensor]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor(parts)


def sparsey_step(i: int, rng: np.random.Generator) -> TrainingStepResult:
    """One step shaped like sparseypy's, old and new versions mixed: ragged lists per
    layer and per MAC, tensors of several dtypes, numpy arrays, None and NaN."""
    step = TrainingStepResult(resolution=2)
    step.add_metric(
        "basis_set_size", [[int(x) for x in rng.integers(0, 50, m)] for m in LAYERS]
    )
    cov = [[float(x) for x in rng.random(m)] for m in LAYERS]
    cov[1][3] = float("nan")
    step.add_metric("feature_coverage", cov)
    step.add_metric(
        "match_accuracy",
        [torch.from_numpy(rng.random(m).astype(np.float16)) for m in LAYERS],
    )
    step.add_metric(
        "activations",
        nested([torch.from_numpy(rng.random((1, m)).astype(np.float32)) for m in LAYERS]),
    )
    step.add_metric(
        "input_counts",
        {"layer_counts": np.asarray(rng.integers(0, 9, 3), dtype=np.int64),
         "active": torch.from_numpy(rng.random(5) > 0.5),
         "ids": torch.arange(i, i + 4, dtype=torch.int64)},
    )
    step.add_metric("maybe", None if i % 3 == 0 else float("nan") if i % 3 == 1 else i * 0.5)
    step.add_metric("basis_average", torch.from_numpy(rng.random((3, 4)).astype(np.float32)))
    # 3 layers x 16 MACs, each MAC a list of its own length (empty included)
    step.add_metric("mac_inputs", [[[int(x) for x in rng.integers(0, 99, rng.integers(0, 7))]
                                    for _ in range(MACS)] for _ in range(3)])
    step.add_metric("not_saved", object())  # never stored: metric_config says save: false
    step.mark_finished()
    return step


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """``a`` and ``b`` are equal with the same types, dtypes and shapes (NaN == NaN)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.is_nested == b.is_nested, path
        if a.is_nested:
            pa, pb = a.unbind(), b.unbind()
            assert len(pa) == len(pb), path
            for k, (x, y) in enumerate(zip(pa, pb)):
                assert_same(x, y, f"{path}[{k}]")
            return
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        if a.dtype.is_floating_point:
            assert torch.equal(torch.nan_to_num(a.float(), nan=7e7), torch.nan_to_num(b.float(), nan=7e7)), path
            assert torch.equal(a.isnan(), b.isnan()), path
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{k}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def saved_metrics(step: TrainingStepResult) -> dict[str, Any]:
    saved = {m["name"] for m in METRIC_CONFIG if m["save"]}
    return {k: v for k, v in step.get_metrics().items() if k in saved}


def physical_step_count(cfg: dict[str, Any], exp: str, phase: str = "training") -> int:
    """Steps as stored in documents, duplicates included (the fetcher hides them: it
    takes each step index once)."""
    fetcher = DataFetcher(cfg)
    docs = fetcher._store.query(BATCHES, {"experiment": exp, "phase": phase},
                                fields=["first", "count", "chunk"])
    fetcher.close()
    return sum(d["count"] for _, d in docs if d["chunk"] == 0)

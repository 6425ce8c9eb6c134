"""Sparsey-shaped steps for the demo, the benchmarks and the tests.

Measured on the real sparseypy (SPEC §2): every metric is a float32 nested tensor, one
component per layer, shaped [batch, MACs] (basis averages [batch, MACs, pixels]). A
small model (2 layers, 13 MACs) gives about 10 KB a step; a 6-layer 28x28 model about
1.2 MB.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ._results import TrainingStepResult

SMALL = (9, 4)  # MACs per layer: 2 layers, 13 MACs
SMALL_PIXELS = 196
LARGE = (100, 100, 64, 49, 36, 15)  # 6 layers, 364 MACs
LARGE_PIXELS = 784

METRICS = ("basis_set_size", "feature_coverage", "match_accuracy", "num_activations",
           "basis_average")


def metric_config() -> list[dict[str, object]]:
    return [{"name": m, "save": True} for m in METRICS]


def _nested(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype"
        return torch.nested.nested_tensor(list(parts))


class SparseyLike:
    """A stand-in for a Sparsey model: ``step()`` does about ``work_ms`` of torch work and
    returns a step whose metrics are shaped like the real ones."""

    def __init__(
        self,
        macs: Sequence[int] = SMALL,
        pixels: int = SMALL_PIXELS,
        batch: int = 1,
        work_ms: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.macs, self.pixels, self.batch = tuple(macs), pixels, batch
        self.gen = torch.Generator().manual_seed(seed)
        self._n = 64
        self._a = torch.rand(self._n, self._n, generator=self.gen)
        self._reps = 1
        if work_ms > 0:
            self._calibrate(work_ms)
        else:
            self._reps = 0

    def _calibrate(self, work_ms: float) -> None:
        import time

        self._reps = 50
        for _ in range(5):  # warm up
            self.work()
        start = time.perf_counter()
        for _ in range(5):
            self.work()
        per_rep = (time.perf_counter() - start) / (5 * self._reps)
        self._reps = max(1, round(work_ms / 1000 / per_rep))

    def work(self) -> torch.Tensor:
        x = self._a
        for _ in range(self._reps):
            x = torch.tanh(x @ self._a)
        return x

    def metrics(self) -> dict[str, torch.Tensor]:
        g, b = self.gen, self.batch
        out = {
            "basis_set_size": _nested([torch.randint(0, 50, (b, m), generator=g).float()
                                       for m in self.macs]),
            "feature_coverage": _nested([torch.rand(b, m, generator=g) for m in self.macs]),
            "match_accuracy": _nested([torch.rand(b, m, generator=g) for m in self.macs]),
            "num_activations": _nested([torch.randint(0, 8, (b, m), generator=g).float()
                                        for m in self.macs]),
            "basis_average": _nested([torch.rand(b, m, self.pixels, generator=g)
                                      for m in self.macs]),
        }
        return out

    def step(self) -> TrainingStepResult:
        self.work()
        result = TrainingStepResult()
        for name, value in self.metrics().items():
            result.add_metric(name, value)
        result.mark_finished()
        return result

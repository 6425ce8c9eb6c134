"""``asyncstore plot``: a metric's curve over an experiment's steps, as a PNG.

A layered value (a nested tensor, one component per layer, or a list of per-layer values,
as Sparsey produces) gives one line per layer (each the mean over its elements,
``average_nested_data``) and the mean over layers (what W&B logs as the metric); any other
value one line, its mean. ``None`` is a gap. Training and evaluation steps are numbered
separately, so each phase gets its own panel, with a shared y axis.

Imported only by the ``plot`` command: matplotlib stays out of ``asyncstore --help``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .comparisons import average_nested_data

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_LAYERS = 16  # a longer list is a flat list of values, not layers
DPI = 200
_MEAN = "mean over layers"


@dataclass
class Series:
    """One phase's values of one metric: ``lines`` maps a label to a value per step."""

    steps: list[int] = field(default_factory=list)
    layers: list[list[float]] = field(default_factory=list)  # [layer][step]
    mean: list[float] = field(default_factory=list)
    scalar: bool = True  # every value a plain number (or None)

    @property
    def layered(self) -> bool:
        return bool(self.layers)

    def add(self, step: int, value: Any) -> None:
        """:raises TypeError: the value is not numeric."""
        k = len(self.steps)
        self.steps.append(step)
        if value is None:
            self.mean.append(math.nan)
            for line in self.layers:
                line.append(math.nan)
            return
        self.mean.append(average_nested_data(value))
        if not isinstance(value, (numbers.Real, np.generic)):
            self.scalar = False
        parts = layers_of(value)
        if parts is None:
            for line in self.layers:
                line.append(math.nan)
            return
        while len(self.layers) < len(parts):
            self.layers.append([math.nan] * k)
        for i, line in enumerate(self.layers):
            line.append(average_nested_data(parts[i]) if i < len(parts) else math.nan)


def layers_of(value: Any) -> Sequence[Any] | None:
    """The per-layer parts of a Sparsey value, or None when it is not layered."""
    if isinstance(value, torch.Tensor) and value.is_nested:
        return list(value.unbind())
    if isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_LAYERS:
        return value
    return None


def collect(steps: Iterable[Any], metric: str) -> Series:
    """The values of ``metric`` in ``steps`` (``TrainingStepResult`` s, in order); a step
    without it is a gap.

    :raises TypeError: a value is not numeric.
    """
    series = Series()
    for i, step in enumerate(steps):
        series.add(i, step.get_metric(metric))
    return series


def _smooth(values: list[float], window: int) -> np.ndarray[Any, Any]:
    """Trailing moving average over ``window`` steps; gaps (NaN) are left out of it."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    counts = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, len(v) + 1)
    lo = np.maximum(hi - window, 0)
    n = counts[hi] - counts[lo]
    out: np.ndarray[Any, Any] = np.full(len(v), np.nan)
    np.divide(sums[hi] - sums[lo], n, out=out, where=n > 0)
    return out


def render(
    phases: dict[str, Series],
    experiment_id: str,
    metric: str,
    path: str | Path,
    *,
    smooth: int = 1,
) -> Path:
    """Draw ``phases`` and save the figure as a PNG at ``path``.

    :raises OSError: the file cannot be written.
    """
    fig = draw(phases, experiment_id, metric, smooth=smooth)
    out = Path(path)
    fig.savefig(out, dpi=DPI, format="png", metadata={"Title": f"{metric} of {experiment_id}"})
    return out


def draw(
    phases: dict[str, Series], experiment_id: str, metric: str, *, smooth: int = 1
) -> Figure:
    """The figure of ``phases`` (phase name -> series, a panel each, in order)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    shown = {name: s for name, s in phases.items() if s.steps}
    layered = any(s.layered for s in shown.values())
    count = max((len(s.layers) for s in shown.values()), default=0)
    widths = [max(len(s.steps), 1) for s in shown.values()]
    ratios = [max(w / max(widths), 0.35) for w in widths]
    fig = Figure(figsize=(min(2.5 + 6.0 * sum(ratios), 14.0), 4.5), layout="constrained",
                 dpi=DPI)
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False,
                        gridspec_kw={"width_ratios": ratios})[0]
    palette = [f"C{i}" for i in range(10)]
    for ax, (name, s) in zip(axes, shown.items(), strict=True):
        lines: list[tuple[str, list[float], dict[str, Any]]] = []
        if layered:
            for i, values in enumerate(s.layers):
                lines.append((f"layer {i}", values, {"color": palette[i % 10], "lw": 1.2}))
            if count > 1:
                lines.append((_MEAN, s.mean, {"color": "black", "lw": 1.6, "ls": "--"}))
        else:
            label = metric if s.scalar else "mean"
            lines.append((label, s.mean, {"color": palette[0], "lw": 1.4}))
        marker = "o" if len(s.steps) <= 40 else None
        thin = 0.6 if len(s.steps) > 200 and smooth == 1 else 1.0  # dense raw data
        for label, values, style in lines:
            style = {**style, "lw": style["lw"] * thin}
            if smooth > 1:
                ax.plot(s.steps, values, color=style["color"], lw=0.6, alpha=0.25)
                ax.plot(s.steps, _smooth(values, smooth), label=label, **style)
            else:
                ax.plot(s.steps, values, label=label, marker=marker, ms=3, **style)
        ax.set_title(f"{name} ({len(s.steps)} step{'s' if len(s.steps) != 1 else ''})",
                     fontsize=10)
        ax.set_xlabel(f"{name} step")
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.01)
    what = "mean per layer" if layered else "value" if _all_scalar(shown) else "mean"
    axes[0].set_ylabel(f"{metric} ({what})")
    title = f"{metric} — experiment {experiment_id}"
    if smooth > 1:
        title += f"\nmoving average over {smooth} steps (raw values faint)"
    fig.suptitle(title, fontsize=12)
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=9,
               frameon=False)
    return fig


def _all_scalar(phases: dict[str, Series]) -> bool:
    return all(s.scalar for s in phases.values())

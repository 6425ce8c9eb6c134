"""How the command line shows what it read: aligned text tables for people, one JSON
document for machines (datetimes in ISO 8601, tensors and arrays as lists, or as a
summary past :data:`LIST_LIMIT` elements, non-finite floats as null, bytes by length).

torch and numpy are looked up in ``sys.modules``, never imported here: a value of theirs
can only exist once they are.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from ._catalog import ExperimentListing, ExperimentSummary, SweepListing, SweepSummary

LIST_LIMIT = 10_000  # elements of a tensor or array written out in full in JSON
_OBJECTIVE_COLUMNS = 5


# --------------------------------------------------------------------------- values


def _array_module(value: Any) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return "torch"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return "numpy"
    if np is not None and isinstance(value, np.generic):
        return "numpy-scalar"
    return None


def _dtype(value: Any) -> str:
    return str(value.dtype).removeprefix("torch.")


def jsonable(value: Any) -> Any:
    """``value`` in JSON's types."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, complex):
        return [jsonable(value.real), jsonable(value.imag)]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    kind = _array_module(value)
    if kind == "numpy-scalar":
        return jsonable(value.item())
    if kind == "torch" and value.is_nested:
        return [jsonable(c) for c in value.unbind()]  # one entry per layer
    if kind is not None:
        if (value.size if kind == "numpy" else value.numel()) <= LIST_LIMIT:
            data = value.tolist() if kind == "numpy" else value.detach().cpu().tolist()
            return jsonable(data)
        return {"dtype": _dtype(value), "shape": list(value.shape), "mean": _mean(value)}
    return str(value)


def _mean(value: Any) -> float | None:
    from .comparisons import average_nested_data

    try:
        mean = average_nested_data(value)
    except TypeError:
        return None
    return mean if math.isfinite(mean) else None


def brief(value: Any) -> str:
    """A short text for a metric value: numbers as they are, anything larger as its mean
    and what it is."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return _num(value)
    kind = _array_module(value)
    if kind == "numpy-scalar":
        return brief(value.item())
    if kind == "torch" and value.is_nested:
        what = f"nested {_dtype(value)} tensor, {value.size(0)} layers"
    elif kind == "torch":
        if value.numel() == 1 and not value.is_complex():
            return _num(value.item())
        what = f"{_dtype(value)} tensor {list(value.shape)}"
    elif kind == "numpy":
        if value.size == 1 and value.dtype.kind in "biuf":
            return _num(value.item())
        what = f"{value.dtype} array {list(value.shape)}"
    elif isinstance(value, (list, tuple)):
        what = f"{type(value).__name__} of {len(value)}"
    elif isinstance(value, Mapping):
        what = f"dict of {len(value)}"
    else:
        return str(value)[:60]
    mean = _mean(value)
    return f"{_num(mean)} (mean of {what})" if mean is not None else what


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Aligned columns, two spaces apart; columns in ``right`` aligned right."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of plain values on one line (``layers: [16, 11, 7]``)."""

    def represent_list(self, data: Any) -> yaml.SequenceNode:
        flow = all(not isinstance(x, (list, dict)) for x in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def _yaml(value: Any, indent: str = "  ") -> str:
    if not value:
        return f"{indent}(none)"
    text = yaml.dump(jsonable(value), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=88)
    return "\n".join(indent + line for line in text.rstrip().splitlines())


def _inline(value: Mapping[str, Any], limit: int = 60) -> str:
    """``a.b=1, c=x``: a flat, truncated view of a small mapping."""
    flat: list[str] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, Mapping) and v:
            for k, x in v.items():
                walk(f"{prefix}{k}.", x)
        else:
            flat.append(f"{prefix[:-1]}={brief(v) if not isinstance(v, str) else v}")

    for k, v in value.items():
        walk(f"{k}.", v)
    text = ", ".join(flat)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- ls


def listing_json(
    experiments: Sequence[ExperimentListing], sweeps: Sequence[SweepListing], where: str
) -> dict[str, Any]:
    return {
        "store": where,
        "experiments": [jsonable(vars(e)) for e in experiments],
        "sweeps": [jsonable(vars(s)) for s in sweeps],
    }


def listing_text(
    experiments: Sequence[ExperimentListing], sweeps: Sequence[SweepListing], where: str
) -> str:
    out = [f"store {where}", ""]
    if experiments:
        out.append(f"experiments ({len(experiments)}, newest first)")
        rows = [
            [e.id, _time(e.start_time), _duration(e.start_time, e.end_time),
             ", ".join(f"{p} {'done' if done else 'running'}" for p, done in e.phases.items())
             or "-", e.sweep or ""]
            for e in experiments
        ]
        out.append(table(["id", "started (UTC)", "took", "phases", "sweep"], rows, right=[2]))
    else:
        out.append("no experiments")
    out.append("")
    if sweeps:
        out.append(f"sweeps ({len(sweeps)}, newest first)")
        rows = [
            [s.id, s.name, _time(s.start_time), str(s.trials), s.best_run_id or "-",
             _num(s.best_total), "completed" if s.completed else "running"]
            for s in sweeps
        ]
        out.append(table(["id", "name", "started (UTC)", "trials", "best run", "best total",
                          "status"], rows, right=[3, 5]))
    else:
        out.append("no sweeps")
    return "\n".join(out)


# --------------------------------------------------------------------------- show


def experiment_json(summary: ExperimentSummary, where: str) -> dict[str, Any]:
    return {
        "id": summary.id,
        "store": where,
        "phases": {
            name: {
                "steps": p.steps,
                "start_time": jsonable(p.start_time),
                "end_time": jsonable(p.end_time),
                "completed": p.completed,
                "resolution": p.resolution,
                "metrics": dict(p.metrics),
                "stored_metrics": list(p.stored_metrics),
                "best_steps": jsonable(p.best_steps),
            }
            for name, p in summary.phases.items()
        },
        "configs": jsonable(summary.configs),
        "hpo": None if summary.sweep is None else {
            "sweep": summary.sweep,
            "objective": jsonable(summary.objective),
            "configs": jsonable(summary.trial_configs),
        },
    }


def experiment_text(summary: ExperimentSummary, where: str) -> str:
    out = [f"experiment {summary.id}", f"store      {where}", ""]
    phases = list(summary.phases.values())
    if phases:
        rows = [[p.name, str(p.steps), _time(p.start_time), _time(p.end_time),
                 _duration(p.start_time, p.end_time), "completed" if p.completed else "running"]
                for p in phases]
        out.append(table(["phase", "steps", "started (UTC)", "ended (UTC)", "took", "status"],
                         rows, right=[1, 4]))
    else:
        out.append("no phases stored (known only as an HPO trial)")
    stored = [p for p in phases if p.stored_metrics]
    if stored:
        out += ["", "metrics in its steps"]
        groups: dict[tuple[str, ...], list[str]] = {}
        for p in stored:  # phases whose steps hold the same metrics share a line
            groups.setdefault(tuple(p.stored_metrics), []).append(p.name)
        width = max(len(", ".join(names)) for names in groups.values())
        out += [f"  {', '.join(names):<{width}}  {', '.join(metrics)}"
                for metrics, names in groups.items()]
    best = [[p.name, metric, str(b["best_index"]), brief(b["best_value"]),
             str(b["best_function"])]
            for p in phases for metric, b in p.best_steps.items()]
    if best:
        out += ["", "best steps"]
        out.append(table(["phase", "metric", "step", "value", "comparison"], best, right=[2]))
    out += ["", "configs", _yaml(summary.configs)]
    if summary.sweep is not None:
        out += ["", f"HPO trial of sweep {summary.sweep}",
                f"  objective  {_inline(summary.objective or {}, 200) or '-'}",
                f"  configs    {_inline(summary.trial_configs or {}, 200) or '-'}"]
    return "\n".join(out)


# --------------------------------------------------------------------------- show-sweep


def sweep_json(summary: SweepSummary, where: str, top: int | None = None) -> dict[str, Any]:
    trials = summary.trials[:top] if top else summary.trials
    return {
        "id": summary.id,
        "name": summary.name,
        "store": where,
        "start_time": jsonable(summary.start_time),
        "end_time": jsonable(summary.end_time),
        "completed": summary.completed,
        "best_run_id": summary.best_run_id,
        "configs": jsonable(summary.configs),
        "trial_count": len(summary.trials),
        "trials": [jsonable(vars(t)) for t in trials],
    }


def sweep_text(summary: SweepSummary, where: str, top: int | None = None) -> str:
    status = "completed" if summary.completed else "running"
    best = f", best {summary.best_run_id}" if summary.best_run_id else ""
    out = [
        f"sweep {summary.id} \"{summary.name}\" ({status})",
        f"store    {where}",
        f"started  {_time(summary.start_time)} UTC, ended {_time(summary.end_time)}, "
        f"took {_duration(summary.start_time, summary.end_time)}; "
        f"{len(summary.trials)} trial(s){best}",
        "configs",
        _yaml(summary.configs),
        "",
    ]
    trials = summary.trials[:top] if top else summary.trials
    if not trials:
        out.append("no trials stored")
        return "\n".join(out)
    columns: list[str] = []
    for t in summary.trials:
        for k, v in t.objective.items():
            if k != "total" and k not in columns and _is_scalar(v):
                columns.append(k)
    columns = columns[:_OBJECTIVE_COLUMNS]
    rows = [
        [str(t.rank) if t.rank is not None else "-", t.id, _num(t.total),
         *(brief(t.objective[c]) if c in t.objective else "-" for c in columns),
         _inline(t.configs)]
        for t in trials
    ]
    headers = ["rank", "experiment", "total", *columns, "configs"]
    right = [0, *range(2, 3 + len(columns))]
    out.append(f"trials by objective (best first{f', top {top}' if top else ''})")
    out.append(table(headers, rows, right=right))
    return "\n".join(out)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, (int, float, str)) or value is None:
        return True
    kind = _array_module(value)
    if kind == "numpy-scalar":
        return True
    return kind is not None and (value.size if kind == "numpy" else value.numel()) == 1

"""What asyncstore data becomes in W&B: names, one history row per step, JSON values.

**Names.** A run started for an experiment has the experiment's id as its id when W&B
accepts it as is (letters, digits, ``-``, ``_``, ``.``; at most 64 characters), else a
readable form of it plus a hash; its display name is the experiment id. The model
artifact of ``save_model(experiment, ...)`` is named like the model document,
``f"{experiment}-model"``, made safe the same way (at most 128 characters).

**Rows** (computed in the W&B worker process, never on the training thread), by
``wandb.data_resolution``. For each saved metric:

* ``metric``: ``average_nested_data(value)``, at every resolution;
* resolution 1 and 2: ``metric/layer_i`` for each layer ``i``, when the value has layers:
  a nested tensor's component ``i``, or item ``i`` of a list or tuple (a ragged list per
  layer, or a list of per-layer tensors or arrays). Its value is the layer's
  ``average_nested_data``. A plain tensor, array, dict or scalar has no layers: only
  its average is logged;
* resolution 2: ``metric/layer_i/mac_j`` for each MAC ``j`` of a layer that has MACs:
  a list's item ``j`` (averaged); a 1-D tensor or array's element ``j``; a tensor or
  array of 2 or more dimensions is ``[batch, MACs, ...]`` (as sparseypy's nested
  components are), so MAC ``j`` is the mean over the batch and any trailing dimension
  (pixels) of index ``j`` of dimension 1.

Every mean is taken in float64 with NaN counted as 0 and an empty value as 0, as
``average_nested_data`` does. A metric whose value cannot be averaged (a string, a
complex tensor) is left out of the row.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
import sys
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
import torch

from . import _codec
from ._exceptions import CodecError
from .comparisons import average_nested_data

_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")


def _safe_name(text: str, limit: int) -> str:
    if _SAFE.fullmatch(text) and len(text) <= limit:
        return text
    digest = hashlib.blake2b(text.encode(), digest_size=5).hexdigest()
    return f"{_UNSAFE_CHAR.sub('_', text)[: limit - 11]}-{digest}"


def run_id(experiment: str) -> str:
    """The id of the run asyncstore starts for ``experiment``."""
    return _safe_name(experiment, 64)


def artifact_name(experiment: str) -> str:
    """The name of the model artifact of ``experiment``."""
    return _safe_name(f"{experiment}-model", 128)


def active_run() -> str | None:
    """The id that attaches to the caller's active ``wandb.run``, or None.

    Reads module attributes only: it never imports wandb nor calls it, so it is safe on
    the caller's thread."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    attach = getattr(run, "_attach_id", None) if run is not None else None
    return attach if isinstance(attach, str) and attach else None



# --------------------------------------------------------------------------- decoding

# Torch dtypes numpy holds exactly: the worker reads them as numpy arrays over the bytes.
_NUMPY = {name: np.dtype(name).newbyteorder("<") for name in (
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128")}


def _array(name: Any, shape: tuple[int, ...], raw: Any) -> Any:
    dtype = _NUMPY.get(name) if isinstance(name, str) else None
    if dtype is None:  # bfloat16, float8: as the codec makes them
        return _codec._torch_tensor(name, shape, raw)
    if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * dtype.itemsize:
        raise CodecError("tensor data does not match its dtype and shape")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _itemsize(name: Any) -> int:
    dtype = _NUMPY.get(name) if isinstance(name, str) else None
    if dtype is not None:
        return dtype.itemsize
    return int(_codec._torch_tensor(name, (0,), b"").element_size())


def _light_hook(code: int, data: bytes) -> Any:
    if code == _codec.EXT_TENSOR:
        name, shape, raw = _codec._payload(data, 3)
        return _array(name, _codec._shape(shape), raw)
    if code == _codec.EXT_NESTED:
        _, name, shapes, raw = _codec._payload(data, 4)
        if not isinstance(shapes, list) or not isinstance(raw, bytes):
            raise CodecError("malformed nested tensor")
        parts, offset, size = [], 0, _itemsize(name)
        for s in shapes:
            shape = _codec._shape(s)
            end = offset + math.prod(shape) * size
            parts.append(_array(name, shape, raw[offset:end]))
            offset = end
        return parts
    if code == _codec.EXT_TUPLE:
        return tuple(msgpack.unpackb(data, **_UNPACK))
    return _codec._ext_hook(code, data)


_UNPACK: dict[str, Any] = {"ext_hook": _light_hook, "strict_map_key": False, "timestamp": 3,
                           "raw": False}


def step_records(blob: bytes) -> list[dict[str, Any]]:
    """The step records in ``blob`` (the codec's concatenated records), decoded for
    reducing: tensors as numpy arrays over the bytes (no copy), a nested tensor as the
    list of its components. Building torch tensors (nested ones above all) would cost
    far more than the reduction itself, and ``average_nested_data`` gives the same
    value either way (a nested tensor is the list of its components)."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(blob), 1), **_UNPACK)
    unpacker.feed(blob)
    try:
        return list(unpacker)
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for bad input
        raise CodecError(f"undecodable step records: {exc}") from None


# --------------------------------------------------------------------------- rows


def step_row(metrics: Mapping[str, Any], resolution: int) -> dict[str, float]:
    """The history row of one step's saved metrics."""
    row: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            _metric_keys(row, str(name), value, resolution)
        except (TypeError, ValueError, RuntimeError):
            continue  # not numeric: nothing to chart
    return row


def _metric_keys(row: dict[str, float], name: str, value: Any, resolution: int) -> None:
    layers = _layers(value) if resolution >= 1 else None
    if layers is None:
        row[name] = average_nested_data(value)
        return
    keys: dict[str, float] = {}
    layer_means = []
    for i, layer in enumerate(layers):
        key = f"{name}/layer_{i}"
        macs = _macs(layer)
        # A layer's mean is the mean of its MACs' (each MAC has as many elements), which
        # is what average_nested_data computes, without going over the data twice.
        mean = average_nested_data(layer) if macs is None else _mean(macs)
        keys[key] = mean
        layer_means.append(mean)
        if resolution >= 2:
            for j, mac in enumerate(macs or ()):
                keys[f"{key}/mac_{j}"] = mac
    row[name] = _mean(layer_means)  # average_nested_data of a list or nested tensor
    row.update(keys)  # all of a metric, or none of it


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _layers(value: Any) -> list[Any] | tuple[Any, ...] | None:
    if isinstance(value, torch.Tensor):
        return list(value.unbind()) if value.is_nested else None
    if isinstance(value, (list, tuple)):
        return value
    return None


def _macs(layer: Any) -> list[float] | None:
    if isinstance(layer, (list, tuple)):
        return [average_nested_data(x) for x in layer]
    if isinstance(layer, torch.Tensor):
        if layer.is_nested or layer.ndim == 0:
            return None
        return _tensor_macs(layer)
    if isinstance(layer, np.ndarray):
        if layer.ndim == 0:
            return None
        if layer.dtype.kind == "O":
            return [average_nested_data(x) for x in layer] if layer.ndim == 1 else None
        return _array_macs(layer)
    return None


def _tensor_macs(t: torch.Tensor) -> list[float]:
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_complex():
        raise TypeError("cannot average a complex tensor")
    try:
        return _array_macs(t.cpu().numpy())
    except TypeError:  # bfloat16 and other dtypes numpy lacks
        return _array_macs(t.cpu().to(torch.float64).numpy())


def _array_macs(a: np.ndarray[Any, Any]) -> list[float]:
    kind = a.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"cannot average an array of dtype {a.dtype}")
    flat: np.ndarray[Any, Any]
    if a.ndim == 1:
        flat = a.astype(np.float64)
    else:
        n = a.shape[1]
        per_mac = a.size // n if n else 0
        if per_mac == 0:
            return [0.0] * n
        by_mac = np.moveaxis(a, 1, 0).reshape(n, per_mac)
        total = (np.nansum(by_mac, axis=1, dtype=np.float64) if kind == "f"
                 else np.sum(by_mac, axis=1, dtype=np.float64))
        flat = np.asarray(total) / per_mac
    if kind == "f":
        flat = np.where(np.isnan(flat), 0.0, flat)
    return [float(x) for x in flat.tolist()]


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-friendly data for a run's config or summary: scalars as they
    are, a one-element tensor or array as its number, a bigger one as its average,
    containers item by item (keys as strings), anything else as its ``repr``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value if not (isinstance(value, float) and math.isnan(value)) else None
    if depth > 20:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        try:
            if not (isinstance(value, torch.Tensor) and value.is_nested) and (
                value.size == 1 if isinstance(value, (np.ndarray, np.generic))
                else value.numel() == 1
            ):
                return jsonable(value.item(), depth + 1)
            return average_nested_data(value)
        except (TypeError, ValueError, RuntimeError):
            return repr(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return repr(value)

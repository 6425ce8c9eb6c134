"""The value codec: metric values to bytes and back, without pickle.

Format (version 1), documented in ``docs/format.md``: MessagePack, with these extension
types for what MessagePack cannot say by itself. Tensor data is little-endian; numpy
data is in the byte order its ``dtype.str`` names.

====  ==============  =====================================================================
code  Python value    payload (a MessagePack array)
====  ==============  =====================================================================
 -1   datetime        MessagePack's own timestamp (always timezone-aware UTC)
  1   numpy.ndarray   [dtype.str, shape, raw bytes in C order]
  2   numpy scalar    [dtype.str, raw bytes]
  3   torch.Tensor    [dtype name, shape, raw bytes in C order]
  4   nested tensor   [layout ("strided" | "jagged"), dtype name, [shape, ...], raw bytes]
  5   tuple           [items...]
====  ==============  =====================================================================

Python ``None``, ``bool``, ``int`` (64-bit), ``float`` (double: NaN and ±inf exact),
``str``, ``bytes``, ``list`` and ``dict`` (``str`` or ``int`` keys) are MessagePack's own.
Types are kept exactly: ``numpy.float64`` is not turned into ``float``, a tuple is not
turned into a list. Tensors come back on the CPU, detached, with their dtype and shape.

The encoder runs on the training thread (it *is* the snapshot: once encoded, later
in-place changes cannot alter what is stored). Tensors on an accelerator cannot be read
without a device synchronisation, so :func:`encode` refuses them with
:class:`NeedsDevice` and the caller snapshots them on the device instead
(:func:`snapshot`), leaving the encoding to the writer.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgpack
import numpy as np
import numpy.ma  # numpy imports it lazily; here, before any writer thread can
import torch

from ._exceptions import CodecError

VERSION = 1

EXT_NDARRAY = 1
EXT_NPSCALAR = 2
EXT_TENSOR = 3
EXT_NESTED = 4
EXT_TUPLE = 5

_NUMPY_KINDS = frozenset("biufc")

_TORCH_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
        torch.uint16, torch.uint32, torch.uint64,
        torch.float16, torch.bfloat16, torch.float32, torch.float64,
        torch.complex64, torch.complex128,
        torch.float8_e4m3fn, torch.float8_e5m2,
    )
}
_TORCH_NAME = {d: n for n, d in _TORCH_DTYPES.items()}
# dtypes that numpy can hold exactly: bytes come from .numpy(), the fast path.
_NUMPY_FOR_TORCH = frozenset(
    d for d in _TORCH_DTYPES.values()
    if d not in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
)


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    # msgpack.ExtType() validates its arguments in Python; ours are always valid.
    return tuple.__new__(msgpack.ExtType, (code, data))


_small = msgpack.Packer()  # for extension payloads: flat lists, no hooks, no re-entry


def _pack_small(payload: list[Any]) -> bytes:
    if threading.current_thread() is threading.main_thread():
        return _small.pack(payload)  # type: ignore[no-any-return]
    return msgpack.packb(payload)  # type: ignore[no-any-return]


class NeedsDevice(Exception):
    """A tensor lives on an accelerator; encoding it now would synchronise the device."""


# --------------------------------------------------------------------------- encoding


def _tensor_bytes(t: torch.Tensor) -> bytes:
    if t.dtype in _NUMPY_FOR_TORCH:
        return t.numpy().tobytes()
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _check_kind(t: torch.Tensor) -> None:
    """Checks that read only metadata, never the tensor's memory."""
    if t.dtype not in _TORCH_NAME:
        raise TypeError(f"tensor dtype {t.dtype} is not supported")
    if t.layout is not torch.strided and not t.is_nested:
        raise TypeError(f"{t.layout} tensors are not supported; convert with .to_dense()")
    if t.is_quantized:
        raise TypeError("quantized tensors are not supported; call .dequantize()")
    if t.is_meta:
        raise TypeError("meta tensors hold no data")


def _check_tensor(t: torch.Tensor, allow_device: bool) -> torch.Tensor:
    _check_kind(t)
    if not t.is_cpu:
        if not allow_device:
            raise NeedsDevice(t.device)
        t = t.cpu()
    if t.requires_grad:
        t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():  # also set on real views, e.g. z.conj().imag
        t = t.resolve_neg()
    return t


def _nested_payload(t: torch.Tensor) -> list[Any]:
    name = _TORCH_NAME[t.dtype]
    if t.layout is torch.jagged:
        parts = t.unbind()
        return ["jagged", name, [list(p.shape) for p in parts],
                b"".join(_tensor_bytes(p) for p in parts)]
    if t.size(0) == 0:  # (its size tensor is then a 0-d placeholder)
        return ["strided", name, [], b""]
    shapes = t._nested_tensor_size().tolist()
    if t.is_contiguous():
        # One buffer holds every component, in order: no per-component work.
        return ["strided", name, shapes, _tensor_bytes(t.values())]
    return ["strided", name, shapes, b"".join(_tensor_bytes(p) for p in t.unbind())]


def _make_default(allow_device: bool) -> Any:
    def default(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            t = _check_tensor(obj, allow_device)
            if t.is_nested:
                return _ext(EXT_NESTED, _pack_small(_nested_payload(t)))
            return _ext(
                EXT_TENSOR, _pack_small([_TORCH_NAME[t.dtype], list(t.shape), _tensor_bytes(t)])
            )
        if isinstance(obj, np.ndarray) and not isinstance(obj, np.ma.MaskedArray):
            if obj.dtype.kind not in _NUMPY_KINDS or obj.dtype.fields is not None:
                raise TypeError(f"numpy arrays of dtype {obj.dtype} are not supported")
            return _ext(
                EXT_NDARRAY, _pack_small([obj.dtype.str, list(obj.shape), obj.tobytes()])
            )
        if isinstance(obj, np.generic):
            if obj.dtype.kind not in _NUMPY_KINDS:
                raise TypeError(f"numpy scalars of dtype {obj.dtype} are not supported")
            return _ext(EXT_NPSCALAR, _pack_small([obj.dtype.str, obj.tobytes()]))
        if type(obj) is tuple:
            return _ext(EXT_TUPLE, _nested_pack(list(obj), allow_device))
        if type(obj) is int:  # msgpack hands over what does not fit in 64 bits
            raise ValueError("integers must fit in 64 bits")
        if isinstance(obj, np.ma.MaskedArray):
            raise TypeError("masked arrays are not supported; use .filled() or the mask itself")
        if isinstance(obj, datetime):
            if obj.tzinfo is None:
                raise ValueError("naive datetimes are ambiguous; give a timezone")
            return msgpack.Timestamp.from_datetime(obj)
        raise TypeError(
            f"cannot store a value of type {type(obj).__name__}: metric values are None, "
            "bool, int, float, str, lists, tuples, dicts, numpy arrays or torch tensors"
        )

    return default


_DEFAULT_HOT = _make_default(allow_device=False)
_DEFAULT_SYNC = _make_default(allow_device=True)


# Each tuple level packs (and unpacks) in a nested msgpack call with a C stack frame of
# its own, beyond the reach of msgpack's nesting limit: cap it on both sides.
MAX_TUPLE_DEPTH = 32
_depth = threading.local()


def _nested_pack(items: list[Any], allow_device: bool) -> bytes:
    level = getattr(_depth, "enc", 0)
    if level >= MAX_TUPLE_DEPTH:
        raise ValueError(
            f"tuples are nested more than {MAX_TUPLE_DEPTH} deep (or refer to themselves)"
        )
    _depth.enc = level + 1
    try:
        return _pack(items, allow_device)
    finally:
        _depth.enc = level


def _pack(obj: Any, allow_device: bool) -> bytes:
    try:
        return msgpack.packb(  # type: ignore[no-any-return]
            obj,
            default=_DEFAULT_SYNC if allow_device else _DEFAULT_HOT,
            strict_types=True,
            datetime=False,
        )
    except OverflowError:
        raise ValueError("integers must fit in 64 bits") from None
    except RecursionError:
        raise ValueError("value is nested too deeply (or refers to itself)") from None
    except ValueError as exc:
        if "recursion" in str(exc) or "deep" in str(exc):
            raise ValueError("value is nested too deeply (or refers to itself)") from None
        raise


def encode(obj: Any) -> bytes:
    """Encode ``obj`` without touching any accelerator.

    :raises TypeError: ``obj`` holds a value the codec cannot store.
    :raises ValueError: an integer over 64 bits, a naive datetime, a cycle.
    :raises NeedsDevice: ``obj`` holds a tensor on an accelerator; use :func:`snapshot`.
    """
    return _pack(obj, allow_device=False)


def encode_snapshot(obj: Any) -> bytes:
    """Encode a value that may hold accelerator tensors (synchronises with the device)."""
    return _pack(obj, allow_device=True)


def snapshot(obj: Any) -> Any:
    """Copy ``obj`` so that later in-place changes cannot alter it, without reading any
    accelerator memory: device tensors are cloned on their device (an asynchronous
    kernel), everything else is copied or checked as :func:`encode` would."""
    if isinstance(obj, torch.Tensor):
        _check_kind(obj)
        return obj.detach().clone()
    if isinstance(obj, np.ndarray) and not isinstance(obj, np.ma.MaskedArray):
        _DEFAULT_HOT(obj)  # the dtype checks
        return obj.copy()
    if type(obj) is list:
        return [snapshot(v) for v in obj]
    if type(obj) is tuple:
        return tuple(snapshot(v) for v in obj)
    if type(obj) is dict:
        return {k: snapshot(v) for k, v in obj.items()}
    if obj is None or type(obj) in _SCALARS:
        if type(obj) is int and not -(2**63) <= obj < 2**64:
            raise ValueError("integers must fit in 64 bits")
        return obj
    _DEFAULT_HOT(obj)  # the checks encode() makes (numpy scalars, datetimes), or its error
    return obj


_SCALARS = frozenset((bool, int, float, str, bytes))


# --------------------------------------------------------------------------- decoding


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(n) is int and n >= 0 for n in value):
        raise CodecError(f"bad shape {value!r}")
    return tuple(value)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _np_dtype(code: Any) -> np.dtype[Any]:
    if not isinstance(code, str):
        raise CodecError(f"bad numpy dtype {code!r}")
    try:
        dt = np.dtype(code)
    except TypeError:
        raise CodecError(f"unknown numpy dtype {code!r}") from None
    if dt.kind not in _NUMPY_KINDS or dt.fields is not None or dt.hasobject:
        raise CodecError(f"numpy dtype {code!r} is not allowed")
    return dt


def _torch_tensor(dtype_name: Any, shape: tuple[int, ...], raw: Any) -> torch.Tensor:
    dtype = _TORCH_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise CodecError(f"unknown tensor dtype {dtype_name!r}")
    if not isinstance(raw, bytes):
        raise CodecError("tensor data is not bytes")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) != _numel(shape) * itemsize:
        raise CodecError(f"tensor data has {len(raw)} bytes, expected {_numel(shape) * itemsize}")
    if not raw:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return flat.view(dtype).reshape(shape)


def _payload(data: bytes, n: int) -> list[Any]:
    value = msgpack.unpackb(data, strict_map_key=False)
    if not isinstance(value, list) or len(value) != n:
        raise CodecError("malformed extension payload")
    return value


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        dt_code, shape_v, raw = _payload(data, 3)
        dt, shape = _np_dtype(dt_code), _shape(shape_v)
        if not isinstance(raw, bytes) or len(raw) != _numel(shape) * dt.itemsize:
            raise CodecError("array data does not match its dtype and shape")
        return np.frombuffer(raw, dtype=dt).reshape(shape).copy()
    if code == EXT_NPSCALAR:
        dt_code, raw = _payload(data, 2)
        dt = _np_dtype(dt_code)
        if not isinstance(raw, bytes) or len(raw) != dt.itemsize:
            raise CodecError("scalar data does not match its dtype")
        return np.frombuffer(raw, dtype=dt)[0]
    if code == EXT_TENSOR:
        name, shape_v, raw = _payload(data, 3)
        return _torch_tensor(name, _shape(shape_v), raw)
    if code == EXT_NESTED:
        layout, name, shapes, raw = _payload(data, 4)
        if layout not in ("strided", "jagged") or not isinstance(shapes, list):
            raise CodecError("malformed nested tensor")
        if not isinstance(raw, bytes):
            raise CodecError("nested tensor data is not bytes")
        parts = []
        offset = 0
        probe = _torch_tensor(name, (0,), b"")
        for s in shapes:
            shape = _shape(s)
            size = _numel(shape) * probe.element_size()
            parts.append(_torch_tensor(name, shape, raw[offset : offset + size]))
            offset += size
        if offset != len(raw):
            raise CodecError("nested tensor data does not match its shapes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "nested tensors are a prototype"
            try:
                return torch.nested.nested_tensor(
                    parts, dtype=probe.dtype,
                    layout=torch.jagged if layout == "jagged" else torch.strided,
                )
            except (RuntimeError, ValueError) as exc:
                raise CodecError(f"malformed nested tensor: {exc}") from None
    if code == EXT_TUPLE:
        level = getattr(_depth, "dec", 0)
        if level >= MAX_TUPLE_DEPTH:
            raise CodecError(f"tuples nested more than {MAX_TUPLE_DEPTH} deep")
        _depth.dec = level + 1
        try:
            value = decode(data)
        finally:
            _depth.dec = level
        if not isinstance(value, list):
            raise CodecError("malformed tuple")
        return tuple(value)
    raise CodecError(f"unknown extension type {code}")


def _unpacker_kwargs() -> dict[str, Any]:
    return {"ext_hook": _ext_hook, "strict_map_key": False, "timestamp": 3, "raw": False}


def decode(data: bytes) -> Any:
    """Decode bytes made by :func:`encode`. Never executes anything stored.

    :raises CodecError: the bytes are malformed, truncated or not this format.
    """
    try:
        return msgpack.unpackb(data, **_unpacker_kwargs())
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for garbage input
        raise CodecError(f"undecodable value: {type(exc).__name__}: {exc}") from None


def iter_decode(data: bytes) -> Iterator[Any]:
    """Decode a concatenation of encoded values, one at a time."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1), **_unpacker_kwargs())
    unpacker.feed(data)
    end = 0
    try:
        for value in unpacker:
            end = unpacker.tell()
            yield value
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in decode()
        raise CodecError(f"undecodable value: {type(exc).__name__}: {exc}") from None
    if end != len(data):
        raise CodecError("truncated data")

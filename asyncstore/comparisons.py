"""Comparison functions that rank metric values, and the registry that names them.

A comparison is a callable ``(a, b) -> bool`` answering "is ``a`` better than ``b``?".
Results store comparisons by *name*; when read back, a name turns into the same callable
only if it is built in or was :func:`register`-ed in this process. Nothing is ever
imported by a name read from storage: an unknown name comes back as the plain ``str``,
with a warning.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import numpy as np
import torch

__all__ = [
    "Comparison",
    "average_nested_data",
    "get",
    "max_by_layerwise_mean",
    "min_by_layerwise_mean",
    "name_of",
    "register",
    "resolve",
]

Comparison = Callable[[Any, Any], bool]
_F = TypeVar("_F", bound=Callable[..., Any])

# Python types whose average is the value itself; checked with ``type(x) in`` because it
# is much faster than isinstance on the hot path of long flat lists.
_PLAIN_NUMBERS = (int, float, bool)


def _tensor_mean(t: torch.Tensor) -> float:
    if t.is_nested:
        # One component per layer: layers weigh equally, like a ragged list.
        return _mean_of([_tensor_mean(c) for c in t.unbind()])
    if t.layout != torch.strided:
        t = t.to_dense()
    n = t.numel()
    if n == 0:
        return 0.0
    t = t.detach()
    if t.is_complex():
        raise TypeError(f"cannot average a complex tensor (dtype {t.dtype})")
    # Accumulate in float64 without copying the tensor; nansum counts NaN as 0.
    if t.is_floating_point():
        total = torch.nansum(t, dtype=torch.float64)
    else:
        total = torch.sum(t, dtype=torch.float64)
    return float(total.item()) / n


def _array_mean(a: np.ndarray[Any, Any]) -> float:
    if a.size == 0:
        return 0.0
    kind = a.dtype.kind
    if kind == "f":
        return float(np.nansum(a, dtype=np.float64)) / a.size
    if kind in "biu":
        return float(np.sum(a, dtype=np.float64)) / a.size
    if kind == "O":
        # An object array (e.g. built from a ragged list): each element counts once.
        return _mean_of([average_nested_data(x) for x in a.flat])
    raise TypeError(f"cannot average a numpy array of dtype {a.dtype}")


def _mean_of(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def average_nested_data(data: Any) -> float:
    """Reduce an arbitrarily nested metric value to one float.

    A list or tuple is the mean of its items' averages (so ragged layers weigh
    equally); a dict the mean of its values' averages; a numpy array or torch tensor the
    mean of its elements (a nested tensor is the list of its components); a scalar is
    itself. NaN counts as 0, ``None`` and anything empty as 0.

    :raises TypeError: for a value that is not numeric (e.g. a ``str``, complex data).
    """
    tp = type(data)
    if tp is float:
        return 0.0 if data != data else data
    if tp is int or tp is bool:
        return float(data)
    if tp is list or tp is tuple or isinstance(data, (list, tuple)):
        if not data:
            return 0.0
        if all(type(x) in _PLAIN_NUMBERS for x in data):
            # Flat list of Python numbers: skip the per-item recursion.
            return math.fsum(0.0 if x != x else x for x in data) / len(data)
        return _mean_of([average_nested_data(x) for x in data])
    if isinstance(data, torch.Tensor):
        return _tensor_mean(data)
    if isinstance(data, np.ndarray):
        return _array_mean(data)
    if data is None:
        return 0.0
    if isinstance(data, Mapping):
        return _mean_of([average_nested_data(v) for v in data.values()])
    if isinstance(data, (np.bool_, bool)):
        return float(data)
    if isinstance(data, numbers.Real):
        value = float(data)
        return 0.0 if math.isnan(value) else value
    raise TypeError(f"cannot average a value of type {tp.__qualname__}")


def max_by_layerwise_mean(x: Any, y: Any) -> bool:
    """Whether ``x`` is better than ``y`` when higher layerwise means are better."""
    return average_nested_data(x) > average_nested_data(y)


def min_by_layerwise_mean(x: Any, y: Any) -> bool:
    """Whether ``x`` is better than ``y`` when lower layerwise means are better."""
    return average_nested_data(x) < average_nested_data(y)


_lock = threading.Lock()
_registry: dict[str, Comparison] = {
    "max_by_layerwise_mean": max_by_layerwise_mean,
    "min_by_layerwise_mean": min_by_layerwise_mean,
}


def _same(a: object, b: object) -> bool:
    # ``==`` so that bound methods (a fresh object on every attribute access) match.
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an exotic __eq__ must not break a lookup
        return False


@overload
def register(fn: _F, name: str | None = None) -> _F: ...
@overload
def register(fn: None = None, name: str | None = None) -> Callable[[_F], _F]: ...
@overload
def register(fn: str, name: None = None) -> Callable[[_F], _F]: ...


def register(fn: Any = None, name: str | None = None) -> Any:
    """Register a comparison under ``name`` (default: ``fn.__name__``); returns ``fn``.

    Usable as ``@register``, ``@register(name="x")`` or ``@register("x")``. Registering
    the same function under the same name again does nothing.

    :raises ValueError: if the name is already taken by a different function.
    :raises TypeError: if ``fn`` is not callable or no name can be found.
    """
    if fn is None or isinstance(fn, str):
        given = fn if isinstance(fn, str) else name

        def decorator(f: _F) -> _F:
            return register(f, given)

        return decorator
    if not callable(fn):
        raise TypeError(f"a comparison must be callable, not {type(fn).__qualname__}")
    key = name if name is not None else getattr(fn, "__name__", None)
    if not isinstance(key, str) or not key:
        raise TypeError(f"cannot tell the name of {fn!r}; pass name=")
    with _lock:
        existing = _registry.get(key)
        if existing is not None and not _same(existing, fn):
            raise ValueError(f"comparison name {key!r} is already registered to {existing!r}")
        _registry[key] = fn
    return fn


def name_of(fn_or_name: Comparison | str) -> str:
    """The name under which a comparison is stored.

    A registered callable gives its registered name, an unregistered one its
    ``__qualname__`` (it will not resolve back to the callable), a ``str`` itself.
    """
    if isinstance(fn_or_name, str):
        return fn_or_name
    if not callable(fn_or_name):
        kind = type(fn_or_name).__qualname__
        raise TypeError(f"a comparison must be callable or a str, not {kind}")
    with _lock:
        items = list(_registry.items())
    for key, registered in items:
        if _same(registered, fn_or_name):
            return key
    qualname = getattr(fn_or_name, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    return type(fn_or_name).__qualname__


def resolve(name: str) -> Comparison | str:
    """The registered comparison for a stored name, or the name itself with a warning."""
    if not isinstance(name, str):
        raise TypeError(f"a comparison name must be a str, not {type(name).__qualname__}")
    with _lock:
        fn = _registry.get(name)
    if fn is not None:
        return fn
    warnings.warn(
        f"comparison {name!r} is not registered; it is returned as a plain str. "
        "Call asyncstore.comparisons.register() on it before reading results.",
        UserWarning,
        stacklevel=2,
    )
    return name


def get(comparison: Comparison | str) -> Comparison:
    """A comparison callable from a callable or the name of a registered one.

    :raises ValueError: for a name that is not registered.
    :raises TypeError: for anything that is neither callable nor a ``str``.
    """
    if isinstance(comparison, str):
        with _lock:
            fn = _registry.get(comparison)
            known = sorted(_registry)
        if fn is None:
            raise ValueError(
                f"unknown comparison {comparison!r}; registered comparisons are {known}. "
                "Register custom ones with asyncstore.comparisons.register()."
            )
        return fn
    if callable(comparison):
        return comparison
    raise TypeError(f"a comparison must be callable or a str, not {type(comparison).__qualname__}")

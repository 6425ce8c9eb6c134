"""The value codec (``asyncstore._codec``) and the batch layout's id / assembly rules.

Every round trip is checked exactly: same Python type, same dtype, same shape, equal
values (NaN positions included), never "close enough".
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncstore import _codec, _layout
from asyncstore._exceptions import CodecError

NESTED_PROTOTYPE = "ignore:.*[Nn]ested.*prototype.*:UserWarning"
_FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


# --------------------------------------------------------------------------- helpers


def roundtrip(value: Any) -> Any:
    return _codec.decode(_codec.encode(value))


def _float_same(expected: float, actual: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return expected == actual and math.copysign(1.0, expected) == math.copysign(1.0, actual)


def assert_tensor_same(expected: torch.Tensor, actual: torch.Tensor) -> None:
    assert type(actual) is torch.Tensor
    assert actual.device.type == "cpu"
    assert not actual.requires_grad
    assert actual.dtype == expected.dtype
    assert actual.is_nested == expected.is_nested
    if expected.is_nested:  # a nested tensor has no .shape; compare its components
        assert actual.layout == expected.layout
        assert actual.dim() == expected.dim()
        exp_parts, act_parts = expected.unbind(), actual.unbind()
        assert len(act_parts) == len(exp_parts)
        for e, a in zip(exp_parts, act_parts):
            assert_tensor_same(e.detach(), a)
        return
    assert actual.shape == expected.shape
    expected = expected.detach().resolve_conj().resolve_neg()
    if expected.dtype in _FLOAT8:
        assert torch.equal(actual.view(torch.uint8), expected.view(torch.uint8))
    elif expected.dtype.is_floating_point or expected.dtype.is_complex:
        nan = torch.isnan(expected)
        assert torch.equal(torch.isnan(actual), nan)
        assert torch.equal(actual[~nan], expected[~nan])
    else:
        assert torch.equal(actual, expected)


def assert_array_same(expected: np.ndarray, actual: np.ndarray) -> None:
    assert type(actual) is np.ndarray
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected, equal_nan=expected.dtype.kind in "fc")


def assert_same(expected: Any, actual: Any) -> None:
    """Deep, exact comparison: types, dtypes, shapes and values (NaN equals NaN)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), type(actual)
        assert_tensor_same(expected, actual)
        return
    assert type(actual) is type(expected), (type(expected), type(actual))
    if isinstance(expected, np.ndarray):
        assert_array_same(expected, actual)
    elif isinstance(expected, np.generic):
        assert actual.dtype == expected.dtype
        if expected.dtype.kind in "fc" and np.isnan(expected):
            assert np.isnan(actual)
        else:
            assert actual == expected
    elif type(expected) is float:
        assert _float_same(expected, actual), (expected, actual)
    elif type(expected) in (list, tuple):
        assert len(actual) == len(expected)
        for e, a in zip(expected, actual):
            assert_same(e, a)
    elif type(expected) is dict:
        assert [(type(k), k) for k in actual] == [(type(k), k) for k in expected]
        for k in expected:
            assert_same(expected[k], actual[k])
    else:
        assert actual == expected


def nested_tensor(parts: list[torch.Tensor], **kwargs: Any) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.nested_tensor(parts, **kwargs)


def ext(code: int, payload: Any) -> bytes:
    data = payload if isinstance(payload, bytes) else msgpack.packb(payload)
    return msgpack.packb(msgpack.ExtType(code, data))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.0, 1.5, -2.25,
     math.inf, -math.inf, 1e-310, "", "héllo ✓", b"", b"\x00\xff\xc1"],
    ids=repr,
)
def test_python_scalars_round_trip_with_their_exact_type(value: Any) -> None:
    assert_same(value, roundtrip(value))


def test_bools_stay_bools_and_are_not_turned_into_ints() -> None:
    assert roundtrip(True) is True
    assert roundtrip(False) is False
    assert type(roundtrip(1)) is int
    assert roundtrip([True, 1, False, 0]) == [True, 1, False, 0]
    assert [type(v) for v in roundtrip([True, 1, False, 0])] == [bool, int, bool, int]


def test_float_nan_round_trips_as_nan() -> None:
    out = roundtrip(math.nan)
    assert type(out) is float and math.isnan(out)


def test_negative_zero_keeps_its_sign() -> None:
    out = roundtrip(-0.0)
    assert type(out) is float and out == 0.0 and math.copysign(1.0, out) == -1.0
    assert math.copysign(1.0, roundtrip(0.0)) == 1.0


def test_infinities_round_trip() -> None:
    assert roundtrip(math.inf) == math.inf
    assert roundtrip(-math.inf) == -math.inf


def test_bytes_and_str_stay_distinct() -> None:
    out = roundtrip(["abc", b"abc"])
    assert type(out[0]) is str and type(out[1]) is bytes


# --------------------------------------------------------------------------- containers


def test_ragged_nested_lists_per_layer_round_trip() -> None:
    value = [[1.0, 2.0, math.nan], [3]]
    out = roundtrip(value)
    assert_same(value, out)
    assert type(out[1][0]) is int and math.isnan(out[0][2])


def test_ragged_nested_lists_per_mac_round_trip() -> None:
    value = [[[1, 2], [3]], [[4]]]
    assert_same(value, roundtrip(value))


def test_empty_containers_round_trip() -> None:
    value = [[], {}, (), [[]], ((),)]
    assert_same(value, roundtrip(value))


def test_tuples_stay_tuples_also_nested_in_lists() -> None:
    value = [(1, 2), [(3, (4.5, "x")), []], ()]
    out = roundtrip(value)
    assert_same(value, out)
    assert type(out[0]) is tuple and type(out[1][0][1]) is tuple and type(out[2]) is tuple
    assert type(roundtrip((1, [2, (3,)]))[1]) is list


def test_dicts_with_str_and_int_keys_round_trip() -> None:
    value = {"a": 1, 2: "b", -3: [1.5], "nested": {0: {"k": None}}, 2**64 - 1: True}
    assert_same(value, roundtrip(value))


def test_dict_of_lists_of_tensors_round_trips() -> None:
    value = {
        "layers": [torch.rand(3), torch.arange(6).reshape(2, 3)],
        "empty": [],
        7: [torch.tensor(True), torch.rand(0, 2)],
    }
    assert_same(value, roundtrip(value))


# --------------------------------------------------------------------------- numpy

NUMPY_DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "uint64", "float16",
                "float32", "float64", "complex64", "complex128"]
SHAPES = [(), (0,), (3,), (2, 3, 4), (0, 5)]


def _np_values(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = math.prod(shape)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        flat = rng.integers(0, 2, n).astype(bool)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        flat = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
    elif dt.kind == "f":
        flat = rng.standard_normal(n).astype(dt)
        if n >= 3:
            flat[:3] = [np.nan, np.inf, -0.0]
    else:
        flat = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt)
        if n >= 2:
            flat[1] = complex(np.nan, 1.0)
    return flat.reshape(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_arrays_round_trip_exactly(dtype: str, shape: tuple[int, ...]) -> None:
    arr = _np_values(dtype, shape)
    out = roundtrip(arr)
    assert_array_same(arr, out)
    assert out.tobytes() == arr.tobytes()  # bit-exact, NaN payloads and -0.0 included


def test_numpy_transposed_array_round_trips_to_equal_values() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4).transpose(2, 0, 1)
    assert not arr.flags.c_contiguous
    out = roundtrip(arr)
    assert_array_same(arr, out)


def test_numpy_strided_slice_round_trips_to_equal_values() -> None:
    arr = np.arange(100, dtype=np.int64).reshape(10, 10)[::3, 1::2]
    assert not arr.flags.c_contiguous
    assert_array_same(arr, roundtrip(arr))


def test_decoded_numpy_array_is_writable_and_owns_its_memory() -> None:
    out = roundtrip(np.arange(4, dtype=np.float64))
    out[0] = 42.0
    assert out[0] == 42.0


@pytest.mark.parametrize(
    "value",
    [np.float64(1.5), np.float64(np.nan), np.float32(-0.25), np.float16(3.0), np.int64(-7),
     np.int32(5), np.uint64(2**64 - 1), np.uint8(255), np.bool_(True), np.bool_(False),
     np.complex128(1 - 2j)],
    ids=repr,
)
def test_numpy_scalars_keep_their_numpy_type(value: Any) -> None:
    out = roundtrip(value)
    assert type(out) is type(value)
    assert_same(value, out)


def test_numpy_float64_scalar_is_not_turned_into_float() -> None:
    out = roundtrip(np.float64(1.5))
    assert type(out) is np.float64 and out == 1.5
    assert type(roundtrip(1.5)) is float


# --------------------------------------------------------------------------- torch

TORCH_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16,
                torch.float32, torch.float64, torch.complex64, torch.complex128,
                torch.float8_e4m3fn, torch.float8_e5m2]
TORCH_SHAPES = [(), (0,), (5,), (2, 3, 4), (0, 3)]


def _torch_values(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype is torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if not dtype.is_floating_point and not dtype.is_complex:
        lo = 0 if dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64) else -100
        return torch.randint(lo, 100, shape, generator=g, dtype=torch.int64).to(dtype)
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    t = (torch.randn(shape, generator=g) * 4).to(dtype)
    if t.numel() >= 3 and dtype not in _FLOAT8:
        t.view(-1)[:3] = torch.tensor([math.nan, math.inf, -math.inf]).to(dtype)
    return t


@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_tensors_round_trip_exactly(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = _torch_values(dtype, shape)
    out = roundtrip(t)
    assert_tensor_same(t, out)


def test_float8_tensor_round_trips_bit_exactly() -> None:
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    t = bits.view(torch.float8_e4m3fn)
    out = roundtrip(t)
    assert out.dtype == torch.float8_e4m3fn and out.shape == (256,)
    assert torch.equal(out.view(torch.uint8), bits)


def test_bfloat16_tensor_round_trips_bit_exactly() -> None:
    bits = torch.arange(-(2**15), 2**15, 97, dtype=torch.int32).to(torch.int16)
    t = bits.view(torch.bfloat16)
    out = roundtrip(t)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.view(torch.int16), bits)


def test_transposed_tensor_round_trips_to_equal_values() -> None:
    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).transpose(0, 2)
    assert not t.is_contiguous()
    out = roundtrip(t)
    assert_tensor_same(t, out)


def test_non_contiguous_bfloat16_tensor_round_trips() -> None:
    t = torch.randn(4, 6).to(torch.bfloat16).t()[:, ::2]
    assert not t.is_contiguous()
    assert_tensor_same(t, roundtrip(t))


def test_expanded_tensor_round_trips_materialised() -> None:
    t = torch.tensor([1.5]).expand(5)
    out = roundtrip(t)
    assert_tensor_same(t, out)
    assert torch.equal(out, torch.full((5,), 1.5))


def test_tensor_requiring_grad_comes_back_equal_without_grad() -> None:
    t = torch.randn(3, 2, requires_grad=True)
    out = roundtrip(t)
    assert not out.requires_grad
    assert_tensor_same(t.detach(), out)


def test_parameter_comes_back_as_plain_tensor() -> None:
    p = torch.nn.Parameter(torch.randn(4))
    out = roundtrip(p)
    assert type(out) is torch.Tensor and not out.requires_grad
    assert torch.equal(out, p.detach())


def test_conj_view_of_complex_tensor_comes_back_resolved() -> None:
    t = torch.randn(4, dtype=torch.complex64)
    view = t.conj()
    assert view.is_conj()
    out = roundtrip(view)
    assert not out.is_conj()
    assert out.dtype == torch.complex64
    assert torch.equal(out, view.resolve_conj())
    assert torch.equal(out.imag, -t.imag)


def test_decoded_tensor_is_writable_and_independent_of_the_encoding() -> None:
    data = _codec.encode(torch.zeros(3))
    out = _codec.decode(data)
    out += 1
    assert torch.equal(_codec.decode(data), torch.zeros(3))


def test_real_tensor_with_negative_bit_round_trips() -> None:
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    imag = z.conj().imag
    assert imag.is_neg()
    out = roundtrip(imag)
    assert torch.equal(out, torch.tensor([-2.0, 4.0]))


# --------------------------------------------------------------------------- nested tensors


@pytest.mark.filterwarnings(NESTED_PROTOTYPE)
def test_strided_nested_tensor_round_trips() -> None:
    nt = nested_tensor([torch.rand(1, 9), torch.rand(1, 4)])
    out = roundtrip(nt)
    assert out.is_nested and out.layout == torch.strided
    assert [p.shape for p in out.unbind()] == [torch.Size([1, 9]), torch.Size([1, 4])]
    assert_tensor_same(nt, out)


@pytest.mark.filterwarnings(NESTED_PROTOTYPE)
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.bfloat16], ids=str)
def test_strided_nested_tensor_of_other_dtypes_round_trips(dtype: torch.dtype) -> None:
    parts = [(torch.rand(2, 3) * 10).to(dtype), (torch.rand(5, 3) * 10).to(dtype)]
    nt = nested_tensor(parts)
    out = roundtrip(nt)
    assert out.is_nested and out.dtype == dtype
    for e, a in zip(parts, out.unbind()):
        assert a.dtype == dtype and a.shape == e.shape and torch.equal(a, e)


@pytest.mark.filterwarnings(NESTED_PROTOTYPE)
def test_strided_nested_tensor_with_3d_components_round_trips() -> None:
    parts = [torch.rand(1, 9, 196), torch.rand(1, 4, 196)]
    nt = nested_tensor(parts)
    out = roundtrip(nt)
    assert out.is_nested
    assert [tuple(p.shape) for p in out.unbind()] == [(1, 9, 196), (1, 4, 196)]
    for e, a in zip(parts, out.unbind()):
        assert torch.equal(a, e)


@pytest.mark.filterwarnings(NESTED_PROTOTYPE)
def test_non_contiguous_strided_nested_tensor_round_trips() -> None:
    nt = nested_tensor([torch.rand(3, 2), torch.rand(4, 2)]).transpose(1, 2)
    assert not nt.is_contiguous()
    out = roundtrip(nt)
    assert out.is_nested
    for e, a in zip(nt.unbind(), out.unbind()):
        assert a.shape == e.shape and torch.equal(a, e)


@pytest.mark.filterwarnings(NESTED_PROTOTYPE)
def test_jagged_nested_tensor_round_trips_with_jagged_layout() -> None:
    parts = [torch.rand(2, 3), torch.rand(4, 3)]
    nt = nested_tensor(parts, layout=torch.jagged)
    out = roundtrip(nt)
    assert out.is_nested and out.layout == torch.jagged
    got = out.unbind()
    assert len(got) == 2
    for e, a in zip(parts, got):
        assert a.dtype == e.dtype and a.shape == e.shape and torch.equal(a, e)


@pytest.mark.filterwarnings(NESTED_PROTOTYPE)
def test_nested_tensor_requiring_grad_comes_back_equal_without_grad() -> None:
    parts = [torch.rand(2, 3), torch.rand(4, 3)]
    nt = nested_tensor(parts, layout=torch.jagged, requires_grad=True)
    out = roundtrip(nt)
    assert out.is_nested and not out.requires_grad
    for e, a in zip(parts, out.unbind()):
        assert torch.equal(a, e)


@pytest.mark.filterwarnings(NESTED_PROTOTYPE)
def test_empty_nested_tensor_round_trips() -> None:
    nt = nested_tensor([])
    out = roundtrip(nt)
    assert out.is_nested and len(out.unbind()) == 0


# --------------------------------------------------------------------------- datetimes


def test_aware_datetime_round_trips_to_the_same_instant() -> None:
    dt = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    out = roundtrip(dt)
    assert type(out) is datetime
    assert out.tzinfo is not None
    assert out == dt
    assert out.utcoffset() == timedelta(0)


def test_aware_datetime_before_the_epoch_round_trips() -> None:
    dt = datetime(1960, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc)
    assert roundtrip(dt) == dt


def test_naive_datetime_is_refused_with_value_error() -> None:
    with pytest.raises(ValueError):
        _codec.encode(datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        _codec.encode({"t": [datetime(2024, 1, 1)]})


# --------------------------------------------------------------------------- snapshot semantics


def test_encoding_is_a_snapshot_of_a_tensor() -> None:
    t = torch.zeros(4)
    data = _codec.encode({"w": t})
    t += 5
    t[0] = -1
    assert torch.equal(_codec.decode(data)["w"], torch.zeros(4))


def test_encoding_is_a_snapshot_of_a_numpy_array() -> None:
    a = np.zeros(3)
    data = _codec.encode(a)
    a[:] = 7
    assert_array_same(np.zeros(3), _codec.decode(data))


def test_snapshot_copies_cpu_tensors() -> None:
    t = torch.zeros(3)
    value = {"a": [t, (t, 1)], "b": np.ones(2)}
    snap = _codec.snapshot(value)
    t += 1
    value["b"][:] = 9
    assert torch.equal(snap["a"][0], torch.zeros(3))
    assert torch.equal(snap["a"][1][0], torch.zeros(3))
    assert type(snap["a"][1]) is tuple
    assert_array_same(np.ones(2), snap["b"])
    assert_same({"a": [torch.zeros(3), (torch.zeros(3), 1)], "b": np.ones(2)},
                roundtrip(snap))


def test_snapshot_of_tensor_requiring_grad_is_detached() -> None:
    t = torch.ones(2, requires_grad=True)
    snap = _codec.snapshot(t)
    assert not snap.requires_grad
    assert torch.equal(snap, torch.ones(2))


def test_snapshot_keeps_scalars_and_containers() -> None:
    value = {"n": None, "b": True, "i": 3, "f": math.nan, "s": "x", "y": b"z",
             "np": np.float32(2.5), 4: [1, (2, 3)]}
    snap = _codec.snapshot(value)
    assert_same(value, snap)
    assert snap is not value and snap[4] is not value[4]


@pytest.mark.parametrize("value", [object(), {1, 2}, [object()], {"k": {3}}],
                         ids=["object", "set", "list-of-object", "dict-of-set"])
def test_snapshot_refuses_what_encode_refuses(value: Any) -> None:
    with pytest.raises(TypeError):
        _codec.snapshot(value)
    with pytest.raises(TypeError):
        _codec.encode(value)


@pytest.mark.filterwarnings("ignore:.*quantize.*deprecated:UserWarning")
def test_snapshot_refuses_sparse_and_quantized_tensors() -> None:
    with pytest.raises(TypeError):
        _codec.snapshot(torch.eye(3).to_sparse())
    with pytest.raises(TypeError):
        _codec.snapshot(torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8))


def test_encode_snapshot_matches_encode_on_the_cpu() -> None:
    value = {"t": torch.arange(5), "l": [1.5, (2, "x")]}
    assert_same(value, _codec.decode(_codec.encode_snapshot(value)))


def test_meta_tensor_is_refused() -> None:
    with pytest.raises(TypeError):
        _codec.encode(torch.empty(3, device="meta"))


# --------------------------------------------------------------------------- unsupported values


@pytest.mark.filterwarnings("ignore:.*quantize.*deprecated:UserWarning")
@pytest.mark.parametrize(
    "make",
    [
        lambda: object(),
        lambda: {1, 2, 3},
        lambda: frozenset({1}),
        lambda: torch.eye(3).to_sparse(),
        lambda: np.array([1, "a", None], dtype=object),
        lambda: np.array(["abc"]),
        lambda: np.array([1, 2], dtype="datetime64[s]"),
        lambda: torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8),
        lambda: (lambda x: x),
        lambda: [1, {"deep": [object()]}],
        lambda: (1, {2}),
        lambda: 1.5j,
    ],
    ids=["object", "set", "frozenset", "sparse", "np-object", "np-str", "np-datetime",
         "quantized", "lambda", "nested-object", "tuple-with-set", "complex"],
)
def test_unsupported_values_raise_type_error_at_encode(make: Any) -> None:
    with pytest.raises(TypeError):
        _codec.encode(make())


@pytest.mark.parametrize("big", [2**64, 2**70, -(2**63) - 1], ids=repr)
def test_int_over_64_bits_is_refused_at_encode(big: int) -> None:
    for value in (big, [big], {"x": [big]}, (big,)):
        with pytest.raises((ValueError, TypeError)):
            _codec.encode(value)


def test_int_over_64_bits_raises_value_error() -> None:
    with pytest.raises(ValueError):
        _codec.encode(2**70)
    with pytest.raises(ValueError):
        _codec.encode(-(2**63) - 1)
    with pytest.raises(ValueError):
        _codec.encode({"x": [2**64]})


def test_self_referencing_list_raises_value_error_not_recursion_error() -> None:
    a: list[Any] = [1]
    a.append(a)
    with pytest.raises(ValueError) as info:
        _codec.encode(a)
    assert not isinstance(info.value, RecursionError)


def test_self_referencing_dict_raises_value_error() -> None:
    d: dict[str, Any] = {}
    d["self"] = d
    with pytest.raises(ValueError):
        _codec.encode(d)


def test_cycle_through_a_tuple_raises_value_error() -> None:
    a: list[Any] = []
    a.append((a,))
    with pytest.raises(ValueError):
        _codec.encode(a)


# --------------------------------------------------------------------------- hostile bytes


def _tensor_encoding() -> bytes:
    return _codec.encode(torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_decode_refuses_the_never_used_byte() -> None:
    with pytest.raises(CodecError):
        _codec.decode(b"\xc1")


def test_decode_refuses_empty_bytes() -> None:
    with pytest.raises(CodecError):
        _codec.decode(b"")


def test_decode_refuses_every_truncation_of_a_tensor_encoding() -> None:
    data = _tensor_encoding()
    for n in range(len(data)):
        with pytest.raises(CodecError):
            _codec.decode(data[:n])


def test_decode_refuses_trailing_garbage() -> None:
    with pytest.raises(CodecError):
        _codec.decode(_codec.encode(1) + b"\x01")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(ext(99, b"anything"), id="unknown-ext-99"),
        pytest.param(ext(0, b""), id="unknown-ext-0"),
        pytest.param(ext(3, ["float32", [2, 2], b"\x00" * 12]), id="tensor-short-bytes"),
        pytest.param(ext(3, ["float32", [2], b"\x00" * 9]), id="tensor-long-bytes"),
        pytest.param(ext(3, ["object", [1], b"\x00" * 8]), id="tensor-dtype-object"),
        pytest.param(ext(3, ["float", [1], b"\x00" * 4]), id="tensor-dtype-alias"),
        pytest.param(ext(3, [7, [1], b"\x00"]), id="tensor-dtype-int"),
        pytest.param(ext(3, ["float32", [-1], b""]), id="tensor-negative-shape"),
        pytest.param(ext(3, ["float32", [2, -2], b""]), id="tensor-negative-shape-2"),
        pytest.param(ext(3, ["float32", 4, b"\x00" * 16]), id="tensor-shape-not-list"),
        pytest.param(ext(3, ["float32", [1.0], b"\x00" * 4]), id="tensor-shape-float"),
        pytest.param(ext(3, ["float32", [True], b"\x00" * 4]), id="tensor-shape-bool"),
        pytest.param(ext(3, ["float32", [1], "abcd"]), id="tensor-data-str"),
        pytest.param(ext(3, ["float32", [1]]), id="tensor-too-few"),
        pytest.param(ext(3, {"dtype": "float32"}), id="tensor-map"),
        pytest.param(ext(3, b"\xc1"), id="tensor-payload-garbage"),
        pytest.param(ext(1, ["|O8", [1], b"\x00" * 8]), id="ndarray-object"),
        pytest.param(ext(1, ["V8", [1], b"\x00" * 8]), id="ndarray-void"),
        pytest.param(ext(1, ["<U3", [1], b"\x00" * 12]), id="ndarray-unicode"),
        pytest.param(ext(1, ["|S3", [1], b"abc"]), id="ndarray-bytes"),
        pytest.param(ext(1, ["<M8[s]", [1], b"\x00" * 8]), id="ndarray-datetime"),
        pytest.param(ext(1, ["<i4,<i4", [1], b"\x00" * 8]), id="ndarray-structured"),
        pytest.param(ext(1, ["not a dtype", [1], b"\x00" * 8]), id="ndarray-nonsense"),
        pytest.param(ext(1, ["<f8", [-1], b""]), id="ndarray-negative-shape"),
        pytest.param(ext(1, ["<f8", [2], b"\x00" * 8]), id="ndarray-short"),
        pytest.param(ext(2, ["|O8", b"\x00" * 8]), id="npscalar-object"),
        pytest.param(ext(2, ["V8", b"\x00" * 8]), id="npscalar-void"),
        pytest.param(ext(2, ["<U3", b"\x00" * 12]), id="npscalar-unicode"),
        pytest.param(ext(2, ["<f8", b"\x00" * 7]), id="npscalar-short"),
        pytest.param(ext(4, ["sparse", "float32", [[1]], b"\x00" * 4]), id="nested-layout"),
        pytest.param(ext(4, ["strided", "float32", [[2]], b"\x00" * 4]), id="nested-short"),
        pytest.param(ext(4, ["strided", "float32", [[1]], b"\x00" * 8]), id="nested-long"),
        pytest.param(ext(4, ["strided", "object", [[1]], b"\x00" * 8]), id="nested-dtype"),
        pytest.param(ext(4, ["strided", "float32", [[-1]], b""]), id="nested-negative"),
        pytest.param(ext(4, ["jagged", "float32", [[1, 2], [3]], b"\x00" * 20]),
                     id="nested-jagged-mixed-ndim"),
        pytest.param(ext(5, b"\xc1"), id="tuple-garbage"),
        pytest.param(ext(5, {"a": 1}), id="tuple-not-list"),
        pytest.param(b"\xc7\x03\xff\x01\x02\x03", id="timestamp-bad-length"),
    ],
)
def test_decode_of_malformed_extension_raises_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        _codec.decode(data)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_decode_wraps_malformed_extension_inside_containers() -> None:
    inner = msgpack.ExtType(3, msgpack.packb(["object", [1], b"\x00" * 8]))
    data = msgpack.packb({"ok": 1, "bad": [inner]})
    with pytest.raises(CodecError):
        _codec.decode(data)


def test_decode_of_very_deeply_nested_arrays_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        _codec.decode(b"\x91" * 100_000 + b"\xc0")


def test_moderately_nested_tuples_round_trip() -> None:
    value: Any = ()
    for _ in range(_codec.MAX_TUPLE_DEPTH - 1):
        value = (value, [1])
    assert_same(value, roundtrip(value))


def test_tuples_nested_past_the_cap_are_refused_on_both_sides() -> None:
    value: Any = ()
    for _ in range(_codec.MAX_TUPLE_DEPTH + 1):
        value = (value,)
    with pytest.raises(ValueError, match="nested"):
        _codec.encode(value)
    payload = msgpack.packb([])
    for _ in range(_codec.MAX_TUPLE_DEPTH + 1):
        payload = msgpack.packb(msgpack.ExtType(_codec.EXT_TUPLE, payload))
    with pytest.raises(CodecError, match="nested"):
        _codec.decode(payload)


def test_empty_nested_tensor_round_trips() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = torch.nested.nested_tensor([], dtype=torch.float32)
    back = roundtrip(empty)
    assert back.is_nested and back.dtype == torch.float32 and len(back.unbind()) == 0


_DEEP_TUPLES = textwrap.dedent(
    """
    import msgpack
    from asyncstore import _codec
    from asyncstore._exceptions import CodecError

    def check(what, make):
        try:
            data = make()
        except ValueError:  # refusing to encode it is fine too
            print(what, "refused"); return
        try:
            _codec.decode(data); print(what, "ok")
        except CodecError:
            print(what, "CodecError")

    def legit():
        value = ()
        for _ in range(250):
            value = (value,)
        return _codec.encode(value)

    def hostile():
        payload = msgpack.packb([])
        for _ in range(250):
            payload = msgpack.packb(msgpack.ExtType(5, payload))
        return payload

    check("legit", legit)
    check("hostile", hostile)
    """
)


def test_decode_of_deeply_nested_tuples_fails_cleanly_without_crashing() -> None:
    proc = subprocess.run([sys.executable, "-c", _DEEP_TUPLES], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["legit", "hostile"]


def test_iter_decode_yields_every_value_of_a_concatenation() -> None:
    a = {"i": 0, "t": torch.arange(3)}
    b = [1.5, (2, "x")]
    out = list(_codec.iter_decode(_codec.encode(a) + _codec.encode(b)))
    assert len(out) == 2
    assert_same(a, out[0])
    assert_same(b, out[1])


def test_iter_decode_of_nothing_yields_nothing() -> None:
    assert list(_codec.iter_decode(b"")) == []


def test_iter_decode_of_a_truncated_concatenation_raises_codec_error() -> None:
    first = _codec.encode({"i": 0})
    data = first + _tensor_encoding()
    for cut in (len(data) - 1, len(data) - 10, len(first) + 10):
        with pytest.raises(CodecError):
            list(_codec.iter_decode(data[:cut]))


@pytest.mark.parametrize(
    "last",
    [
        pytest.param({"i": 1, "m": {"x": [1, 2, 3]}}, id="step-record"),
        pytest.param(torch.arange(12, dtype=torch.float32), id="tensor-header"),
        pytest.param("x" * 40, id="str-header"),
    ],
)
def test_iter_decode_of_every_truncation_raises_codec_error(last: Any) -> None:
    first = _codec.encode({"i": 0})
    data = first + _codec.encode(last)
    assert len(list(_codec.iter_decode(data))) == 2
    for cut in range(len(first) + 1, len(data)):
        with pytest.raises(CodecError):
            list(_codec.iter_decode(data[:cut]))


def test_iter_decode_of_garbage_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        list(_codec.iter_decode(_codec.encode(1) + b"\xc1"))
    with pytest.raises(CodecError):
        list(_codec.iter_decode(_codec.encode(1) + ext(99, b"")))


# --------------------------------------------------------------------------- properties


def _decode_or_codec_error(data: bytes) -> None:
    try:
        _codec.decode(data)
    except CodecError:
        pass
    except Exception as exc:  # noqa: BLE001 - anything else is the failure
        pytest.fail(f"decode raised {type(exc).__name__}: {exc!r} for {data!r}")


def _iter_decode_or_codec_error(data: bytes) -> None:
    try:
        list(_codec.iter_decode(data))
    except CodecError:
        pass
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"iter_decode raised {type(exc).__name__}: {exc!r} for {data!r}")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decode_of_arbitrary_bytes_returns_or_raises_codec_error(data: bytes) -> None:
    _decode_or_codec_error(data)
    _iter_decode_or_codec_error(data)


_small_atoms = st.one_of(
    st.integers(-3, 300), st.text(max_size=8), st.binary(max_size=16),
    st.sampled_from(["float32", "int64", "bool", "bfloat16", "float8_e4m3fn", "object",
                     "strided", "jagged", "<f8", "|b1", "<c16", "|O8", "V8", "<U3",
                     "<M8[s]", "f"]),
)
_small_lists = st.lists(
    st.one_of(_small_atoms, st.lists(st.integers(-2, 6), max_size=4),
              st.lists(st.lists(st.integers(-1, 4), max_size=3), max_size=3)),
    max_size=5,
)


@st.composite
def _ext_payloads(draw: st.DrawFn) -> bytes:
    code = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["binary", "list", "shaped"]))
    if kind == "binary":
        payload = draw(st.binary(max_size=64))
    elif kind == "list":
        payload = msgpack.packb(draw(_small_lists))
    else:  # near-valid: dtype, shape, data; lengths sometimes right
        dtype = draw(st.sampled_from(["float32", "int64", "bool", "bfloat16", "float8_e4m3fn",
                                      "<f8", "|b1", "<i2", "|O8", "V8", "object"]))
        shape = draw(st.lists(st.integers(-1, 4), max_size=3))
        raw = draw(st.binary(max_size=64))
        if code == 4:
            layout = draw(st.sampled_from(["strided", "jagged", "x"]))
            shapes = draw(st.lists(st.lists(st.integers(-1, 3), max_size=3), max_size=3))
            payload = msgpack.packb([layout, dtype, shapes, raw])
        elif code == 2:
            payload = msgpack.packb([dtype, raw])
        else:
            payload = msgpack.packb([dtype, shape, raw])
    outer = draw(st.sampled_from(["bare", "list", "dict"]))
    item = msgpack.ExtType(code, payload)
    value: Any = item if outer == "bare" else [item] if outer == "list" else {"k": item}
    return msgpack.packb(value)  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ext_payloads())
def test_decode_of_random_extension_payloads_returns_or_raises_codec_error(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _decode_or_codec_error(data)
        _iter_decode_or_codec_error(data)


_json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_json_like)
def test_json_like_values_round_trip_exactly(value: Any) -> None:
    assert_same(value, roundtrip(value))


# --------------------------------------------------------------------------- layout: ids


@pytest.mark.parametrize("bad", ["", "a/b", "/", ".", "..", "__x__", "____", "x" * 1501,
                                 "é" * 751])
def test_check_id_refuses_invalid_ids_with_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        _layout.check_id(bad)


@pytest.mark.parametrize("bad", [5, None, b"abc", ["a"]], ids=repr)
def test_check_id_refuses_non_str_with_type_error(bad: Any) -> None:
    with pytest.raises(TypeError):
        _layout.check_id(bad)


@pytest.mark.parametrize("good", ["exp-1", "a.b", "_x_", "__x", "x__", "...", "x" * 1500,
                                  "é" * 750, "run 7 (seed=3)"])
def test_check_id_accepts_valid_ids_and_returns_them(good: str) -> None:
    assert _layout.check_id(good) == good


# --------------------------------------------------------------------------- layout: steps


def _record(i: int) -> dict[str, Any]:
    return {"i": i, "s": None, "e": None, "r": 1, "m": {"x": i}}


def _group(first: int, count: int, exp: str = "exp", **metrics: Any) -> list[Any]:
    records = []
    for i in range(first, first + count):
        rec = _record(i)
        rec["m"].update(metrics)
        records.append(rec)
    payload = b"".join(_codec.encode(r) for r in records)
    return _layout.group_writes(exp, "training", first, count, payload)


def _docs(writes: list[Any]) -> Iterator[tuple[str, Any]]:
    return ((w.doc_id, w.fields) for w in writes)


def test_assemble_steps_orders_and_deduplicates_overlapping_groups() -> None:
    writes = _group(5, 10) + _group(0, 10)  # 5-14, then 0-9: out of order, overlapping
    steps = _layout.assemble_steps(_docs(writes))
    assert [s["i"] for s in steps] == list(range(15))
    for s in steps:
        assert s == _record(s["i"])


def test_assemble_steps_of_no_documents_is_empty() -> None:
    assert _layout.assemble_steps([]) == []


def test_group_writes_of_a_small_payload_is_one_document() -> None:
    writes = _group(0, 3)
    assert len(writes) == 1
    fields = writes[0].fields
    assert fields["v"] == 1 and fields["chunk"] == 0 and fields["chunks"] == 1
    assert fields["first"] == 0 and fields["count"] == 3


def test_group_writes_split_large_payloads_into_chunks_under_the_limit() -> None:
    writes = _group(0, 2, big=b"\x00" * 600_000)  # two 600 kB steps: 1.2 MB payload
    assert len(writes) == 2
    assert all(len(w.fields["data"]) <= _layout.CHUNK_BYTES for w in writes)
    assert len({w.doc_id for w in writes}) == 2
    steps = _layout.assemble_steps(_docs(list(reversed(writes))))
    assert [s["i"] for s in steps] == [0, 1]
    assert steps[1]["m"]["big"] == b"\x00" * 600_000


def test_assemble_steps_leaves_out_a_group_missing_a_chunk() -> None:
    big = _group(10, 2, big=b"\x01" * 600_000)
    assert len(big) == 2
    small = _group(0, 3)
    for dropped in range(2):
        kept = [w for k, w in enumerate(big) if k != dropped]
        steps = _layout.assemble_steps(_docs(small + kept))
        assert [s["i"] for s in steps] == [0, 1, 2]


def test_a_regrouped_replay_never_mixes_with_the_old_chunks() -> None:
    # The same steps cut into runs differently (a replay): other ids, each step once.
    old = _group(0, 6)
    new = _group(0, 3) + _group(3, 3)
    assert not {w.doc_id for w in old} & {w.doc_id for w in new}
    steps = _layout.assemble_steps(_docs(old + new))
    assert [s["i"] for s in steps] == list(range(6))


def test_group_ids_are_stable_and_distinct_per_group() -> None:
    assert [w.doc_id for w in _group(0, 3)] == [w.doc_id for w in _group(0, 3)]
    assert _group(0, 3)[0].doc_id != _group(3, 3)[0].doc_id
    assert _group(0, 3, exp="a")[0].doc_id != _group(0, 3, exp="b")[0].doc_id


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"data": "not bytes"}, id="data-str"),
        pytest.param({"data": None}, id="data-none"),
        pytest.param({"v": 2}, id="v2"),
        pytest.param({"first": "0"}, id="first-str"),
        pytest.param({"chunks": 1.0}, id="chunks-float"),
        pytest.param({"data": b"\xc1"}, id="data-garbage"),
        pytest.param({"count": 99}, id="count-mismatch"),
        pytest.param({"data": _codec.encode([1, 2])}, id="record-not-dict"),
        pytest.param({"data": _codec.encode({"i": "0", "m": {}})}, id="record-index-str"),
    ],
)
def test_assemble_steps_names_a_malformed_document(change: dict[str, Any]) -> None:
    good = _group(0, 2)
    (write,) = _group(7, 1, exp="other")
    fields = {**write.fields, **change}
    docs = list(_docs(good)) + [("bad-doc-id", fields)]
    with pytest.raises(CodecError, match="bad-doc-id"):
        _layout.assemble_steps(docs)


@pytest.mark.parametrize("doc", [{}, {"v": 1}, None, 5], ids=repr)
def test_assemble_steps_names_a_document_that_is_not_a_batch(doc: Any) -> None:
    with pytest.raises(CodecError, match="weird-id"):
        _layout.assemble_steps([("weird-id", doc)])

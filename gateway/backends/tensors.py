"""numpy <-> TensorProto without TensorFlow (the gateway image has only the generated protos).

Numbers travel in `tensor_content` (raw little-endian bytes: no per-element encoding);
strings in `string_val`. Replies are read from either form: TF Serving writes the typed
fields by default, and everything, strings included, into `tensor_content` with
--enable_serialization_as_tensor_content (strings then as TensorFlow's EncodeStringList packs
them: every length as a varint, then all the bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.backends.protos import tensor_pb2, tensor_shape_pb2, types_pb2

_DTYPES: dict[np.dtype[Any], int] = {
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
}
_NUMPY: dict[int, np.dtype[Any]] = {v: k for k, v in _DTYPES.items()}
# Where each dtype's values sit when a tensor is not sent as tensor_content.
_VALUE_FIELD = {
    types_pb2.DT_HALF: "half_val",  # the float16 bit patterns, one int32 each
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT8: "int_val",
}


def _shape(shape: Iterable[int]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape])


def to_proto(value: npt.ArrayLike) -> tensor_pb2.TensorProto:
    """A numpy array (numbers, or bytes/str for DT_STRING) as a TensorProto."""
    array = np.asarray(value)
    if array.dtype.kind in "SUO":
        strings = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in array.reshape(-1)]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(array.shape), string_val=strings)
    if array.dtype not in _DTYPES:
        raise TypeError(f"no TensorProto dtype for {array.dtype}")
    return tensor_pb2.TensorProto(
        dtype=_DTYPES[array.dtype],
        tensor_shape=_shape(array.shape),
        tensor_content=np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
    )


def from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array; strings come back as an object array of bytes."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    size = int(np.prod(shape)) if shape else 1
    if proto.dtype == types_pb2.DT_STRING:
        strings = _string_list(proto.tensor_content, size) if proto.tensor_content else list(proto.string_val)
        values = np.empty(len(strings), dtype=object)
        values[:] = strings
        return _fill(values, shape, size)
    if proto.dtype not in _NUMPY:
        raise TypeError(f"unsupported tensor dtype {types_pb2.DataType.Name(proto.dtype)}")
    dtype = _NUMPY[proto.dtype]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    if proto.dtype == types_pb2.DT_HALF:
        values = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        values = np.asarray(getattr(proto, _VALUE_FIELD[proto.dtype]), dtype=dtype)
    return _fill(values, shape, size)


def _string_list(data: bytes, count: int) -> list[bytes]:
    """TensorFlow's port::DecodeStringList: COUNT varint32 lengths, then the strings' bytes."""
    lengths, position = [], 0
    for _ in range(count):
        length = shift = 0
        while True:
            if position >= len(data):
                raise ValueError("string tensor_content ends inside its lengths")
            byte = data[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        lengths.append(length)
    if position + sum(lengths) != len(data):
        raise ValueError("string tensor_content does not hold the strings its lengths say")
    strings = []
    for length in lengths:
        strings.append(data[position : position + length])
        position += length
    return strings


def _fill(values: np.ndarray, shape: tuple[int, ...], size: int) -> np.ndarray:
    # TensorFlow's rule: with fewer values than elements, the last value repeats.
    if values.size == size:
        return values.reshape(shape)
    if 0 < values.size < size:
        padded = np.empty(size, dtype=values.dtype)
        padded[: values.size] = values
        padded[values.size :] = values[-1]
        return padded.reshape(shape)
    raise ValueError(f"tensor of shape {shape} arrived with {values.size} values")

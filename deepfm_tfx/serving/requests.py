"""Requests in, responses out: TF Serving's JSON and TensorProto encodings <-> numpy.

The JSON rules and error messages follow TF Serving's util/json_tensor.cc:
row (`instances`) and columnar (`inputs`) forms, `{"b64": ...}` for bytes,
`NaN`/`Infinity` tokens, a JSON number accepted for any float input (so an
integer works for a float feature), and `predictions`/`outputs` back in the
same form. One leniency over TF Serving's REST: an input the signature has a
default for may be left out (TF Serving allows that over gRPC only).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import orjson
from tensorflow.core.framework import tensor_pb2, types_pb2

from deepfm_tfx.serving import errors

ROW, COLUMNAR = "row", "columnar"

_NP = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
       types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8,
       types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_UINT32: np.uint32,
       types_pb2.DT_UINT64: np.uint64, types_pb2.DT_STRING: object}
_DT = {np.dtype(v): k for k, v in _NP.items() if v is not object}
_VALUE_FIELD = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
                types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT8: "int_val",
                types_pb2.DT_INT64: "int64_val", types_pb2.DT_BOOL: "bool_val",
                types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
                types_pb2.DT_STRING: "string_val"}
_FLOATS = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)
_INTS = (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8, types_pb2.DT_INT64,
         types_pb2.DT_UINT32, types_pb2.DT_UINT64)
_NUMBER = (int, float)


def dtype_name(dtype: int) -> str:
    """TF's DataTypeString: DT_FLOAT -> float."""
    return types_pb2.DataType.Name(dtype)[3:].lower()


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    key: str
    tensor_name: str
    dtype: int
    shape: Optional[Tuple[int, ...]]  # None: unknown rank; -1: unknown size

    @classmethod
    def from_tensor_info(cls, key: str, info) -> "TensorSpec":
        shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
        return cls(key, info.name, info.dtype, shape)

    @property
    def np_dtype(self):
        if self.dtype not in _NP:
            raise errors.ServingError(errors.UNIMPLEMENTED, f"input {self.key!r} has type "
                                      f"{dtype_name(self.dtype)}, which this server does not convert")
        return _NP[self.dtype]

    def check_shape(self, array: np.ndarray) -> np.ndarray:
        if self.shape is None:
            return array
        if array.ndim != len(self.shape) or any(want not in (-1, got) for want, got in zip(self.shape, array.shape)):
            want = "[" + ",".join("?" if d < 0 else str(d) for d in self.shape) + "]"
            raise errors.invalid(f"input '{self.key}' has shape {list(array.shape)}, the signature expects {want}")
        return array


# ---------------------------------------------------------------- JSON in

def _json_value(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))[:200]


def _json_type(v: Any) -> str:
    if v is None:
        return "Null"
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, dict):
        return "Object"
    if isinstance(v, list):
        return "Array"
    if isinstance(v, str):
        return "String"
    return "Number"


def _type_error(v: Any, spec: TensorSpec) -> errors.ServingError:
    return errors.invalid(f"JSON Value: {_json_value(v)} Type: {_json_type(v)} is not of expected type: "
                          f"{dtype_name(spec.dtype)} (input '{spec.key}')")


def _is_b64(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and isinstance(v.get("b64"), str)


def _b64(v: Any) -> bytes:
    try:
        return base64.b64decode(v["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise errors.invalid(f"Unable to base64 decode: {_json_value(v)}") from None


def _scalar(v: Any, spec: TensorSpec) -> Any:
    if spec.dtype == types_pb2.DT_STRING:
        if isinstance(v, str):
            return v.encode("utf-8")
        if isinstance(v, dict):
            if not _is_b64(v):
                raise errors.invalid(f"JSON Value: {_json_value(v)} not formatted correctly for base64 data")
            return _b64(v)
        raise _type_error(v, spec)
    if spec.dtype in _FLOATS:
        if type(v) not in _NUMBER:  # bool is not a number here, as in TF Serving
            raise _type_error(v, spec)
        return v
    if spec.dtype in _INTS:
        if type(v) is not int:
            raise _type_error(v, spec)
        return v
    if spec.dtype == types_pb2.DT_BOOL:
        if type(v) is not bool:
            raise _type_error(v, spec)
        return v
    spec.np_dtype  # raises UNIMPLEMENTED
    raise _type_error(v, spec)


def _array(flat: List[Any], shape: List[int], spec: TensorSpec) -> np.ndarray:
    if spec.dtype == types_pb2.DT_STRING:
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    try:
        return np.array(flat, dtype=spec.np_dtype).reshape(shape)
    except OverflowError:
        raise errors.invalid(f"a value of input '{spec.key}' is out of range for {dtype_name(spec.dtype)}") from None


def _tensor(value: Any, spec: TensorSpec) -> np.ndarray:
    """A JSON value (scalar or nested lists) as one dense tensor."""
    shape: List[int] = []
    v = value
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    flat: List[Any] = []

    def walk(v: Any, level: int) -> None:
        if isinstance(v, list):
            if level >= len(shape):
                raise errors.invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)} "
                                     f"(input '{spec.key}')")
            if len(v) != shape[level]:
                raise errors.invalid(f"Encountered list at unexpected size: {len(v)} at level: {level} "
                                     f"expected size: {shape[level]} (input '{spec.key}')")
            for x in v:
                walk(x, level + 1)
        else:
            if level != len(shape):
                raise errors.invalid(f"JSON Value: {_json_value(v)} found at incorrect level: {level + 1} in the "
                                     f"JSON DOM. Expected at level: {len(shape)} (input '{spec.key}')")
            flat.append(_scalar(v, spec))

    walk(value, 0)
    return _array(flat, shape, spec)


def _column(values: List[Any], spec: TensorSpec) -> np.ndarray:
    """One input's values across the rows of `instances`, batched on a new first axis."""
    if not any(isinstance(v, list) for v in values):  # the common case: a scalar per row
        return _array([_scalar(v, spec) for v in values], [len(values)], spec)
    rows = [_tensor(v, spec) for v in values]
    first = rows[0].shape
    for i, r in enumerate(rows):
        if r.shape != first:
            raise errors.invalid(f"Expecting shape {list(first)} but got: {list(r.shape)} "
                                 f"(input '{spec.key}', instance {i})")
    return np.stack(rows) if spec.dtype != types_pb2.DT_STRING else _stack_objects(rows)


def _stack_objects(rows: List[np.ndarray]) -> np.ndarray:
    out = np.empty((len(rows),) + rows[0].shape, dtype=object)
    for i, r in enumerate(rows):
        out[i] = r
    return out


def parse_json(body: bytes) -> Dict[str, Any]:
    if not body:
        raise errors.invalid("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # NaN and Infinity, which TF Serving accepts and orjson does not
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise errors.invalid(f"JSON Parse error: {e}") from None
        except RecursionError:  # orjson stops at 1024 levels; json recurses until Python does
            raise errors.invalid("JSON Parse error: the document is nested too deeply") from None
    if not isinstance(doc, dict):
        raise errors.invalid(f"JSON Value: {_json_value(doc)} Is not object")
    return doc


def signature_name_of(doc: Dict[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise errors.invalid(f"JSON Value: {_json_value(doc)} not formatted correctly. "
                             "'signature_name' key must be a string value.")
    return name


def feeds_from_json(doc: Dict[str, Any], inputs: Dict[str, TensorSpec],
                    defaults: Dict[str, Any]) -> Tuple[Dict[str, np.ndarray], str]:
    """{input key: array} and the request's form (ROW or COLUMNAR)."""
    if "instances" in doc and "inputs" in doc:
        raise errors.invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in doc:
        return _from_instances(doc["instances"], inputs, defaults), ROW
    if "inputs" in doc:
        return _from_inputs(doc["inputs"], inputs, defaults), COLUMNAR
    raise errors.invalid("Missing 'inputs' or 'instances' key")


def _check_keys(keys, inputs: Dict[str, TensorSpec], defaults, where: str) -> None:
    for k in keys:
        if k not in inputs:
            raise errors.invalid(f"JSON object: does not have named input: {k} ({where}); the signature's "
                                 f"inputs are {', '.join(sorted(inputs))}")
    missing = sorted(set(inputs) - set(keys) - set(defaults))
    if missing:
        raise errors.invalid(f"{where} lacks named input(s) {', '.join(missing)}, which have no default")


def _from_instances(instances: Any, inputs: Dict[str, TensorSpec], defaults) -> Dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise errors.invalid("Expecting 'instances' to be an list/array")
    if not instances:
        raise errors.invalid("No values in 'instances' array")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        if len(inputs) != 1:
            raise errors.invalid("instances is a plain list, but expecting list of objects as multiple "
                                 "input tensors required as per tensorinfo_map")
        [spec] = inputs.values()
        for i, v in enumerate(instances):
            if isinstance(v, dict) and not _is_b64(v):
                raise errors.invalid(f"Expecting value/list but got object at item {i} of input list")
        return {spec.key: spec.check_shape(_column(instances, spec))}
    keys = None
    for i, row in enumerate(instances):
        if not isinstance(row, dict) or _is_b64(row):
            raise errors.invalid(f"Expecting object but got list at item {i} of input list")
        if keys is None:
            keys = set(row)
            _check_keys(keys, inputs, defaults, "instance 0")
        elif set(row) != keys:
            raise errors.invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_json_value(row)} keys must be "
                f"equal to: {','.join(sorted(keys))} (every instance names the same inputs; a missing number "
                f"is NaN, a missing category \"\")")
    return {k: inputs[k].check_shape(_column([row[k] for row in instances], inputs[k])) for k in sorted(keys)}


def _from_inputs(value: Any, inputs: Dict[str, TensorSpec], defaults) -> Dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(inputs) != 1:
            raise errors.invalid("inputs is a plain value/list, but expecting an object as multiple input "
                                 "tensors required as per tensorinfo_map")
        [spec] = inputs.values()
        return {spec.key: spec.check_shape(_tensor(value, spec))}
    _check_keys(value, inputs, defaults, "'inputs' object")
    return {k: inputs[k].check_shape(_tensor(v, inputs[k])) for k, v in value.items()}


# ---------------------------------------------------------------- JSON out

def _jsonable(name: str, array: np.ndarray) -> Any:
    if array.dtype == object:  # strings: text, or base64 for outputs named *_bytes
        if name.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()}, otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def json_response(outputs: Dict[str, np.ndarray], form: str) -> bytes:
    names = sorted(outputs)
    if form == ROW:
        sizes = {outputs[n].shape[0] if outputs[n].ndim else None for n in names}
        if len(sizes) != 1 or None in sizes:
            raise errors.invalid("outputs have inconsistent batch sizes; use the columnar 'inputs' form")
        if len(names) == 1:
            doc = {"predictions": _jsonable(names[0], outputs[names[0]])}
        else:
            columns = {n: _jsonable(n, outputs[n]) for n in names}
            doc = {"predictions": [{n: columns[n][i] for n in names} for i in range(sizes.pop())]}
    else:
        if len(names) == 1:
            doc = {"outputs": _jsonable(names[0], outputs[names[0]])}
        else:
            doc = {"outputs": {n: _jsonable(n, outputs[n]) for n in names}}
    if all(a.dtype == object or a.dtype == np.bool_ or np.all(np.isfinite(a)) for a in outputs.values()):
        return orjson.dumps(doc)
    return json.dumps(doc).encode()  # NaN and Infinity as tokens, like TF Serving


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


# ---------------------------------------------------------------- TensorProto

def array_from_proto(proto: tensor_pb2.TensorProto, key: str = "") -> np.ndarray:
    if proto.tensor_shape.unknown_rank:
        raise errors.invalid(f"input '{key}' has no shape")
    shape = [d.size for d in proto.tensor_shape.dim]
    size = math.prod(shape)
    dtype = proto.dtype
    if dtype not in _NP:
        raise errors.invalid(f"input '{key}' has type {types_pb2.DataType.Name(dtype)}, which this server "
                             f"does not convert")
    if dtype == types_pb2.DT_STRING:
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
    elif proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype=_NP[dtype])
    else:
        values = np.array(getattr(proto, _VALUE_FIELD[dtype]), dtype=_NP[dtype])
    if values.size != size:
        if values.size == 1:  # TF's rule: one value fills the shape
            values = np.full(size, values[0], dtype=values.dtype)
        else:
            raise errors.invalid(f"input '{key}' has {values.size} values for shape {shape}")
    return values.reshape(shape)


def feeds_from_tensor_protos(protos, signature) -> Dict[str, np.ndarray]:
    """A PredictRequest's inputs as arrays of the signature's types; integers are
    accepted for float inputs, as over REST."""
    feeds = {}
    for key, proto in protos.items():
        spec = signature.inputs.get(key)
        if spec is None:
            feeds[key] = None  # reported by Signature.check_inputs with the full picture
            continue
        array = array_from_proto(proto, key)
        if proto.dtype != spec.dtype:
            if not (spec.dtype in _FLOATS and (proto.dtype in _INTS or proto.dtype in _FLOATS)):
                raise errors.invalid(f"input '{key}' expects {dtype_name(spec.dtype)}, got "
                                     f"{dtype_name(proto.dtype)}")
            array = array.astype(spec.np_dtype)
        feeds[key] = spec.check_shape(array)
    return feeds


def array_to_proto(array: np.ndarray, proto: tensor_pb2.TensorProto) -> None:
    """Values in the typed repeated field (TF Serving's default), not tensor_content,
    so clients reading `float_val` directly keep working."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    else:
        dtype = _DT.get(array.dtype)
        if dtype is None:
            raise errors.ServingError(errors.INTERNAL, f"cannot encode an output of type {array.dtype}")
        proto.dtype = dtype
        getattr(proto, _VALUE_FIELD[dtype]).extend(array.ravel().tolist())
    for d in array.shape:
        proto.tensor_shape.dim.add(size=d)

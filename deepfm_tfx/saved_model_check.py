"""Whether a folder holds a SavedModel TF Serving can serve, without importing TensorFlow.

`models rollback` must answer in well under a second, and importing
TensorFlow for its SavedModel proto takes several. So saved_model.pb is
parsed with a minimal schema of the few fields checked here: the protobuf
wire format skips the rest. Checked: it parses, a MetaGraph is tagged
`serve`, it has the `serving_default` signature with inputs and outputs, and
a variables/ folder has its index. `signature_inputs` reads the signatures'
input keys and dtypes the same way, for the pusher's warmup file.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from deepfm_tfx.contracts import (SAVED_MODEL_FILE, SERVE_TAG, SERVING_SIGNATURE, VARIABLES_DIR,
                                  VARIABLES_INDEX)

_F = descriptor_pb2.FieldDescriptorProto
# Field numbers of tensorflow/core/protobuf/{saved_model,meta_graph}.proto; a map
# is on the wire a repeated {key = 1, value = 2} message.
_SCHEMA = {
    "TensorInfo": [("dtype", 2, _F.TYPE_INT32, None, False)],  # a DataType enum, e.g. DT_STRING = 7
    "TensorInfoEntry": [("key", 1, _F.TYPE_STRING, None, False),
                        ("value", 2, _F.TYPE_MESSAGE, "TensorInfo", False)],
    "SignatureDef": [("inputs", 1, _F.TYPE_MESSAGE, "TensorInfoEntry", True),
                     ("outputs", 2, _F.TYPE_MESSAGE, "TensorInfoEntry", True),
                     ("method_name", 3, _F.TYPE_STRING, None, False)],
    "SignatureDefEntry": [("key", 1, _F.TYPE_STRING, None, False),
                          ("value", 2, _F.TYPE_MESSAGE, "SignatureDef", False)],
    "MetaInfoDef": [("tags", 4, _F.TYPE_STRING, None, True)],
    "MetaGraphDef": [("meta_info_def", 1, _F.TYPE_MESSAGE, "MetaInfoDef", False),
                     ("signature_def", 5, _F.TYPE_MESSAGE, "SignatureDefEntry", True)],
    "SavedModel": [("saved_model_schema_version", 1, _F.TYPE_INT64, None, False),
                   ("meta_graphs", 2, _F.TYPE_MESSAGE, "MetaGraphDef", True)],
}


def _saved_model_class():
    file = descriptor_pb2.FileDescriptorProto(name="deepfm_tfx_saved_model_check.proto",
                                              package="deepfm_tfx_saved_model_check", syntax="proto3")
    for name, fields in _SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            field = message.field.add(name=field_name, number=number, type=kind,
                                      label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                field.type_name = f".{file.package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName(f"{file.package}.SavedModel")
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


_SavedModel = _saved_model_class()


def signature_inputs(folder: str) -> Dict[str, Dict[str, int]]:
    """{signature: {input key: DataType enum}} of the `serve` MetaGraph, without loading the model."""
    with open(os.path.join(folder, SAVED_MODEL_FILE), "rb") as f:
        saved_model = _SavedModel.FromString(f.read())
    [meta_graph] = [m for m in saved_model.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
    # "__saved_model_init_op" and the like are TF's own, not for clients.
    return {entry.key: {i.key: i.value.dtype for i in entry.value.inputs}
            for entry in meta_graph.signature_def if not entry.key.startswith("__")}


def problem(folder: str) -> Optional[str]:
    """Why `folder` cannot be served, or None when it can."""
    path = os.path.join(folder, SAVED_MODEL_FILE)
    if not os.path.isfile(path):
        return f"it has no {SAVED_MODEL_FILE}"
    variables = os.path.join(folder, VARIABLES_DIR)
    if os.path.isdir(variables) and not os.path.isfile(os.path.join(variables, VARIABLES_INDEX)):
        return f"{VARIABLES_DIR}/ has no {VARIABLES_INDEX}"
    with open(path, "rb") as f:
        return bytes_problem(f.read())


def bytes_problem(data: bytes) -> Optional[str]:
    """problem() for a saved_model.pb's bytes alone (one held in an object store)."""
    if not data:
        return f"{SAVED_MODEL_FILE} is empty"
    try:
        saved_model = _SavedModel.FromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return f"{SAVED_MODEL_FILE} does not parse as a SavedModel protobuf"
    served = [g for g in saved_model.meta_graphs if SERVE_TAG in g.meta_info_def.tags]
    if not served:
        return f"{SAVED_MODEL_FILE} has no MetaGraph tagged '{SERVE_TAG}'"
    for graph in served:
        for entry in graph.signature_def:
            if entry.key == SERVING_SIGNATURE:
                if not entry.value.inputs or not entry.value.outputs:
                    return f"its '{SERVING_SIGNATURE}' signature has no inputs or no outputs"
                return None
    names = sorted({e.key for g in served for e in g.signature_def})
    return f"{SAVED_MODEL_FILE} has no '{SERVING_SIGNATURE}' signature (it has {names or 'none'})"

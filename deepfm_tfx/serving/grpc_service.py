"""TF Serving's gRPC services: PredictionService (Predict, GetModelMetadata) and
ModelService (GetModelStatus), on the generated stubs of tensorflow-serving-api,
so TF Serving's own client (`PredictionServiceStub`) works unchanged.

The request handling shared with REST lives here too: REST answers with the
JSON of the same response protos, as TF Serving's HTTP handler does.
"""
from __future__ import annotations

import contextlib
from concurrent import futures
from typing import Optional, Tuple

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from deepfm_tfx.serving import errors, requests
from deepfm_tfx.serving.errors import ServingError
from deepfm_tfx.serving.loader import ModelManager

SIGNATURE_DEF = "signature_def"  # the one metadata field TF Serving answers
_STATE = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


def version_choice(model_spec) -> Tuple[Optional[int], Optional[str]]:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return model_spec.version.value, None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def model_status(manager: ModelManager, model: str, version: Optional[int] = None,
                 label: Optional[str] = None) -> get_model_status_pb2.GetModelStatusResponse:
    if not model:
        raise errors.invalid("Missing model name in request.")
    if label is not None:
        labels = manager.labels(model)
        if label not in labels:
            raise errors.invalid(f"Unrecognized servable version label: {label}")
        version = labels[label]
    response = get_model_status_pb2.GetModelStatusResponse()
    for v, status in manager.status(model, version):
        entry = response.model_version_status.add(version=v, state=_STATE[status.state])
        entry.status.error_code = errors.CODE_NUMBERS[status.error_code]
        entry.status.error_message = status.error_message
    return response


def model_metadata(manager: ModelManager, model_spec,
                   fields=(SIGNATURE_DEF,)) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not model_spec.name:
        raise errors.invalid("Missing model name in request.")
    if not fields:
        raise errors.invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF:
            raise errors.invalid(f"Metadata field {field} is not supported")
    version, label = version_choice(model_spec)
    servable = manager.resolve(model_spec.name, version, label)
    try:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model_spec.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in servable.meta_graph.signature_def.items():
            signature_map.signature_def[name].CopyFrom(sig)
        packed = any_pb2.Any()
        packed.Pack(signature_map)
        response.metadata[SIGNATURE_DEF].CopyFrom(packed)
        return response
    finally:
        servable.release()


def predict(manager: ModelManager, request: predict_pb2.PredictRequest, router=None,
            context: Optional[grpc.ServicerContext] = None) -> predict_pb2.PredictResponse:
    """With an experiments `router`, an un-pinned request is routed by the key in the call's
    metadata, logged, and answered with its request id and arm in the trailing metadata."""
    version, label = version_choice(request.model_spec)
    assignment = None
    if router is not None and version is None and label is None:
        metadata = dict(context.invocation_metadata()) if context is not None else {}
        assignment = router.assign(request.model_spec.name, lambda field: metadata.get(field.lower()))
        label = assignment.label if assignment is not None else None
    # A failure after the split counts against the arm (the error-rate guardrail).
    with router.counting_errors(assignment) if assignment is not None else contextlib.nullcontext():
        servable = manager.resolve(request.model_spec.name, version, label)
        try:
            signature = servable.signature(request.model_spec.signature_name)
            feeds = requests.feeds_from_tensor_protos(request.inputs, signature)
            outputs = signature.run(feeds, tuple(request.output_filter))
        except BaseException:
            servable.release()
            raise
    try:
        if assignment is not None:
            router.record(assignment, servable.version, signature.name, feeds, outputs)
            if context is not None:
                context.set_trailing_metadata(tuple((k.lower(), v) for k, v in assignment.headers().items()))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
        for key, value in outputs.items():
            requests.array_to_proto(value, response.outputs[key])
        return response
    finally:
        servable.release()


def _abort(context: grpc.ServicerContext, error: ServingError):
    context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN), error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, router=None):
        self.manager = manager
        self.router = router

    def Predict(self, request, context):
        try:
            return predict(self.manager, request, self.router, context)
        except ServingError as e:
            _abort(context, e)

    def GetModelMetadata(self, request, context):
        try:
            return model_metadata(self.manager, request.model_spec, tuple(request.metadata_field))
        except ServingError as e:
            _abort(context, e)

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "this model has predict signatures only; use Predict (REST :predict)")

    Classify = Regress = MultiInference = _unimplemented


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise errors.invalid("Missing ModelSpec")
            version, label = version_choice(request.model_spec)
            return model_status(self.manager, request.model_spec.name, version, label)
        except ServingError as e:
            _abort(context, e)

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "edit models.config (deepfm-tfx models ...); the server reloads it by itself")


def build_server(manager: ModelManager, port: int, threads: int, max_message_bytes: int,
                 host: str = "0.0.0.0", router=None) -> Tuple[grpc.Server, int]:
    """grpcio's server on a thread pool; a message over the limit fails with
    RESOURCE_EXHAUSTED before it reaches us."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes),
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager, router), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound

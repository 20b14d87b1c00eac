"""TF Serving's REST API on aiohttp (already in the lock, via Airflow).

    GET  /v1/models/<name>[/versions/<N>|/labels/<L>]             status
    GET  /v1/models/<name>[/versions/<N>|/labels/<L>]/metadata    signatures
    POST /v1/models/<name>[/versions/<N>|/labels/<L>]:predict     row or columnar JSON
    POST /v1/experiments/<name>/outcomes                          clicks for an experiment's predictions
    GET  /v1/experiments/<name>                                   its config and live counters

The experiment routes answer trusted callers only (the router's bearer token,
or the outcomes listener, a second RestServer with `trusted=True`).

The paths are matched with TF Serving's own regular expressions
(http_rest_api_util.cc). Errors are `{"error": "..."}` with the HTTP status
TF Serving gives the same error. The event loop only moves bytes: parsing
and the model run in a thread pool, where Session.run releases the GIL.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from concurrent import futures
from typing import Any, Dict, Optional, Tuple

from aiohttp import web
from google.protobuf import json_format

from deepfm_tfx.contracts import SERVING_SIGNATURE
from deepfm_tfx.serving import errors, grpc_service, requests
from deepfm_tfx.serving.errors import ServingError
from deepfm_tfx.serving.loader import ModelManager

log = logging.getLogger("deepfm_tfx.serving")

PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
EXPERIMENT_PATH = re.compile(r"/v1/experiments/([^/:]+)(/outcomes)?")
STATUS_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_NO_ASSIGNMENT = contextlib.nullcontext()
_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
            "Access-Control-Allow-Headers": "Content-Type"}


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=_HEADERS)


def _error(error: ServingError, status: Optional[int] = None) -> web.Response:
    return _json(requests.error_body(error.message), status or error.http_status)


class RestApi:
    def __init__(self, manager: ModelManager, threads: int, max_body_bytes: int, router=None, trusted: bool = False):
        self.manager = manager
        self.router = router  # deepfm_tfx.experiments.router.ExperimentRouter, or None: no experiments
        self.trusted = trusted  # the outcomes listener: experiment routes need no token here
        self.max_body_bytes = max_body_bytes
        self.pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rest")

    def app(self) -> web.Application:
        # aiohttp enforces the limit on bodies without a Content-Length too.
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except ServingError as e:
            return _error(e)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request.content_length)
        except Exception as e:  # noqa: BLE001 - a bug must answer 500, not drop the connection
            log.exception("REST %s %s failed", request.method, request.path)
            # The details (paths, say) stay in the server's log.
            return _error(ServingError(errors.INTERNAL, f"internal error ({type(e).__name__}); the server's log "
                                                        f"has the details"))

    def _too_large(self, size: Optional[int]) -> web.Response:
        got = f"of {size} bytes " if size is not None else ""
        return _error(ServingError(errors.RESOURCE_EXHAUSTED,
                                   f"request body {got}exceeds the limit of {self.max_body_bytes} bytes "
                                   f"(deepfm-tfx serve --rest-max-body-bytes)"), 413)

    async def _handle(self, request: web.Request) -> web.Response:
        path, method = request.path, request.method
        malformed = errors.invalid(f"Malformed request: {method} {path}")
        loop = asyncio.get_running_loop()
        if self.router is not None and (experiment := EXPERIMENT_PATH.fullmatch(path)):
            return await self._experiment(request, loop, *experiment.groups())
        if method == "POST":
            match = PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            if request.content_length is not None and request.content_length > self.max_body_bytes:
                return self._too_large(request.content_length)
            body = await request.read()
            model, version, label, verb = match.groups()
            if verb.lower() != "predict":
                raise ServingError(errors.UNIMPLEMENTED,
                                   f"{verb} is not served: this model has predict signatures only; use :predict")
            answer, headers = await loop.run_in_executor(self.pool, self._predict, model, _version(version), label,
                                                         body, request.headers)
            response = _json(answer)
            response.headers.update(headers)
            return response
        if method == "GET":
            match = STATUS_PATH.fullmatch(path)
            if not match:
                raise malformed
            model, version, label, metadata = match.groups()
            if not model:
                raise errors.invalid("Missing model name in request.")
            work = self._metadata if metadata else self._status
            return _json(await loop.run_in_executor(self.pool, work, model, _version(version), label))
        raise malformed

    def _predict(self, model: str, version: Optional[int], label: Optional[str], body: bytes,
                 headers=None) -> Tuple[bytes, Dict[str, str]]:
        doc = requests.parse_json(body)  # TF Serving parses before it looks the model up
        signature_name = requests.signature_name_of(doc)
        assignment = None
        if self.router is not None and version is None and label is None:  # pinned calls bypass experiments
            assignment = self.router.assign(model, lambda field: _field(doc, headers, field))
            label = assignment.label if assignment is not None else None
        with self.router.counting_errors(assignment) if assignment is not None else _NO_ASSIGNMENT:
            servable = self.manager.resolve(model, version, label)
            try:
                try:
                    signature = servable.signature(signature_name)
                except ServingError:
                    raise errors.invalid(f'Serving signature name: "{signature_name or SERVING_SIGNATURE}" '
                                         f'not found in signature def') from None
                feeds, form = requests.feeds_from_json(doc, signature.inputs, signature.defaults)
                outputs = signature.run(feeds)
                if assignment is None:
                    return requests.json_response(outputs, form), {}
                self.router.record(assignment, servable.version, signature.name, feeds, outputs)
                return requests.json_response(outputs, form), assignment.headers()
            finally:
                servable.release()

    async def _experiment(self, request: web.Request, loop, name: str, outcomes: Optional[str]) -> web.Response:
        self.router.authorize(request.headers.get("Authorization"), self.trusted)  # before reading the body
        if request.method == "POST" and outcomes:
            if request.content_length is not None and request.content_length > self.max_body_bytes:
                return self._too_large(request.content_length)
            body = await request.read()
            status, answer = await loop.run_in_executor(self.pool, self.router.record_outcomes, name, body)
            return _json(requests.orjson.dumps(answer), status)
        if request.method == "GET" and not outcomes:
            return _json(requests.orjson.dumps(await loop.run_in_executor(self.pool, self.router.status, name)))
        raise errors.invalid(f"Malformed request: {request.method} {request.path}; experiments take "
                             f"POST /v1/experiments/<name>/outcomes and GET /v1/experiments/<name>")

    def _status(self, model: str, version: Optional[int], label: Optional[str]) -> bytes:
        response = grpc_service.model_status(self.manager, model, version, label)
        return json_format.MessageToJson(response, preserving_proto_field_name=True,
                                         including_default_value_fields=True).encode()

    def _metadata(self, model: str, version: Optional[int], label: Optional[str]) -> bytes:
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        spec = model_pb2.ModelSpec(name=model)
        if version is not None:
            spec.version.value = version
        if label is not None:
            spec.version_label = label
        response = grpc_service.model_metadata(self.manager, spec)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[grpc_service.SIGNATURE_DEF].Unpack(signatures)
        # TF Serving's shape: {"model_spec": ..., "metadata": {"signature_def": <SignatureDefMap>}}
        return requests.orjson.dumps({
            "model_spec": json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True,
                                                    including_default_value_fields=True),
            "metadata": {"signature_def": json_format.MessageToDict(
                signatures, preserving_proto_field_name=True, including_default_value_fields=True)}})


def _field(doc: Dict[str, Any], headers, name: str) -> Any:
    """An experiment's key or request id: a top-level body field, a header, or X-<Name>."""
    if name in doc:
        return doc[name]
    if headers is None:
        return None
    return headers.get(name) or headers.get("X-" + "-".join(p.capitalize() for p in name.split("_")))


def _version(text: Optional[str]) -> Optional[int]:
    return int(text) if text else None


class RestServer:
    """The REST API on its own event-loop thread."""

    def __init__(self, api: RestApi, port: int, host: str = "0.0.0.0"):
        self.api, self.host, self.port = api, host, port
        self._loop = asyncio.new_event_loop()
        self._runner: Optional[web.AppRunner] = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest-loop", daemon=True)

    def start(self) -> int:
        async def setup():
            self._runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=1024)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(setup(), self._loop).result(timeout=30)
        return self.port

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.api.pool.shutdown(wait=False)

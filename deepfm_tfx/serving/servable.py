"""One loaded model version: a TF Session over its SavedModel, like TF Serving's.

TF Serving runs a SavedModel's signatures with `Session::Run`; so do we, through
`Session.make_callable`, the cheapest way Python has to run a graph. Both
trainers' SavedModels (Keras and Estimator) load this way, and Session.run
releases the GIL, so request threads run the model in parallel.

`inter_op_parallelism_threads=-1` runs each request's ops in the calling
thread: for a graph this small a hand-off to a pool costs more than it saves,
and the request threads already give the parallelism.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from deepfm_tfx.contracts import SERVE_TAG, SERVING_SIGNATURE
from deepfm_tfx.serving import batching, errors, requests, warmup
from deepfm_tfx.serving.errors import ServingError

# Signatures TF writes for itself, not for clients.
_PRIVATE_SIGNATURES = ("__saved_model_init_op",)


def session_config(intra_op_threads: int = 1, inter_op_threads: int = -1) -> tf.compat.v1.ConfigProto:
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                    inter_op_parallelism_threads=inter_op_threads,
                                    allow_soft_placement=True)


class Signature:
    """A SignatureDef, with callables per output set and its input defaults as arrays."""

    def __init__(self, name: str, sig: meta_graph_pb2.SignatureDef, session: tf.compat.v1.Session,
                 batcher: Optional[batching.Batcher] = None):
        self.name = name
        self.signature_def = sig
        self.method_name = sig.method_name
        self.inputs: Dict[str, requests.TensorSpec] = {
            k: requests.TensorSpec.from_tensor_info(k, v) for k, v in sig.inputs.items()}
        self.outputs: Dict[str, requests.TensorSpec] = {
            k: requests.TensorSpec.from_tensor_info(k, v) for k, v in sig.outputs.items()}
        self.defaults: Dict[str, np.ndarray] = {k: tf.make_ndarray(v) for k, v in sig.defaults.items()}
        self.input_order: List[str] = sorted(self.inputs)
        self._session = session
        self._batcher = batcher
        # Rows can be stacked only if every input and output has them as its first axis.
        self._batchable = all(s.shape and s.shape[0] == -1 for s in list(self.inputs.values()) +
                              list(self.outputs.values()))
        self._callables: Dict[Tuple[str, ...], object] = {}
        self._lock = threading.Lock()

    def _callable(self, outputs: Tuple[str, ...]):
        fn = self._callables.get(outputs)
        if fn is None:
            with self._lock:
                fn = self._callables.get(outputs)
                if fn is None:
                    fn = self._session.make_callable(
                        [self.outputs[k].tensor_name for k in outputs],
                        [self.inputs[k].tensor_name for k in self.input_order])
                    self._callables[outputs] = fn
        return fn

    def check_inputs(self, feeds: Dict[str, np.ndarray]) -> None:
        """TF Serving's rule: no unknown inputs; a missing input needs a default."""
        sent, known = set(feeds), set(self.inputs)
        extra = sent - known
        missing = known - sent - set(self.defaults)
        if extra or missing:
            raise errors.invalid(
                f"input size does not match signature: {len(sent)}!={len(known)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(known))}}}). "
                f"Sent extra: {{{','.join(sorted(extra))}}}. Missing but required: {{{','.join(sorted(missing))}}}.")
        if feeds and all(a.ndim > 0 and a.shape[0] == 0 for a in feeds.values()):
            raise errors.invalid("empty batch: the request has no rows")

    def run(self, feeds: Dict[str, np.ndarray], output_filter: Sequence[str] = (),
            batch: bool = True) -> Dict[str, np.ndarray]:
        self.check_inputs(feeds)
        if output_filter:
            for alias in output_filter:
                if alias not in self.outputs:
                    raise errors.invalid(f"output tensor alias not found in signature: {alias} Outputs expected "
                                         f"to be in the set {{{','.join(sorted(self.outputs))}}}.")
            if len(set(output_filter)) != len(output_filter):
                raise errors.invalid("duplicate output tensor alias in output_filter")
            names = tuple(output_filter)
        else:
            names = tuple(sorted(self.outputs))
        if batch and self._batcher is not None and self._batchable:
            rows = {a.shape[0] for a in feeds.values()}
            if len(rows) == 1:  # a request whose inputs disagree on rows runs (and fails) alone
                key = (id(self), tuple(sorted(feeds)), names)
                return self._batcher.run(key, lambda merged: self._execute(merged, names), feeds, rows.pop())
        return self._execute(feeds, names)

    def _execute(self, feeds: Dict[str, np.ndarray], names: Tuple[str, ...]) -> Dict[str, np.ndarray]:
        args = [feeds[k] if k in feeds else self.defaults[k] for k in self.input_order]
        try:
            values = self._callable(names)(*args)
        except tf.errors.OpError as e:
            raise errors.from_tf_error(e) from None
        except UnicodeDecodeError:  # TF's message quoted the bad input, which is not UTF-8
            raise errors.invalid(f"the {self.name} signature could not parse its input (bytes that are not "
                                 f"what it expects, e.g. not a serialized tf.Example)") from None
        except (ValueError, TypeError) as e:  # the feed did not fit the placeholder
            raise errors.invalid(str(e)) from None
        return dict(zip(names, values))


class Servable:
    """A loaded version. Requests hold it with acquire()/release(); once retired,
    its Session closes when the last request that holds it finishes."""

    def __init__(self, model: str, version: int, path: str, config: Optional[tf.compat.v1.ConfigProto] = None,
                 batcher: Optional[batching.Batcher] = None):
        self.model, self.version, self.path = model, int(version), path
        self._config = config or session_config()
        self._batcher = batcher
        self.graph: Optional[tf.Graph] = None
        self.session: Optional[tf.compat.v1.Session] = None
        self.meta_graph: Optional[meta_graph_pb2.MetaGraphDef] = None
        self.signatures: Dict[str, Signature] = {}
        self._inflight = 0
        self._retired = False
        self._lock = threading.Lock()
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0
        self.warmup_requests = 0

    def load(self) -> "Servable":
        started = time.monotonic()
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=self._config)
        with self.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, [SERVE_TAG], self.path)
        self.signatures = {name: Signature(name, sig, self.session, self._batcher)
                           for name, sig in self.meta_graph.signature_def.items()
                           if name not in _PRIVATE_SIGNATURES}
        self.load_seconds = time.monotonic() - started
        return self

    def warm_up(self, folder: Optional[str] = None) -> int:
        """Replays the version's warmup file (contracts.WARMUP_FILE), as TF Serving does at load;
        `folder`: a candidate's, kept beside it until it is pushed."""
        started = time.monotonic()
        count = 0
        for request in warmup.read_requests(folder or self.path):
            signature = self.signature(request.model_spec.signature_name)
            # In this (loader) thread, not the batch runners: a warmup must not take their turn.
            signature.run(requests.feeds_from_tensor_protos(request.inputs, signature),
                          tuple(request.output_filter), batch=False)
            count += 1
        self.warmup_requests, self.warmup_seconds = count, time.monotonic() - started
        return count

    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name or SERVING_SIGNATURE)
        if sig is None:
            raise ServingError(errors.FAILED_PRECONDITION,
                               f'Serving signature key "{name or SERVING_SIGNATURE}" not found.')
        return sig

    def acquire(self) -> bool:
        with self._lock:
            if self._retired:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._inflight == 0
        if close:
            self._close()

    def _close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def __repr__(self) -> str:
        return f"Servable({self.model}/{self.version} at {os.path.basename(self.path)})"

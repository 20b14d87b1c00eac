"""The `deepfm-tfx serve` process: a model manager, a gRPC server and a REST server.

Like TF Serving's model server, it loads (and warms) the versions models.config
names before it opens its ports, answers gRPC on --port and REST on
--rest-api-port (0 turns REST off), and reloads models.config while it runs.
A/B tests are the caller's: it passes a router (deepfm_tfx.experiments'
ExperimentRouter) or none, so serving does not depend on experiments.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Optional

from deepfm_tfx import machine
from deepfm_tfx.contracts import EXIT_BAD_INPUT, EXIT_ERROR

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Batches of at most 400 rows let the 8 x 100 rows that 8 callers keep in flight split over the two
# batch threads (one per core), where 1,024 had one thread take all 800 while the other waited:
# p50 13.5 -> 10.5 ms and 580 -> 750 calls/s at 8 gRPC clients, better at 32 too. A 3 ms timeout cut
# the CPU per call by a third at 8 clients. Both in docs/performance.md.
MAX_BATCH_ROWS = 400
BATCH_TIMEOUT_MS = 3.0
class ModelServer:
    """Ports: None turns a protocol off, 0 picks a free port (tests, benchmarks).

    `router` splits un-pinned requests between a model's stable and canary and
    logs them (start, stop, assign, record, record_outcomes, status); None serves
    without experiments."""

    def __init__(self, repository: str, grpc_port: Optional[int] = 8500, rest_port: Optional[int] = 8501,
                 config_file: Optional[str] = None, poll_seconds: float = 1.0,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, grpc_threads: int = 16, rest_threads: int = 8,
                 host: str = "0.0.0.0", intra_op_threads: int = 1, inter_op_threads: int = -1,
                 router=None, loader_nice: int = 10, batch_threads: int = 2,
                 max_batch_rows: int = MAX_BATCH_ROWS, outcomes_port: Optional[int] = None,
                 outcomes_host: str = "127.0.0.1", batch_timeout_ms: float = BATCH_TIMEOUT_MS):
        from deepfm_tfx.serving import batching, loader, servable

        config = servable.session_config(intra_op_threads, inter_op_threads)
        self.batcher = batching.Batcher(batch_threads, max_batch_rows, batch_timeout_ms) if batch_threads > 0 else None
        self.manager = loader.ModelManager(
            repository, config_file, poll_seconds,
            load=lambda model, version, path: servable.Servable(model, version, path, config, self.batcher).load(),
            loader_nice=loader_nice)
        self.router = router
        self._ports = (grpc_port, rest_port)
        self._limits = (max_body_bytes, grpc_threads, rest_threads, host)
        # The experiments' trusted listener (outcomes and status), apart from the clients' port.
        self._outcomes = (outcomes_port, outcomes_host)
        self.grpc_server = None
        self.rest_server = None
        self.outcomes_server = None
        self.grpc_port: Optional[int] = None
        self.rest_port: Optional[int] = None
        self.outcomes_port: Optional[int] = None

    def start(self) -> "ModelServer":
        from deepfm_tfx.serving import grpc_service, rest

        grpc_port, rest_port = self._ports
        max_body_bytes, grpc_threads, rest_threads, host = self._limits
        self.manager.start()
        if self.router is not None:
            self.router.start()
        if grpc_port is not None:
            self.grpc_server, self.grpc_port = grpc_service.build_server(
                self.manager, grpc_port, grpc_threads, max_body_bytes, host, self.router)
            self.grpc_server.start()
        if rest_port is not None:
            self.rest_server = rest.RestServer(rest.RestApi(self.manager, rest_threads, max_body_bytes, self.router),
                                               rest_port, host)
            self.rest_port = self.rest_server.start()
        outcomes_port, outcomes_host = self._outcomes
        if self.router is not None and outcomes_port is not None:
            self.outcomes_server = rest.RestServer(
                rest.RestApi(self.manager, 2, max_body_bytes, self.router, trusted=True), outcomes_port, outcomes_host)
            self.outcomes_port = self.outcomes_server.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
        for rest_server in (self.rest_server, self.outcomes_server):
            if rest_server is not None:
                rest_server.stop()
        if self.router is not None:
            self.router.stop()  # after the servers: every answered prediction is in the log
        self.manager.stop()
        if self.batcher is not None:
            self.batcher.stop()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser, default_repository: Optional[str] = None) -> None:
    """The flags, named like TF Serving's; importing this module does not import TensorFlow."""
    parser.add_argument("--model-repository", required=default_repository is None, default=default_repository,
                        help="the model repository (it holds models.config and <model>/<version>/): a folder, "
                             "or s3://bucket/prefix with the endpoint and keys in the AWS_* variables")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument("--rest-api-port", type=int, default=8501, help="REST port; 0 turns REST off")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--model-config-file", help="TF Serving's config (default: <model-repository>/models.config)")
    parser.add_argument("--model-config-file-poll-wait-seconds", type=float, default=1.0,
                        help="how often models.config and the version folders are checked")
    parser.add_argument("--rest-max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest request body (REST) and message (gRPC) accepted")
    parser.add_argument("--grpc-threads", type=int, default=16, help="gRPC request threads")
    parser.add_argument("--rest-threads", type=int, default=8, help="REST request threads")
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="TF threads inside one op")
    parser.add_argument("--batch-threads", type=int, default=2,
                        help="threads that run concurrent requests to a signature as one batch (one per core); "
                             "0 runs each request alone in its own thread")
    parser.add_argument("--max-batch-rows", type=int, default=MAX_BATCH_ROWS,
                        help="largest batch those threads run; a larger request runs alone")
    parser.add_argument("--batch-timeout-ms", type=float, default=BATCH_TIMEOUT_MS,
                        help="how long a batch waits for more requests before it runs (TF Serving's "
                             "batch_timeout_micros), only while requests come concurrently; 0 runs at once")
    parser.add_argument("--loader-nice", type=int, default=10,
                        help="CPU priority (nice) of the thread that loads and warms new versions, so a load "
                             "slows requests less")
    parser.add_argument("--inter-op-threads", type=int, default=-1,
                        help="TF threads across ops; -1 runs a request's ops in its own thread")
    machine.add_allocator_argument(parser, "10-15%% less CPU per call")


def run(args: argparse.Namespace, router=None) -> int:
    """Serves until SIGINT or SIGTERM; `router` as in ModelServer. Call machine.reexec_with_allocator(args)
    first, before anything else is set up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # the TF1 loader's deprecation notices
    from deepfm_tfx import model_repository
    if model_repository.is_store(args.model_repository):
        config_file = f"{args.model_repository.rstrip('/')}/{model_repository.CONFIG_FILE}"
        if args.model_config_file:
            print(f"error: --model-config-file: a repository in an object store is served from its own "
                  f"{config_file}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            found = model_repository.read_file(args.model_repository, model_repository.CONFIG_FILE) is not None
        except OSError as e:  # the store is unreachable or refuses: not the user's input
            print(f"error: --model-repository {args.model_repository}: {e}", file=sys.stderr)
            return EXIT_ERROR
    else:
        if not os.path.isdir(args.model_repository):
            print(f"error: {args.model_repository}: no such model repository", file=sys.stderr)
            return EXIT_BAD_INPUT
        config_file = args.model_config_file or os.path.join(args.model_repository, "models.config")
        found = os.path.exists(config_file)
    if not found:
        print(f"error: {config_file} does not exist; push a model first (deepfm-tfx run)", file=sys.stderr)
        return EXIT_BAD_INPUT
    server = ModelServer(
        args.model_repository, args.port, args.rest_api_port or None, config_file,
        args.model_config_file_poll_wait_seconds, args.rest_max_body_bytes, args.grpc_threads, args.rest_threads,
        args.host, args.intra_op_threads, args.inter_op_threads, router, args.loader_nice,
        args.batch_threads, args.max_batch_rows,
        getattr(args, "outcomes_port", 0) or None, getattr(args, "outcomes_host", "127.0.0.1"),
        batch_timeout_ms=args.batch_timeout_ms)
    try:
        server.start()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        server.stop(grace=0)
        return EXIT_ERROR
    manager = server.manager
    for model in manager.models():
        labels = ", ".join(f"{k}={v}" for k, v in sorted(manager.labels(model).items())) or "no labels"
        versions = ", ".join(f"{v} {s.state}" for v, s in manager.status(model))
        print(f"serving {model}: versions {versions}; {labels}", flush=True)
    if manager.config_error:
        print(f"warning: {manager.config_error}", file=sys.stderr)
    print(f"gRPC on {args.host}:{server.grpc_port}"
          + (f", REST on http://{args.host}:{server.rest_port}/v1/models/<name>" if server.rest_port else "")
          + (f", experiment outcomes on http://{server._outcomes[1]}:{server.outcomes_port}/v1/experiments/<name>"
             if server.outcomes_port else "")
          + f"; watching {config_file}. Ctrl-C stops.", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1.0):
        pass
    print("stopping: finishing requests in flight", flush=True)
    server.stop()
    return 0


def main(argv=None) -> int:
    """The server alone, without experiments (the benchmark's); `deepfm-tfx serve` adds them."""
    parser = argparse.ArgumentParser(prog="deepfm-tfx serve", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.own_process = argv is None
    machine.reexec_with_allocator(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""`deepfm-tfx serve` in its own process, serving the simulation's model repository."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Optional

from deepfm_tfx.contracts import OUTCOMES_TOKEN_ENV

SERVE_LOG = "serve.log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`deepfm-tfx serve` in its own process, as production runs it; stopped with SIGTERM,
    which flushes the prediction logs."""

    def __init__(self, repository: str, experiments_dir: str, log_dir: str):
        self.repository, self.experiments_dir, self.log_dir = repository, experiments_dir, log_dir
        self.rest_port, self.grpc_port, self.outcomes_port = _free_port(), _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.outcomes_url = f"http://127.0.0.1:{self.outcomes_port}"  # the event pipeline's listener
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 300.0) -> "ServerProcess":
        log = open(os.path.join(self.log_dir, SERVE_LOG), "ab")
        command = [sys.executable, "-c", "import sys; from deepfm_tfx.pipeline.cli import main; sys.exit(main())",
                   "serve", "--model-repository", self.repository, "--experiments-dir", self.experiments_dir,
                   "--host", "127.0.0.1", "--port", str(self.grpc_port), "--rest-api-port", str(self.rest_port),
                   "--outcomes-port", str(self.outcomes_port),
                   "--model-config-file-poll-wait-seconds", "0.5"]
        # The outcomes listener is the simulation's trust boundary: no token from the caller's environment.
        env = {k: v for k, v in os.environ.items() if k != OUTCOMES_TOKEN_ENV}
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"deepfm-tfx serve exited with {self.process.returncode}; see "
                                   f"{os.path.join(self.log_dir, SERVE_LOG)}")
            try:
                urllib.request.urlopen(f"{self.url}/v1/models/none", timeout=2)
            except urllib.error.HTTPError:
                return self  # it answers (404: no such model)
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"deepfm-tfx serve did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

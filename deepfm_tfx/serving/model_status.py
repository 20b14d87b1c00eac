"""Waits until a server reports a version AVAILABLE, over TF Serving's REST status API.

The label moves of `deepfm-tfx models` use it between their two steps. It
speaks plain HTTP (`GET /v1/models/<name>/versions/<N>`), so it works against
TF Serving and `deepfm-tfx serve` alike, and it imports no TensorFlow (TF
Serving's gRPC stubs import all of it).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Callable, Optional


class NotAvailable(RuntimeError):
    pass


def version_state(server_url: str, model: str, version: int, timeout: float = 5.0) -> Optional[str]:
    """AVAILABLE, LOADING, END...; None when the server does not know the version (yet)."""
    url = f"{server_url.rstrip('/')}/v1/models/{model}/versions/{version}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise NotAvailable(f"{url}: HTTP {e.code} {e.read()[:200]!r}") from None
    for status in body.get("model_version_status", []):
        if int(status.get("version", -1)) == version:
            if status.get("state") == "END" and status.get("status", {}).get("error_message"):
                raise NotAvailable(f"{model} version {version} failed to load on {server_url}: "
                                   f"{status['status']['error_message']}")
            return status.get("state")
    return None


def waiter(server_url: str, timeout: float = 300.0, poll: float = 0.5) -> Callable[[str, int], None]:
    """wait(model, version): returns once `server_url` serves it, raises NotAvailable after `timeout`."""
    def wait(model: str, version: int) -> None:
        deadline = time.monotonic() + timeout
        state, last_error = None, None
        while time.monotonic() < deadline:
            try:
                state = version_state(server_url, model, version)
                last_error = None
            except (urllib.error.URLError, OSError) as e:  # not up yet, or restarting
                last_error = e
            if state == "AVAILABLE":
                return
            time.sleep(poll)
        why = f"cannot reach it ({last_error})" if last_error else f"its state is {state or 'unknown'}"
        raise NotAvailable(f"{server_url} did not report {model} version {version} AVAILABLE within {timeout:.0f}s: "
                           f"{why}")
    return wait

"""Concurrent requests to one signature, run as one Session.run (TF Serving's batching).

A run of this model has a large fixed cost (a few hundred small ops, whatever
the row count): 100 rows cost about twice what they cost inside an 800-row
run. So request threads queue their rows and a few runner threads (one per
core) take everything queued for the same signature and input set, up to
`max_rows`, run it once and hand each request its slice. With no timeout
nothing waits for a batch to fill: one request alone runs at once, and batches
form only while runners are busy, which is exactly when they pay. A timeout
(TF Serving's batch_timeout_micros) makes a runner wait that long for more
rows first: fewer, larger runs under load. Unlike TF Serving's, it applies
only while requests come concurrently (the previous batch held more than
one), so a lone client never waits for company that is not coming.

A batch that fails is re-run request by request, so one bad request gets its
own error and the others their answers.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Deque, Dict, Hashable, List, Optional

import numpy as np

from deepfm_tfx.serving.errors import ServingError

Feeds = Dict[str, np.ndarray]
Run = Callable[[Feeds], Dict[str, np.ndarray]]


class _Item:
    __slots__ = ("key", "run", "feeds", "rows", "done", "result", "error")

    def __init__(self, key: Hashable, run: Run, feeds: Feeds, rows: int):
        self.key, self.run, self.feeds, self.rows = key, run, feeds, rows
        self.done = threading.Event()
        self.result: Optional[Dict[str, np.ndarray]] = None
        self.error: Optional[BaseException] = None


class Batcher:
    def __init__(self, threads: int, max_rows: int, timeout_ms: float):
        self.max_rows = max_rows
        self.timeout = timeout_ms / 1000.0
        self._last_batch_requests = 1
        self._queue: Deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self.batches = self.requests = 0  # what batching did, for the curious
        self._threads = [threading.Thread(target=self._loop, name=f"batch-runner-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def run(self, key: Hashable, run: Run, feeds: Feeds, rows: int) -> Dict[str, np.ndarray]:
        """`run(feeds)`, possibly together with other requests of the same `key`."""
        item = _Item(key, run, feeds, rows)
        with self._cond:
            if self._stopped:
                raise RuntimeError("batcher stopped")
            self._queue.append(item)
            self._cond.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _queued_rows(self, key: Hashable) -> int:
        return sum(item.rows for item in self._queue if item.key == key)

    def _take(self) -> Optional[List[_Item]]:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self.timeout and self._queue and self._last_batch_requests > 1:
                # TF Serving's batch_timeout: wait a little for more rows, so runs are fewer and larger.
                key, deadline = self._queue[0].key, time.monotonic() + self.timeout
                while not self._stopped and self._queue and self._queued_rows(key) < self.max_rows:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if not self._queue:
                return None
            first = self._queue.popleft()
            batch, rows, others = [first], first.rows, collections.deque()
            while self._queue:
                item = self._queue.popleft()
                if item.key == first.key and rows + item.rows <= self.max_rows:
                    batch.append(item)
                    rows += item.rows
                else:
                    others.append(item)
            self._queue = others  # the rest keep their order
            self._last_batch_requests = len(batch)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self.batches += 1
            self.requests += len(batch)
            if len(batch) == 1:
                self._run_one(batch[0])
                continue
            try:
                merged = {k: np.concatenate([item.feeds[k] for item in batch]) for k in batch[0].feeds}
                outputs = batch[0].run(merged)
                total = sum(item.rows for item in batch)
                if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
                    raise ValueError("an output is not batched along the rows")
            except (ServingError, ValueError):
                for item in batch:  # one bad request must not fail the others
                    self._run_one(item)
                continue
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                for item in batch:
                    item.error = e
                    item.done.set()
                continue
            start = 0
            for item in batch:
                item.result = {k: v[start:start + item.rows] for k, v in outputs.items()}
                start += item.rows
                item.done.set()

    @staticmethod
    def _run_one(item: _Item) -> None:
        try:
            item.result = item.run(item.feeds)
        except BaseException as e:  # noqa: BLE001 - re-raised in the request's own thread
            item.error = e
        item.done.set()

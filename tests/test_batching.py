"""The server's batcher: concurrent requests to one signature run as one batch, each answered with its own rows."""
import threading
import time

import numpy as np

from deepfm_tfx.serving import batching


def run_concurrently(batcher, sizes, key="sig"):
    runs = []

    def double(feeds):
        runs.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    answers = [None] * len(sizes)

    def request(i):
        x = np.arange(sizes[i], dtype=np.float32) + 1000 * i
        answers[i] = (x, batcher.run(key, double, {"x": x}, sizes[i])["y"])

    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
        time.sleep(0.002)  # they arrive one after another, as clients' requests do
    for t in threads:
        t.join(timeout=10)
    return runs, answers


def test_a_timeout_gathers_requests_that_arrive_within_it_into_one_run():
    batcher = batching.Batcher(threads=1, max_rows=1024, timeout_ms=200)
    try:
        runs, answers = run_concurrently(batcher, [100] * 6)
    finally:
        batcher.stop()
    assert runs == [600]
    for x, y in answers:
        np.testing.assert_array_equal(y, x * 2)


def test_the_timeout_ends_as_soon_as_a_batch_is_full():
    batcher = batching.Batcher(threads=1, max_rows=200, timeout_ms=5_000)
    started = time.monotonic()
    try:
        runs, answers = run_concurrently(batcher, [100, 100])
    finally:
        batcher.stop()
    assert runs == [200] and time.monotonic() - started < 2
    assert all(np.array_equal(y, x * 2) for x, y in answers)


def test_without_a_timeout_a_lone_request_runs_at_once():
    batcher = batching.Batcher(threads=1, max_rows=1024, timeout_ms=0)
    try:
        started = time.monotonic()
        runs, [(x, y)] = run_concurrently(batcher, [100])
        assert time.monotonic() - started < 1 and runs == [100]
        np.testing.assert_array_equal(y, x * 2)
    finally:
        batcher.stop()

"""The server's batcher: concurrent requests to one signature run as one batch, each answered with its own rows."""
import threading
import time

import numpy as np

from deepfm_tfx.serving import batching


class Model:
    """Doubles its input; records the rows of each run. The first run is slow, so requests queue behind it."""

    def __init__(self, first_run_seconds=0.0):
        self.runs = []
        self.first_run_seconds = first_run_seconds
        self.running = threading.Event()  # set once the first run has begun

    def __call__(self, feeds):
        if not self.runs:
            self.running.set()
            time.sleep(self.first_run_seconds)
        self.runs.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}


def send(batcher, model, sizes, gap=0.002):
    """Requests from concurrent clients, `gap` seconds apart; each client's (input, answer)."""
    answers = [None] * len(sizes)

    def request(i):
        x = np.arange(sizes[i], dtype=np.float32) + 1000 * i
        answers[i] = (x, batcher.run("sig", model, {"x": x}, sizes[i])["y"])

    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
        time.sleep(gap)
    for t in threads:
        t.join(timeout=10)
    return answers


def behind_a_slow_run(batcher, model, sizes):
    """One request, then `sizes` sent once the model runs it (alone, slowly), so they queue behind
    it whatever the machine's load (sent together, a busy machine once let two into the first run)."""
    first = []
    client = threading.Thread(target=lambda: first.extend(send(batcher, model, [100])))
    client.start()
    assert model.running.wait(10)
    rest = send(batcher, model, sizes)
    client.join(10)
    return first + rest


def test_under_concurrent_load_a_timeout_gathers_the_requests_that_arrive_within_it():
    batcher = batching.Batcher(threads=1, max_rows=1024, timeout_ms=300)
    model = Model(first_run_seconds=0.5)
    try:
        first = behind_a_slow_run(batcher, model, [100] * 5)
        second = send(batcher, model, [100] * 6)  # now the batcher waits for them
    finally:
        batcher.stop()
    assert model.runs == [100, 500, 600]
    for x, y in first + second:
        np.testing.assert_array_equal(y, x * 2)


def test_the_timeout_ends_as_soon_as_a_batch_is_full():
    batcher = batching.Batcher(threads=1, max_rows=200, timeout_ms=5_000)
    model = Model(first_run_seconds=0.5)
    try:
        behind_a_slow_run(batcher, model, [100] * 2)  # a batch of two requests: the next one waits
        started = time.monotonic()
        answers = send(batcher, model, [100, 100])
        assert time.monotonic() - started < 2 and model.runs[-1] == 200
    finally:
        batcher.stop()
    assert all(np.array_equal(y, x * 2) for x, y in answers)


def test_a_lone_client_never_waits_for_the_timeout():
    batcher = batching.Batcher(threads=1, max_rows=1024, timeout_ms=5_000)
    model = Model()
    try:
        started = time.monotonic()
        for _ in range(5):
            [(x, y)] = send(batcher, model, [100], gap=0)
            np.testing.assert_array_equal(y, x * 2)
        assert time.monotonic() - started < 2 and model.runs == [100] * 5
    finally:
        batcher.stop()

"""Beam asks each DoFn for its state and timer specs again and again; this answers once per DoFn.

`apache_beam.transforms.userstate.get_dofn_specs` inspects the signature of every
method of a DoFn, and Beam calls it several times for the same DoFn object (at
construction, at translation, when the runner walks the graph, when a bundle
processor is built). A small run of our pipeline made 3,475 calls on 777 DoFns,
about 10% of its CPU (docs/performance.md, "Fixed costs of a run").

The answer depends only on the DoFn's methods, which Beam never changes on a
DoFn it has built, so it is kept per object, by identity, for as long as the
object lives. Objects that cannot be weakly referenced are inspected as before.
`install()` is idempotent; our Beam executors take `Installed`, which calls it
before their pipeline is built.
"""
from __future__ import annotations

import threading
import weakref

_lock = threading.Lock()
_installed = False


def install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        from apache_beam.transforms import userstate
        userstate.get_dofn_specs = _cached(userstate.get_dofn_specs)
        _installed = True


class Installed:
    """For a BaseBeamExecutor (first among its bases): the cache is in place before its pipeline is built."""

    def _make_beam_pipeline(self):
        install()
        return super()._make_beam_pipeline()


def _cached(inspect_specs):
    cache = {}  # id(dofn) -> (weakref to it, its specs)

    def get_dofn_specs(dofn):
        key = id(dofn)
        hit = cache.get(key)
        if hit is None or hit[0]() is not dofn:
            state, timers = inspect_specs(dofn)
            try:
                ref = weakref.ref(dofn, lambda _, key=key: cache.pop(key, None))
            except TypeError:
                return state, timers
            hit = cache[key] = (ref, (state, timers))
        state, timers = hit[1]
        return set(state), set(timers)  # callers get their own sets, as before

    get_dofn_specs.__wrapped__ = inspect_specs
    get_dofn_specs.__doc__ = inspect_specs.__doc__
    return get_dofn_specs

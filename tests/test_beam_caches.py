"""Beam's caches (components/beam_caches.py): DoFn specs equal to Beam's own inspection, one inspection
per DoFn object, stateful DoFns still keep their state in a pipeline run with them; state-cache weights
equal to Beam's own, also after a module is loaded; dill's level as before; every options class parsed
as Beam parses it, with no value shared between two options objects."""
import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate

from deepfm_tfx.components import beam_caches

# Beam's own inspection, whether or not this process installed the cache already.
BEAMS_OWN = getattr(userstate.get_dofn_specs, "__wrapped__", userstate.get_dofn_specs)
COUNT = userstate.ReadModifyWriteStateSpec("count", VarIntCoder())


class _RunningCount(beam.DoFn):
    def process(self, element, count=beam.DoFn.StateParam(COUNT)):
        seen = (count.read() or 0) + 1
        count.write(seen)
        yield element[0], seen


class _Plain(beam.DoFn):
    def process(self, element):
        yield element


def test_cached_specs_are_beams_and_each_dofn_is_inspected_once():
    calls = []

    def inspect(dofn):
        calls.append(dofn)
        return BEAMS_OWN(dofn)
    cached = beam_caches._cached(inspect)
    stateful, plain = _RunningCount(), _Plain()
    assert cached(stateful) == ({COUNT}, set()) and cached(plain) == (set(), set())
    assert cached(stateful) == ({COUNT}, set()) and cached(plain) == (set(), set())
    assert calls == [stateful, plain]
    cached(stateful)[0].clear()  # a caller changing its sets does not change the next answer
    assert cached(stateful) == ({COUNT}, set())
    # A DoFn like another, but another object: inspected for itself.
    assert cached(_RunningCount()) == ({COUNT}, set()) and len(calls) == 3


def test_a_stateful_dofn_keeps_its_state_per_key_with_the_cache_installed():
    beam_caches.install()
    beam_caches.install()  # idempotent: one wrapper, not two
    assert not hasattr(userstate.get_dofn_specs.__wrapped__, "__wrapped__")
    with beam.Pipeline() as pipeline:
        counts = (pipeline | beam.Create([("a", 1), ("b", 1), ("a", 1), ("a", 1)])
                  | beam.ParDo(_RunningCount()))
        assert_that(counts, equal_to([("a", 1), ("a", 2), ("a", 3), ("b", 1)]))


def test_state_cache_weights_are_beams_before_and_after_a_module_loads(monkeypatch):
    import sys
    import types

    import numpy as np
    from apache_beam.runners.worker import statecache
    beams_own = getattr(statecache.get_deep_size, "__wrapped__", statecache.get_deep_size)
    sizer = beam_caches._sizer(statecache)
    shared = {"weights": np.arange(1000.0)}
    values = [[1, 2, 3], {"a": b"x" * 100, "b": [shared, shared]}, np.zeros((10, 10)), ("s", None),
              _RunningCount(), statecache, sys.modules[__name__].__dict__]
    for value in values:
        assert sizer(value) == beams_own(value), value
    # A module loaded after the first call: its globals are left out from then on, as Beam does.
    module = types.ModuleType("late_module")
    module.table = list(range(1000))
    holder = [vars(module)]
    before = sizer(holder)
    monkeypatch.setitem(sys.modules, "late_module", module)
    assert sizer(holder) == beams_own(holder) < before
    monkeypatch.delitem(sys.modules, "late_module")
    assert sizer(holder) == beams_own(holder) == before


def test_dills_level_is_set_as_before_and_only_when_it_changes(monkeypatch):
    import logging

    from dill import _dill
    calls = []
    beams_own = getattr(_dill._trace, "__wrapped__", _dill._trace)

    def trace(boolean):
        calls.append(boolean)
        beams_own(boolean)
    monkeypatch.setattr(_dill.log, "level", logging.WARN)  # as Beam leaves it; restored after the test
    quiet = beam_caches._level_when_changed(_dill.log, trace)
    for boolean, level in ((False, logging.WARN), (False, logging.WARN), (True, logging.INFO),
                           (True, logging.INFO), (False, logging.WARN)):
        quiet(boolean)
        assert _dill.log.level == level
    assert calls == [True, False]


def test_options_parsed_once_are_beams_and_no_two_objects_share_a_value(monkeypatch):
    from apache_beam.options import pipeline_options as po
    beams_own = getattr(po.PipelineOptions.__init__, "__wrapped__", po.PipelineOptions.__init__)
    kept = beam_caches._parsed_once(beams_own)
    flags = ["--direct_num_workers=2", "--experiments=a", "--experiments=b", "--runner=DirectRunner",
             "--temp_location=/tmp/x", "--not_an_option=1"]
    classes = [po.PipelineOptions, po.StandardOptions, po.TypeOptions, po.DebugOptions, po.DirectOptions,
               po.GoogleCloudOptions, po.SetupOptions, po.WorkerOptions, po.PortableOptions]
    for cls in classes:
        for args in (flags, [], None):
            monkeypatch.setattr(po.PipelineOptions, "__init__", beams_own)
            expected = cls(args, job_name="j") if cls is po.GoogleCloudOptions else cls(args)
            monkeypatch.setattr(po.PipelineOptions, "__init__", kept)
            for _ in range(2):  # parsed, then kept
                got = cls(args, job_name="j") if cls is po.GoogleCloudOptions else cls(args)
                assert str(got) == str(expected) and got._all_options == expected._all_options, cls
    # A view that appends to a list option changes its own options object only.
    first = po.PipelineOptions(flags)
    first.view_as(po.DebugOptions).add_experiment("z")
    assert first.view_as(po.DebugOptions).experiments == ["a", "b", "z"]
    assert po.PipelineOptions(flags).view_as(po.DebugOptions).experiments == ["a", "b"]

"""The DoFn specs cache (components/dofn_specs_cache.py): the same answers as Beam's own inspection,
one inspection per DoFn object, and stateful DoFns still keep their state in a pipeline run with it."""
import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate

from deepfm_tfx.components import dofn_specs_cache

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
    cached = dofn_specs_cache._cached(inspect)
    stateful, plain = _RunningCount(), _Plain()
    assert cached(stateful) == ({COUNT}, set()) and cached(plain) == (set(), set())
    assert cached(stateful) == ({COUNT}, set()) and cached(plain) == (set(), set())
    assert calls == [stateful, plain]
    cached(stateful)[0].clear()  # a caller changing its sets does not change the next answer
    assert cached(stateful) == ({COUNT}, set())
    # A DoFn like another, but another object: inspected for itself.
    assert cached(_RunningCount()) == ({COUNT}, set()) and len(calls) == 3


def test_a_stateful_dofn_keeps_its_state_per_key_with_the_cache_installed():
    dofn_specs_cache.install()
    dofn_specs_cache.install()  # idempotent: one wrapper, not two
    assert not hasattr(userstate.get_dofn_specs.__wrapped__, "__wrapped__")
    with beam.Pipeline() as pipeline:
        counts = (pipeline | beam.Create([("a", 1), ("b", 1), ("a", 1), ("a", 1)])
                  | beam.ParDo(_RunningCount()))
        assert_that(counts, equal_to([("a", 1), ("a", 2), ("a", 3), ("b", 1)]))

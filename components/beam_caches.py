"""Work Beam repeats on every call that changes nothing between calls, done once: a DoFn's
state specs, the set of module globals its state cache leaves out of a value's size, the
dill logger's level, and the parse of the pipeline options' flags.

- **DoFn specs.** `apache_beam.transforms.userstate.get_dofn_specs` inspects the signature
  of every method of a DoFn, and Beam calls it several times for the same DoFn object (at
  construction, at translation, when the runner walks the graph, when a bundle processor
  is built). A small run of our pipeline made 3,475 calls on 777 DoFns, about 10% of its
  CPU. The answer depends only on the DoFn's methods, which Beam never changes on a DoFn
  it has built, so it is kept per object, by identity, for as long as the object lives.
  Objects that cannot be weakly referenced are inspected as before.
- **State cache sizes.** Each value Beam's SDK worker caches (side inputs, state) is
  weighed with `objsize`, which first collects the globals of every loaded module to
  leave them out: about 1.8 ms a call with TensorFlow, TFX and TFMA loaded (7,800
  modules), for values that often weigh microseconds. That set changes only when a
  module is loaded or unloaded, so it is kept until `sys.modules` changes. The weights
  are objsize's, exactly.
- **dill's logger level.** Beam sets it (`dill._dill._trace(False)`) after every pickle
  and unpickle, and `Logger.setLevel` clears the level cache of every logger in the
  process (hundreds with TensorFlow, thousands with Airflow): about a tenth of a small
  run's pickling. It is set only when it changes; a logger whose level did not change
  keeps valid caches.
- **Pipeline options.** Beam views the options as another options class (`view_as`) for
  each transform it applies, and each view builds an argparse parser with its class's
  arguments and parses the flags again: 0.3 ms a view. The parse depends only on the class
  and the flags; each view gets a deep copy of the kept namespace.

docs/performance.md, "Fixed costs of a run", has the figures. `install()` is
idempotent; our Beam executors take `Installed`, which calls it before their pipeline
is built, and the local workers' main calls it.
"""
from __future__ import annotations

import functools
import sys
import threading
import weakref

_lock = threading.Lock()
_installed = False


def install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        from apache_beam.runners.worker import statecache
        from apache_beam.transforms import userstate
        userstate.get_dofn_specs = _cached(userstate.get_dofn_specs)
        statecache.get_deep_size = _sizer(statecache)
        from dill import _dill
        _dill._trace = _level_when_changed(_dill.log, _dill._trace)
        from apache_beam.options import pipeline_options
        pipeline_options.PipelineOptions.__init__ = _parsed_once(pipeline_options.PipelineOptions.__init__)
        _installed = True


class Installed:
    """For a BaseBeamExecutor (first among its bases): the caches are in place before its pipeline is built."""

    def _make_beam_pipeline(self):
        install()
        return super()._make_beam_pipeline()


def _cached(inspect_specs):
    cache = {}  # id(dofn) -> (weakref to it, its specs)

    @functools.wraps(inspect_specs)
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

    return get_dofn_specs


def _sizer(statecache):
    """Beam's `statecache.get_deep_size`, with the module globals' ids kept between calls."""
    from objsize.traverse import ObjSizeSettings, TraversalContext
    settings = ObjSizeSettings(get_referents_func=statecache._get_referents_func,
                               filter_func=statecache._filter_func, get_size_func=statecache._size_func,
                               exclude_modules_globals=False)
    excluded = [None, frozenset(), ()]  # [the sys.modules values it was built from, the ids, their dicts]

    class _Context(TraversalContext):
        # objsize's context, with the shared exclude set instead of one rebuilt per call: a plain
        # traversal only reads it (only an `exclude` traversal adds to it, and settings have none).
        def __init__(self, exclude_set):
            self.settings, self.marked_set, self.exclude_set = settings, set(), exclude_set

    def module_globals_ids():
        modules = list(sys.modules.values())
        built_from, ids, _ = excluded
        if modules != built_from:  # element by element, by identity first: about 60 us
            dicts = []
            for module in modules:
                try:
                    dicts.append(vars(module))
                except TypeError:
                    pass
            # The dicts are kept alive with the ids: a lazy module's `vars()` can be a new dict on
            # each call, and a freed one's id could name another object later.
            ids = frozenset([id(None), *map(id, dicts)])  # as objsize: None is a singleton
            excluded[:] = modules, ids, dicts
        return ids

    @functools.wraps(statecache.get_deep_size)
    def get_deep_size(*objs):
        return _Context(module_globals_ids()).get_deep_size(*objs)

    return get_deep_size


def _level_when_changed(log, trace):
    """dill's `_trace`, which only sets its logger's level, without setting the level it already has."""
    import logging

    @functools.wraps(trace)
    def _trace(boolean):
        if log.level != (logging.INFO if boolean else logging.WARN):
            trace(boolean)

    return _trace


def _parsed_once(init):
    """PipelineOptions.__init__ with each (options class, flags) parsed once.

    Beam builds a view of the options (`view_as`) for every transform it applies, and each view
    builds an argparse parser, adds its class's arguments and parses the flags. The result depends
    only on the class and the flags, so the parsed namespace is kept and each object gets a deep
    copy of it (values can be lists that a caller appends to). The rest is Beam's __init__."""
    import copy
    import logging

    parsed = {}  # (options class, flags) -> the parser's namespace

    @functools.wraps(init)
    def __init__(self, flags=None, **kwargs):
        key = (type(self), tuple(sys.argv[1:]) if flags is None else tuple(flags))
        namespace = parsed.get(key)
        if namespace is None:
            init(self, flags, **kwargs)
            parsed[key] = copy.deepcopy(self._visible_options)
            return
        logging.basicConfig()
        self._flags = flags
        self._visible_options = copy.deepcopy(namespace)
        self._all_options = kwargs
        for option_name in self._visible_option_list():
            if option_name not in self._all_options:
                self._all_options[option_name] = getattr(self._visible_options, option_name)

    return __init__

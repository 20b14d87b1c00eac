"""StatisticsGen and Transform that use every core on a big span (Beam's local worker processes).

On the DirectRunner a Beam component runs in one Python thread, and most of what
these two spend on a big span is decoding tf.Examples, C++ that holds the GIL
(half of StatisticsGen's time at 500k rows, a third of Transform's): threads do
not help, worker processes do. Starting them costs a few seconds of imports
each, more than a small span gains, so only a span of at least MIN_BYTES of
examples on local disk gets them, and only as many as the CPUs and the memory
(the limits of its cgroups included) hold. Beam's own options win: any
--direct_running_mode, --direct_num_workers or --runner in the run's Beam args
leaves the component as Beam would run it.

Only these two: the Evaluator gained 4 s of its 25 at 500k rows (its workers
each load the models, two of them from the second week on), and our
ExampleGen is bound by its writer, not by decoding. The workers run `python -m
deepfm_tfx.components.beam_worker_main`, Beam's own worker main made quiet at exit.

All three (and our ExampleGen) build their Beam pipelines with Beam's caches
(components/beam_caches.py).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
from tfx import types
from tfx.components import Evaluator as TfxEvaluator
from tfx.components import StatisticsGen as TfxStatisticsGen
from tfx.components import Transform as TfxTransform
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.statistics_gen import executor as statistics_gen_executor
from tfx.components.transform import executor as transform_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_component_specs

from deepfm_tfx.components import beam_caches, beam_worker_main, tfma_histograms
from deepfm_tfx.machine import available_memory, usable_cpus

# 32 MB of GZIP tf.Examples is about 200k criteo rows: at 500k the workers saved 9 s of
# StatisticsGen's 32 on 2 cores; at 3k rows they would cost more than the whole component.
MIN_BYTES = 32 << 20
MAX_WORKERS = 4
# A worker's peak resident memory at 500k rows was 0.97 GB in StatisticsGen, 1.49 GB in Transform
# (TensorFlow, and the analysers' id counts): a pod with a memory limit must not be OOM-killed by
# its own workers, so each needs this much of what the limit leaves.
WORKER_BYTES = 3 << 29  # 1.5 GiB
_BEAM_OWN = ("--direct_running_mode", "--direct_num_workers", "--runner")


def local_bytes(artifacts: Sequence[types.Artifact]) -> Optional[int]:
    """Bytes under the artifacts' folders, or None when one is not on local disk (an object store)."""
    total = 0
    for artifact in artifacts:
        if "://" in artifact.uri:
            return None
        for folder, _, files in os.walk(artifact.uri):
            total += sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    return total


def workers(beam_args: Sequence[str], input_bytes: Optional[int], cpus: int,
            memory: Optional[int] = None) -> int:
    """How many local worker processes a component gets: one per CPU, at most MAX_WORKERS and at
    most as many as `memory` bytes hold (None: unknown, no cap); or 0 for Beam's default (a small
    or remote input, Beam's own choice in `beam_args`, or room for fewer than two: one worker
    only adds its start to the same work)."""
    if input_bytes is None or input_bytes < MIN_BYTES:
        return 0
    if any(arg.split("=")[0] in _BEAM_OWN for arg in beam_args):
        return 0
    n = min(cpus, MAX_WORKERS)
    if memory is not None:
        n = min(n, memory // WORKER_BYTES)
    return n if n >= 2 else 0


class _LocalWorkers:
    """For a BaseBeamExecutor: sizes the examples in Do, then runs its pipeline on that many workers.

    Chosen here rather than in the run's Beam args: given any Beam args TFX builds an
    sdist of itself for remote workers (dependency_utils), which local ones never use."""

    _input_bytes: Optional[int] = None

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._input_bytes = local_bytes(input_dict.get(standard_component_specs.EXAMPLES_KEY, []))
        super().Do(input_dict, output_dict, exec_properties)

    def _make_beam_pipeline(self):
        n = workers(self._beam_pipeline_args, self._input_bytes, usable_cpus(), available_memory())
        if not n or self._make_beam_pipeline_fn is not None:
            return super()._make_beam_pipeline()
        logging.info("%s: %d local Beam worker processes", type(self).__name__, n)
        return local_pipeline(self._beam_pipeline_args, n)


def local_pipeline(beam_args: Sequence[str], n: int):
    """A Beam pipeline on `n` local worker processes: what --direct_running_mode=multi_processing
    does, with our worker main."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms import environments

    runner = FnApiRunner(default_environment=environments.SubprocessSDKEnvironment.from_command_string(
        f"{sys.executable} -m {beam_worker_main.__name__}"))
    return beam.Pipeline(runner=runner, options=PipelineOptions(list(beam_args) + [f"--direct_num_workers={n}"]))


class StatisticsExecutor(beam_caches.Installed, _LocalWorkers, statistics_gen_executor.Executor):
    pass


class TransformExecutor(beam_caches.Installed, _LocalWorkers, transform_executor.Executor):
    pass


class EvaluatorExecutor(beam_caches.Installed, evaluator_executor.Executor):
    """TFX's, with Beam's caches and TFMA's matrices summed in numpy; no local workers (the module
    docstring says why)."""

    def _make_beam_pipeline(self):
        tfma_histograms.install()
        return super()._make_beam_pipeline()


class Evaluator(TfxEvaluator):
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(EvaluatorExecutor)


class StatisticsGen(TfxStatisticsGen):
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(StatisticsExecutor)


class Transform(TfxTransform):
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TransformExecutor)


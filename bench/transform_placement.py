"""The transform_placement section: where the transform graph is applied.

The pipeline's Transform analyses only, and the Trainer applies the transform
graph to ExampleGen's examples in tf.data (training_setup.transformed_batches).
This measures both halves of that choice on the default Keras run's data:

- TFX's Transform executor on the run's ExampleGen output, as the pipeline
  configures it (its preprocessing_fn and feature spec, statistics off, no
  analyzer cache), analysing only (the faster of a run before and one after)
  and also materialising transformed examples (what it did before);
- one pass over the training split as the Trainer reads it each way: the
  materialised transformed examples parsed, against the raw examples parsed
  and put through the transform graph (best of two, interleaved).

The saving is the materialise pass less what the graph costs the Trainer per
pass (after the first pass the Trainer serves its input from memory when it
fits, so that cost is paid once; without the cache, once per pass).
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from typing import Any, Dict

from bench.common import table

NEEDS = ("keras",)
PASSES = 2


def _newest(root: str, component: str, kind: str) -> str:
    dirs = [d for d in glob.glob(os.path.join(root, component, kind, "*")) if os.path.basename(d).isdigit()]
    if not dirs:
        raise FileNotFoundError(f"no {component} {kind} under {root}")
    return max(dirs, key=lambda d: int(os.path.basename(d)))


def _transform_custom_config(root: str) -> str:
    """The custom_config the run's Transform executed with (its feature spec, hash buckets resolved)."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = os.path.join(root, "metadata.sqlite")
    store = metadata_store.MetadataStore(config)
    for execution in reversed(store.get_executions()):
        props = execution.custom_properties
        if "preprocessing_fn" in props and "custom_config" in props:
            return props["custom_config"].string_value
    raise LookupError(f"no Transform execution recorded under {root}")


def _run_transform(root: str, custom_config: str, out: str, materialize: bool) -> Dict[str, float]:
    from tfx.components.transform import executor
    from tfx.types import standard_artifacts

    from deepfm_tfx.pipeline.pipeline import PREPROCESSING_FN
    examples = standard_artifacts.Examples()
    examples.uri = _newest(root, "SpecCsvExampleGen", "examples")
    examples.split_names = json.dumps(sorted(os.path.basename(d)[len("Split-"):]
                                             for d in glob.glob(os.path.join(examples.uri, "Split-*"))))
    schema = standard_artifacts.Schema()
    schema.uri = _newest(root, "ImportSchemaGen", "schema")
    graph = standard_artifacts.TransformGraph()
    graph.uri = os.path.join(out, "transform_graph")
    outputs = {"transform_graph": [graph]}
    if materialize:
        transformed = standard_artifacts.Examples()
        transformed.uri = os.path.join(out, "transformed_examples")
        outputs["transformed_examples"] = [transformed]
    props = {"preprocessing_fn": PREPROCESSING_FN, "custom_config": custom_config, "disable_statistics": 1,
             "force_tf_compat_v1": 0}
    cpu, wall = time.process_time(), time.perf_counter()
    executor.Executor().Do({"examples": [examples], "schema": [schema]}, outputs, props)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def _one_pass(dataset) -> Dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    rows = 0
    for _, label in dataset:
        rows += int(label.shape[0])
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "rows": rows}


def _input_passes(root: str, graph_dir: str, transformed_dir: str, batch: int) -> Dict[str, Dict[str, float]]:
    import tensorflow_transform as tft
    from tfx_bsl.public import tfxio

    from bench.runs import trained_num_ids
    from bench.transformed_data import data_accessor, trainer_inputs
    from deepfm_tfx.trainer_modules import training_setup
    inputs = trainer_inputs(graph_dir, num_ids=trained_num_ids(root))
    output = tft.TFTransformOutput(graph_dir)
    raw_files = [os.path.join(_newest(root, "SpecCsvExampleGen", "examples"), "Split-train", "*")]
    materialised_files = [os.path.join(transformed_dir, "Split-train", "*")]

    def materialised():
        return data_accessor().tf_dataset_factory(
            materialised_files, tfxio.TensorFlowDatasetOptions(batch_size=batch, num_epochs=1, shuffle=False,
                                                               label_key=inputs.spec.label),
            output.transformed_metadata.schema)

    def raw_through_graph():
        return training_setup.transformed_batches(data_accessor().tf_dataset_factory(
            raw_files, tfxio.TensorFlowDatasetOptions(batch_size=batch, num_epochs=1, shuffle=False),
            output.raw_metadata.schema), inputs)

    best: Dict[str, Dict[str, float]] = {}
    for _ in range(PASSES):
        for name, make in (("materialised examples, parsed", materialised),
                           ("raw examples, parsed + transform graph", raw_through_graph)):
            figures = _one_pass(make())
            if name not in best or figures["cpu_s"] < best[name]["cpu_s"]:
                best[name] = figures
    return best


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    from deepfm_tfx.trainer_modules.hparams import TrainingConfig
    root = shared["default_runs"].make("keras")["pipeline_root"]
    custom_config = _transform_custom_config(root)
    work = tempfile.mkdtemp(prefix="transform-placement-", dir=args.workdir)
    # Analyse-only before and after: the first executor run in a process also pays one-time costs.
    first = _run_transform(root, custom_config, os.path.join(work, "analyse"), materialize=False)
    both = _run_transform(root, custom_config, os.path.join(work, "materialise"), materialize=True)
    analyse = min(first, _run_transform(root, custom_config, os.path.join(work, "analyse-again"), materialize=False),
                  key=lambda figures: figures["wall_s"])
    passes = _input_passes(root, os.path.join(work, "materialise", "transform_graph"),
                           os.path.join(work, "materialise", "transformed_examples"), TrainingConfig().batch_size)
    extra = {k: passes["raw examples, parsed + transform graph"][k] - passes["materialised examples, parsed"][k]
             for k in ("cpu_s", "wall_s")}
    return {"transform_analyse_only": analyse, "transform_analyse_and_materialise": both,
            "materialise_wall_s": both["wall_s"] - analyse["wall_s"],
            "materialise_cpu_s": both["cpu_s"] - analyse["cpu_s"],
            "trainer_pass": passes, "graph_in_trainer_extra_per_pass": extra}


def show(res: Dict[str, Any]) -> None:
    rows = [["Transform, analyse only (as the pipeline runs it)", res["transform_analyse_only"]["wall_s"],
             res["transform_analyse_only"]["cpu_s"]],
            ["Transform, analyse + materialise (before)", res["transform_analyse_and_materialise"]["wall_s"],
             res["transform_analyse_and_materialise"]["cpu_s"]],
            ["  the materialise pass", res["materialise_wall_s"], res["materialise_cpu_s"]]]
    rows += [[f"Trainer, one pass: {name} ({p['rows']:,} rows)", p["wall_s"], p["cpu_s"]]
             for name, p in res["trainer_pass"].items()]
    rows.append(["  the graph's cost in the Trainer, per pass", res["graph_in_trainer_extra_per_pass"]["wall_s"],
                 res["graph_in_trainer_extra_per_pass"]["cpu_s"]])
    print(table(["step", "wall s", "CPU s (this process, all threads)"], rows,
                title="Where the transform graph is applied (default Keras run's data)"))

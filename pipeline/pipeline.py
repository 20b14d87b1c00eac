"""The pipeline's topology, defined once for every orchestrator.

SpecCsvExampleGen (newest span) -> StatisticsGen -> ExampleValidator -> AnomalyGate
                                                 -> DriftGate (vs the previous good span)
training_window (newest K spans) -> Transform (analyzer cache) -> Trainer
    (warm start from last week's blessed model) -> Evaluator (newest span's
    held-out split, vs last week's blessed model) -> ModelRepositoryPusher

Every baseline comes from earlier weeks, so re-running a week is fully cached.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
# Not `tfx.v1`: it imports every Google Cloud extension (8 s per process start).
from tfx.components import ExampleValidator, Trainer
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import LatestArtifactStrategy
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2, trainer_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from deepfm_tfx.contracts import (FEATURE_SPEC_KEY, PAIRED_AUC_GATE, SERVING_SIGNATURE, STABLE, TRAINER_KEY,
                                  TRAINING_KEY)
from deepfm_tfx.pipeline import id_space
from deepfm_tfx.components import hash_splits
from deepfm_tfx.components.beam_workers import Evaluator, StatisticsGen, Transform
from deepfm_tfx.components.csv_example_gen import SpecCsvExampleGen
from deepfm_tfx.components.frozen_schema_gen import FrozenSchemaGen
from deepfm_tfx.components.gates import AnomalyGate, DriftGate
from deepfm_tfx.components.span_window import (EarlierBlessedModelStrategy, EarlierWeekStrategy,
                                    RollingSpanWindowStrategy)
from deepfm_tfx.components.model_repository_pusher import ModelRepositoryPusher
from deepfm_tfx.components import paired_auc_metric
from deepfm_tfx.components.paired_auc_gate import GATE_BLESSING, PairedAucGate
from deepfm_tfx.pipeline import configs
from deepfm_tfx.schemas import frozen_schema
from deepfm_tfx.schemas.feature_spec import FeatureSpec

# The training loop is chosen by dotted path; these are persisted in ml-metadata.
RUN_FNS = {trainer: f"deepfm_tfx.trainer_modules.{trainer}_trainer.run_fn" for trainer in configs.TRAINERS}
PREPROCESSING_FN = "deepfm_tfx.trainer_modules.preprocessing.preprocessing_fn"


def splits(eval_fraction_buckets: int = 1) -> List[hash_splits.Split]:
    """ExampleGen's splits: tenths of each span, by a hash of each row."""
    return [hash_splits.Split("train", 10 - eval_fraction_buckets), hash_splits.Split("eval", eval_fraction_buckets)]


def eval_config(label: str, min_auc: float, slices: Sequence[str] = (), categorical: Sequence[str] = ()
                ) -> tfma.EvalConfig:
    """AUC must clear an absolute floor; metrics overall and per value of each
    `slices` column. The change vs the baseline is PairedAucGate's, with its noise:
    TFMA's change threshold cannot compute a confidence interval, so the same pass
    also keeps both models' per-row scores and their paired interval (PairedAucRows)
    for the gate, which then scores nothing itself."""
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc}))
    return tfma.EvalConfig(
        # tf_generic: scored through its signature alone. Left unset, TFMA loads a Keras export twice
        # more, with Keras (to find its type, then for its compiled metrics, which nothing reads):
        # 7.6 -> 5.8 s of a small run's Evaluator.
        model_specs=[tfma.ModelSpec(signature_name=SERVING_SIGNATURE, label_key=label, model_type=tfma.TF_GENERIC)],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[column]) for column in slices],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            # The floor judges the whole eval split; a small slice's AUC is too noisy to block on.
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[
                tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=auc_threshold)]),
            # TFMA's own (numpy per batch), not Keras's BinaryCrossentropy through a TF graph: the same value.
            tfma.MetricConfig(class_name="BinaryCrossEntropy"),
            tfma.MetricConfig(class_name="Calibration"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
            paired_auc_metric.metric_config(categorical),
        ])])


def statistics_options() -> tfdv.StatsOptions:
    """StatisticsGen's options: TFDV's sketch-based top values and unique counts.

    The exact ones turn every (feature, value) of the span into a Beam shuffle:
    with 26 id columns that was about half of StatisticsGen's time (a py-spy
    profile at 500k rows: Beam decoding the shuffled pairs and building them,
    beside 25% decoding the tf.Examples). The sketches (Misra-Gries with 1,024
    counters, KMV with 16,384) keep the top values and the rank histogram the
    drift comparators and the schema's domains read; unique counts above 16,384
    are estimates.
    """
    return tfdv.StatsOptions(use_sketch_based_topk_uniques=True)


def transform_graph_is_tf1(trainer: str, training: Dict[str, Any]) -> bool:
    """Whether Transform writes a TF1 graph: the same outputs, value for value, traced once rather than
    as tf.functions for the analysis, the schema and the saved function, so a small run's Transform
    takes about a third less (docs/performance.md, "Fixed costs of a run"). Not for the Keras
    trainer on a cluster: ParameterServerStrategy builds the dataset's tables again on each worker,
    which it can only do for a TF2 graph's (a TF1 graph's are initialised once, on the chief)."""
    return not (trainer == "keras" and training.get("cluster"))


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    input_pattern: str,
    spec: FeatureSpec,
    model_repository: str,
    model_name: str,
    trainer: str,
    train_steps: int,
    eval_steps: int,
    training: Dict[str, Any],
    min_auc: float,
    max_auc_drop: float,
    window_spans: int = 4,
    warm_start: bool = False,
    custom_resolvers: bool = True,
    eval_fraction_buckets: int = 1,
    enable_cache: bool = True,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    push_as: str = STABLE,
    serving_url: str = "",
    serving_base_path: str = "",
    latency_budget_ms: float = 0.0,
    memory_budget_mb: float = 0.0,
) -> Pipeline:
    """The one topology every orchestrator runs.

    Args:
      pipeline_name: name of the pipeline in ml-metadata (and on Kubeflow/Airflow).
      pipeline_root: where component outputs go (a local path, gs:// or s3://).
      data_root: folder ExampleGen reads; holds span-<N>/ folders or the files.
      input_pattern: file pattern under data_root, e.g. `span-{SPAN}/*.csv`.
      spec: the feature spec (columns, types, encodings, optional curated schema); without
        hash_buckets, the count is chosen from data_root's newest span (deepfm_tfx.pipeline.id_space).
      model_repository: the versioned model repository the pusher writes to.
      model_name: the model's folder in the repository and its TF Serving name.
      trainer: which training loop, one of configs.TRAINERS.
      train_steps, eval_steps: steps of training and of validation during training.
      training: TrainingConfig's knobs as a dict (batch size, learning rate, ...).
      min_auc: absolute AUC floor for blessing.
      max_auc_drop: largest AUC drop vs last week's blessed model that still blesses.
      window_spans: train on the newest K spans.
      warm_start: start from last week's blessed model when its ids still mean the same.
      custom_resolvers: our span-aware resolvers; False for KFP v2, which compiles only TFX's.
      eval_fraction_buckets: tenths of each span held out for evaluation.
      enable_cache: reuse cached executions.
      push_as: label a pushed model "stable" (all traffic) or "canary" (beside stable).
      serving_url: REST address of the server reading the repository; labels move once it has loaded.
      serving_base_path: models.config base_path for the model (where the serving host mounts it).
      latency_budget_ms, memory_budget_mb: the pusher's serving check (0: off).
      metadata_connection_config: ml-metadata store; None for the orchestrator's own.
      beam_pipeline_args: Beam options for every Beam-based component.
    """
    if trainer not in RUN_FNS:
        raise ValueError(f"trainer must be one of {sorted(RUN_FNS)}, got {trainer!r}")
    spec = id_space.resolve(spec, data_root, pipeline_root)  # hash_buckets from the data unless the spec sets it
    spec_dict = spec.to_dict()

    example_gen = SpecCsvExampleGen(
        input_base=data_root, spec=spec,
        input_config=example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern=input_pattern)]),
        output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
            example_gen_pb2.SplitConfig.Split(name=s.name, hash_buckets=s.hash_buckets)
            for s in splits(eval_fraction_buckets)]))
    ).with_id("SpecCsvExampleGen")
    examples_channel = Channel(
        type=standard_artifacts.Examples, producer_component_id=example_gen.id, output_key="examples")
    training_window = Resolver(
        strategy_class=RollingSpanWindowStrategy, config={"num_spans": window_spans}, examples=examples_channel,
    ).with_id("training_window")
    training_window.add_upstream_node(example_gen)  # so it sees the span ingested by this run
    # KFP v2 compiles only TFX's own resolver strategies (and ignores the order
    # above): there the model trains on the newest span alone.
    training_examples = (training_window.outputs["examples"] if custom_resolvers
                         else example_gen.outputs["examples"])

    previous_statistics = Resolver(
        strategy_class=EarlierWeekStrategy if custom_resolvers else LatestArtifactStrategy,
        statistics=Channel(type=standard_artifacts.ExampleStatistics,
                                   producer_component_id="StatisticsGen", output_key="statistics"),
    ).with_id("previous_statistics")
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"], stats_options=statistics_options())
    previous_statistics.add_upstream_node(example_gen)  # it needs to know the newest span
    statistics_gen.add_upstream_node(previous_statistics)  # resolve before this run's statistics exist
    if spec.schema_file:
        schema_gen = ImportSchemaGen(schema_file=spec.schema_file)
    else:
        # Inferred from the first good week, then that week's schema, frozen by the final step.
        schema_gen = FrozenSchemaGen(statistics=statistics_gen.outputs["statistics"],
                                     frozen_schema_path=frozen_schema.path(pipeline_root)).with_id("SchemaGen")
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])
    drift_gate = DriftGate(statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"],
                           previous_statistics=previous_statistics.outputs["statistics"])

    transform_cache = Resolver(
        strategy_class=EarlierWeekStrategy if custom_resolvers else LatestArtifactStrategy,
        cache=Channel(type=standard_artifacts.TransformCache),
    ).with_id("latest_transform_cache")
    transform_cache.add_upstream_node(example_gen)  # it needs to know the newest span
    transform = Transform(
        examples=training_examples, schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN, custom_config={FEATURE_SPEC_KEY: spec_dict},
        # Spans analysed in an earlier run are not analysed again.
        analyzer_cache=transform_cache.outputs["cache"],
        # Statistics of the transformed data cost a full TFDV pass we never read.
        disable_statistics=True,
        # The Trainer applies the transform graph to the window's examples itself
        # (training_setup.transformed_batches): writing them transformed cost more than analysing.
        materialize=False,
        force_tf_compat_v1=transform_graph_is_tf1(trainer, training)).with_id("Transform")
    transform.add_upstream_node(anomaly_gate)
    transform.add_upstream_node(drift_gate)

    # Last week's blessed model, so re-running a week changes no input downstream.
    latest_blessed = Resolver(
        strategy_class=EarlierBlessedModelStrategy if custom_resolvers
        else LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        # PairedAucGate's verdict, not the Evaluator's (which checks the AUC floor only).
        model_blessing=Channel(type=standard_artifacts.ModelBlessing, producer_component_id=PAIRED_AUC_GATE,
                               output_key=GATE_BLESSING),
    ).with_id("latest_blessed_model_resolver")
    latest_blessed.add_upstream_node(example_gen)  # it needs to know the newest span

    trainer_component = Trainer(
        run_fn=RUN_FNS[trainer],
        examples=training_examples,
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        base_model=latest_blessed.outputs["model"] if warm_start else None,
        train_args=trainer_pb2.TrainArgs(num_steps=train_steps),
        eval_args=trainer_pb2.EvalArgs(num_steps=eval_steps),
        custom_config={FEATURE_SPEC_KEY: spec_dict, TRAINING_KEY: training, TRAINER_KEY: trainer})

    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer_component.outputs["model"],
        baseline_model=latest_blessed.outputs["model"],
        example_splits=["eval"],
        eval_config=eval_config(spec.label, min_auc, spec.slices, spec.categorical),
        module_path=paired_auc_metric.__name__)  # its custom_extractors
    paired_auc_gate = PairedAucGate(
        model=trainer_component.outputs["model"],
        baseline_model=latest_blessed.outputs["model"],
        evaluator_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        training_examples=training_examples,
        max_auc_drop=max_auc_drop,
        feature_spec_json=json.dumps(spec_dict)).with_id(PAIRED_AUC_GATE)

    pusher = ModelRepositoryPusher(
        model=trainer_component.outputs["model"],
        model_blessing=paired_auc_gate.outputs[GATE_BLESSING],
        evaluation=evaluator.outputs["evaluation"],
        examples=training_examples,
        model_repository_dir=model_repository,
        model_name=model_name,
        record_json=json.dumps({TRAINER_KEY: trainer, FEATURE_SPEC_KEY: spec.name}),
        push_as=push_as, serving_url=serving_url or "", serving_base_path=serving_base_path or "",
        feature_spec_json=json.dumps(spec_dict),
        latency_budget_ms=latency_budget_ms, memory_budget_mb=memory_budget_mb,
    )

    return Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen] + ([training_window] if custom_resolvers else []) + [previous_statistics, statistics_gen, schema_gen,
                    example_validator, anomaly_gate, drift_gate, transform_cache, transform,
                    latest_blessed, trainer_component, evaluator, paired_auc_gate, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )



def create_pipeline_from_config(config: configs.RunConfig, spec: FeatureSpec, input_pattern: str, *,
                                pipeline_name: str = configs.PIPELINE_NAME, custom_resolvers: bool = True,
                                metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None
                                ) -> Pipeline:
    """create_pipeline with every knob taken from a RunConfig: what each orchestrator calls.

    Args:
      config: the run's knobs; its paths are used as given.
      spec: the loaded feature spec.
      input_pattern: file pattern under config.data_root.
      pipeline_name: as in create_pipeline (KFP v2 allows only [a-z0-9-]).
      custom_resolvers: as in create_pipeline.
      metadata_connection_config: as in create_pipeline.
    """
    return create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=config.pipeline_root,
        data_root=config.data_root,
        input_pattern=input_pattern,
        spec=spec,
        model_repository=config.model_repository,
        model_name=config.model_name,
        trainer=config.trainer,
        train_steps=config.train_steps,
        eval_steps=config.eval_steps,
        training=config.training_dict,
        window_spans=config.window_spans,
        warm_start=config.warm_start,
        min_auc=config.min_auc,
        max_auc_drop=config.max_auc_drop,
        enable_cache=config.enable_cache,
        push_as=config.push_as,
        serving_url=config.serving_url or "",
        serving_base_path=config.serving_base_path or "",
        latency_budget_ms=config.latency_budget_ms,
        memory_budget_mb=config.memory_budget_mb,
        custom_resolvers=custom_resolvers,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=configs.DEFAULT_BEAM_ARGS + list(config.beam_args),
    )

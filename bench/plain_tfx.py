"""The plain-TFX reference pipeline: what the TFX taxi template gives for the
same data, run by the pipeline section in the same bench run as ours.

CsvExampleGen -> StatisticsGen -> SchemaGen -> Transform (a vocabulary per
categorical column, z-scores) -> Trainer (a plain Keras DeepFM: one table per
field, model.fit, Adam on every row) -> Evaluator -> Pusher, with
LocalDagRunner and the template's habits (type inference, inferred schema,
dotted-path module functions). Two settings match ours so the per-component
times compare the same work: the 9:1 train/eval split and the step counts.

Run as `python -m bench.plain_tfx --data DIR --pipeline-root DIR --serving-dir DIR`;
it prints one JSON line: component seconds from ml-metadata, AUC, exit state.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict

PIPELINE_NAME = "plain_tfx_reference"
LABEL = "label"
NUMERICAL = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
THIS = "bench.plain_tfx"


# --- the template's models/preprocessing.py -------------------------------------------------

def _fill_in_missing(x, default):
    """The template's helper: a [batch, 0 or 1] sparse feature as a dense [batch] tensor."""
    import tensorflow as tf
    if not isinstance(x, tf.sparse.SparseTensor):
        return tf.reshape(x, [-1])
    dense = tf.sparse.to_dense(tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default)
    return tf.squeeze(dense, axis=1)


def preprocessing_fn(inputs):
    import tensorflow as tf
    import tensorflow_transform as tft
    outputs = {}
    for name in CATEGORICAL:
        x = inputs[name]
        if x.dtype != tf.string:  # CsvExampleGen infers an all-digit id column as integers
            x = tf.sparse.map_values(tf.strings.as_string, x) if isinstance(x, tf.SparseTensor) \
                else tf.strings.as_string(x)
        outputs[name] = tft.compute_and_apply_vocabulary(
            _fill_in_missing(x, ""), num_oov_buckets=1, vocab_filename=f"vocab_{name}")
    for name in NUMERICAL:
        outputs[name] = tft.scale_to_z_score(tf.cast(_fill_in_missing(inputs[name], 0), tf.float32))
    outputs[LABEL] = _fill_in_missing(inputs[LABEL], 0)
    return outputs


# --- the template's models/keras_model/model.py, with a DeepFM -----------------------------

def _build_keras_model(tf_transform_output, embedding_dim: int, dnn_units, learning_rate: float, l2: float):
    import tensorflow as tf
    inputs, embeddings, linear = {}, [], []
    regularizer = tf.keras.regularizers.l2(l2)
    for name in CATEGORICAL:
        size = tf_transform_output.vocabulary_size_by_name(f"vocab_{name}") + 1
        x = inputs[name] = tf.keras.layers.Input(shape=(1,), name=name, dtype=tf.int64)
        embeddings.append(tf.keras.layers.Embedding(size, embedding_dim, embeddings_regularizer=regularizer)(x))
        weight = tf.keras.layers.Embedding(size, 1, embeddings_regularizer=regularizer)(x)
        linear.append(tf.keras.layers.Flatten()(weight))
    for name in NUMERICAL:
        x = inputs[name] = tf.keras.layers.Input(shape=(1,), name=name, dtype=tf.float32)
        embeddings.append(tf.keras.layers.Reshape((1, embedding_dim))(
            tf.keras.layers.Dense(embedding_dim, use_bias=False)(x)))
        linear.append(tf.keras.layers.Dense(1, use_bias=False)(x))
    stacked = tf.keras.layers.Concatenate(axis=1)(embeddings)  # [batch, fields, dim]
    square_of_sum = tf.square(tf.reduce_sum(stacked, axis=1))
    sum_of_squares = tf.reduce_sum(tf.square(stacked), axis=1)
    fm = 0.5 * tf.reduce_sum(square_of_sum - sum_of_squares, axis=1, keepdims=True)
    deep = tf.keras.layers.Flatten()(stacked)
    for units in dnn_units:
        deep = tf.keras.layers.Dense(units, activation="relu")(deep)
    logit = tf.keras.layers.Add()([tf.keras.layers.Add()(linear), fm, tf.keras.layers.Dense(1)(deep)])
    model = tf.keras.Model(inputs, tf.keras.layers.Activation("sigmoid")(logit))
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss="binary_crossentropy",
                  metrics=[tf.keras.metrics.AUC(name="auc")])
    return model


def _input_fn(file_pattern, data_accessor, tf_transform_output, batch_size):
    from tfx_bsl.public import tfxio
    return data_accessor.tf_dataset_factory(
        file_pattern, tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL),
        tf_transform_output.transformed_metadata.schema).repeat()


def _serving_signature(model, tf_transform_output):
    import tensorflow as tf
    model.tft_layer = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def serve_tf_examples_fn(serialized_tf_examples):
        feature_spec = tf_transform_output.raw_feature_spec()
        feature_spec.pop(LABEL)
        parsed = tf.io.parse_example(serialized_tf_examples, feature_spec)
        return {"outputs": model(model.tft_layer(parsed))}
    return serve_tf_examples_fn


def run_fn(fn_args) -> None:
    import tensorflow_transform as tft
    custom = fn_args.custom_config or {}
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    batch_size = custom.get("batch_size", 1024)
    train = _input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    evaluation = _input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size)
    model = _build_keras_model(tf_transform_output, custom.get("embedding_dim", 8), custom.get("dnn_units", [64, 32]),
                               custom.get("learning_rate", 5e-3), custom.get("embedding_l2", 3e-4))
    started = time.perf_counter()
    model.fit(train, steps_per_epoch=fn_args.train_steps, validation_data=evaluation,
              validation_steps=fn_args.eval_steps, verbose=0)
    with open(os.path.join(os.path.dirname(fn_args.serving_model_dir.rstrip("/")), "fit_seconds.json"), "w") as f:
        json.dump({"fit_seconds": time.perf_counter() - started}, f)
    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures={"serving_default": _serving_signature(model, tf_transform_output)})


# --- the template's pipeline/pipeline.py --------------------------------------------------------

def create_pipeline(pipeline_root: str, data_root: str, serving_dir: str, train_steps: int, eval_steps: int,
                    training: Dict[str, Any], beam_pipeline_args):
    import tensorflow_model_analysis as tfma
    from ml_metadata.proto import metadata_store_pb2
    from tfx.components import (CsvExampleGen, Evaluator, Pusher, SchemaGen, StatisticsGen, Trainer,
                                Transform)
    from tfx.orchestration.pipeline import Pipeline
    from tfx.proto import example_gen_pb2, pusher_pb2, trainer_pb2

    example_gen = CsvExampleGen(input_base=data_root, input_config=example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name="single_split", pattern="*.csv")]), output_config=example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(splits=[
            example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=9),
            example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=1)])))
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False)
    transform = Transform(examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
                          preprocessing_fn=f"{THIS}.preprocessing_fn")
    trainer = Trainer(run_fn=f"{THIS}.run_fn", examples=transform.outputs["transformed_examples"],
                      transform_graph=transform.outputs["transform_graph"], schema=schema_gen.outputs["schema"],
                      train_args=trainer_pb2.TrainArgs(num_steps=train_steps),
                      eval_args=trainer_pb2.EvalArgs(num_steps=eval_steps), custom_config=training)
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=LABEL)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.5}))),
            tfma.MetricConfig(class_name="BinaryCrossentropy"),
            tfma.MetricConfig(class_name="Calibration")])])
    evaluator = Evaluator(examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
                          eval_config=eval_config)
    pusher = Pusher(model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
                    push_destination=pusher_pb2.PushDestination(
                        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_dir)))
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = os.path.join(pipeline_root, "metadata.sqlite")
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return Pipeline(pipeline_name=PIPELINE_NAME, pipeline_root=pipeline_root,
                    components=[example_gen, statistics_gen, schema_gen, transform, trainer, evaluator, pusher],
                    enable_cache=False, metadata_connection_config=connection,
                    beam_pipeline_args=beam_pipeline_args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plain_tfx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the folder of CSV files (one span)")
    p.add_argument("--pipeline-root", required=True)
    p.add_argument("--serving-dir", required=True)
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--eval-steps", type=int, default=50)
    args = p.parse_args(argv)
    from bench.common import quiet
    quiet()
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from deepfm_tfx.pipeline import configs, run_summary
    from deepfm_tfx.trainer_modules.hparams import TrainingConfig
    c = TrainingConfig()
    training = {"batch_size": c.batch_size, "embedding_dim": c.embedding_dim, "dnn_units": list(c.dnn_units),
                "learning_rate": c.learning_rate, "embedding_l2": c.embedding_l2}
    os.makedirs(args.pipeline_root, exist_ok=True)
    pipeline = create_pipeline(os.path.abspath(args.pipeline_root), os.path.abspath(args.data),
                               os.path.abspath(args.serving_dir), args.train_steps, args.eval_steps, training,
                               configs.DEFAULT_BEAM_ARGS)
    started, error = time.monotonic(), None
    try:
        LocalDagRunner().run(pipeline)
    except Exception as e:  # noqa: BLE001 - reported in the JSON line
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    executions = run_summary.executions_of_run(pipeline.metadata_connection_config, PIPELINE_NAME)
    out = {"error": error, "wall_seconds": round(time.monotonic() - started, 1),
           "component_seconds": {e["node"]: round(e["seconds"], 2) for e in executions},
           "component_states": {e["node"]: e["state"] for e in executions}}
    by_node = {e["node"]: e for e in executions}
    evaluation = by_node.get("Evaluator", {}).get("outputs", {}).get("ModelEvaluation")
    if evaluation:
        from deepfm_tfx import evaluation_results
        out["auc"] = evaluation_results.overall_metrics(evaluation[0].uri)["candidate"].get("auc")
    model = by_node.get("Trainer", {}).get("outputs", {}).get("Model")
    if model and os.path.exists(os.path.join(model[0].uri, "fit_seconds.json")):
        with open(os.path.join(model[0].uri, "fit_seconds.json")) as f:
            out.update(json.load(f))
    print(json.dumps(out), flush=True)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())

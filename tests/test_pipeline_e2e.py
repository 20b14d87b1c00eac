"""The real pipeline (LocalDagRunner, SQLite ml-metadata) on a few thousand rows."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata import metadata_store

from conftest import PIPELINE_UPSTREAM, RESOLVERS
from deepfm_tfx import model_repository
from deepfm_tfx.components.example_encoder import request_examples
from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.pipeline import metadata
from deepfm_tfx.pipeline import run_summary
from deepfm_tfx.synthetic import generator
from deepfm_tfx.schemas import feature_spec

pytestmark = pytest.mark.e2e

NODES = set(PIPELINE_UPSTREAM)
SUMMARY_KEYS = {"auc", "logloss", "example_count", "bayes_auc", "bayes_logloss", "blessed", "pushed",
                "pushed_path", "trainer_runner", "component_seconds"}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generator.generate(str(root), rows=4000, spans=1, seed=11)
    return str(root)


def run_config(tmp, data_root, trainer, **overrides):
    return configs.RunConfig(
        data=data_root, pipeline_root=str(tmp / "pipeline"), model_repository=str(tmp / "repo"),
        trainer=trainer, train_steps=60, eval_steps=4, min_auc=0.5,
        training={"batch_size": 256, "dnn_units": [32, 16]}, **overrides)


def raw_examples(data_root, n=64):
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    return request_examples([os.path.join(data_root, "span-1", "part-000.csv")], spec, n)


def score(saved_model_dir, serialized):
    loaded = tf.saved_model.load(saved_model_dir)
    fn = loaded.signatures["serving_default"]
    return fn, fn(examples=tf.constant(serialized))["click_probability"].numpy()


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("keras")
    config = run_config(tmp, data_root, "keras")
    first = local.run(config)
    first_executions = run_summary.executions_of_run(
        metadata.connection_config(None, config.pipeline_root), configs.PIPELINE_NAME)
    second = local.run(config)
    return config, first, first_executions, second


def test_keras_run_pushes_a_servable_model(keras_run, data_root):
    config, summary, _, _ = keras_run
    assert SUMMARY_KEYS <= set(summary)
    assert summary["blessed"] and summary["pushed"] and summary["trainer_runner"] == "keras"
    assert 0.5 < summary["auc"] <= 1.0 and summary["example_count"] > 200
    assert summary["bayes_auc_span"] == pytest.approx(generator.read_bayes(data_root, 1)["bayes_auc"])
    # Recomputed on exactly the rows the Evaluator scored.
    assert summary["bayes_rows"] == summary["example_count"] and 0.6 < summary["bayes_auc"] < 1.0
    assert set(summary["component_seconds"]) == NODES
    with open(config.summary_path) as f:
        assert json.load(f)["pushed_path"] == summary["pushed_path"]

    versions = model_repository.versions(config.model_repository, config.model_name)
    assert len(versions) == 1 and summary["pushed_path"].endswith(str(versions[0]))
    assert os.path.isfile(os.path.join(summary["pushed_path"], "saved_model.pb"))
    assert model_repository.serving_version(config.model_repository, config.model_name) == versions[0]
    record = model_repository.read_record(config.model_repository, config.model_name, versions[0])
    assert record["trainer_runner"] == "keras" and record["metrics"]["auc"] == pytest.approx(summary["auc"])

    _, probs = score(summary["pushed_path"], raw_examples(data_root))
    assert probs.shape == (64, 1)
    assert np.all((probs > 0) & (probs < 1)) and probs.std() > 0


def test_ml_metadata_records_every_component(keras_run):
    _, _, executions, _ = keras_run
    assert {e["node"] for e in executions} == NODES
    assert all(e["state"] == "COMPLETE" for e in executions), executions


def test_second_run_reuses_cached_results(keras_run):
    config, first, _, second = keras_run
    executions = run_summary.executions_of_run(
        metadata.connection_config(None, config.pipeline_root), configs.PIPELINE_NAME)
    states = {e["node"]: e["state"] for e in executions if e["node"] not in RESOLVERS}
    # Warm start and baseline come from earlier weeks, so nothing's inputs changed.
    assert set(states.values()) == {"CACHED"}, states
    assert second["pushed_path"] == first["pushed_path"] and second["auc"] == first["auc"]
    assert second["baseline_auc"] is None and second["warm_started"] is False
    assert len(model_repository.versions(config.model_repository, config.model_name)) == 1


def test_estimator_run_pushes_a_model_with_the_same_signature(tmp_path_factory, keras_run, data_root):
    tmp = tmp_path_factory.mktemp("estimator")
    config = run_config(tmp, data_root, "estimator")
    summary = local.run(config)
    assert summary["pushed"] and summary["blessed"] and summary["trainer_runner"] == "estimator"
    record = model_repository.read_record(config.model_repository, config.model_name, summary["pushed_version"])
    assert record["trainer_runner"] == "estimator"
    # TensorBoard-readable checkpoints and summaries under the Trainer's model_run_dir.
    model_run = os.path.join(config.pipeline_root, "Trainer", "model_run")
    events = [f for _, _, files in os.walk(model_run) for f in files if f.startswith("events.out.tfevents")]
    checkpoints = [f for _, _, files in os.walk(model_run) for f in files if f.startswith("model.ckpt")]
    assert events and checkpoints

    serialized = raw_examples(data_root)
    est_fn, est_probs = score(summary["pushed_path"], serialized)
    keras_fn, _ = score(keras_run[1]["pushed_path"], serialized)
    assert np.all((est_probs > 0) & (est_probs < 1)) and est_probs.shape == (64, 1)
    assert est_fn.structured_input_signature == keras_fn.structured_input_signature
    assert {k: (v.dtype, v.shape.as_list()) for k, v in est_fn.structured_outputs.items()} == \
        {k: (v.dtype, v.shape.as_list()) for k, v in keras_fn.structured_outputs.items()}

    # The `features` signature: one contract from both trainers, the same answers as serving_default.
    from deepfm_tfx import saved_model_check
    from deepfm_tfx.serving import warmup
    from deepfm_tfx.serving.servable import Servable
    inputs = saved_model_check.signature_inputs(summary["pushed_path"])["features"]
    assert inputs == saved_model_check.signature_inputs(keras_run[1]["pushed_path"])["features"]
    rows = [warmup.feature_row(tf.train.Example.FromString(r), inputs, {}) for r in serialized]
    feeds = {k: np.array([r[k] for r in rows], dtype=object if dtype == tf.string.as_datatype_enum else np.float32)
             for k, dtype in inputs.items()}
    servable = Servable(config.model_name, 1, summary["pushed_path"]).load()
    np.testing.assert_allclose(servable.signature("features").run(feeds, batch=False)["click_probability"],
                               est_probs, rtol=1e-5, atol=1e-7)


def test_statistics_on_local_workers_equal_one_process(keras_run, tmp_path, monkeypatch):
    """A span big enough for Beam's local workers (here: any span) gets the statistics one process gives."""
    import glob
    import tensorflow_data_validation as tfdv
    from tfx.components.statistics_gen import executor as tfx_statistics
    from tfx.types import artifact_utils, standard_artifacts
    from deepfm_tfx.components import beam_workers
    from deepfm_tfx.pipeline.pipeline import statistics_options

    config = keras_run[0]
    examples = standard_artifacts.Examples()
    examples.uri = glob.glob(os.path.join(config.pipeline_root, "SpecCsvExampleGen", "examples", "*"))[0]
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    properties = {"stats_options_json": statistics_options().to_json(), "exclude_splits": "[]"}
    monkeypatch.setattr(beam_workers, "MIN_BYTES", 0)
    monkeypatch.setattr(beam_workers, "usable_cpus", lambda: 2)
    monkeypatch.setattr(beam_workers, "available_memory", lambda: 2 * beam_workers.WORKER_BYTES)
    stats = {}
    for name, executor in (("workers", beam_workers.StatisticsExecutor()), ("one", tfx_statistics.Executor())):
        out = standard_artifacts.ExampleStatistics()
        out.uri = str(tmp_path / name)
        executor.Do({"examples": [examples]}, {"statistics": [out]}, properties)
        stats[name] = {split: tfdv.load_stats_binary(os.path.join(out.uri, f"Split-{split}", "FeatureStats.pb"))
                       for split in ("train", "eval")}
    assert beam_workers.workers([], beam_workers.local_bytes([examples]), 2) == 2  # so workers ran
    for split in ("train", "eval"):
        ours, theirs = (stats[k][split].datasets[0] for k in ("workers", "one"))
        assert ours.num_examples == theirs.num_examples > 100
        ours = {f.path.step[0]: f for f in ours.features}
        theirs = {f.path.step[0]: f for f in theirs.features}
        assert set(ours) == set(theirs)
        for name, feature in theirs.items():
            if feature.HasField("num_stats"):
                assert ours[name].num_stats.mean == pytest.approx(feature.num_stats.mean, rel=1e-9)
                assert ours[name].num_stats.num_zeros == feature.num_stats.num_zeros
                assert ours[name].num_stats.common_stats.num_missing == feature.num_stats.common_stats.num_missing
            else:
                assert ours[name].string_stats.common_stats.num_non_missing == \
                    feature.string_stats.common_stats.num_non_missing
                # Sketches merged across workers: estimates, close to one process's.
                assert ours[name].string_stats.unique == pytest.approx(feature.string_stats.unique, rel=0.05)
                assert ours[name].string_stats.top_values[0].value == feature.string_stats.top_values[0].value


def test_local_workers_only_for_a_big_local_span_and_beams_own_choice_wins():
    from deepfm_tfx.components.beam_workers import MAX_WORKERS, MIN_BYTES, workers
    assert workers([], MIN_BYTES, 2) == 2 and workers([], MIN_BYTES, 64) == MAX_WORKERS
    assert workers([], MIN_BYTES - 1, 2) == 0  # small: starting the workers would cost more
    assert workers([], None, 2) == 0  # in an object store: Beam's default
    assert workers([], MIN_BYTES, 1) == 0
    assert workers(["--direct_num_workers=3"], MIN_BYTES, 2) == 0
    assert workers(["--runner=DataflowRunner"], MIN_BYTES, 2) == 0


def test_local_workers_fit_in_the_memory_left():
    from deepfm_tfx.components.beam_workers import MIN_BYTES, WORKER_BYTES, workers
    assert workers([], MIN_BYTES, 4, 4 * WORKER_BYTES) == 4
    assert workers([], MIN_BYTES, 4, 3 * WORKER_BYTES - 1) == 2
    assert workers([], MIN_BYTES, 4, 2 * WORKER_BYTES - 1) == 0  # room for one: no gain, stay in this process
    assert workers([], MIN_BYTES, 4, None) == 4  # unknown (not Linux): the CPUs decide


def test_local_workers_respect_a_containers_cpu_quota(tmp_path):
    from deepfm_tfx.machine import usable_cpus
    affinity = len(os.sched_getaffinity(0))
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n")

    def cpus():
        return usable_cpus(str(tmp_path), str(proc))

    (tmp_path / "cpu.max").write_text("100000 100000\n")  # a pod limited to one CPU
    assert cpus() == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus() == affinity
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")  # cgroup v1, 1.5 CPUs
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus() == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus() == affinity


def test_a_limit_on_this_process_cgroup_or_one_above_it_counts(tmp_path):
    """An Airflow worker run as a systemd service with MemoryMax and CPUQuota: the limits are on its
    own cgroup, not on the mount's root; a parent's limit counts too, the tightest wins."""
    from deepfm_tfx.machine import available_memory, usable_cpus
    gib = 1 << 30
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {40 * gib // 1024} kB\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/system.slice/airflow-worker.service\n")
    service = tmp_path / "system.slice" / "airflow-worker.service"
    service.mkdir(parents=True)
    (service / "memory.max").write_text(f"{8 * gib}\n")
    (service / "memory.current").write_text(f"{gib}\n")
    (service / "memory.stat").write_text("inactive_file 0\n")
    (service / "cpu.max").write_text("100000 100000\n")
    assert available_memory(str(tmp_path), str(meminfo), str(proc)) == 7 * gib
    assert usable_cpus(str(tmp_path), str(proc)) == 1
    slice_ = tmp_path / "system.slice"
    (slice_ / "memory.max").write_text(f"{4 * gib}\n")
    (slice_ / "memory.current").write_text(f"{3 * gib}\n")
    (slice_ / "memory.stat").write_text("inactive_file 0\n")
    assert available_memory(str(tmp_path), str(meminfo), str(proc)) == gib
    # A container that mounts its own cgroup as the root: /proc names a path it cannot see.
    proc.write_text("0::/kubepods/pod1/container2\n")
    (tmp_path / "memory.max").write_text(f"{2 * gib}\n")
    (tmp_path / "memory.current").write_text(f"{gib}\n")
    (tmp_path / "memory.stat").write_text("inactive_file 0\n")
    assert available_memory(str(tmp_path), str(meminfo), str(proc)) == gib
    # cgroup v1: the memory controller's own line and folder.
    proc.write_text("4:memory:/process_api/job\n1:cpu,cpuacct:/process_api/job\n")
    for name in ("memory.max", "memory.current", "memory.stat"):
        (tmp_path / name).unlink()
    job = tmp_path / "memory" / "process_api" / "job"
    job.mkdir(parents=True)
    (job / "memory.limit_in_bytes").write_text(f"{3 * gib}\n")
    (job / "memory.usage_in_bytes").write_text(f"{gib}\n")
    (job / "memory.stat").write_text("total_inactive_file 0\n")
    assert available_memory(str(tmp_path), str(meminfo), str(proc)) == 2 * gib
    cpu_job = tmp_path / "cpu" / "process_api" / "job"
    cpu_job.mkdir(parents=True)
    (cpu_job / "cpu.cfs_quota_us").write_text("50000\n")
    (cpu_job / "cpu.cfs_period_us").write_text("100000\n")
    (service / "cpu.max").unlink()
    assert usable_cpus(str(tmp_path), str(proc)) == 1


def test_memory_left_is_the_machines_capped_by_a_containers_limit(tmp_path):
    from deepfm_tfx.machine import available_memory
    gib = 1 << 30
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {64 * gib // 1024} kB\nMemAvailable: {40 * gib // 1024} kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n")

    def available(cgroup_root, meminfo_file):
        return available_memory(cgroup_root, meminfo_file, str(proc))

    assert available(str(cgroup), str(meminfo)) == 40 * gib  # no cgroup files: the machine's
    # A pod limited to 4 GiB using 3 GiB, 1 GiB of it inactive page cache the kernel would reclaim first.
    (cgroup / "memory.max").write_text(f"{4 * gib}\n")
    (cgroup / "memory.current").write_text(f"{3 * gib}\n")
    (cgroup / "memory.stat").write_text(f"anon {2 * gib}\ninactive_file {gib}\nactive_file 0\n")
    assert available(str(cgroup), str(meminfo)) == 2 * gib
    (cgroup / "memory.max").write_text("max\n")
    assert available(str(cgroup), str(meminfo)) == 40 * gib
    for name in ("memory.max", "memory.current", "memory.stat"):
        (cgroup / name).unlink()
    v1 = cgroup / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{8 * gib}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{7 * gib}\n")
    (v1 / "memory.stat").write_text(f"cache {gib}\ntotal_inactive_file {gib}\n")
    assert available(str(cgroup), str(meminfo)) == 2 * gib
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert available(str(cgroup), str(meminfo)) == 40 * gib
    assert available(str(cgroup), str(tmp_path / "none")) is None

"""The Keras trainer on TF's parameter-server runtime (ParameterServerStrategy, its ClusterCoordinator
on the chief task, 2 workers, 2 parameter servers on loopback) trains the model a single process
trains: same AUC within 0.01, the id tables sharded across the parameter servers, the single-machine
SavedModel exported. A parameter server or the chief (the coordinator) killed with SIGKILL fails the
run with a clear message, and the rerun resumes from the last checkpoint, not step 0; a worker killed
with SIGKILL mid-training is restarted and the run finishes."""
import pytest

from cluster_helpers import faults_then_killed_worker, run_config as helpers_run_config
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator
from test_cluster_estimator import AUC_TOLERANCE, check_the_single_machine_export

pytestmark = pytest.mark.e2e
TRAIN_STEPS = 250
CLUSTER = "workers=2,ps=2"


def run_config(root, data_root, **training):
    return helpers_run_config(root, data_root, train_steps=TRAIN_STEPS, trainer="keras", **training)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One pipeline root: the single-process run, then the cluster's runs: ps0, then the chief killed
    (each fails the run), then the run that finishes, resumed from their checkpoint through a killed
    worker (the Trainer and what follows re-run, the rest is cached). Its model is the one every test
    checks: a fault-free cluster run is the same run with fewer steps replayed."""
    root = tmp_path_factory.mktemp("keras-cluster")
    generator.generate(str(root / "data"), rows=40000, spans=1, seed=5)  # 4,000 eval rows: AUC noise below 0.01
    single = local.run(run_config(root, str(root / "data")))
    # Checkpoints every 15 steps: the kills come early, and the Trainer re-runs (its inputs otherwise unchanged).
    config = run_config(root, str(root / "data"), cluster=CLUSTER, checkpoint_every_steps=15)
    clustered, info = faults_then_killed_worker(config, TRAIN_STEPS, 25)
    return root, single, clustered, info


def test_keras_cluster_run_pushes_the_single_process_models_auc(runs):
    _, single, clustered, info = runs
    assert single["pushed"] and clustered["pushed"]
    assert info["cluster"] == CLUSTER and info["global_step_end"] >= TRAIN_STEPS
    assert abs(clustered["auc"] - single["auc"]) <= AUC_TOLERANCE, (clustered["auc"], single["auc"])


def test_each_parameter_server_holds_a_shard_of_each_table(runs):
    _, _, _, info = runs
    shards = info["table_shards"]
    for table, dim in (("field_embeddings", 8), ("linear_weights", 1)):
        parts = {name: s for name, s in shards.items() if f"/{table}/" in name}
        assert sorted(s["device"] for s in parts.values()) == ["/job:ps/task:0", "/job:ps/task:1"]
        assert sum(s["shape"][0] for s in parts.values()) == info["num_ids"]
        assert all(s["shape"] == [-(-info["num_ids"] // 2), dim] or s["shape"] == [info["num_ids"] // 2, dim]
                   for s in parts.values())
    # The coordinator trains nothing itself: both workers ran steps, adding up to the run's.
    assert set(info["cluster_steps"]) == {"worker0", "worker1"} and all(info["cluster_steps"].values())
    # each worker's share of the steps this run trained (it resumed at a checkpoint), rounded
    assert sum(info["cluster_steps"].values()) >= TRAIN_STEPS - info["resumed_from_step"] - 2


def test_keras_cluster_export_is_the_single_machine_model(runs):
    root, single, clustered, _ = runs
    check_the_single_machine_export(root, single, clustered)


def test_ps_then_chief_killed_fail_the_run_and_the_rerun_resumes_through_a_killed_worker(runs):
    """The fault scenario is the fixture's (faults_then_killed_worker checks each failure, the resume
    and the kill); here what the finishing run shows of it."""
    _, single, clustered, info = runs
    # The launcher started it again; ClusterCoordinator re-ran its unfinished steps and used it again.
    assert info["cluster_restarts"] == {"worker1": 1}, info["cluster_restarts"]
    assert clustered["pushed"] and clustered["auc"] > 0.6
    assert abs(clustered["auc"] - single["auc"]) <= AUC_TOLERANCE, (clustered["auc"], single["auc"])

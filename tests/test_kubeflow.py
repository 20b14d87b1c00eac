"""Kubeflow Pipelines: the compiled v1 (Argo) and v2 (PipelineJob) packages, and the weekly schedule."""
import importlib
import json
import types

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.proto.orchestration import executable_spec_pb2, pipeline_pb2

import weekly_scenario as scenario
from conftest import PIPELINE_UPSTREAM, RESOLVERS
from deepfm_tfx.pipeline.orchestrators import kubeflow
from deepfm_tfx.pipeline.orchestrators import schedule

IMAGE = "registry.example.com/deepfm-tfx/pipeline:test-7"
PIPELINE_ROOT = "gs://deepfm-test-bucket/pipeline"
DATA_ROOT = "gs://deepfm-test-bucket/data"
MODEL_REPOSITORY = "/mnt/deepfm-tfx/model_repository"
BEAM_ARG = "--temp_location=gs://deepfm-test-bucket/tmp"
UPSTREAM = PIPELINE_UPSTREAM
SCHEMA_IN_IMAGE = "/opt/deepfm-tfx/schemas/criteo.schema.pbtxt"
OPTIONS = dict(pipeline_root=PIPELINE_ROOT, data_root=DATA_ROOT, model_repository=MODEL_REPOSITORY,
               image=IMAGE, beam_args=[BEAM_ARG], train_steps=123, eval_steps=7)


def _importable(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    return hasattr(importlib.import_module(module), name)


# --- KFP v1: Argo Workflow YAML --------------------------------------------------------------

@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    path = kubeflow.compile_v1(str(tmp_path_factory.mktemp("kfp") / "deepfm_tfx.yaml"),
                                      trainer="estimator", pvc_name="deepfm-data", **OPTIONS)
    with open(path) as f:
        workflow = yaml.safe_load(f)
    containers = {}  # node id -> (template, its tfx IR)
    for template in workflow["spec"]["templates"]:
        if "container" in template and template["name"] != kubeflow.WEEK_END_TEMPLATE:
            args = template["container"]["args"]
            ir = json_format.Parse(args[args.index("--tfx_ir") + 1], pipeline_pb2.Pipeline())
            containers[args[args.index("--node_id") + 1]] = (template, ir)
    return path, workflow, containers


def test_v1_dag_edges_follow_the_topology(v1):
    _, workflow, containers = v1
    assert workflow["kind"] == "Workflow"
    dag = next(t["dag"] for t in workflow["spec"]["templates"] if t["name"] == workflow["spec"]["entrypoint"])
    node_of = {t["name"]: node for node, (t, _) in containers.items()}
    edges = {node_of[task["template"]]: {node_of[d] for d in task.get("dependencies", [])}
             for task in dag["tasks"]}
    assert edges == UPSTREAM


def test_v1_containers_use_the_image_the_volume_and_cluster_metadata(v1):
    _, _, containers = v1
    for node, (template, _) in containers.items():
        container = template["container"]
        assert container["image"] == IMAGE, node
        assert container["command"] == ["python", "-m", "tfx.orchestration.kubeflow.container_entrypoint"]
        args = container["args"]
        metadata = json.loads(args[args.index("--kubeflow_metadata_config") + 1])
        assert metadata["grpc_config"]["grpc_service_host"]["environment_variable"] == "METADATA_GRPC_SERVICE_HOST"
        assert {"mountPath": kubeflow.MOUNT_PATH, "name": "deepfm-tfx"} in container["volumeMounts"]
        assert template["volumes"] == [{"name": "deepfm-tfx", "persistentVolumeClaim": {"claimName": "deepfm-data"}}]


def test_v1_exit_handler_is_the_weeks_final_step_in_the_same_image_volume_and_metadata(v1):
    _, workflow, containers = v1
    assert workflow["spec"]["onExit"] == kubeflow.WEEK_END_TEMPLATE
    [handler] = [t for t in workflow["spec"]["templates"] if t["name"] == kubeflow.WEEK_END_TEMPLATE]
    step, _ = containers["Trainer"]
    container = handler["container"]
    assert container["image"] == IMAGE and container["command"] == ["python", "-m", kubeflow.WEEK_END_MODULE]
    assert container["env"] == step["container"]["env"]  # WORKFLOW_ID names the run, as for every step
    assert container["volumeMounts"] == step["container"]["volumeMounts"] and handler["volumes"] == step["volumes"]
    args = container["args"]
    step_args = step["container"]["args"]
    assert args[args.index("--kubeflow-metadata-config") + 1] == \
        step_args[step_args.index("--kubeflow_metadata_config") + 1]
    assert args[args.index("--workflow-status") + 1] == "{{workflow.status}}"
    run_config = json.loads(args[args.index("--run-config") + 1])
    assert run_config["pipeline_root"] == PIPELINE_ROOT and run_config["model_repository"] == MODEL_REPOSITORY
    assert run_config["train_steps"] == 123 and run_config["trainer"] == "estimator"
    spec = json.loads(args[args.index("--feature-spec") + 1])
    assert spec["schema_file"] == SCHEMA_IN_IMAGE


@pytest.mark.e2e
def test_compiled_v1_workflow_runs_three_weeks_and_agrees_with_the_other_orchestrators(tmp_path, capsys):
    """The weekly scenario (tests/weekly_scenario.py): the compiled steps run here, week after week.

    Week 1 through `deepfm-tfx compile --dry-run`; weeks 2 and 3 rerun that same package, as a
    recurring run on the cluster would. Its webhook is down: the weeks go on, and say so.
    """
    from deepfm_tfx import model_repository
    from deepfm_tfx.pipeline import cli, metadata
    from deepfm_tfx.pipeline.orchestrators import kubeflow_dry_run

    spec = scenario.spec_without_schema(tmp_path)
    data, root, repo = str(tmp_path / "data"), str(tmp_path / "pipeline"), str(tmp_path / "repo")
    package, workdir = str(tmp_path / "deepfm_tfx.yaml"), str(tmp_path / "dry-run")
    scenario.add_week(data, 1)
    code = cli.main(["compile", "--target", "kubeflow", "--output", package, "--dry-run", workdir,
                     "--pipeline-root", root, "--data-root", data, "--model-repository", repo, "--features", spec,
                     "--notify-url", "http://127.0.0.1:9/down", "--train-steps", "30", "--eval-steps", "3",
                     "--min-auc", "0", "--max-auc-drop", "1", "--window-spans", "3", "--batch-size", "256",
                     "--dnn-units", "32,16", "--latency-budget-ms", "60000", "--memory-budget-mb", "100000"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "week-end" in printed and "workflow Succeeded" in printed
    first = scenario.read_summary(root)
    scenario.check_week(1, first)
    assert first["notified"] is False and "Connection refused" in first["notify_error"]

    connection = metadata.connection_config(None, workdir)
    results = {}
    for week in (2, 3):
        scenario.add_week(data, week)
        results[week] = kubeflow_dry_run.dry_run(package, workdir, connection_config=connection)
        scenario.check_week(week, scenario.read_summary(root))
    assert results[2]["exit_code"] == 0 and results[2]["status"] == "Succeeded"
    assert set(results[2]["steps"].values()) == {0}
    broken = results[3]
    assert broken["status"] == "Failed" and broken["exit_code"] == 3
    assert broken["steps"]["driftgate"] == 1 and broken["steps"]["transform"] == "skipped"
    assert len(model_repository.versions(repo, "deepfm")) == 2
    assert scenario.quarantined_spans(connection) == [scenario.BROKEN_WEEK]
    scenario.check_frozen_schema(root, connection, spec)
    # The pusher's step served each candidate in a process of its own before pushing it, within budget.
    for version in model_repository.versions(repo, "deepfm"):
        check = model_repository.read_record(repo, "deepfm", version)["serving_check"]
        assert check["latency_budget_ms"] == 60_000 and 0 < check["p99_ms"] < 60_000 and check["loaded_mb"] > 0


def _parameters(ir):
    node = ir.nodes[0].pipeline_node
    return {k: v.field_value.string_value or v.field_value.int_value
            for k, v in node.parameters.parameters.items()}


def test_v1_module_references_and_parameters(v1):
    _, workflow, containers = v1
    assert workflow["spec"]["arguments"]["parameters"] == [{"name": "pipeline-root", "value": PIPELINE_ROOT}]
    params = {node: _parameters(ir) for node, (_, ir) in containers.items()}
    assert params["Trainer"]["run_fn"] == "deepfm_tfx.trainer_modules.estimator_trainer.run_fn"
    assert json.loads(params["Trainer"]["train_args"]) == {"num_steps": 123}
    assert json.loads(params["Trainer"]["eval_args"]) == {"num_steps": 7}
    assert params["Transform"]["preprocessing_fn"] == "deepfm_tfx.trainer_modules.preprocessing.preprocessing_fn"
    assert params["SpecCsvExampleGen"]["input_base"] == DATA_ROOT
    assert json.loads(params["SpecCsvExampleGen"]["input_config"])["splits"][0]["pattern"] == "span-{SPAN}/*.csv"
    assert params["ImportSchemaGen"]["schema_file"] == SCHEMA_IN_IMAGE
    assert params["ModelRepositoryPusher"]["model_repository_dir"] == MODEL_REPOSITORY

    beam_nodes = set()
    for node, (_, ir) in containers.items():
        deployment = pipeline_pb2.IntermediateDeploymentConfig()
        ir.deployment_config.Unpack(deployment)
        if node not in deployment.executor_specs:
            continue  # the resolver has no executor
        spec = deployment.executor_specs[node]
        if spec.Is(executable_spec_pb2.BeamExecutableSpec.DESCRIPTOR):
            beam = executable_spec_pb2.BeamExecutableSpec()
            spec.Unpack(beam)
            assert BEAM_ARG in beam.beam_pipeline_args, node
            beam_nodes.add(node)
            class_path = beam.python_executor_spec.class_path
        else:
            python = executable_spec_pb2.PythonClassExecutableSpec()
            spec.Unpack(python)
            class_path = python.class_path
        # The image runs exactly the code installed here: every executor must import.
        assert _importable(class_path), class_path
    assert {"SpecCsvExampleGen", "StatisticsGen", "Transform", "Evaluator"} <= beam_nodes


def test_v1_rejects_paths_a_pod_cannot_use(tmp_path):
    with pytest.raises(ValueError, match="pipeline_root must be absolute"):
        kubeflow.compile_v1(str(tmp_path / "p.yaml"), **dict(OPTIONS, pipeline_root="workspace/pipeline"))
    with pytest.raises(ValueError, match="model_repository must be an absolute path on a mounted file system"):
        kubeflow.compile_v1(str(tmp_path / "p.yaml"), **dict(OPTIONS, model_repository="gs://b/models"))
    assert not (tmp_path / "p.yaml").exists()


# --- KFP v2 / Vertex: PipelineJob JSON --------------------------------------------------------

@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    path = kubeflow.compile_v2(str(tmp_path_factory.mktemp("kfp2") / "deepfm_tfx.json"), **OPTIONS)
    with open(path) as f:
        job = json_format.Parse(f.read(), pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), pipeline_spec_pb2.PipelineSpec(),
                                 ignore_unknown_fields=False)
    return job, spec


def _v2_node(task_name: str) -> str:
    # v2 splits the resolver into one query task per artifact.
    for suffix in ("-model-resolver", "-model-blessing-resolver"):
        if task_name.endswith(suffix):
            return task_name[: -len(suffix)]
    return task_name


def test_v2_dag_edges_follow_the_topology(v2):
    job, spec = v2
    assert job.display_name == spec.pipeline_info.name == "deepfm-tfx"
    tasks = spec.root.dag.tasks
    assert {"latest_blessed_model_resolver-model-resolver",
            "latest_blessed_model_resolver-model-blessing-resolver"} <= set(tasks)
    edges = {}
    for name, task in tasks.items():
        edges.setdefault(_v2_node(name), set()).update(_v2_node(d) for d in task.dependent_tasks)
    # v2 has no custom resolvers: Transform, PairedAucGate and the pusher read ExampleGen's newest span directly.
    v2_upstream = {node: {"SpecCsvExampleGen" if up == "training_window" else up for up in ups}
                   for node, ups in UPSTREAM.items() if node != "training_window"}
    for resolver_id in ("latest_transform_cache", "latest_blessed_model_resolver", "previous_statistics"):
        v2_upstream[resolver_id] = set()  # v2 orders no resolver after a component
    assert edges == v2_upstream


def test_v2_image_module_references_and_parameters(v2):
    job, spec = v2
    assert job.runtime_config.gcs_output_directory == PIPELINE_ROOT
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    containers = {name: e["container"] for name, e in executors.items() if "container" in e}
    assert len(containers) == len(UPSTREAM) - len(RESOLVERS)  # resolvers run no container; v2 has no window
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
        assert BEAM_ARG in container["args"], name
        class_path = container["args"][container["args"].index("--executor_class_path") + 1]
        assert _importable(class_path), class_path

    def constant(task, key):
        value = spec.root.dag.tasks[task].inputs.parameters[key].runtime_value.constant_value
        return value.string_value or value.int_value

    assert constant("Trainer", "run_fn") == "deepfm_tfx.trainer_modules.keras_trainer.run_fn"
    assert json.loads(constant("Trainer", "train_args")) == {"num_steps": 123}
    assert constant("Transform", "preprocessing_fn") == "deepfm_tfx.trainer_modules.preprocessing.preprocessing_fn"
    assert constant("SpecCsvExampleGen", "input_base") == DATA_ROOT
    assert json.loads(constant("SpecCsvExampleGen", "input_config"))["splits"][0]["pattern"] == "span-{SPAN}/*.csv"
    assert constant("ImportSchemaGen", "schema_file") == SCHEMA_IN_IMAGE
    assert constant("ModelRepositoryPusher", "model_repository_dir") == MODEL_REPOSITORY


def _nodes(pipeline):
    """node id -> (its resolver strategy's name or "", {input key: the node ids it reads from})."""
    from tfx.dsl.components.common import resolver
    out = {}
    for node in pipeline.components:
        strategy = node.exec_properties.get(resolver.RESOLVER_STRATEGY_CLASS) \
            if isinstance(node, resolver.Resolver) else None
        out[node.id] = (strategy.__name__ if strategy else "",
                        {key: channel.get_data_dependent_node_ids() for key, channel in node.inputs.items()})
    return out


def test_v2_differences_name_every_node_that_differs_and_nothing_else():
    paths = dict(pipeline_name="p", pipeline_root=PIPELINE_ROOT, data_root=DATA_ROOT,
                 model_repository=MODEL_REPOSITORY)
    v1_nodes = _nodes(kubeflow.build_pipeline(custom_resolvers=True, **paths))
    v2_nodes = _nodes(kubeflow.build_pipeline(custom_resolvers=False, **paths))
    listed = {d.node: d for d in kubeflow.V2_DIFFERENCES}
    assert set(v2_nodes) <= set(v1_nodes)
    assert set(listed) == {n for n in v1_nodes if n not in v2_nodes or v1_nodes[n][0] != v2_nodes[n][0]}
    for name, d in listed.items():
        assert d.v1_strategy == v1_nodes[name][0]
        assert d.v2_strategy == (v2_nodes[name][0] if name in v2_nodes else "")
    # Apart from the resolvers, only what read the dropped window changed: it reads ExampleGen instead.
    rewired = {n for n in v2_nodes if v1_nodes[n][1] != v2_nodes[n][1]}
    assert rewired == {"Transform", "Trainer", "PairedAucGate", "ModelRepositoryPusher"}
    for n in rewired:
        assert {k: {"SpecCsvExampleGen" if p == "training_window" else p for p in producers}
                for k, producers in v1_nodes[n][1].items()} == v2_nodes[n][1]
    text = kubeflow.describe_v2_differences()
    for d in kubeflow.V2_DIFFERENCES:
        assert f"{d.node}: " in text and d.v1_strategy in text and d.v2_strategy in text


# --- Weekly schedule ---------------------------------------------------------------------------

class FakeKfpClient:
    """Records the kfp 1.8 Client calls; the only stand-in in these tests (no KFP server here)."""

    def __init__(self):
        self.calls = []

    def create_experiment(self, name, description=None, namespace=None):
        self.calls.append(("create_experiment", {"name": name, "namespace": namespace}))
        return types.SimpleNamespace(id="exp-42", name=name)

    def create_recurring_run(self, experiment_id, job_name, **kwargs):
        self.calls.append(("create_recurring_run", dict(kwargs, experiment_id=experiment_id, job_name=job_name)))
        return types.SimpleNamespace(id="job-7", name=job_name)


def test_weekly_recurring_run_uses_the_package_experiment_and_six_field_cron(v1):
    package = v1[0]
    client = FakeKfpClient()
    created = schedule.create_weekly_recurring_run(client, package, "deepfm-weekly")
    assert [name for name, _ in client.calls] == ["create_experiment", "create_recurring_run"]
    assert client.calls[0][1]["name"] == "deepfm-weekly"
    run = client.calls[1][1]
    assert run["experiment_id"] == "exp-42"
    assert run["cron_expression"] == "0 0 3 * * 1" and len(run["cron_expression"].split()) == 6
    assert run["pipeline_package_path"] == package
    assert run["job_name"] == "deepfm-tfx-weekly" and run["no_catchup"] is True and run["max_concurrency"] == 1
    assert "interval_second" not in run or run["interval_second"] is None
    assert (created.job_id, created.experiment_id) == ("job-7", "exp-42")
    assert "job-7" in str(created) and "0 0 3 * * 1" in str(created) and package in str(created)


def test_schedule_rejects_five_field_cron_and_v2_packages(tmp_path, v1):
    with pytest.raises(ValueError, match="did you mean '0 0 3 \\* \\* 1'"):
        schedule.create_weekly_recurring_run(FakeKfpClient(), v1[0], "e", cron="0 3 * * 1")
    v2_package = tmp_path / "job.json"
    v2_package.write_text("{}")
    with pytest.raises(ValueError, match="v2 .json"):
        schedule.create_weekly_recurring_run(FakeKfpClient(), str(v2_package), "e")


# --- CLI hooks ---------------------------------------------------------------------------------

def _parse(argv):
    """Parses as `deepfm-tfx` does, returning the args with their handler."""
    import argparse
    import importlib

    from deepfm_tfx.pipeline import cli
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    module, _ = cli.COMMANDS[argv[0]]
    configure = importlib.import_module(f"deepfm_tfx.pipeline.cli.{module}").configure
    p = sub.add_parser(argv[0])
    configure(p, argv[0]) if module == "orchestrate" else configure(p)
    return parser.parse_args(argv)


def test_cli_compile_kubeflow_v2_writes_the_job(tmp_path, capsys):
    out = tmp_path / "out" / "job.json"
    args = _parse(["compile", "--target", "kubeflow-v2", "--output", str(out), "--image", IMAGE,
                   "--pipeline-root", PIPELINE_ROOT, "--data-root", DATA_ROOT, f"--beam-arg={BEAM_ARG}"])
    assert args.func(args) == 0
    with open(out) as f:
        job = json.load(f)
    assert job["runtimeConfig"]["gcsOutputDirectory"] == PIPELINE_ROOT
    assert IMAGE in json.dumps(job["pipelineSpec"]["deploymentSpec"])
    printed = capsys.readouterr()
    assert str(out) in printed.out
    # What v2 runs differently is said at compile time, not discovered in production.
    assert kubeflow.describe_v2_differences() in printed.err
    assert "training_window: absent" in printed.err


def test_cli_compile_reports_bad_flags(tmp_path, capsys):
    args = _parse(["compile", "--target", "kubeflow-v2", "--output", str(tmp_path / "job.json"), "--pvc", "x"])
    assert args.func(args) == 2
    assert "--pvc and --dry-run apply to --target kubeflow" in capsys.readouterr().err
    args = _parse(["compile", "--target", "kubeflow", "--output", str(tmp_path / "p.yaml"),
                   "--data-root", "relative/data"])
    assert args.func(args) == 2
    assert "data_root must be absolute" in capsys.readouterr().err


def test_cli_schedule_builds_a_kfp_client_for_the_host(monkeypatch, v1, capsys):
    import kfp
    built = []

    def fake_client(host=None, namespace=None, **_):
        built.append(host)
        return FakeKfpClient()

    # kfp.Client would call the KFP API over HTTP; that call is the one thing faked.
    monkeypatch.setattr(kfp, "Client", fake_client)
    args = _parse(["schedule", "--host", "http://kfp.example:8080", "--package", v1[0], "--cron", "0 30 4 * * 0"])
    assert args.func(args) == 0
    assert built == ["http://kfp.example:8080"]
    out = capsys.readouterr().out
    assert "0 30 4 * * 0" in out and "job-7" in out

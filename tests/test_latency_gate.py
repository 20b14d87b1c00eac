"""The pusher's serving check: a candidate served in its own process before the push, refused over budget."""
import dataclasses

import pytest

from conftest import RESOLVERS
from deepfm_tfx import model_repository
from deepfm_tfx.contracts import EXIT_GATE, LATENCY_GATE
from deepfm_tfx.pipeline import configs, metadata, run_summary
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator
from deepfm_tfx.pipeline.report import publish
from test_repository_safety import tree

pytestmark = pytest.mark.e2e


def served(repository):
    """The repository without its log of run reports (every week adds one, pushed or not)."""
    return {path: digest for path, digest in tree(repository).items()
            if not path.startswith(f"{configs.MODEL_NAME}/{publish.RUNS}")}


def test_budgets_refuse_a_slow_or_large_candidate_and_pass_one_within_them(tmp_path, repository):
    generator.generate(str(tmp_path / "data"), rows=4000, spans=1, seed=5)
    config = configs.RunConfig(
        data=str(tmp_path / "data"), pipeline_root=str(tmp_path / "pipeline"), model_repository=repository,
        train_steps=40, eval_steps=2, min_auc=0.0, latency_budget_ms=0.001,
        training={"batch_size": 256, "dnn_units": [16]})
    before = served(repository)

    with pytest.raises(local.RunFailed) as refused:
        local.run(config)
    summary = refused.value.summary
    assert refused.value.exit_code == EXIT_GATE and summary["blocked_by"] == LATENCY_GATE
    assert summary["blessed"] and not summary["pushed"]
    check = summary["serving_check"]
    assert check["rows_per_request"] == 100 and check["requests"] >= 100
    assert 0.001 < check["p50_ms"] <= check["p99_ms"] and check["cpu_ms_per_request"] > 0
    assert "\n" not in summary["error"] and f"p99 latency {check['p99_ms']:.2f} ms" in summary["error"]
    assert "budget of 0.001 ms" in summary["error"]
    assert served(repository) == before
    # A slow model says nothing about the week's data: the span stays in later windows.
    assert "quarantined_span" not in summary

    # The same model against a memory budget it exceeds: only the pusher runs again.
    small = dataclasses.replace(config, latency_budget_ms=0.0, memory_budget_mb=1.0)
    with pytest.raises(local.RunFailed) as refused:
        local.run(small)
    summary = refused.value.summary
    assert summary["blocked_by"] == LATENCY_GATE and summary["serving_check"]["loaded_mb"] > 1
    assert "over the budget of 1 MB" in summary["error"] and served(repository) == before
    executions = run_summary.executions_of_run(metadata.connection_config(None, config.pipeline_root),
                                               configs.PIPELINE_NAME)
    assert {e["node"] for e in executions
            if e["state"] == "COMPLETE" and e["node"] not in RESOLVERS} == {"ModelRepositoryPusher"}

    within = dataclasses.replace(config, latency_budget_ms=60_000.0, memory_budget_mb=100_000.0)
    summary = local.run(within)
    assert summary["pushed"] and summary["blocked_by"] is None and summary["serving_check"]["p99_ms"] < 60_000
    record = model_repository.read_record(repository, config.model_name, summary["pushed_version"])
    assert record["serving_check"]["latency_budget_ms"] == 60_000 and record["serving_check"]["loaded_mb"] > 0
    assert model_repository.serving_version(repository, config.model_name) == summary["pushed_version"]

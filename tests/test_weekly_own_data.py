"""The weekly scenario locally (tests/weekly_scenario.py), as on a user's own data.

Four weeks of `deepfm-tfx run` with the Estimator trainer, warm starts and a spec
with no curated schema; each week's outcome is also POSTed to a webhook.
"""
import http.server
import json
import os
import threading

import pytest

import weekly_scenario as scenario
from deepfm_tfx import model_repository
from deepfm_tfx.components.model_repository_pusher import identical_weights
from deepfm_tfx.contracts import EXIT_GATE
from deepfm_tfx.pipeline import cli, metadata
from deepfm_tfx.schemas import frozen_schema

pytestmark = pytest.mark.e2e

MODEL = "deepfm"


class _Hook(http.server.BaseHTTPRequestHandler):
    posts: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.posts = []
    paths = {"spec": scenario.spec_without_schema(root), "data": str(root / "data"),
             "root": str(root / "pipeline"), "repo": str(root / "repo")}
    knobs = scenario.KNOBS
    flags = ["run", "--data", paths["data"], "--features", paths["spec"], "--pipeline-root", paths["root"],
             "--model-repository", paths["repo"], "--notify-url", f"http://127.0.0.1:{server.server_port}/weekly",
             "--trainer", "estimator", "--warm-start", "--train-steps", str(knobs["train_steps"]),
             "--eval-steps", str(knobs["eval_steps"]), "--min-auc", str(knobs["min_auc"]),
             "--max-auc-drop", str(knobs["max_auc_drop"]), "--window-spans", str(knobs["window_spans"]),
             "--batch-size", str(knobs["training"]["batch_size"]),
             "--dnn-units", ",".join(map(str, knobs["training"]["dnn_units"])), "--quiet"]

    def week(n):
        scenario.add_week(paths["data"], n)
        code = cli.main(flags)
        summary = scenario.read_summary(paths["root"])
        scenario.check_week(n, summary)
        return code, summary

    yield paths, week, _Hook.posts
    server.shutdown()
    server.server_close()


def versions(paths):
    return model_repository.versions(paths["repo"], MODEL)


def test_the_first_run_freezes_its_inferred_schema_with_thresholds(world, tmp_path, capsys):
    paths, week, _ = world
    code, summary = week(1)
    assert code == 0
    frozen = frozen_schema.path(paths["root"])
    assert summary["frozen_schema"] == os.path.abspath(frozen) and os.path.exists(frozen)
    text = open(frozen).read()
    assert "infinity_norm" in text and "jensen_shannon_divergence" in text
    out = tmp_path / "review.pbtxt"
    assert cli.main(["schema", "export", "--pipeline-root", paths["root"], "--out", str(out)]) == 0
    assert out.read_text() == text
    capsys.readouterr()


def test_the_warm_started_estimator_week_trains_from_step_zero_on_spans_1_and_2(world):
    paths, week, _ = world
    code, summary = week(2)
    assert code == 0 and summary["warm_started"] is True
    assert summary["global_step_start"] == 0 and summary["learning_rate_first_step"] > 1e-3
    assert summary["warm_start_slots"] == "reset" and summary["weight_change_max"] > 0.01
    v1, v2 = versions(paths)
    assert not identical_weights(model_repository.version_dir(paths["repo"], MODEL, v2),
                                 model_repository.version_dir(paths["repo"], MODEL, v1))


def test_a_broken_week_is_stopped_by_the_frozen_schema_and_quarantined(world):
    paths, week, _ = world
    before = versions(paths)
    code, summary = week(scenario.BROKEN_WEEK)
    assert code == EXIT_GATE and summary.get("frozen_schema") is None  # a broken week never redefines it
    assert versions(paths) == before
    connection = metadata.connection_config(None, paths["root"])
    assert scenario.quarantined_spans(connection) == [scenario.BROKEN_WEEK]


def test_the_next_good_week_trains_on_a_window_without_it_and_every_week_was_announced(world):
    paths, week, posts = world
    code, summary = week(4)
    assert code == 0 and len(versions(paths)) == 3
    scenario.check_frozen_schema(paths["root"], metadata.connection_config(None, paths["root"]), paths["spec"])

    # One POST per week: its light, the gate that stopped it, this week's AUC against last week's model.
    assert [p[0] for p in posts] == ["application/json"] * 4
    payloads = [p[1] for p in posts]
    assert [p["outcome"] for p in payloads] == ["pushed", "pushed", "blocked", "pushed"]
    assert [p["span"] for p in payloads] == [1, 2, 3, 4]
    assert payloads[2]["blocked_by"] == "DriftSkew" and payloads[2]["exit_code"] == EXIT_GATE
    assert payloads[1]["metrics"]["auc"] is not None and payloads[1]["metrics"]["baseline_auc"] is not None
    assert payloads[3]["pushed_version"] == max(versions(paths))
    assert payloads[3]["report"].endswith("report.html")

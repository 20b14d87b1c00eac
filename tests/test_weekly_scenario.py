"""The weekly scenario run locally with `deepfm-tfx run`, four weeks, with its webhook (tests/weekly_scenario.py)."""
import http.server
import json
import threading

import pytest

import weekly_scenario as scenario
from deepfm_tfx import model_repository
from deepfm_tfx.pipeline import cli, metadata

pytestmark = pytest.mark.e2e


class _Hook(http.server.BaseHTTPRequestHandler):
    posts = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Hook.posts = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/weekly", _Hook.posts
    server.shutdown()


def test_four_weeks_push_stop_quarantine_and_notify_each(tmp_path, webhook, capsys):
    url, posts = webhook
    spec = scenario.spec_without_schema(tmp_path)
    data, root, repo = str(tmp_path / "data"), str(tmp_path / "pipeline"), str(tmp_path / "repo")
    flags = ["run", "--data", data, "--features", spec, "--pipeline-root", root, "--model-repository", repo,
             "--notify-url", url, "--train-steps", "30", "--eval-steps", "3", "--min-auc", "0", "--max-auc-drop", "1",
             "--window-spans", "3", "--batch-size", "256", "--dnn-units", "32,16", "--quiet"]
    codes, before_broken = {}, None
    for week in (1, 2, 3, 4):
        scenario.add_week(data, week)
        if week == scenario.BROKEN_WEEK:
            before_broken = model_repository.versions(repo, "deepfm")
        codes[week] = cli.main(flags)
        scenario.check_week(week, scenario.read_summary(root))
        if week == scenario.BROKEN_WEEK:
            assert model_repository.versions(repo, "deepfm") == before_broken
    capsys.readouterr()
    assert codes == {1: 0, 2: 0, 3: 3, 4: 0}
    assert len(model_repository.versions(repo, "deepfm")) == 3
    connection = metadata.connection_config(None, root)
    assert scenario.quarantined_spans(connection) == [scenario.BROKEN_WEEK]
    scenario.check_frozen_schema(root, connection, spec)

    # One POST per week: its light, the gate that stopped it, this week's AUC against last week's model.
    assert [p[0] for p in posts] == ["application/json"] * 4
    payloads = [p[1] for p in posts]
    assert [p["outcome"] for p in payloads] == ["pushed", "pushed", "blocked", "pushed"]
    assert [p["span"] for p in payloads] == [1, 2, 3, 4]
    assert payloads[2]["blocked_by"] == "DriftSkew" and payloads[2]["exit_code"] == 3
    assert payloads[1]["metrics"]["auc"] is not None and payloads[1]["metrics"]["baseline_auc"] is not None
    assert payloads[3]["pushed_version"] == max(model_repository.versions(repo, "deepfm"))
    assert payloads[3]["report"].endswith("report.html")

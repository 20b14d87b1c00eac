"""Evaluation you can see: the paired AUC gate, the run report in a real browser, TensorBoard.

One small three-week world is run once for the module: week 1 trains with
the Estimator, week 2 has a broken column (DriftGate stops it), week 3 trains
with Keras against week 1's model as baseline. The report is rendered by
headless Chromium (the Makefile's test target installs it), TensorBoard is
started on the real logs and asked over loopback.
"""
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from deepfm_tfx import paired_auc
from deepfm_tfx.pipeline import cli, configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.pipeline.report import publish
from deepfm_tfx.synthetic import generator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOT = os.path.join(ROOT, "docs", "report.png")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


# --- the confidence interval, on known cases ------------------------------------------------------

def test_delong_matches_a_hand_worked_case():
    # Positives score (0.9, 0.8, 0.3) under A and (0.7, 0.2, 0.6) under B; negatives (0.5, 0.1) and (0.4, 0.8).
    # Placements of the positives: A (1, 1, 1/2), B (1/2, 0, 1/2); of the negatives: A (2/3, 1), B (2/3, 0).
    # AUC A = 5/6, B = 1/3. Covariances (n-1 denominators): positives var A = var B = 1/12, cov = -1/24;
    # negatives var A = 1/18, var B = 2/9, cov = -1/9.
    # Var(A - B) = (1/12 + 1/12 + 2/24) / 3 + (1/18 + 2/9 + 2/9) / 2 = 1/12 + 1/4 = 1/3.
    r = paired_auc.delong([1, 1, 1, 0, 0], [0.9, 0.8, 0.3, 0.5, 0.1], [0.7, 0.2, 0.6, 0.4, 0.8])
    assert r.auc_new == pytest.approx(5 / 6) and r.auc_baseline == pytest.approx(1 / 3)
    assert r.diff == pytest.approx(0.5) and r.se == pytest.approx(1 / math.sqrt(3))
    assert (r.ci_low, r.ci_high) == pytest.approx((0.5 - 1.959964 / math.sqrt(3), 0.5 + 1.959964 / math.sqrt(3)))
    assert r.rows == 5 and r.positives == 3


def _delong_by_definition(y, a, b):
    """DeLong et al. (1988) written out with the O(m·n) kernel, ties as 1/2."""
    y = np.asarray(y, bool)
    v10, v01 = [], []
    for s in (np.asarray(a, float), np.asarray(b, float)):
        kernel = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        v10.append(kernel.mean(axis=1))
        v01.append(kernel.mean(axis=0))
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / y.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / (~y).sum()
    return v10[0].mean() - v10[1].mean(), math.sqrt(var)


def test_delong_agrees_with_the_definition_and_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(3)
    y = rng.random(600) < 0.3
    a = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties
    b = np.round(a + rng.normal(0, 0.7, 600), 1)
    r = paired_auc.delong(y, a, b)
    diff, se = _delong_by_definition(y, a, b)
    assert r.diff == pytest.approx(diff) and r.se == pytest.approx(se)
    assert r.auc_new == pytest.approx(roc_auc_score(y, a)) and r.auc_baseline == pytest.approx(roc_auc_score(y, b))
    # Pairing: the difference is far less noisy than either AUC's own sampling noise.
    assert r.se < 0.03


def test_the_change_gate_blocks_only_a_drop_beyond_noise():
    def result(diff, low, high):
        return paired_auc.PairedAuc(0.70 + diff, 0.70, diff, (high - low) / 3.92, low, high, 0.5, 50_000, 12_000)
    blocked, why = paired_auc.change_gate(result(-0.030, -0.036, -0.024), max_auc_drop=0.01)
    assert not blocked and "lies entirely below -0.01" in why and "[-0.0360, -0.0240]" in why and "50,000" in why
    passed, why = paired_auc.change_gate(result(-0.012, -0.018, -0.006), max_auc_drop=0.01)
    assert passed and "within noise" in why  # a drop past max_auc_drop that noise could explain
    assert paired_auc.change_gate(result(0.004, -0.002, 0.010), max_auc_drop=0.01)[0]
    assert paired_auc.change_gate(None, max_auc_drop=0.01)[0]


def test_distinct_ids_are_each_rows_first_value_of_bytes_and_int_columns(tmp_path):
    """What PairedAucGate counts as seen by the window: each row's first value per column, as the eval
    side compares them (bytes decoded, ints as text), missing or empty values not counted."""
    import tensorflow as tf

    from deepfm_tfx.components import paired_auc_gate

    def example(**columns):
        features = {}
        for name, values in columns.items():
            if values and isinstance(values[0], int):
                features[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
            else:
                features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    split = tmp_path / "Split-train"
    split.mkdir()
    rows = [example(C1=["a"], user=[7]), example(C1=["b", "z"], user=[7, 8]), example(user=[9]),
            example(C1=[""]), example(C1=["é"])]
    with tf.io.TFRecordWriter(str(split / "data.gz"), options="GZIP") as writer:
        for row in rows:
            writer.write(row)
    want = {"C1": {"a", "b", "é"}, "user": {"7", "9"}}
    assert paired_auc_gate.distinct_ids(str(tmp_path), "train", ["C1", "user"]) == want
    assert paired_auc_gate.distinct_ids(str(tmp_path), "train", ["C1", "user"]) == want  # from the memo


def test_the_evaluators_paired_metric_keeps_both_models_rows_and_their_interval():
    # The Evaluator's PairedAucRows metric, fed as TFMA feeds it (two model specs, each example's
    # extracts, partial accumulators merged), gives PairedAucGate the same interval as scoring the rows itself.
    import tensorflow_model_analysis as tfma
    from deepfm_tfx.components import paired_auc_metric

    eval_config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(name="candidate", label_key="label"),
                                               tfma.ModelSpec(name="baseline", label_key="label", is_baseline=True)])
    [computation] = paired_auc_metric.PairedAucRows(categorical=["C1", "C2"]).computations(
        eval_config=eval_config, model_names=["candidate", "baseline"], output_names=[""])
    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.3).astype(float)
    new, old = rng.normal(y, 1.0), rng.normal(y * 0.5, 1.0)
    ids = [(f"a{i % 7}".encode(), b"" if i % 5 else b"z") for i in range(400)]
    [preprocessor], combiner = computation.preprocessors, computation.combiner
    parts = []
    for half in (range(0, 150), range(150, 400)):
        accumulator = combiner.create_accumulator()
        for i in half:
            features = {"C1": np.array([ids[i][0]], dtype=object),
                        "C2": np.array([ids[i][1]] if ids[i][1] else [], dtype=object)}
            # Labels per model or shared, a prediction as an output dict or an array: TFMA gives either.
            labels = {"candidate": np.array([y[i]]), "baseline": np.array([y[i]])} if i % 2 else np.array([y[i]])
            extracts = {"labels": labels, "features": features, "predictions": {
                "candidate": {"click_probability": np.array([new[i]], np.float32)}, "baseline": np.array([old[i]])}}
            accumulator = combiner.add_inputs(accumulator, preprocessor.process(extracts))
        parts.append(accumulator)
    [(key, value)] = combiner.extract_output(combiner.merge_accumulators(parts)).items()
    assert key.name == paired_auc_metric.NAME and key.model_name == "candidate"
    rows = paired_auc_metric.read(value)
    np.testing.assert_array_equal(rows["label"], y)
    np.testing.assert_allclose(rows["baseline"], old, rtol=1e-6)
    expected = paired_auc.delong(y > 0.5, new.astype(np.float32), old.astype(np.float32))
    assert rows["result"]["paired"] == pytest.approx(expected.to_dict())
    # A missing id reads as "" in both the metric and the gate's decoder, so the keys agree.
    assert rows["key"][1] == paired_auc_metric.row_key(["a1", ""])
    assert rows["key"][5] == paired_auc_metric.row_key(["a5", "z"]) != rows["key"][1]


# --- a real small run -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = str(tmp / "data")
    config = configs.RunConfig(
        data=data, pipeline_root=str(tmp / "pipeline"), model_repository=str(tmp / "repo"),
        trainer="estimator", train_steps=40, eval_steps=2, min_auc=0.5,
        training={"batch_size": 256, "dnn_units": [32, 16], "steps_per_execution": 5, "log_every_steps": 10})
    weeks = {}
    for week, trainer in ((1, "estimator"), (2, "keras"), (3, "keras")):
        generator.generate(data, rows=4000, spans=1, first_span=week, seed=11, drift=0.15,
                           broken_column_span=2 if week == 2 else None)
        try:
            weeks[week] = local.run(dataclasses.replace(config, trainer=trainer))
        except local.RunFailed as failed:
            weeks[week] = failed.summary
    return config, weeks


@pytest.mark.e2e
def test_the_summary_gives_the_paired_auc_difference_and_the_report(world):
    config, weeks = world
    first, blocked, third = weeks[1], weeks[2], weeks[3]
    assert first["pushed"] and first["auc_diff"] is None and "no baseline" in first["change_gate"]
    assert blocked["blocked_by"] == "DriftSkew" and not blocked["pushed"]
    assert third["pushed"] and third["trainer_runner"] == "keras"
    low, high = third["auc_diff_ci95"]
    assert low < third["auc_diff"] < high and third["auc_diff_rows"] == third["example_count"]
    # The paired figures are exact AUCs; TFMA's are bucketed, so they agree to about 1e-3.
    assert third["auc_diff"] == pytest.approx(third["auc"] - third["baseline_auc"], abs=3e-3)
    assert f"[{low:+.4f}, {high:+.4f}]" in third["change_gate"]
    assert third["report_path"] == os.path.join(config.pipeline_root, "report.html")
    for summary in weeks.values():
        assert "report_error" not in summary, summary.get("report_error")
    # A copy beside the pushed version.
    beside = publish.version_report_path(config.model_repository, config.model_name, third["pushed_version"])
    with open(beside) as f, open(third["report_path"]) as g:
        assert f.read() == g.read()


def _chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return found


def _render(page, tmp_path, height=6000):
    profile = tmp_path / "chromium-profile"  # fresh: no state from any other run
    common = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,%d" % height]
    url = "file://" + page
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    shot = tmp_path / "report.png"
    subprocess.run(common + [f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    return dom.stdout, str(shot)


def _section(dom, section_id):
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', dom, re.S)
    assert match, f"no section {section_id!r}"
    return match.group(1)


def _plots(html_text):
    return re.findall(r'<figure class="plot" data-plot="([^"]+)"><svg', html_text)


@pytest.mark.e2e
def test_the_report_renders_in_headless_chromium_with_every_section(world, tmp_path):
    from PIL import Image, ImageStat
    config, weeks = world
    dom, shot = _render(weeks[3]["report_path"], tmp_path)
    assert "keras trainer" in dom and f"pushed as version {weeks[3]['pushed_version']}" in dom
    decision = _section(dom, "decision")
    assert "AUC floor" in decision and "change vs baseline" in decision and "95% CI" in decision
    assert _plots(_section(dom, "metrics")) == ["paired-auc"]
    roc = _section(dom, "roc")
    assert _plots(roc) == ["roc"] and "new model (AUC" in roc and "baseline (AUC" in roc
    assert _plots(_section(dom, "calibration")) == ["calibration"]
    slices = _section(dom, "slices")
    assert "<h3>C2</h3>" in slices and "<h3>C3</h3>" in slices and "slice-c2" in _plots(slices)
    cold = _section(dom, "cold-ids")
    assert "cold: an id the window never saw" in cold and "spans 1, 3" in cold
    assert set(_plots(_section(dom, "training"))) == {"training-loss", "training-auc"}
    gates = _section(dom, "gates")
    assert "No anomalies" in gates and "drift" in _plots(gates) and "Change vs baseline" in gates
    assert "missing" in _plots(_section(dom, "data"))
    # Offline: nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:)?//', dom)

    image = Image.open(shot).convert("RGB")
    stats = ImageStat.Stat(image)
    assert max(stats.stddev) > 20, "the screenshot is blank"
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # plots drawn, not just text
    if os.environ.get("UPDATE_REPORT_SCREENSHOT"):  # the README's picture comes from this rendering
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        top = image.crop((0, 0, image.width, min(image.height, 2400)))
        top.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(SCREENSHOT, optimize=True)


@pytest.mark.e2e
def test_a_blocked_week_reports_which_features_moved_and_by_how_much(world, tmp_path):
    config, weeks = world
    [page] = glob.glob(os.path.join(config.pipeline_root, publish.REPORTS, "*-span2-keras.html"))
    with open(page) as f:
        text = f.read()
    assert "blocked by DriftSkew" in text
    gates = _section(text, "gates")
    assert re.search(r"<td>C2</td><td>[0-9.]+ / 0\.1000 \(L-infinity\)</td>.*?moved \(drift", gates, re.S)
    assert "training-loss" not in _plots(text)  # it never trained


@pytest.mark.e2e
def test_models_report_covers_versions_weeks_and_a_rollback(world, capsys):
    config, weeks = world
    repo, name = config.model_repository, config.model_name
    first, third = weeks[1]["pushed_version"], weeks[3]["pushed_version"]
    assert cli.main(["models", "report", "--model-repository", repo]) == 0
    page = os.path.join(repo, name, "report.html")
    assert f"repository report written to {page}" in capsys.readouterr().out
    with open(page) as f:
        text = f.read()
    for plot in ("versions-auc", "versions-logloss", "versions-calibration", "weeks-auc"):
        assert f'data-plot="{plot}"><svg' in text
    weeks_table = _section(text, "weeks")
    assert weeks_table.count("blocked by DriftSkew") == 1 and weeks_table.count("pushed as version") == 2
    assert f'href="{third}.report.html"' in text and 'href="runs/' in text

    assert cli.main(["models", "rollback", str(first), "--model-repository", repo]) == 0
    assert cli.main(["models", "report", "--model-repository", repo]) == 0
    with open(page) as f:
        text = f.read()
    assert "rolled back" in _section(text, "versions") and "held by a rollback" in text
    assert cli.main(["models", "release", "--model-repository", repo]) == 0


# --- TensorBoard ----------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.e2e
def test_tensorboard_serves_readable_runs_with_curves_and_weekly_metrics(world):
    config, weeks = world
    port = _free_port()
    board = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "deepfm-tfx"), "tensorboard", "--pipeline-root", config.pipeline_root,
         "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, runs = time.monotonic() + 240, []
        while time.monotonic() < deadline and board.poll() is None:
            try:
                runs = _get(base + "/data/runs")
                if any(r.startswith("weekly/") for r in runs):
                    break
            except OSError:
                pass
            time.sleep(2)
        assert board.poll() is None, board.stdout.read()
        estimator = f"span001-estimator-v{weeks[1]['pushed_version']}"
        keras = f"span003-keras-v{weeks[3]['pushed_version']}"
        assert {estimator, f"{estimator}/eval", f"{keras}/train", f"{keras}/validation", "weekly/new-model",
                "weekly/baseline", "weekly/bayes", "weekly/ci95-low", "weekly/ci95-high"} <= set(runs), runs

        def points(run, tag):
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            return [(step, value) for _, step, value in _get(f"{base}/data/plugin/scalars/scalars?{query}")]
        # Loss and AUC every 10 of the 40 steps, from both trainers, not once per run.
        assert [s for s, _ in points(f"{keras}/train", "batch_loss")] == [10, 20, 30, 40]
        assert [s for s, _ in points(f"{keras}/train", "batch_auc")] == [10, 20, 30, 40]
        assert len(points(estimator, "loss")) == 4 and len(points(estimator, "auc")) == 4
        assert points(f"{estimator}/eval", "auc")
        # Each week's evaluation against the week; the blocked week 2 has no model to score.
        auc = dict(points("weekly/new-model", "evaluation/auc"))
        assert sorted(auc) == [1, 3] and auc[3] == pytest.approx(weeks[3]["auc"], abs=1e-6)
        assert dict(points("weekly/baseline", "evaluation/auc"))[3] == pytest.approx(weeks[3]["baseline_auc"],
                                                                                     abs=1e-6)
        assert dict(points("weekly/ci95-low", "evaluation/auc_diff_vs_baseline"))[3] == pytest.approx(
            weeks[3]["auc_diff_ci95"][0], abs=1e-6)
    finally:
        os.killpg(board.pid, signal.SIGTERM)
        try:
            board.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(board.pid, signal.SIGKILL)
            board.wait()
    assert board.returncode is not None


def test_prune_removes_a_versions_report_with_it(tmp_path):
    from deepfm_tfx import model_repository
    repo, name = str(tmp_path), "deepfm"
    for version in (100, 200):
        os.makedirs(os.path.join(repo, name, str(version), "variables"))
        open(os.path.join(repo, name, str(version), "saved_model.pb"), "wb").close()
        open(os.path.join(repo, name, str(version), "variables", "variables.index"), "wb").close()
        with open(publish.version_report_path(repo, name, version), "w") as f:
            f.write("<html></html>")
    assert model_repository.prune(repo, name, keep=1) == [100]
    assert not os.path.exists(publish.version_report_path(repo, name, 100))
    assert os.path.exists(publish.version_report_path(repo, name, 200))
    # A report whose version is gone (a prune that died mid-way) is cleared like a record.
    os.rename(publish.version_report_path(repo, name, 200), publish.version_report_path(repo, name, 300))
    assert model_repository.prune(repo, name, keep=1) == []
    assert not os.path.exists(publish.version_report_path(repo, name, 300))

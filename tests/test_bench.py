"""The benchmark harness: its pure helpers, the section dispatcher, and the one
piece of TF it owns (the in-memory input). No pipeline run, no training."""
import importlib.machinery
import json
import math
import os
import subprocess
import sys
import types

import pytest

import bench.__main__ as dispatcher
from bench import common, runs, trainer

BENCH_DIR = os.path.dirname(dispatcher.__file__)


def test_median_odd_even_and_unsorted():
    assert common.median([3, 1, 2]) == 2
    assert common.median([4, 1, 3, 2]) == 2.5
    assert common.median([7.0]) == 7.0
    with pytest.raises(ValueError):
        common.median([])


@pytest.mark.parametrize("q,expected", [(0, 1.0), (50, 50.5), (99, 99.01), (100, 100.0)])
def test_percentile_matches_linear_interpolation(q, expected):
    assert common.percentile(range(1, 101), q) == pytest.approx(expected)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        common.percentile([], 50)
    with pytest.raises(ValueError):
        common.percentile([1, 2], 101)


def test_ratio_handles_missing_and_zero():
    assert common.ratio(6, 3) == 2
    assert common.ratio(None, 3) is None
    assert common.ratio(1, 0) is None
    assert common.ratio(1, None) is None


def test_parse_list():
    assert common.parse_list("100000, 1_000_000,5000000", int) == [100_000, 1_000_000, 5_000_000]
    assert common.parse_list("trainer,,parity") == ["trainer", "parity"]


def test_per_row_per_column_of_the_reference():
    # 644 s over 1M rows x 12 columns.
    assert common.per_row_per_column(644, 1_000_000, 12) == pytest.approx(53.667, rel=1e-4)


def test_growth_is_relative_to_the_smallest_size():
    g = common.growth({1_000_000: 300.0, 100_000: 60.0})
    assert [x["rows"] for x in g] == [100_000, 1_000_000]
    assert g[0]["per_row_vs_smallest"] == 1.0
    assert g[1]["per_row_vs_smallest"] == pytest.approx(0.5)
    assert g[0]["us_per_row"] == pytest.approx(600.0)
    assert common.growth({}) == []


def test_verdict():
    assert common.verdict(2.1, 2.0) == "met"
    assert common.verdict(1.9, 2.0) == "NOT met"
    assert common.verdict(1.5, 2.0, higher_is_better=False) == "met"
    assert common.verdict(None, 2.0) == "n/a"
    assert common.verdict(math.nan, 2.0) == "n/a"


def test_fmt():
    assert common.fmt(None) == "-"
    assert common.fmt(True) == "yes"
    assert common.fmt(1234567) == "1,234,567"
    assert common.fmt(250123.7) == "250,124"
    assert common.fmt(123.45) == "123.5"
    assert common.fmt(1.5) == "1.5"
    assert common.fmt(0.78412) == "0.784"
    assert common.fmt("met") == "met"


def test_table_aligns_columns():
    text = common.table(["name", "ex/s"], [["keras", 1234.0], ["deepctr-spe1", 5.0]], title="T")
    lines = text.splitlines()
    assert lines[0] == "T"
    assert len({len(line) for line in lines[1:]}) == 1  # every row as wide as the header
    assert lines[3].startswith("keras ") and lines[3].endswith("1,234")
    assert lines[4].endswith("    5")


def test_merge_results_keeps_other_sections(tmp_path):
    path = str(tmp_path / "out" / "results.json")
    common.merge_results(path, {"sections": {"pipeline": {"a": 1}}, "quick": False})
    merged = common.merge_results(path, {"sections": {"trainer": {"b": 2}}, "quick": True})
    assert merged["sections"] == {"pipeline": {"a": 1}, "trainer": {"b": 2}}
    with open(path) as f:
        assert json.load(f)["quick"] is True


def test_trainer_plan_windows_fit_the_step_budget():
    for quick in (True, False):
        plan = trainer.trainer_plan(quick, 1500)
        assert plan["total_steps"] == plan["warmup_steps"] + plan["windows"] * plan["window_steps"]
        assert plan["window_steps"] % 20 == 0 and plan["warmup_steps"] % 20 == 0
        # batch-4096 contenders run a quarter of the steps in whole executions.
        assert (plan["window_steps"] // 4) % plan["big_batch_spe"] == 0
        assert (plan["warmup_steps"] // 4) % plan["big_batch_spe"] == 0
        assert plan["window_steps"] % plan["long_spe"] == 0 and plan["warmup_steps"] % plan["long_spe"] == 0
    assert trainer.trainer_plan(False, 1500)["total_steps"] == 1500


def test_trainer_variants_change_the_input_or_the_loop_never_the_model():
    from deepfm_tfx.trainer_modules.hparams import TrainingConfig
    plan = trainer.trainer_plan(False, 1500)
    names = [name for name, _, _ in trainer.variants(plan, TrainingConfig(), 1 << 18, hashed=True)]
    assert len(names) == len(set(names))
    assert all(name.startswith("keras ") for name in names)
    assert not any("lazy" in name.lower() for name in names)
    options = {k for _, _, kw in trainer.variants(plan, TrainingConfig(), 1 << 18, hashed=True) for k in kw}
    assert options <= {"spe", "batch", "lr", "jit", "dataset", "buckets"}
    # Fewer buckets only makes sense for hashed ids over a larger table.
    assert len(trainer.variants(plan, TrainingConfig(), 1 << 15, hashed=True)) == len(names) - 3
    assert len(trainer.variants(plan, TrainingConfig(), 1 << 18, hashed=False)) == len(names) - 3


def test_no_private_keras_api_or_module_table_edits():
    for name in sorted(os.listdir(BENCH_DIR)):
        if name.endswith(".py"):
            with open(os.path.join(BENCH_DIR, name)) as f:
                source = f.read()
            for banned in ("keras.src", "sys.modules", "LazyAdam", "LazyL2"):
                assert banned not in source, f"bench/{name} uses {banned}"


# --- the dispatcher --------------------------------------------------------------------------

def test_parser_takes_common_and_section_flags_in_run_order():
    argv = ["--sections", "pipeline,parity,trainer", "--pipeline-rows", "100000,1_000_000", "--quick",
            "--no-variants"]
    args = dispatcher.build_parser(argv).parse_args(argv)
    assert args.sections == ["trainer", "parity", "pipeline"]  # parity reads the trainer section's loops
    assert args.pipeline_rows == [100_000, 1_000_000] and args.quick and args.no_variants
    assert args.out.endswith("results.json") and args.workdir.endswith("bench")


def test_parser_adds_only_the_chosen_sections_flags():
    argv = ["--sections", "parity"]
    parser = dispatcher.build_parser(argv)
    assert parser.parse_args(argv).sections == ["parity"]
    with pytest.raises(SystemExit):
        parser.parse_args(argv + ["--pipeline-rows", "1000"])


def test_unknown_and_absent_sections_are_refused(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        dispatcher.build_parser(["--sections", "trainer,speed"]).parse_args(["--sections", "trainer,speed"])
    assert "unknown section 'speed'" in capsys.readouterr().err
    monkeypatch.setattr(dispatcher, "available", lambda: [n for n in dispatcher.SECTIONS if n != "serving"])
    with pytest.raises(SystemExit):
        dispatcher.build_parser(["--sections", "serving"]).parse_args(["--sections", "serving"])
    err = capsys.readouterr().err
    assert "bench/serving.py" in err and "serving_inprocess" in err


def test_every_built_in_section_module_has_the_interface():
    for name in dispatcher.available():
        if name == "serving":
            continue  # another engineer's module; load() accepts its interface below
        section = dispatcher.load(name)
        assert callable(section.run) and callable(section.show), name
        assert set(section.needs) <= set(dispatcher.TRAINERS), name
    assert dispatcher.load("parity").needs == ("keras", "estimator")
    assert dispatcher.load("pipeline").needs == ()


def test_a_serving_module_is_called_through_either_naming(monkeypatch):
    # A stand-in bench/serving.py, as the other engineer's module would be found.
    fake = types.ModuleType("bench.serving")
    fake.__spec__ = importlib.machinery.ModuleSpec("bench.serving", None)
    fake.section_serving = lambda args, shared: {"p50_ms": 1.0}
    fake.print_serving = lambda result: print("served", result["p50_ms"])
    monkeypatch.setitem(sys.modules, "bench.serving", fake)
    assert "serving" in dispatcher.available()
    section = dispatcher.load("serving")
    assert section.run(None, {}) == {"p50_ms": 1.0} and section.needs == ()
    fake.run = lambda args, shared: {"rows": 2}
    del fake.print_serving
    assert dispatcher.load("serving").run(None, {}) == {"rows": 2}


def test_default_runs_are_made_once_on_first_use(monkeypatch, tmp_path):
    made = []

    def fake_default_run(workdir, trainer_name, rows, extra, rerun):
        made.append((trainer_name, rows, tuple(extra)))
        return {"trainer": trainer_name}

    # The real one runs the whole pipeline for minutes.
    monkeypatch.setattr(runs, "default_run", fake_default_run)
    default_runs = runs.DefaultRuns(str(tmp_path), quick=True, rerun=False)
    assert default_runs["keras"] == {"trainer": "keras"}
    assert default_runs.make("keras") is default_runs["keras"]
    assert made == [("keras", runs.QUICK_ROWS, ("--train-steps", str(runs.QUICK_TRAIN_STEPS)))]
    assert "estimator" not in default_runs


def test_help_and_section_modules_import_no_tensorflow():
    root = os.path.dirname(BENCH_DIR)
    code = ("import sys, bench.__main__ as d\n"
            "d.build_parser([]).format_help()\n"
            "heavy = sorted(m for m in ('tensorflow', 'tfx', 'apache_beam', 'deepctr') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_ingest_reads_the_same_rows_in_every_format_and_measures_each(tmp_path, capsys):
    from bench import ingest
    args = types.SimpleNamespace(ingest_rows=2000, quick=True, workdir=str(tmp_path))
    result = ingest.run(args, {})
    assert {name: v["rows"] for name, v in result["formats"].items()} == {name: 2000 for name in ingest.FORMATS}
    assert all(v["peak_rss_mb"] >= v["rss_before_mb"] > 0 for v in result["formats"].values())
    ingest.show(result)
    assert "Parquet/CSV time" in capsys.readouterr().out


# --- the in-memory input that replaced Keras' private data adapter ----------------------------

def test_array_dataset_yields_full_shuffled_batches_with_labels_aligned():
    import numpy as np

    from bench.transformed_data import array_dataset
    n, batch = 10, 4  # 2 full batches per pass; the last 2 examples are dropped, as model.fit would not
    features = {"id": np.arange(n, dtype=np.int64), "x": np.arange(n, dtype=np.float32) * 10}
    labels = np.arange(n, dtype=np.float32) * 100
    passes = []
    it = iter(array_dataset(features, labels, batch))
    for _ in range(6):
        seen = []
        for _ in range(2):
            x, y = next(it)
            assert x["id"].shape == (batch,)
            np.testing.assert_array_equal(x["x"].numpy(), x["id"].numpy() * 10)
            np.testing.assert_array_equal(y.numpy(), x["id"].numpy() * 100)
            seen += list(x["id"].numpy())
        assert sorted(seen) == list(range(8))  # each usable example once per pass
        passes.append(seen)
    assert len({tuple(p) for p in passes}) > 1  # a fresh order each pass


# --- issue 13's sections: scale, learning curve, the in-run plain-TFX reference -----------------

def test_scale_targets_compare_2_22_with_2_18_and_the_dense_recipe_at_the_smallest_count():
    from bench import scale

    def run(buckets, optimizer, rate, auc, steps=None):
        return {"buckets": buckets, "optimizer": optimizer, "train_examples_per_second": rate, "auc": auc,
                "train_steps": steps, "exit_code": 0}
    runs_ = [run(2 ** 18, "lazy_adam", 100.0, 0.788), run(2 ** 20, "lazy_adam", 95.0, 0.789),
             run(2 ** 22, "lazy_adam", 85.0, 0.789), run(2 ** 18, "adam", 60.0, 0.7895),
             run(2 ** 22, "adam", 6.0, 0.70, steps=scale.DENSE_THROUGHPUT_STEPS)]
    t = scale.targets(runs_, "lazy_adam")
    assert t["speed_buckets"] == [2 ** 18, 2 ** 22] and t["speed_large_over_small"] == pytest.approx(0.85)
    assert t["speed_verdict"] == "met"
    # The dense run at 2^22 trained fewer steps: the AUC comparison is at 2^18 only.
    assert t["auc_buckets"] == 2 ** 18 and t["auc_minus_dense"] == pytest.approx(-0.0015)
    assert t["auc_verdict"] == "met"
    assert scale._power_list("18,20,1024") == [2 ** 18, 2 ** 20, 1024]


def test_scale_plan_measures_the_targets_figures_first():
    from bench import scale
    d, o = scale.DEFAULT_RULE, scale.OTHER_SPARSE_RULE
    plan = scale.plan_runs([2 ** 18, 2 ** 20, 2 ** 22, 2 ** 24], [2 ** 18, 2 ** 22], None, other_rule=True)
    assert plan == [(2 ** 18, d, None), (2 ** 18, "adam", None), (2 ** 24, d, None), (2 ** 22, d, None),
                    (2 ** 20, d, None), (2 ** 18, o, None), (2 ** 22, "adam", scale.DENSE_THROUGHPUT_STEPS)]
    assert all(rule != o for _, rule, _ in scale.plan_runs([2 ** 12], [2 ** 12], 100, other_rule=False))


def test_learning_curve_trains_the_same_passes_at_every_size():
    from bench import learning_curve
    assert learning_curve.steps_for(500_000) == pytest.approx(runs.DEFAULT_TRAIN_STEPS, abs=10)
    assert learning_curve.steps_for(2_000_000) == pytest.approx(4 * learning_curve.steps_for(500_000), rel=0.01)


def test_learning_curve_takes_its_default_size_point_from_the_default_run(tmp_path, monkeypatch):
    from bench import learning_curve
    defaults = runs.DefaultRuns(str(tmp_path), quick=False, rerun=False)
    defaults["keras"] = {"exit_code": 0, "process_seconds": 400.0, "peak_rss_mb": 2000, "log": "run.log",
                         "summary": {"auc": 0.79, "bayes_auc": 0.80, "bayes_auc_gap": 0.01}}
    monkeypatch.setattr(learning_curve, "run_pipeline", lambda *a, **k: pytest.fail("ran a second default run"))
    args = types.SimpleNamespace(curve_rows=[runs.DEFAULT_ROWS], quick=False, workdir=str(tmp_path),
                                 out=str(tmp_path / "results.json"))
    out = learning_curve.run(args, {"default_runs": defaults})
    assert [(r["rows"], r["auc"], r["gap"]) for r in out["runs"]] == [(runs.DEFAULT_ROWS, 0.79, 0.01)]
    assert out["gap_verdict"] == "met"


def test_pipeline_section_divides_by_the_reference_run_of_the_same_rows():
    from bench import pipeline
    first = {"summary": {"component_seconds": {"SpecCsvExampleGen": 10.0, "StatisticsGen": 20.0,
                                               "ImportSchemaGen": 0.5, "Transform": 30.0, "Trainer": 40.0,
                                               "Evaluator": 20.0, "ModelRepositoryPusher": 1.0}},
             "process_seconds": 150.0, "exit_code": 0, "peak_rss_mb": 1000, "log": "a"}
    again = {"summary": {}, "process_seconds": 10.0, "exit_code": 0, "peak_rss_mb": 900, "log": "b"}
    reference = {"component_seconds": {"CsvExampleGen": 40.0, "StatisticsGen": 20.0, "SchemaGen": 1.0,
                                       "Transform": 120.0, "Trainer": 80.0, "Evaluator": 40.0, "Pusher": 1.0},
                 "process_seconds": 330.0, "exit_code": 0, "peak_rss_mb": 3000, "log": "c"}
    f = pipeline.figures(100_000, first, again, reference)
    by = f["per_component_vs_reference"]
    assert by["CsvExampleGen"]["ours_over_reference"] == pytest.approx(0.25)
    assert by["Transform"]["ours_over_reference"] == pytest.approx(0.25)
    assert f["process_ours_over_reference"] == pytest.approx(150 / 330) and f["reference_verdict"] == "met"
    assert f["components_ours_over_reference"] == pytest.approx(121.5 / 302)
    assert pipeline.figures(100_000, first, again, None)["reference_verdict"] == "n/a"


def test_plain_tfx_reference_is_the_template_topology():
    from bench import plain_tfx
    p = plain_tfx.create_pipeline("/tmp/plain-root", "/tmp/plain-data", "/tmp/plain-serving", 10, 2,
                                  {"batch_size": 64}, [])
    assert [c.id for c in p.components] == ["CsvExampleGen", "StatisticsGen", "SchemaGen", "Transform", "Trainer",
                                           "Evaluator", "Pusher"]


def test_fresh_clone_times_make_in_a_clone_of_head_with_shared_beside_it(tmp_path):
    """The fresh_clone section's mechanics on a two-target Makefile: a clone of the committed HEAD
    (not the working tree), ../shared beside it, the exit code, CPU and pytest's summary line."""
    from bench import fresh_clone
    source = tmp_path / "src" / "repo"
    (tmp_path / "src" / "shared").mkdir(parents=True)
    source.mkdir()
    (source / "Makefile").write_text(
        "run:\n\tmkdir -p workspace/pipeline && echo '{\"auc\": 0.78, \"bayes_auc_gap\": 0.02, \"pushed\": true}'"
        " > workspace/pipeline/summary.json\n"
        "test:\n\ttest -d ../shared && python3 -c 'sum(range(3_000_000))' && cat out.txt\n")
    (source / "out.txt").write_text("=== slowest 15 durations ===\n== 3 passed, 1 skipped in 1.50s (0:00:01) ==\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=source, check=True)
    subprocess.run(git + ["add", "."], cwd=source, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=source, check=True)
    (source / "out.txt").write_text("uncommitted\n")  # the clone must not see it

    args = types.SimpleNamespace(fresh_clone_steps=["run", "test"], fresh_clone_source=str(source),
                                 workdir=str(tmp_path / "bench"), quick=False)
    res = fresh_clone.run(args, {})
    ran, tested = res["steps"]
    assert res["uncommitted_changes_left_out"] and len(res["commit"]) >= 7
    assert ran["exit_code"] == 0 and ran["auc"] == 0.78 and ran["bayes_auc_gap"] == 0.02
    assert ran["verdict"] == "met" and ran["process_seconds"] < ran["target_seconds"]
    assert tested["exit_code"] == 0 and tested["counts"] == {"passed": 3, "skipped": 1}
    assert tested["pytest_seconds"] == 1.5 and tested["cpu_seconds"] > 0
    fresh_clone.show(res)


def test_fresh_clone_measures_a_failing_command_and_reads_pytests_summary(tmp_path):
    from bench import fresh_clone
    log = tmp_path / "log"
    out = runs.run_command(["sh", "-c", "echo boom; exit 3"], str(log), cwd=str(tmp_path))
    assert out["exit_code"] == 3 and log.read_text() == "boom\n" and out["cpu_seconds"] >= 0
    assert fresh_clone.pytest_outcome("== 1 failed, 2 passed in 9.00s ==")["counts"] == {"failed": 1, "passed": 2}
    assert fresh_clone.pytest_outcome("no summary") is None

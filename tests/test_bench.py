"""The benchmark harness's pure helpers (no TensorFlow, runs in well under a second)."""
import argparse
import json
import math

import pytest

from bench import bench


def test_median_odd_even_and_unsorted():
    assert bench.median([3, 1, 2]) == 2
    assert bench.median([4, 1, 3, 2]) == 2.5
    assert bench.median([7.0]) == 7.0
    with pytest.raises(ValueError):
        bench.median([])


@pytest.mark.parametrize("q,expected", [(0, 1.0), (50, 50.5), (99, 99.01), (100, 100.0)])
def test_percentile_matches_linear_interpolation(q, expected):
    assert bench.percentile(range(1, 101), q) == pytest.approx(expected)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        bench.percentile([], 50)
    with pytest.raises(ValueError):
        bench.percentile([1, 2], 101)


def test_ratio_handles_missing_and_zero():
    assert bench.ratio(6, 3) == 2
    assert bench.ratio(None, 3) is None
    assert bench.ratio(1, 0) is None
    assert bench.ratio(1, None) is None


def test_parse_list():
    assert bench.parse_list("100000, 1_000_000,5000000", int) == [100_000, 1_000_000, 5_000_000]
    assert bench.parse_list("trainer,,serving") == ["trainer", "serving"]


def test_per_row_per_column_of_the_reference():
    # 644 s over 1M rows x 12 columns.
    assert bench.per_row_per_column(644, 1_000_000, 12) == pytest.approx(53.667, rel=1e-4)


def test_growth_is_relative_to_the_smallest_size():
    g = bench.growth({1_000_000: 300.0, 100_000: 60.0})
    assert [x["rows"] for x in g] == [100_000, 1_000_000]
    assert g[0]["per_row_vs_smallest"] == 1.0
    assert g[1]["per_row_vs_smallest"] == pytest.approx(0.5)
    assert g[0]["us_per_row"] == pytest.approx(600.0)
    assert bench.growth({}) == []


def test_verdict():
    assert bench.verdict(2.1, 2.0) == "met"
    assert bench.verdict(1.9, 2.0) == "NOT met"
    assert bench.verdict(1.5, 2.0, higher_is_better=False) == "met"
    assert bench.verdict(None, 2.0) == "n/a"
    assert bench.verdict(math.nan, 2.0) == "n/a"


def test_fmt():
    assert bench.fmt(None) == "-"
    assert bench.fmt(True) == "yes"
    assert bench.fmt(1234567) == "1,234,567"
    assert bench.fmt(250123.7) == "250,124"
    assert bench.fmt(123.45) == "123.5"
    assert bench.fmt(1.5) == "1.5"
    assert bench.fmt(0.78412) == "0.784"
    assert bench.fmt("met") == "met"


def test_table_aligns_columns():
    text = bench.table(["name", "ex/s"], [["keras", 1234.0], ["deepctr-spe1", 5.0]], title="T")
    lines = text.splitlines()
    assert lines[0] == "T"
    assert len({len(line) for line in lines[1:]}) == 1  # every row as wide as the header
    assert lines[3].startswith("keras ") and lines[3].endswith("1,234")
    assert lines[4].endswith("    5")


def test_merge_results_keeps_other_sections(tmp_path):
    path = str(tmp_path / "out" / "results.json")
    bench.merge_results(path, {"sections": {"pipeline": {"a": 1}}, "quick": False})
    merged = bench.merge_results(path, {"sections": {"trainer": {"b": 2}}, "quick": True})
    assert merged["sections"] == {"pipeline": {"a": 1}, "trainer": {"b": 2}}
    with open(path) as f:
        assert json.load(f)["quick"] is True


def test_trainer_plan_windows_fit_the_step_budget():
    for quick in (True, False):
        plan = bench.trainer_plan(quick, 1500)
        assert plan["total_steps"] == plan["warmup_steps"] + plan["windows"] * plan["window_steps"]
        assert plan["window_steps"] % 20 == 0 and plan["warmup_steps"] % 20 == 0
        # batch-4096 contenders run a quarter of the steps in whole executions.
        assert (plan["window_steps"] // 4) % plan["big_batch_spe"] == 0
        assert (plan["warmup_steps"] // 4) % plan["big_batch_spe"] == 0
        assert plan["window_steps"] % plan["long_spe"] == 0 and plan["warmup_steps"] % plan["long_spe"] == 0
    assert bench.trainer_plan(False, 1500)["total_steps"] == 1500


def test_configure_parses_the_options():
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    args = parser.parse_args(["--sections", "trainer,serving", "--pipeline-rows", "100000,1000000",
                              "--quick"])
    assert args.func is bench.main
    assert args.pipeline_rows == [100_000, 1_000_000] and args.quick
    assert args.out.endswith("results.json") and args.workdir.endswith("bench")

"""What a run prints while it works, and a command line that explains itself.

Unit tests for the progress lines, the console, the trainers' callback and
hook, the Beam read counter and every --help; one e2e test runs a small
pipeline as a subprocess with its output captured (not a terminal), as CI
and Airflow see it.
"""
import argparse
import io
import logging
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import mapped_libraries, without_preload
from deepfm_tfx import machine, progress
from deepfm_tfx.errors import DataError
from deepfm_tfx.pipeline import cli, console


class Clock:
    """Stands in for time.monotonic in deepfm_tfx.progress."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


# --- formatting -----------------------------------------------------------------------------------

def test_numbers_read_at_a_glance():
    assert [progress.count(n) for n in (0, 999, 12_345, 2_500_000, 3e9)] == ["0", "999", "12,345", "2.50M", "3.00B"]
    assert [progress.rate(r) for r in (12.4, 950, 2_345, 12_345, 3_456_789)] == ["12", "950", "2.35k", "12.3k", "3.46M"]
    assert [progress.duration(s) for s in (0.4, 42, 185, 3723)] == ["0s", "42s", "3:05", "1:02:03"]


def test_training_line_has_step_rate_eta_loss_and_auc(clock):
    t = progress.Training()
    t.start(steps=100, batch_size=1000)
    assert t.describe() == "step 0/100 · starting"
    clock.now += 8  # tracing: left out of the rate
    t.update(10, loss=0.61, auc=0.70)
    assert t.describe() == "step 10/100 · loss 0.6100 · auc 0.7000"  # no rate from one step
    clock.now += 2
    t.update(30, loss=0.5, auc=0.75)  # 20 steps in 2 s: 10 steps/s, 10k examples/s
    assert t.describe() == "step 30/100 · 10.0k ex/s · ETA 7s · loss 0.5000 · auc 0.7500"
    clock.now += 3  # no step since: the ETA still counts down
    assert "ETA 4s" in t.describe()
    t.update(100, loss=0.45, auc=0.8)
    t.set_phase("validating")
    assert t.describe().startswith("step 100/100 · ")
    assert "ETA" not in t.describe() and t.describe().endswith("auc 0.8000 · validating")
    assert t.describe(final=True).endswith("auc 0.8000")


def test_rows_line_counts_rows_files_and_the_rate_while_reading(clock):
    r = progress.Rows("X")
    assert r.describe() is None
    clock.now += 5  # start-up before the first block
    r.add(rows=1000)
    clock.now += 2
    r.add(rows=3000, files=1)
    assert r.describe() == "4,000 rows read · 1 file done · 1.50k rows/s"
    clock.now += 60  # idle afterwards: the rate is the reading rate, not diluted
    assert r.describe() == "4,000 rows read · 1 file done · 1.50k rows/s"


def test_tallies_log_plain_lines_where_no_console_draws_them(clock, monkeypatch, caplog):
    monkeypatch.setenv(progress.INTERVAL_ENV, "10")
    r = progress.Rows("SpecCsvExampleGen")
    with caplog.at_level(logging.INFO, logger=progress.LOGGER.name):
        for _ in range(5):  # within 10 s: one line
            r.add(rows=100)
            clock.now += 1
        clock.now += 10
        r.add(rows=100)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == progress.LOGGER.name]
    assert lines == ["SpecCsvExampleGen: 100 rows read", "SpecCsvExampleGen: 600 rows read · 33 rows/s"]


# --- the console ------------------------------------------------------------------------------------

def _absl(handler, message):
    handler.handle(logging.LogRecord("absl", logging.INFO, __file__, 0, message, None, None))


def test_plain_console_prints_periodic_lines_elapsed_and_outcome():
    out = io.StringIO()
    handler = console.ComponentProgress(stream=out, live=False, every=0.05)
    try:
        _absl(handler, "Component SpecCsvExampleGen is running.")
        progress.INGEST.add(rows=2500)
        time.sleep(0.3)
        progress.INGEST.add(rows=500, files=1)
        _absl(handler, "Component SpecCsvExampleGen is finished.")
        _absl(handler, "Component Transform is running.")
        _absl(handler, "A cached execution 7 is used.")
        _absl(handler, "Component Transform is finished.")
        _absl(handler, "Component Trainer is running.")  # and never finishes: it raised
    finally:
        handler.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "  ▶ SpecCsvExampleGen ..."
    running = [ln for ln in lines if ln.startswith("  … SpecCsvExampleGen")]
    # Each periodic line shows the count when it was printed: 2,500 during the pause. A busy machine can
    # also print one before the first add (no count yet) or between the second add and the finish (3,000).
    assert any("2,500 rows read" in ln for ln in running)
    assert {m for ln in running for m in re.findall(r"([\d,]+) rows read", ln)} <= {"2,500", "3,000"}, running
    assert re.match(r"  ✔ SpecCsvExampleGen +\d+\.\ds  3,000 rows read · 1 file done · [\d.k]+ rows/s$",
                    [ln for ln in lines if "✔ SpecCsvExampleGen" in ln][0])
    assert re.match(r"  ✔ Transform +cached$", [ln for ln in lines if "✔ Transform" in ln][0])
    assert re.match(r"  ✘ Trainer +\d+\.\ds  failed$", lines[-1])


def test_plain_lines_follow_the_steps_even_when_the_ticker_is_starved():
    out = io.StringIO()
    with console.ComponentProgress(stream=out, live=False, every=0.05) as handler:
        _absl(handler, "Component Trainer is running.")
        handler._stopped.set()  # no ticker: as while the training step holds the interpreter
        handler._ticker.join()
        progress.TRAINING.start(steps=3, batch_size=8)
        for step in (1, 2, 3):
            time.sleep(0.06)
            progress.TRAINING.update(step, loss=0.5, auc=0.6)
    steps = re.findall(r"… Trainer .* step (\d)/3", out.getvalue())
    assert steps == ["1", "2", "3"], out.getvalue()


def test_quiet_console_prints_nothing():
    out = io.StringIO()
    with console.ComponentProgress(stream=out, live=False, every=0.01, quiet=True) as handler:
        _absl(handler, "Component Transform is running.")
        time.sleep(0.05)
        _absl(handler, "Component Transform is finished.")
    assert out.getvalue() == ""


def test_live_console_redraws_one_line_and_keeps_the_finished_ones():
    out = io.StringIO()
    handler = console.ComponentProgress(stream=out, live=True)
    assert isinstance(handler.output, console.LiveOutput)
    with handler:
        _absl(handler, "Component Trainer is running.")
        progress.TRAINING.start(steps=40, batch_size=256)
        progress.TRAINING.update(20, loss=0.5, auc=0.7)
        assert handler.status()[0] == "Trainer" and handler.status()[2].startswith("step 20/40")
        _absl(handler, "Component Trainer is finished.")
    assert re.search(r"✔ Trainer +\d+\.\ds  step 20/40", out.getvalue())


def test_beam_reads_are_counted(tmp_path):
    import apache_beam as beam
    assert progress.count_beam_reads(), "Beam's TFRecord reader moved: StatisticsGen, Transform and " \
                                       "the Evaluator would show no rows"
    path = str(tmp_path / "rows")
    with beam.Pipeline() as p:
        _ = p | beam.Create([b"%d" % i for i in range(137)]) | beam.io.WriteToTFRecord(path)
    before = progress.BEAM_READS.total()
    with beam.Pipeline() as p:
        _ = p | beam.io.ReadFromTFRecord(path + "*") | beam.Map(len)
    assert progress.BEAM_READS.total() - before == 137


def test_beam_reads_in_local_worker_processes_are_counted(tmp_path, monkeypatch):
    """A big span's StatisticsGen and Transform read in Beam's worker processes: their rows still show."""
    import apache_beam as beam
    from deepfm_tfx.components import beam_workers
    path = str(tmp_path / "rows")
    with beam.Pipeline() as p:
        _ = p | beam.Create([b"%d" % i for i in range(137)]) | beam.io.WriteToTFRecord(path, num_shards=2)
    folder = tmp_path / "reads"
    folder.mkdir()
    monkeypatch.setenv(progress.WORKER_READS_ENV, str(folder))
    here = progress.BEAM_READS.total()
    with beam_workers.local_pipeline([], 2) as p:
        _ = p | beam.io.ReadFromTFRecord(path + "*") | beam.Map(len)
    assert progress.worker_reads() == 137
    assert progress.BEAM_READS.total() == here and os.listdir(folder)  # read in the workers, not here


def _raise_data_error(x):
    raise DataError("span-1/part-000.csv, row 5, column 'I5': expected a number, got 'many'")


def _raise_bug(x):
    raise KeyError("a bug")


def test_beam_logs_no_traceback_for_an_explained_error_and_keeps_it_for_a_bug():
    import apache_beam as beam
    beam_logger = logging.getLogger("apache_beam.runners.common")
    seen = []
    catcher = logging.Handler()
    catcher.emit = lambda record: seen.append(record)
    beam_logger.addHandler(catcher)
    explained = console.ExplainedErrors()
    beam_logger.addFilter(explained)
    try:
        for fn in (_raise_data_error, _raise_bug):
            with pytest.raises(Exception):
                with beam.Pipeline() as p:
                    _ = p | beam.Create([1]) | beam.Map(fn)
    finally:
        beam_logger.removeHandler(catcher)
        beam_logger.removeFilter(explained)
    logged = [r.exc_info[0] for r in seen if r.exc_info]
    assert DataError not in logged and KeyError in logged


# --- the trainers ---------------------------------------------------------------------------------

def _tiny_data(n=64):
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x[:, :1] > 0).astype("float32")


def test_keras_callback_reports_rising_steps_loss_and_auc(monkeypatch):
    import tensorflow as tf
    from deepfm_tfx.trainer_modules.progress import KerasProgress
    steps = []
    update = progress.TRAINING.update
    monkeypatch.setattr(progress.TRAINING, "update", lambda step, **kw: (steps.append(step), update(step, **kw)))
    x, y = _tiny_data()
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile("adam", tf.keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")], steps_per_execution=2)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    model.fit(dataset, steps_per_epoch=6, epochs=1, verbose=0, callbacks=[KerasProgress(6, 8)])
    assert steps == [2, 4, 6]  # once per execution of steps_per_execution steps
    line = progress.TRAINING.describe()
    # Six steps of an untrained layer: the values are whatever they are, but they are shown.
    assert re.match(r"step 6/6 · .*loss \d+\.\d{4} · auc \d\.\d{4}", line), line


def test_estimator_hook_reports_rising_steps_loss_and_auc(tmp_path):
    import tensorflow as tf
    from deepfm_tfx.trainer_modules.progress import EstimatorProgress
    x, y = _tiny_data()

    def model_fn(features, labels, mode):
        logits = tf.matmul(features, tf.compat.v1.get_variable("w", [3, 1]))
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        auc = tf.compat.v1.metrics.auc(labels, tf.sigmoid(logits))
        step = tf.compat.v1.train.get_or_create_global_step()
        train_op = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                          training_hooks=[EstimatorProgress(loss, auc[1], 5, 8)])

    estimator = tf.estimator.Estimator(model_fn, model_dir=str(tmp_path))
    estimator.train(lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(), max_steps=5)
    values = progress.TRAINING.values
    assert values["step"] == 5 and values["steps"] == 5 and 0 < values["loss"] and 0 <= values["auc"] <= 1
    assert progress.TRAINING.describe().endswith("evaluating and exporting")


# --- the command line ---------------------------------------------------------------------------

def _parsers(parser, path=("deepfm-tfx",)):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_help_explains_every_flag_and_names_its_default():
    parser = cli.build_parser([], configure_all=True)
    commands = dict(_parsers(parser))
    for expected in ("deepfm-tfx run", "deepfm-tfx simulate", "deepfm-tfx generate-data", "deepfm-tfx compile",
                     "deepfm-tfx schedule", "deepfm-tfx schema export", "deepfm-tfx models list",
                     "deepfm-tfx models rollback", "deepfm-tfx models release", "deepfm-tfx models prune"):
        assert expected in commands
    for name, p in commands.items():
        text = p.format_help()
        assert p.description, f"{name} --help says nothing about what it does"
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{name} {flag} has no help"
            valued = action.option_strings and not action.required and action.nargs != 0 \
                and action.default not in (None, [], argparse.SUPPRESS)
            if valued:
                assert "default:" in p._get_formatter()._expand_help(action), f"{name} {flag} hides its default"
        for noise in ("(default: None)", "(default: True)", "(default: False)", "(default: [])"):
            assert noise not in text, f"{name} --help shows {noise}"
    run = commands["deepfm-tfx run"]
    for flag, default in (("--train-steps", "1500"), ("--rows", "500000"), ("--batch-size", "1024"),
                          ("--progress-every", "10.0")):
        assert f"(default: {default})" in _help_of(run, flag), flag
    # A flag compile passes on only when given still names the default it then gets.
    assert "(default: 1500)" in _help_of(commands["deepfm-tfx compile"], "--train-steps")


def _help_of(parser, flag):
    [action] = [a for a in parser._actions if flag in a.option_strings]
    return parser._get_formatter()._expand_help(action)


def test_compile_help_names_the_orchestrators_real_defaults():
    from deepfm_tfx.pipeline.orchestrators import kubeflow
    compile_parser = dict(_parsers(cli.build_parser(["compile"])))["deepfm-tfx compile"]
    for flag, value in (("--pipeline-root", kubeflow.DEFAULT_PIPELINE_ROOT), ("--data-root", kubeflow.DEFAULT_DATA_ROOT),
                        ("--model-repository", kubeflow.DEFAULT_MODEL_REPOSITORY), ("--image", kubeflow.DEFAULT_IMAGE)):
        assert value in _help_of(compile_parser, flag), flag


@pytest.mark.parametrize("value", ["0", "-1", "often"])
def test_progress_every_must_be_positive_seconds(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser(["run"]).parse_args(["run", "--progress-every", value])
    assert exit_.value.code == 2 and "seconds above 0" in capsys.readouterr().err


def _fake_repository(root, versions):
    repo = root / "model_repository"
    for v in versions:
        (repo / "deepfm" / str(v) / "variables").mkdir(parents=True)
        (repo / "deepfm" / str(v) / "saved_model.pb").write_bytes(b"")
        (repo / "deepfm" / str(v) / "variables" / "variables.index").write_bytes(b"")
    (repo / "deepfm").mkdir(parents=True, exist_ok=True)
    return str(repo)


@pytest.mark.parametrize("argv, outcome", [
    (["prune", "--keep", "3", "--dry-run"], "nothing to remove with --keep 3; would keep 1795313945"),
    (["prune", "--keep", "3"], "nothing to remove with --keep 3; kept 1795313945"),
    (["release"], "no rollback hold; nothing changed"),
    (["list"], "1 version(s)"),
])
def test_models_commands_say_what_happened_even_when_nothing_did(tmp_path, capsys, argv, outcome):
    repo = _fake_repository(tmp_path, [1795313945])
    assert cli.main(["models", *argv, "--model-repository", repo]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out and outcome in out[0], out


# --- a real run, as CI sees it -----------------------------------------------------------------

def _run(tmp_path, *argv, name="run", while_running=None):
    """`deepfm-tfx ARGV` in a fresh process with its output piped, not a terminal, and without
    make test's preloaded allocator; `while_running(pid)` is called until it returns True or the
    process ends."""
    command = os.path.join(os.path.dirname(sys.executable), "deepfm-tfx")
    with open(tmp_path / f"{name}.stdout", "w+") as out, open(tmp_path / f"{name}.stderr", "w+") as err:
        process = subprocess.Popen([command, *argv], cwd=str(tmp_path), stdout=out, stderr=err, text=True,
                                   env=without_preload())
        while while_running and process.poll() is None and not while_running(process.pid):
            time.sleep(0.05)
        process.wait(timeout=900)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())


@pytest.mark.e2e
def test_a_run_shows_progress_for_every_component_and_the_trainers_steps(tmp_path):
    library, on_jemalloc = machine.jemalloc_path(), []

    def runs_on_jemalloc(pid):
        try:
            on_jemalloc.append(os.path.realpath(library) in mapped_libraries(pid))
        except OSError:  # ended
            return True
        return on_jemalloc[-1]

    # A step per Keras execution and a line every 0.25 s: 40 steps of 1024 rows give several lines.
    proc = _run(tmp_path, "run", "--rows", "3000", "--train-steps", "40", "--eval-steps", "2",
                "--steps-per-execution", "1", "--min-auc", "0.5", "--progress-every", "0.25",
                "--pipeline-root", "pipeline", "--model-repository", "repo",
                while_running=runs_on_jemalloc if library else None)
    # Started without it, the run re-executed itself (same pid) on jemalloc (--allocator's default).
    assert not library or (on_jemalloc and on_jemalloc[-1]), "the run's process never mapped libjemalloc"
    out = proc.stdout
    # 3: a gate refused this week; it is still a run that printed its progress.
    assert proc.returncode in (0, 3), out[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in out + proc.stderr
    started = re.findall(r"^  ▶ (\S+) \.\.\.$", out, re.M)
    ended = dict(re.findall(r"^  [✔✘] (\S+) +(\d+\.\ds|cached)", out, re.M))
    assert {"SpecCsvExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator"} <= set(started)
    assert set(started) == set(ended), "every component reports its elapsed time when it ends"
    steps = [int(s) for s in re.findall(r"^  … Trainer .*step (\d+)/40", out, re.M)]
    assert len({s for s in steps if s > 0}) >= 2 and steps == sorted(steps), steps
    assert re.search(r"^  … Trainer .*step \d+/40 · [\d.k]+ ex/s · ETA \S+ · loss \d\.\d{4} · auc \d\.\d{4}", out, re.M)
    assert re.search(r"^  ✔ Trainer .*step 40/40", out, re.M)
    assert re.search(r"^  ✔ SpecCsvExampleGen .*3,000 rows read · 1 file done", out, re.M)
    assert re.search(r"^  ✔ StatisticsGen .*rows read", out, re.M)


@pytest.mark.e2e
def test_a_known_data_error_is_one_line_without_a_traceback(tmp_path):
    from deepfm_tfx.synthetic import generator
    generator.generate(str(tmp_path / "data"), rows=3000, spans=1, seed=5)
    path = tmp_path / "data" / "span-1" / "part-000.csv"
    lines = path.read_text().splitlines()
    fields = lines[4].split(",")
    fields[5] = "many"  # column I5 of row 5 (the header is row 1)
    lines[4] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    proc = _run(tmp_path, "run", "--data", "data", "--train-steps", "40", "--pipeline-root", "pipeline",
                "--model-repository", "repo", name="bad")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert re.search(r"row 5, column 'I5': expected a number, got 'many'", proc.stderr)


def test_a_closed_display_gives_absl_back_and_a_closed_stream_never_fails_a_run():
    # The bug this guards against: a display left on absl after an in-process CLI call wrote to
    # pytest's closed stdout, and every later pipeline run in the process died on its first line.
    absl = logging.getLogger("absl")
    before = absl.handlers[:], absl.propagate
    display = console.configure_logging(False, every=0.25)
    assert absl.handlers == [display] and absl.propagate is False
    display.close()
    assert (absl.handlers, absl.propagate) == before

    stream = io.StringIO()
    handler = console.ComponentProgress(stream=stream, live=False, every=1)
    stream.close()
    record = logging.LogRecord("absl", logging.INFO, __file__, 1, "Component Trainer is running.", None, None)
    handler.emit(record)  # no ValueError
    handler.close()

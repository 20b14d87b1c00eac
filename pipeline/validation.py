"""Every knob and path of a run, checked before any work.

`deepfm-tfx run` and the local orchestrator call `validate` before anything
is generated, created or connected to; `compile` calls it without `paths`
(they name places on the cluster). Each problem is one ConfigError naming
the flag. No TensorFlow here.
"""
from __future__ import annotations

import math
import os
import urllib.parse
from typing import Optional, Tuple

from deepfm_tfx import model_repository
from deepfm_tfx.components import hash_splits, rows
from deepfm_tfx.errors import ConfigError
from deepfm_tfx.pipeline import configs

# Twice what an eval split of 1 in 10 needs, so a generated span passes hash_splits.check_counts.
GENERATED_MIN_ROWS = 20 * hash_splits.MIN_SPLIT_ROWS


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(name: str, value, minimum) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{_flag(name)} must be at least {minimum}, got {value!r}")


def _within(name: str, value, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{_flag(name)} must be between {low} and {high}, got {value!r}")


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _folder(flag: str, path: Optional[str], must_exist: bool = False) -> None:
    """A folder that exists, or that can be created where the nearest existing parent is writable."""
    if path is None:
        return
    if not path:
        raise ConfigError(f"{flag} is empty")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{flag} {path}: is a file, not a folder")
        if not must_exist and not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: is not writable")
        return
    if must_exist:
        raise ConfigError(f"{flag} {path}: no such folder")
    parent = _nearest_existing(path)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot be created, {parent} is not writable")


def _file_to_write(flag: str, path: Optional[str]) -> None:
    if path is None:
        return
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: is a folder, not a file")
    _folder(flag, os.path.dirname(os.path.abspath(path)))


def _bucket(flag: str, url: str) -> None:
    """The store answers and the bucket exists, before any component writes there."""
    from deepfm_tfx import object_store
    try:
        object_store.Store(url).check()
    except (OSError, ValueError) as e:
        raise ConfigError(f"{flag} {url}: {e}") from None


def _repository(config: configs.RunConfig) -> None:
    repo = config.model_repository
    if model_repository.is_store(repo):
        try:  # a models.config that does not parse is never overwritten; the store answers
            model_repository.read_config(repo)
        except (model_repository.RepositoryError, ValueError, OSError) as e:
            raise ConfigError(f"--model-repository {repo}: {e}") from None
        return
    _folder("--model-repository", repo)
    if not os.path.isdir(repo):
        return
    try:
        model = model_repository.model_dir(repo, config.model_name)
        if os.path.exists(model) and not os.path.isdir(model):
            raise ConfigError(f"--model-repository {repo}: {model} is a file, not the model's folder")
        model_repository.read_config(repo)  # a models.config that does not parse is never overwritten
    except model_repository.RepositoryError as e:
        raise ConfigError(f"--model-repository {repo}: {e}") from None


def _http_url(flag: str, url: Optional[str], example: str) -> None:
    if not url:
        return
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{flag} must look like {example}, got {url!r}")


def validate(config: configs.RunConfig, *, paths: bool = True, connect: bool = True) -> None:
    """Raises ConfigError for the first knob or path that would fail the run later."""
    try:
        model_repository.check_model_name(config.model_name)
    except model_repository.RepositoryError as e:
        raise ConfigError(f"--model-name: {e}") from None
    if config.trainer not in configs.TRAINERS:
        raise ConfigError(f"--trainer must be one of {', '.join(configs.TRAINERS)}, got {config.trainer!r}")
    for name in ("train_steps", "eval_steps", "window_spans", "rows", "spans"):
        _at_least(name, getattr(config, name), 1)
    _within("min_auc", config.min_auc, 0.0, 1.0)
    _within("max_auc_drop", config.max_auc_drop, 0.0, 1.0)
    training = config.training
    for name in ("batch_size", "embedding_dim", "steps_per_execution"):
        _at_least(name, getattr(training, name), 1)
    if not training.dnn_units or any(not isinstance(u, int) or u < 1 for u in training.dnn_units):
        raise ConfigError(f"--dnn-units must be positive layer widths, got {','.join(map(str, training.dnn_units))!r}")
    if not (math.isfinite(training.learning_rate) and training.learning_rate > 0):
        raise ConfigError(f"--learning-rate must be a positive number, got {training.learning_rate!r}")
    _at_least("embedding_l2", training.embedding_l2, 0.0)
    _at_least("checkpoint_every_steps", training.checkpoint_every_steps, 0)
    if training.cluster:
        from deepfm_tfx.trainer_modules import local_cluster  # no TensorFlow
        try:
            local_cluster.parse(training.cluster)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if config.trainer == "keras" and local_cluster.parse(training.cluster).workers < 1:
            raise ConfigError(f"--cluster {training.cluster}: the Keras trainer's coordinator does not train, so it "
                              f"needs at least one worker, e.g. workers=2,ps=1")
    bad_beam = [a for a in config.beam_args if not a.startswith("--")]
    if bad_beam:
        raise ConfigError(f"--beam-arg takes Beam options like --beam-arg=--direct_num_workers=2, got {bad_beam[0]!r}")
    _http_url("--serving-url", config.serving_url, "http://host:8501")
    _http_url("--notify-url", config.notify_url, "https://hooks.example.com/deepfm")

    if config.data is None and config.rows < GENERATED_MIN_ROWS:
        raise ConfigError(f"--rows must be at least {GENERATED_MIN_ROWS} for the generated data, so that its "
                          f"1-in-10 eval split holds {hash_splits.MIN_SPLIT_ROWS} rows; got {config.rows}")

    from deepfm_tfx.pipeline import metadata  # imports ml-metadata: only once the cheap checks pass
    if config.metadata:
        metadata.connection_config(config.metadata, config.pipeline_root)  # raises ConfigError if malformed
    if not paths:
        return
    if not os.path.isfile(config.features):
        raise ConfigError(f"--features {config.features}: no such file")
    if not model_repository.is_store(config.data or ""):  # a bucket is mirrored when the run starts
        _folder("--data", config.data, must_exist=True)
    if model_repository.is_store(config.pipeline_root):
        _bucket("--pipeline-root", config.pipeline_root)
    else:
        _folder("--pipeline-root", config.pipeline_root)
    if not model_repository.is_store(config.summary_path):
        _file_to_write("--summary", config.summary_path if config.summary else None)
    _repository(config)
    if connect:
        metadata.check_connection(config.metadata, config.pipeline_root)


def check_data(data_root: str, spec) -> Tuple[str, Optional[int]]:
    """The ExampleGen pattern for a data folder, and its newest span (None if unspanned).

    Reads every row ExampleGen will ingest, so a bad value, or a span too
    small to split and evaluate, stops the run before any component starts.
    """
    import glob

    from deepfm_tfx import spans
    from deepfm_tfx.errors import DataError

    if not os.path.isdir(data_root):
        what = "is not a directory" if os.path.exists(data_root) else "data directory does not exist"
        raise DataError(f"{data_root}: {what}")
    latest = spans.newest(data_root)
    if spec.partitions:
        found = spans.partitions(data_root, spec.partitions)
        if not found:
            raise DataError(f"{data_root}: holds no {spec.partitions}=<YYYY-MM-DD>/ partition folders, which "
                            f"feature spec '{spec.name}' names with 'partitions: {spec.partitions}'")
        latest, newest_folder = found[-1]
        where = os.path.join(data_root, newest_folder, spec.file_pattern)
        layout = spans.input_pattern(spec.file_pattern, spec.partitions), latest
    elif latest is not None:
        where = os.path.join(spans.folder(data_root, latest), spec.file_pattern)
        layout = spans.input_pattern(spec.file_pattern), latest
    else:
        where = os.path.join(data_root, spec.file_pattern)
        layout = spec.file_pattern, None
    _check_rows(sorted(glob.glob(where)), spec, where)
    return layout


def _check_rows(files, spec, where: str) -> None:
    from deepfm_tfx.pipeline.pipeline import splits

    rows.check_files(files, spec, where)
    hash_splits.check_splits(files, spec, splits(), where)


def store_layout(url: str, spec) -> Tuple[str, Optional[int]]:
    """check_data for data read in place from a bucket (TensorFlow's S3 filesystem registered):
    the pattern and newest span from one listing, then the newest span's rows, read as ExampleGen
    will read them, so a bad value is one error line before any component starts."""
    from deepfm_tfx import object_store, spans
    from deepfm_tfx.errors import DataError
    from deepfm_tfx.pipeline import id_space

    try:
        keys = [k for k in object_store.Store(url).list() if k and not k.endswith("/")]
    except (OSError, ValueError) as e:
        raise DataError(f"{url}: {e}") from None
    if not keys:
        raise DataError(f"{url}: no objects under it")
    folders = {k.split("/", 1)[0] for k in keys if "/" in k}
    if spec.partitions:
        dated = sorted(f for f in folders if f.startswith(spec.partitions + "="))
        if not dated:
            raise DataError(f"{url}: holds no {spec.partitions}=<YYYY-MM-DD>/ partition folders, which "
                            f"feature spec '{spec.name}' names with 'partitions: {spec.partitions}'")
        layout = spans.input_pattern(spec.file_pattern, spec.partitions), None
    else:
        found = [int(m.group(1)) for f in folders if (m := spans.SPAN_FOLDER.fullmatch(f))]
        layout = (spans.input_pattern(spec.file_pattern), max(found)) if found else (spec.file_pattern, None)
    newest = [f[0] for f in id_space.newest_objects(url, spec) or []]
    where = newest[0].rsplit("/", 1)[0] + "/" + spec.file_pattern if newest else f"{url}/{spec.file_pattern}"
    _check_rows(newest, spec, where)
    return layout

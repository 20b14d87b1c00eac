"""The weekly scenario every orchestrator must run alike (issue 22).

Week 1 is good and pushes; week 2 is good, trains on spans 1-2 and pushes;
week 3's column C2 holds one value in every row, with no curated schema, so
the drift gate stops it against the schema frozen after week 1, and the week
is quarantined; week 4 is good again and trains on a window that skips it.
"""
import json
import os
from typing import Any, Dict, List

from deepfm_tfx.components import span_window
from deepfm_tfx.contracts import DRIFT_SKEW_GATE, EXIT_GATE
from deepfm_tfx.schemas import feature_spec, frozen_schema
from deepfm_tfx.synthetic import generator

ROWS = 3000
SEED = 11
BROKEN_WEEK = 3
# Small and fast; every gate but the data gates is opened, so what decides a week is the orchestration.
KNOBS = dict(train_steps=30, eval_steps=3, min_auc=0.0, max_auc_drop=1.0, window_spans=3,
             training={"batch_size": 256, "dnn_units": [32, 16]})

# week -> (pushed, blocked_by, training window)
EXPECTED = {
    1: (True, None, [1]),
    2: (True, None, [1, 2]),
    3: (False, DRIFT_SKEW_GATE, None),
    4: (True, None, [1, 2, 4]),
}


def spec_without_schema(folder) -> str:
    """The default feature spec with no curated schema: the frozen one decides."""
    path = os.path.join(str(folder), "spec.yaml")
    with open(feature_spec.DEFAULT_SPEC) as f:
        lines = [line for line in f if not line.startswith("schema:")]
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def add_week(data_root: str, week: int) -> None:
    generator.generate(data_root, rows=ROWS, spans=1, first_span=week, seed=SEED,
                       broken_column_span=BROKEN_WEEK if week == BROKEN_WEEK else None)


def read_summary(pipeline_root: str) -> Dict[str, Any]:
    with open(os.path.join(pipeline_root, "summary.json")) as f:
        return json.load(f)


def check_week(week: int, summary: Dict[str, Any]) -> None:
    pushed, blocked_by, window = EXPECTED[week]
    shown = json.dumps({k: summary.get(k) for k in ("span", "pushed", "blocked_by", "window_spans", "error",
                                                    "not_pushed_reason", "exit_code")}, default=str)
    assert summary["span"] == week, shown
    assert summary["pushed"] is pushed, shown
    assert summary["blocked_by"] == blocked_by, shown
    if window is not None:
        assert summary["window_spans"] == window, shown
    if blocked_by:
        assert summary["exit_code"] == EXIT_GATE and summary["quarantined_span"] == week, shown
        assert generator.BROKEN_COLUMN in summary["error"], shown


def quarantined_spans(connection_config) -> List[int]:
    from ml_metadata import metadata_store
    store = metadata_store.MetadataStore(connection_config)
    return sorted(a.custom_properties["span"].int_value for a in store.get_artifacts_by_type("Examples")
                  if a.custom_properties.get(span_window.QUARANTINED) and
                  a.custom_properties[span_window.QUARANTINED].int_value)


def check_frozen_schema(pipeline_root: str, connection_config, spec_path: str) -> None:
    """The frozen schema is week 1's statistics' schema with thresholds, and later weeks used it."""
    import tensorflow_data_validation as tfdv
    from ml_metadata import metadata_store
    from tfx.components.statistics_gen import stats_artifact_utils
    from tfx.types import artifact_utils
    from tfx.utils import io_utils

    store = metadata_store.MetadataStore(connection_config)
    first = min(store.get_artifacts_by_type("ExampleStatistics"), key=lambda a: a.id)  # week 1's
    [artifact] = artifact_utils.deserialize_artifacts(store.get_artifact_types_by_id([first.type_id])[0], [first])
    stats = stats_artifact_utils.load_statistics(artifact, "train").proto()
    expected = frozen_schema.with_thresholds(tfdv.infer_schema(stats, infer_feature_shape=False),
                                             feature_spec.load(spec_path))
    frozen = io_utils.SchemaReader().read(frozen_schema.path(pipeline_root))
    assert frozen == expected
    # Every later week's SchemaGen handed the frozen schema on, byte for byte.
    with open(frozen_schema.path(pipeline_root), "rb") as f:
        frozen_bytes = f.read()
    later = sorted(store.get_artifacts_by_type("Schema"), key=lambda a: a.id)[1:]
    assert later
    for schema in later:
        with open(os.path.join(schema.uri, "schema.pbtxt"), "rb") as f:
            assert f.read() == frozen_bytes, schema.uri


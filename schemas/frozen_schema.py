"""The frozen schema: inferred once, then every later week is checked against it.

Without a curated `schema:` in the feature spec, SchemaGen would infer a new
schema from every new span, so a broken week would define its own schema and
no gate could fire. Instead the week's final step (pipeline/week_end.py)
freezes the first good run's inferred schema under the pipeline root, with
drift and skew thresholds on every feature, and FrozenSchemaGen hands it to
every later run, on every orchestrator. Review it with `deepfm-tfx schema export`, then
put it in the spec (`schema: FILE`) to make it curated.
"""
from __future__ import annotations

import os
from typing import Optional

from deepfm_tfx.schemas.feature_spec import FeatureSpec

FOLDER = "frozen_schema"
FILE_NAME = "schema.pbtxt"
# L-infinity distance of a categorical's value frequencies vs the previous span.
CATEGORICAL_DRIFT = 0.1
CATEGORICAL_SKEW = 0.15
# TFDV's approximate Jensen-Shannon divergence of a numeric's histogram vs the
# previous span. It is noisy on heavy-tailed counts: two 5k-row spans of the
# same distribution measured 0.15-0.31, so the bar sits above that noise.
NUMERICAL_DRIFT = 0.5
NUMERICAL_SKEW = 0.6
# A categorical with an inferred domain may see new values, but not mostly new ones.
MIN_DOMAIN_MASS = 0.9


def path(pipeline_root: str) -> str:
    return os.path.join(pipeline_root, FOLDER, FILE_NAME)


def with_thresholds(schema, spec: FeatureSpec):
    """The schema with drift and skew thresholds on every feature but the label (in place; returned)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    categorical = set(spec.categorical) | {m.name for m in spec.multivalent}
    for feature in schema.feature:
        if feature.name == spec.label:
            continue
        if feature.name in categorical or feature.type == schema_pb2.BYTES:
            feature.drift_comparator.infinity_norm.threshold = CATEGORICAL_DRIFT
            feature.skew_comparator.infinity_norm.threshold = CATEGORICAL_SKEW
            if feature.HasField("domain") or feature.HasField("string_domain"):
                feature.distribution_constraints.min_domain_mass = MIN_DOMAIN_MASS
        elif feature.name in spec.numerical:
            feature.drift_comparator.jensen_shannon_divergence.threshold = NUMERICAL_DRIFT
            feature.skew_comparator.jensen_shannon_divergence.threshold = NUMERICAL_SKEW
    return schema


def freeze(inferred_schema_uri: str, spec: FeatureSpec, pipeline_root: str) -> Optional[str]:
    """Writes the inferred schema with thresholds as the frozen one; None if one exists."""
    from tfx.utils import io_utils

    from google.protobuf import text_format

    from deepfm_tfx import artifact_files

    target = path(pipeline_root)
    if artifact_files.exists(target):
        return None
    schema = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(inferred_schema_uri))
    artifact_files.write_text(target, text_format.MessageToString(with_thresholds(schema, spec)))
    return target

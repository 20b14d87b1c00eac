"""What the simulation reads from and marks in ml-metadata: a week's statistics, and an
online rollback's quarantine and revoked blessing, so next week's run neither trains on
that week nor warm-starts from (or compares with) the rejected model."""
from __future__ import annotations

from typing import Any, Dict, Optional

from deepfm_tfx import model_repository


def revoke(run_config, summary: Dict[str, Any], canary_version: int, reason: str) -> None:
    """After an online rollback: quarantine the week's data and un-bless its model in ml-metadata,
    as the pipeline does for a week a gate refused."""
    from ml_metadata import metadata_store

    from deepfm_tfx.components import span_window
    from deepfm_tfx.pipeline import metadata

    store = metadata_store.MetadataStore(metadata.connection_config(run_config.metadata, run_config.pipeline_root))
    week = [i for i in (summary.get("examples_artifact_id"), summary.get("statistics_artifact_id")) if i]
    span_window.quarantine(store, week, reason)
    record = model_repository.read_record(run_config.model_repository, run_config.model_name, canary_version) or {}
    models = store.get_artifacts_by_uri(record["source_model"]) if record.get("source_model") else []
    model_ids = {m.id for m in models}
    revoked = []
    for blessing in store.get_artifacts_by_type("ModelBlessing"):
        if blessing.custom_properties["current_model_id"].int_value in model_ids:
            blessing.custom_properties["blessed"].int_value = 0
            blessing.custom_properties["revoked"].string_value = reason[:1000]
            revoked.append(blessing)
    if revoked:
        store.put_artifacts(revoked)


def statistics_uri(run_config, summary: Dict[str, Any]) -> Optional[str]:
    """The week's StatisticsGen output (TFDV statistics of its data), for the skew check."""
    if not summary.get("statistics_artifact_id"):
        return None
    from ml_metadata import metadata_store

    from deepfm_tfx.pipeline import metadata

    store = metadata_store.MetadataStore(metadata.connection_config(run_config.metadata, run_config.pipeline_root))
    [artifact] = store.get_artifacts_by_id([summary["statistics_artifact_id"]])
    return artifact.uri

"""Which ingested spans the model trains on: a rolling window of the newest K.

Like TFX's SpanRangeStrategy with a rolling range, but a span is counted once
(its newest ingestion) and spans a gate quarantined are skipped, so one bad
week does not poison the next K trainings.
"""
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from tfx import types
from tfx.dsl.components.common import resolver

from deepfm_tfx.spans import span_of

QUARANTINED = "quarantined"


class RollingSpanWindowStrategy(resolver.ResolverStrategy):
    def __init__(self, num_spans: int):
        if num_spans < 1:
            raise ValueError("the training window needs at least one span")
        self._num_spans = num_spans

    def window(self, artifacts: List[types.Artifact]) -> List[types.Artifact]:
        newest_per_span: Dict[int, types.Artifact] = {}
        for artifact in artifacts:
            if artifact.get_int_custom_property(QUARANTINED):
                continue
            span = span_of(artifact)
            if span not in newest_per_span or artifact.id > newest_per_span[span].id:
                newest_per_span[span] = artifact
        spans = sorted(newest_per_span, reverse=True)[:self._num_spans]
        return [newest_per_span[s] for s in spans]

    def resolve_artifacts(self, store: metadata_store.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        result = {key: self.window(artifacts) for key, artifacts in input_dict.items()}
        return result if all(result.values()) else None


def quarantine(store: metadata_store.MetadataStore, artifact_ids: List[int], reason: str) -> None:
    """Marks a week's examples and statistics so later runs neither train on
    them nor compare the next week against them."""
    artifacts = store.get_artifacts_by_id(artifact_ids)
    for artifact in artifacts:
        artifact.custom_properties[QUARANTINED].int_value = 1
        artifact.custom_properties["quarantine_reason"].string_value = reason[:1000]
    store.put_artifacts(artifacts)


def _ingested(store: metadata_store.MetadataStore) -> List[types.Artifact]:
    """ExampleGen outputs no gate quarantined (Transform's outputs are Examples too)."""
    return [a for a in store.get_artifacts_by_type("Examples")
            if "input_fingerprint" in a.custom_properties and "span" in a.custom_properties
            and QUARANTINED not in a.custom_properties]


def newest_span(store: metadata_store.MetadataStore) -> Optional[int]:
    return max((a.custom_properties["span"].int_value for a in _ingested(store)), default=None)


class EarlierWeekStrategy(resolver.ResolverStrategy):
    """Per key, the newest artifact built from earlier weeks only: no gate
    quarantined it and it was not made from the newest span.

    Used for the Transform analyzer cache and the drift baseline statistics.
    The latest artifact would, on a re-run of the same week, be this week's
    own output, which changes the consumer's inputs on every re-run (so an
    unchanged re-run is never served from the pipeline cache) and compares
    a week's statistics with themselves.
    """

    def resolve_artifacts(self, store: metadata_store.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        newest = newest_span(store)
        result = {}
        for key, artifacts in input_dict.items():
            result[key] = []
            for artifact in sorted(artifacts, key=lambda a: a.id, reverse=True):
                if artifact.get_int_custom_property(QUARANTINED):
                    continue
                if newest is None or newest not in self._input_spans(store, artifact.id):
                    result[key] = [artifact]
                    break
        return result

    @staticmethod
    def _input_spans(store: metadata_store.MetadataStore, artifact_id: int) -> set:
        from ml_metadata.proto import metadata_store_pb2
        producers = [e.execution_id for e in store.get_events_by_artifact_ids([artifact_id])
                     if e.type == metadata_store_pb2.Event.OUTPUT]
        input_ids = [e.artifact_id for e in store.get_events_by_execution_ids(producers)
                     if e.type == metadata_store_pb2.Event.INPUT]
        return {a.custom_properties["span"].int_value for a in store.get_artifacts_by_id(input_ids)
                if "span" in a.custom_properties}


class EarlierBlessedModelStrategy(resolver.ResolverStrategy):
    """The newest blessed model trained before the newest span arrived:
    last week's production model, both the warm-start source and the
    Evaluator's baseline.

    TFX's LatestBlessedModelStrategy would pick this week's own model on a
    re-run, so the Trainer and Evaluator inputs change every time and an
    unchanged re-run retrains. Artifact ids grow over time, so "trained
    before" is "created before the newest span's first ingestion".
    """

    def resolve_artifacts(self, store: metadata_store.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        newest = newest_span(store)
        cutoff = min((a.id for a in _ingested(store) if a.custom_properties["span"].int_value == newest),
                     default=None)
        blessing_of = {int(b.get_int_custom_property("current_model_id")): b
                       for b in sorted(input_dict.get("model_blessing", []), key=lambda b: b.id)
                       if b.get_int_custom_property("blessed") == 1}
        models = [m for m in input_dict.get("model", [])
                  if m.id in blessing_of and (cutoff is None or m.id < cutoff)]
        if not models:
            return {"model": [], "model_blessing": []}
        model = max(models, key=lambda m: m.id)
        return {"model": [model], "model_blessing": [blessing_of[model.id]]}

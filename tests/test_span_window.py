"""Resolver strategies of the weekly loop, on a real (in-memory) ml-metadata store."""
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.types import standard_artifacts

from deepfm_tfx.components.span_window import (EarlierBlessedModelStrategy, EarlierWeekStrategy,
                                    RollingSpanWindowStrategy, newest_span, quarantine)


def store():
    config = metadata_store_pb2.ConnectionConfig()
    config.fake_database.SetInParent()
    return metadata_store.MetadataStore(config)


def put(s, artifact):
    artifact.type_id = s.put_artifact_type(artifact.artifact_type)
    artifact.mlmd_artifact.type_id = artifact.type_id
    [artifact.id] = s.put_artifacts([artifact.mlmd_artifact])
    return artifact


def ingest(s, span):
    examples = standard_artifacts.Examples()
    examples.set_int_custom_property("span", span)
    examples.set_string_custom_property("input_fingerprint", f"span {span}")
    return put(s, examples)


def train(s, blessed=True):
    model = put(s, standard_artifacts.Model())
    blessing = standard_artifacts.ModelBlessing()
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_int_custom_property("current_model_id", model.id)
    return model, put(s, blessing)


def resolve(s, models):
    result = EarlierBlessedModelStrategy().resolve_artifacts(
        s, {"model": [m for m, _ in models], "model_blessing": [b for _, b in models]})
    return [m.id for m in result["model"]]


def test_baseline_is_last_weeks_blessed_model_even_on_a_rerun():
    s = store()
    ingest(s, 1)
    assert resolve(s, []) == []
    week1 = train(s)
    assert resolve(s, [week1]) == [], "a re-run of week 1 must not see week 1's own model"
    ingest(s, 2)
    assert resolve(s, [week1]) == [week1[0].id]
    week2 = train(s)
    rejected = train(s, blessed=False)
    ingest(s, 2)  # the same week ingested again
    assert resolve(s, [week1, week2, rejected]) == [week1[0].id]
    ingest(s, 3)
    assert resolve(s, [week1, week2, rejected]) == [week2[0].id]


def test_quarantined_newest_week_does_not_hide_its_predecessors_model():
    s = store()
    ingest(s, 1)
    week1 = train(s)
    bad = ingest(s, 2)
    quarantine(s, [bad.id], "drift")
    assert newest_span(s) == 1
    assert resolve(s, [week1]) == [], "span 1 is still the newest good span"
    ingest(s, 2)  # fixed data for the same week
    assert resolve(s, [week1]) == [week1[0].id]


def test_window_takes_newest_ingestion_of_the_newest_spans_and_skips_quarantine():
    s = store()
    a = [ingest(s, n) for n in (1, 2, 3, 3, 4)]
    quarantine(s, [a[4].id], "bad week")
    [refreshed] = s.get_artifacts_by_id([a[4].id])
    a[4].mlmd_artifact.CopyFrom(refreshed)
    window = RollingSpanWindowStrategy(2).window(a)
    assert [x.id for x in window] == [a[3].id, a[1].id]


def statistics_of(s, examples):
    """A StatisticsGen execution: examples in, statistics out."""
    stats = put(s, standard_artifacts.ExampleStatistics())
    execution_type = s.put_execution_type(metadata_store_pb2.ExecutionType(name="StatisticsGen"))
    [execution_id] = s.put_executions([metadata_store_pb2.Execution(type_id=execution_type)])
    s.put_events([metadata_store_pb2.Event(artifact_id=examples.id, execution_id=execution_id,
                                           type=metadata_store_pb2.Event.INPUT),
                  metadata_store_pb2.Event(artifact_id=stats.id, execution_id=execution_id,
                                           type=metadata_store_pb2.Event.OUTPUT)])
    return stats


def test_drift_baseline_is_the_previous_good_week_even_on_a_rerun():
    s = store()
    week1 = statistics_of(s, ingest(s, 1))
    def baseline(stats):
        for a in stats:  # as a resolver sees them: as stored now
            a.mlmd_artifact.CopyFrom(s.get_artifacts_by_id([a.id])[0])
        return [a.id for a in EarlierWeekStrategy().resolve_artifacts(s, {"statistics": stats})["statistics"]]

    assert baseline([week1]) == [], "week 1 has no earlier week"
    week2 = statistics_of(s, ingest(s, 2))
    rerun2 = statistics_of(s, ingest(s, 2))
    assert baseline([week1, week2, rerun2]) == [week1.id]
    bad3 = statistics_of(s, ingest(s, 3))
    quarantine(s, [bad3.id], "drift")
    ingest(s, 4)
    assert baseline([week1, week2, rerun2, bad3]) == [rerun2.id]

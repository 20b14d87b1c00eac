"""ModelRepositoryPusher: TFX's Pusher contract, writing to the versioned repository.

It pushes only blessed models, like TFX's Pusher, but copies atomically and
writes a record per version (metrics, runner, data) for `deepfm-tfx models`.
"""
import json
import os

from tfx import v1 as tfx

from components import evaluation_results, model_repository

Model = tfx.types.standard_artifacts.Model
ModelBlessing = tfx.types.standard_artifacts.ModelBlessing
ModelEvaluation = tfx.types.standard_artifacts.ModelEvaluation
PushedModel = tfx.types.standard_artifacts.PushedModel


@tfx.dsl.components.component
def ModelRepositoryPusher(
    model: tfx.dsl.components.InputArtifact[Model],
    model_blessing: tfx.dsl.components.InputArtifact[ModelBlessing],
    evaluation: tfx.dsl.components.InputArtifact[ModelEvaluation],
    pushed_model: tfx.dsl.components.OutputArtifact[PushedModel],
    model_repository_dir: tfx.dsl.components.Parameter[str],
    model_name: tfx.dsl.components.Parameter[str],
    record_json: tfx.dsl.components.Parameter[str] = "{}",
) -> None:
    if not model_blessing.get_int_custom_property("blessed"):
        pushed_model.set_int_custom_property("pushed", 0)
        return
    existing = model_repository.version_of_source(model_repository_dir, model_name, model.uri)
    if existing is not None:
        # Re-blessed against itself (e.g. a re-run): already in the repository.
        _mark_pushed(pushed_model, model_repository_dir, model_name, existing)
        return
    metrics = evaluation_results.overall_metrics(evaluation.uri)
    record = dict(json.loads(record_json), metrics=metrics["candidate"],
                  baseline_metrics=metrics["baseline"] or None, source_model=model.uri)
    version = model_repository.push(model_repository_dir, model_name,
                                    os.path.join(model.uri, "Format-Serving"), record)
    _mark_pushed(pushed_model, model_repository_dir, model_name, version)


def _mark_pushed(pushed_model, repo: str, model_name: str, version: int) -> None:
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_int_custom_property("pushed_version", version)
    pushed_model.set_string_custom_property("pushed_destination", os.path.join(repo, model_name, str(version)))

"""Weekly retraining on Kubeflow Pipelines: a recurring run of a compiled v1 package."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

# KFP's cron (robfig/cron) has six fields, seconds first: Mondays 03:00 UTC.
WEEKLY_CRON = "0 0 3 * * 1"
DEFAULT_EXPERIMENT = "deepfm-tfx"
DEFAULT_JOB_NAME = "deepfm-tfx-weekly"
_PACKAGE_SUFFIXES = (".yaml", ".yml", ".tar.gz", ".tgz", ".zip")


@dataclasses.dataclass(frozen=True)
class RecurringRun:
    job_id: Optional[str]
    job_name: str
    experiment_id: str
    experiment_name: str
    cron: str
    package_path: str

    def __str__(self) -> str:
        return (f"recurring run {self.job_name!r} (id {self.job_id}) in experiment "
                f"{self.experiment_name!r} (id {self.experiment_id}): cron '{self.cron}', "
                f"package {self.package_path}")


def check_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) == 5:
        raise ValueError(f"KFP cron expressions have 6 fields with seconds first; "
                         f"{cron!r} has 5 (did you mean '0 {cron}'?)")
    if len(fields) != 6:
        raise ValueError(f"KFP cron expressions have 6 fields (sec min hour day month weekday), got {cron!r}")
    return " ".join(fields)


def create_weekly_recurring_run(client: Any, package_path: str, experiment_name: str = DEFAULT_EXPERIMENT,
                                cron: str = WEEKLY_CRON, job_name: str = DEFAULT_JOB_NAME,
                                namespace: Optional[str] = None) -> RecurringRun:
    """Creates (or reuses) the experiment and a recurring run of the package in it.

    `client` is a kfp.Client (kfp 1.8): create_experiment returns the existing
    experiment of that name, so re-running is safe for the experiment; each call
    adds a new recurring run.
    """
    cron = check_cron(cron)
    if not package_path.endswith(_PACKAGE_SUFFIXES):
        raise ValueError(f"{package_path}: a KFP v1 package (.yaml, .tar.gz or .zip) is needed; "
                         "a v2 .json PipelineJob is scheduled on Vertex AI instead")
    if not os.path.isfile(package_path):
        raise FileNotFoundError(f"{package_path}: pipeline package not found")
    experiment = client.create_experiment(name=experiment_name, namespace=namespace)
    job = client.create_recurring_run(
        experiment_id=experiment.id,
        job_name=job_name,
        description="Weekly DeepFM retraining on the newest data span",
        cron_expression=cron,
        pipeline_package_path=package_path,
        max_concurrency=1,
        # Retraining on the newest span once is enough after a pause.
        no_catchup=True,
        enabled=True,
    )
    return RecurringRun(job_id=getattr(job, "id", None), job_name=job_name, experiment_id=experiment.id,
                        experiment_name=experiment_name, cron=cron, package_path=package_path)

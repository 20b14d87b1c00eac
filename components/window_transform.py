"""Transform whose window of spans comes out as one transformed-examples artifact.

TFX's Transform writes one output artifact per input span, as subfolders of the
one the orchestrator registered. LocalDagRunner's launcher publishes those
replicas; the legacy launcher Airflow uses publishes the registered parent,
whose own folder holds no split, and the Trainer fails on the second week
("Split does not exist over all example artifacts: train"). Merging the
replicas' files into the parent gives every orchestrator the same single
artifact with its Split-* folders directly under it.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

from tfx import types
from tfx.components import Transform
from tfx.components.transform import executor as transform_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs

EXAMPLES = standard_component_specs.EXAMPLES_KEY
TRANSFORMED = standard_component_specs.TRANSFORMED_EXAMPLES_KEY


def merge_replicas(parent: types.Artifact, replicas: List[types.Artifact]) -> None:
    """Moves each replica's split files into the parent's split folders, named by input index."""
    parent.split_names = replicas[0].split_names
    for index, replica in enumerate(replicas):
        for split in artifact_utils.decode_split_names(replica.split_names):
            source = artifact_utils.get_split_uri([replica], split)
            target = artifact_utils.get_split_uri([parent], split)
            fileio.makedirs(target)
            for name in fileio.listdir(source):
                fileio.rename(os.path.join(source, name), os.path.join(target, f"input-{index:03d}-{name}"))
        fileio.rmtree(replica.uri)


class Executor(transform_executor.Executor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        outputs = output_dict.get(TRANSFORMED) or []
        if len(outputs) != 1 or len(input_dict[EXAMPLES]) < 2:
            return super().Do(input_dict, output_dict, exec_properties)
        parent = outputs[0]
        super().Do(input_dict, output_dict, exec_properties)  # replaces the list with per-input replicas
        merge_replicas(parent, output_dict[TRANSFORMED])
        output_dict[TRANSFORMED] = [parent]


class WindowTransform(Transform):
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

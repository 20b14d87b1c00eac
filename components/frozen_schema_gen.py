"""FrozenSchemaGen: SchemaGen that imports the frozen schema once there is one.

The frozen schema (schemas/frozen_schema.py) is written by the week's final
step after the first good week. Deciding at run time, not when the pipeline is
built, is what lets a pipeline compiled once (Kubeflow) or parsed before the
freeze (Airflow) check every later week against it, as a local run does.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

from tfx import types
from tfx.components.schema_gen import executor as schema_gen_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

FROZEN_SCHEMA_PATH_KEY = "frozen_schema_path"


class FrozenSchemaGenSpec(standard_component_specs.SchemaGenSpec):
    PARAMETERS = {**standard_component_specs.SchemaGenSpec.PARAMETERS,
                  FROZEN_SCHEMA_PATH_KEY: ExecutionParameter(type=str)}


class Executor(schema_gen_executor.Executor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        frozen = exec_properties.get(FROZEN_SCHEMA_PATH_KEY)
        if frozen and fileio.exists(frozen):
            output = artifact_utils.get_single_uri(output_dict[standard_component_specs.SCHEMA_KEY])
            fileio.makedirs(output)
            fileio.copy(frozen, os.path.join(output, schema_gen_executor.DEFAULT_FILE_NAME), overwrite=True)
            return
        super().Do(input_dict, output_dict, exec_properties)


class FrozenSchemaGen(base_component.BaseComponent):
    """The frozen schema when `frozen_schema_path` exists, else one inferred from `statistics`."""

    SPEC_CLASS = FrozenSchemaGenSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, statistics: types.BaseChannel, frozen_schema_path: str):
        super().__init__(spec=FrozenSchemaGenSpec(
            statistics=statistics,
            # Transform parses sparse features; a fixed shape would drop rows with a missing value.
            infer_feature_shape=0,
            exclude_splits=json_utils.dumps([]),
            frozen_schema_path=frozen_schema_path,
            schema=types.Channel(type=standard_artifacts.Schema)))

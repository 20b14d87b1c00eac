"""Declarative description of a click-log dataset.

A feature spec is a small YAML file: the file format, the label, and which
columns are categorical, numerical or multivalent. Everything downstream
(ingestion, Transform, the model's field layout) is derived from it, so a new
dataset needs no code.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional

import yaml

SPEC_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SPEC = os.path.join(SPEC_DIR, "criteo_synthetic.yaml")

_DELIMITERS = {"csv": ",", "tsv": "\t"}
_FORMATS = ("csv", "tsv", "parquet", "tfrecord")
_ENCODINGS = ("vocabulary", "hash")
_NUMERIC_TRANSFORMS = ("log_zscore", "zscore", "log", "none")


class FeatureSpecError(ValueError):
    """A feature spec is malformed; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Multivalent:
    name: str
    separator: str
    max_length: int


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    name: str
    label: str
    categorical: List[str]
    numerical: List[str]
    multivalent: List[Multivalent]
    format: str = "csv"
    header: bool = True
    column_names: Optional[List[str]] = None
    file_pattern: str = "*"
    categorical_encoding: str = "vocabulary"
    vocabulary_top_k: int = 100_000
    vocabulary_min_count: int = 1
    oov_buckets: int = 1
    # None: chosen from the data when the pipeline is built (deepfm_tfx.pipeline.id_space).
    hash_buckets: Optional[int] = None
    numerical_transform: str = "log_zscore"
    schema_file: Optional[str] = None  # absolute path to a curated schema.pbtxt
    # A categorical column whose value alone decides a row's split (e.g. a user
    # id, so a user's rows never straddle train and eval); None: the whole row.
    split_key: Optional[str] = None
    # Categorical columns the Evaluator reports metrics by, one slice per value
    # (pick low-cardinality ones: every value is a slice).
    slices: List[str] = dataclasses.field(default_factory=list)
    # A Hive partition column (e.g. `dt`): --data holds `dt=<ISO date>/` folders, one span each.
    partitions: Optional[str] = None
    # Frequency admission: an id seen fewer than min_count times in the training
    # window shares its field's rare row (1: every id has its own row, no analyzer pass).
    min_count: int = 1
    min_count_per_field: Dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def delimiter(self) -> str:
        return _DELIMITERS[self.format]

    @property
    def is_text(self) -> bool:
        return self.format in _DELIMITERS

    @property
    def feature_columns(self) -> List[str]:
        return self.categorical + self.numerical + [m.name for m in self.multivalent]

    @property
    def all_columns(self) -> List[str]:
        return [self.label] + self.feature_columns

    @property
    def id_fields(self) -> List[str]:
        """The fields whose tokens become ids, in id-space order."""
        return self.categorical + [m.name for m in self.multivalent]

    def min_count_of(self, field: str) -> int:
        return int(self.min_count_per_field.get(field, self.min_count))

    @property
    def admitted_fields(self) -> List[str]:
        """The id fields under frequency admission; each has one rare row after the table."""
        return [f for f in self.id_fields if self.min_count_of(f) > 1]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-safe dict: how the spec travels in component configs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FeatureSpec":
        d = dict(d)
        d["multivalent"] = [Multivalent(**m) for m in d.get("multivalent", [])]
        # Component configs may carry numbers as floats (protobuf Struct).
        d["min_count"] = int(d.get("min_count", 1))
        d["min_count_per_field"] = {k: int(v) for k, v in (d.get("min_count_per_field") or {}).items()}
        return cls(**d)


def _fail(path: str, msg: str) -> None:
    raise FeatureSpecError(f"{path}: {msg}")


def _names(path: str, raw: Dict[str, Any], key: str) -> List[str]:
    value = raw.get(key, []) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _fail(path, f"'{key}' must be a list of column names")
    return value


def load(path: str) -> FeatureSpec:
    """Loads and validates a feature spec YAML file."""
    if not os.path.isfile(path):
        raise FeatureSpecError(f"{path}: feature spec file not found")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
            raise FeatureSpecError(f"{path}{where}: not valid YAML: {what}") from None
    if not isinstance(raw, dict):
        _fail(path, "must be a mapping of keys to values")
    known = {f.name for f in dataclasses.fields(FeatureSpec)} - {"schema_file"} | {"schema"}
    unknown = sorted(set(raw) - known)
    if unknown:
        _fail(path, f"unknown key(s) {unknown}; known keys are {sorted(known)}")

    label = raw.get("label")
    if not isinstance(label, str) or not label:
        _fail(path, "'label' (the label column) is required")
    fmt = raw.get("format", "csv")
    if fmt not in _FORMATS:
        _fail(path, f"'format' must be one of {list(_FORMATS)}, got {fmt!r}")
    categorical = _names(path, raw, "categorical")
    numerical = _names(path, raw, "numerical")

    multivalent = []
    for i, m in enumerate(raw.get("multivalent", []) or []):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            _fail(path, f"multivalent[{i}] needs a 'name'")
        sep = m.get("separator", "|")
        if not isinstance(sep, str) or not sep or sep == _DELIMITERS.get(fmt):
            _fail(path, f"multivalent[{i}] ({m['name']}): 'separator' must be a non-empty string other than the field delimiter")
        max_length = m.get("max_length", 8)
        if not isinstance(max_length, int) or max_length < 1:
            _fail(path, f"multivalent[{i}] ({m['name']}): 'max_length' must be a positive integer")
        multivalent.append(Multivalent(m["name"], sep, max_length))

    features = categorical + numerical + [m.name for m in multivalent]
    if not features:
        _fail(path, "declares no feature columns (categorical, numerical or multivalent)")
    seen = set()
    for name in [label] + features:
        if name in seen:
            _fail(path, f"column {name!r} is declared more than once")
        seen.add(name)

    header = raw.get("header", True)
    if not isinstance(header, bool):
        _fail(path, "'header' must be true or false")
    column_names = raw.get("column_names")
    if not header and fmt in _DELIMITERS:
        if not column_names:
            _fail(path, "'column_names' is required when 'header' is false")
        column_names = _names(path, raw, "column_names")
        missing = [c for c in [label] + features if c not in column_names]
        if missing:
            _fail(path, f"columns {missing} are declared but not in 'column_names'")

    encoding = raw.get("categorical_encoding", "vocabulary")
    if encoding not in _ENCODINGS:
        _fail(path, f"'categorical_encoding' must be one of {list(_ENCODINGS)}, got {encoding!r}")
    transform = raw.get("numerical_transform", "log_zscore")
    if transform not in _NUMERIC_TRANSFORMS:
        _fail(path, f"'numerical_transform' must be one of {list(_NUMERIC_TRANSFORMS)}, got {transform!r}")
    ints = {}
    for key, default, minimum in (("vocabulary_top_k", 100_000, 1), ("vocabulary_min_count", 1, 1),
                                  ("oov_buckets", 1, 1), ("hash_buckets", None, 2)):
        value = raw.get(key, default)
        if value is None and default is None:  # hash_buckets left to the data
            ints[key] = None
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            _fail(path, f"'{key}' must be an integer >= {minimum}, got {value!r}")
        ints[key] = value

    split_key = raw.get("split_key")
    if split_key is not None and split_key not in categorical:
        _fail(path, f"'split_key' must name one of the categorical columns, got {split_key!r}")

    slices = _names(path, raw, "slices")
    not_categorical = [s for s in slices if s not in categorical]
    if not_categorical:
        _fail(path, f"'slices' must name categorical columns; {not_categorical} are not")

    partitions = raw.get("partitions")
    if partitions is not None and (not isinstance(partitions, str) or not re.fullmatch(r"\w+", partitions)):
        _fail(path, f"'partitions' must name the partition column (e.g. dt), got {partitions!r}")

    min_count = raw.get("min_count", 1)
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        _fail(path, f"'min_count' must be an integer >= 1, got {min_count!r}")
    per_field = raw.get("min_count_per_field") or {}
    if not isinstance(per_field, dict):
        _fail(path, "'min_count_per_field' must map field names to integers >= 1")
    for name, value in per_field.items():
        if name not in categorical + [m.name for m in multivalent]:
            _fail(path, f"'min_count_per_field' names {name!r}, which is not a categorical or multivalent column")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(path, f"'min_count_per_field' {name}: must be an integer >= 1, got {value!r}")

    schema_file = None
    if raw.get("schema"):
        schema_file = os.path.join(os.path.dirname(os.path.abspath(path)), raw["schema"])
        if not os.path.isfile(schema_file):
            _fail(path, f"'schema' points to {schema_file}, which does not exist")

    return FeatureSpec(
        name=str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]),
        label=label, categorical=categorical, numerical=numerical, multivalent=multivalent,
        format=fmt, header=header, column_names=column_names,
        file_pattern=str(raw.get("file_pattern", "*")),
        categorical_encoding=encoding, numerical_transform=transform,
        schema_file=schema_file, split_key=split_key, slices=slices, partitions=partitions,
        min_count=min_count, min_count_per_field=dict(per_field), **ints)

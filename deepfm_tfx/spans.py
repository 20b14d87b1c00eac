"""The span contract: how weekly data lands, and where a span number is kept.

Weekly data lands as `<data_root>/span-<N>/<files>`; ExampleGen resolves
`span-{SPAN}` to the newest N when a run starts. ExampleGen (TFX 1.15) records
the span of an Examples artifact as a custom property `span`.

A Hive table partitioned by a date column lands as `<data_root>/dt=<YYYY-MM-DD>/<files>`:
each partition is a span numbered by TFX's own date spec (`{YYYY}-{MM}-{DD}`), the
days since 1970-01-01. The number keeps its order when old partitions are dropped,
as a rank would not. SpecCsvExampleGen records the folder as the custom property
`partition` (e.g. `dt=2026-11-30`).
"""
from __future__ import annotations

import datetime
import os
import re
from typing import Any, List, Optional, Tuple

from deepfm_tfx.errors import DataError

SPAN_FOLDER = re.compile(r"span-(\d+)")
PARTITION = "partition"
_EPOCH = datetime.date(1970, 1, 1)
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # Hive's folder for rows whose partition value is null


def folder(data_root: str, span: int) -> str:
    return os.path.join(data_root, f"span-{span}")


def input_pattern(file_pattern: str, partition: Optional[str] = None) -> str:
    """ExampleGen's pattern for spanned data (span-N/, or <partition>=<date>/): the newest span at run time."""
    if partition:
        return f"{partition}={{YYYY}}-{{MM}}-{{DD}}/{file_pattern}"
    return f"span-{{SPAN}}/{file_pattern}"


def partitions(data_root: str, column: str) -> List[Tuple[int, str]]:
    """(span, folder name) of the <column>=<YYYY-MM-DD>/ folders under data_root, oldest first."""
    found = []
    for name in os.listdir(data_root):
        if not name.startswith(column + "=") or not os.path.isdir(os.path.join(data_root, name)):
            continue
        value = name[len(column) + 1:]
        if value == HIVE_NULL:  # rows without a date belong to no day's span
            continue
        try:
            day = datetime.date.fromisoformat(value) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else None
        except ValueError:
            day = None
        if day is None:
            raise DataError(f"{os.path.join(data_root, name)}: a partition's value must be an ISO date "
                                 f"(YYYY-MM-DD), got {value!r}")
        found.append(((day - _EPOCH).days, name))
    return sorted(found)


def date_of(span: int) -> str:
    """The ISO date of a partition's span number."""
    return (_EPOCH + datetime.timedelta(days=span)).isoformat()


def newest_folder(data_root: str, partition: Optional[str] = None) -> Optional[str]:
    """The newest span's folder (span-N/, or <partition>=<newest date>/ when given), None if there is none."""
    if partition:
        found = partitions(data_root, partition)
        return os.path.join(data_root, found[-1][1]) if found else None
    latest = newest(data_root)
    return folder(data_root, latest) if latest is not None else None


def present(data_root: str) -> List[int]:
    """Span numbers of the span-<N>/ folders under data_root, ascending."""
    return sorted(int(m.group(1)) for d in os.listdir(data_root)
                  if (m := SPAN_FOLDER.fullmatch(d)) and os.path.isdir(os.path.join(data_root, d)))


def newest(data_root: str) -> Optional[int]:
    found = present(data_root)
    return found[-1] if found else None


def span_of(artifact: Any) -> int:
    """The span of an Examples artifact: a TFX Artifact or an ml-metadata proto."""
    if hasattr(artifact, "has_custom_property"):
        if artifact.has_custom_property("span"):
            return int(artifact.get_int_custom_property("span"))
        return int(artifact.span or 0)
    for props in (artifact.custom_properties, artifact.properties):
        if "span" in props:
            return props["span"].int_value
    return 0


def partition_of(artifact: Any) -> Optional[str]:
    """The Hive partition an Examples artifact was read from (`dt=2026-11-30`), None for span-N/ data."""
    if hasattr(artifact, "has_custom_property"):
        return artifact.get_string_custom_property(PARTITION) or None
    if PARTITION in artifact.custom_properties:
        return artifact.custom_properties[PARTITION].string_value or None
    return None

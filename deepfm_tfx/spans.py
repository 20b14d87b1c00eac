"""The span contract: how weekly data lands, and where a span number is kept.

Weekly data lands as `<data_root>/span-<N>/<files>`; ExampleGen resolves
`span-{SPAN}` to the newest N when a run starts. ExampleGen (TFX 1.15) records
the span of an Examples artifact as a custom property `span`.
"""
from __future__ import annotations

import os
import re
from typing import Any, List, Optional

SPAN_FOLDER = re.compile(r"span-(\d+)")


def folder(data_root: str, span: int) -> str:
    return os.path.join(data_root, f"span-{span}")


def input_pattern(file_pattern: str) -> str:
    """ExampleGen's pattern for spanned data: the newest span at run time."""
    return f"span-{{SPAN}}/{file_pattern}"


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

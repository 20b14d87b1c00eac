"""Errors the command line turns into exit codes (contracts.EXIT_*).

A DataError, FeatureSpecError or bad flag exits with EXIT_BAD_INPUT; a gate
that refused the data or the model, EXIT_GATE.
"""
from deepfm_tfx.contracts import EXIT_BAD_INPUT, EXIT_GATE  # noqa: F401 (the CLI imports them from here)


class DataError(ValueError):
    """Bad input data; the message names the file, and the row and column where known."""


class ConfigError(ValueError):
    """A bad flag or path, found before any work; the message names the flag."""

"""Errors the command line turns into exit codes.

Exit codes: 0 pushed (or nothing to do), 1 anything unexpected, 2 bad input
(DataError, FeatureSpecError, a bad flag), 3 a gate refused the data or the model.
"""

EXIT_BAD_INPUT = 2
EXIT_GATE = 3


class DataError(ValueError):
    """Bad input data; the message names the file, and the row and column where known."""


class ConfigError(ValueError):
    """A bad flag or path, found before any work; the message names the flag."""

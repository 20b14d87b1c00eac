"""TF Serving's error model: a canonical status code and a message.

REST answers `{"error": message}` with the HTTP status TF Serving maps the
code to (model_servers/http_server.cc); gRPC aborts with the code itself.
"""
from __future__ import annotations

# google.rpc / absl canonical codes, by name, as TF Serving uses them.
OK = "OK"
CANCELLED = "CANCELLED"
UNKNOWN = "UNKNOWN"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
NOT_FOUND = "NOT_FOUND"
ALREADY_EXISTS = "ALREADY_EXISTS"
PERMISSION_DENIED = "PERMISSION_DENIED"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
ABORTED = "ABORTED"
OUT_OF_RANGE = "OUT_OF_RANGE"
UNIMPLEMENTED = "UNIMPLEMENTED"
INTERNAL = "INTERNAL"
UNAVAILABLE = "UNAVAILABLE"
DATA_LOSS = "DATA_LOSS"
UNAUTHENTICATED = "UNAUTHENTICATED"

# The numbers TF's OpError.error_code and tensorflow.error.Code use.
CODE_NUMBERS = {OK: 0, CANCELLED: 1, UNKNOWN: 2, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5,
                ALREADY_EXISTS: 6, PERMISSION_DENIED: 7, RESOURCE_EXHAUSTED: 8, FAILED_PRECONDITION: 9,
                ABORTED: 10, OUT_OF_RANGE: 11, UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14,
                DATA_LOSS: 15, UNAUTHENTICATED: 16}
CODE_NAMES = {number: name for name, number in CODE_NUMBERS.items()}

# TF Serving's ToHTTPStatusCode.
HTTP_STATUS = {OK: 200, CANCELLED: 499, UNKNOWN: 500, INVALID_ARGUMENT: 400, DEADLINE_EXCEEDED: 504,
               NOT_FOUND: 404, ALREADY_EXISTS: 409, PERMISSION_DENIED: 403, RESOURCE_EXHAUSTED: 429,
               FAILED_PRECONDITION: 400, ABORTED: 409, OUT_OF_RANGE: 400, UNIMPLEMENTED: 501,
               INTERNAL: 500, UNAVAILABLE: 503, DATA_LOSS: 500, UNAUTHENTICATED: 401}


class ServingError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def invalid(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


def from_tf_error(error) -> ServingError:
    """A tf.errors.OpError raised by Session.run, with its own code and without
    the graph-construction traceback TF appends for Python-built graphs."""
    message = getattr(error, "message", None) or str(error)
    if "\nNode: '" in message:
        message = message.rsplit("\nNode: '", 1)[1].split("\n", 1)[-1]
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.lstrip().startswith("[[") and line.strip() != "Graph execution error:"]
    return ServingError(CODE_NAMES.get(getattr(error, "error_code", 2), UNKNOWN), " ".join(lines))

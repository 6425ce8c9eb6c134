"""The exceptions asyncstore raises.

    Exception
    ├── StorageError        writes that failed permanently (carries what failed)
    ├── ConfigError         (ValueError) an invalid system configuration, naming the key
    ├── NotFoundError       (LookupError) an unknown experiment, sweep, step or model id
    └── CodecError          (ValueError) stored bytes that do not decode; names the document

Bad arguments at a call site raise the built-in ``TypeError`` / ``ValueError`` before
anything is queued.
"""

from __future__ import annotations

from collections.abc import Sequence


class StorageError(Exception):
    """Some accepted operations could not be stored, and retrying will not help.

    ``failures`` lists one short text per failed operation (what it was, which store,
    and why).
    """

    def __init__(self, message: str, failures: Sequence[str] = ()) -> None:
        self.failures = list(failures)
        if self.failures:
            shown = "\n  ".join(self.failures[:20])
            more = len(self.failures) - 20
            message = f"{message}:\n  {shown}" + (f"\n  ... and {more} more" if more > 0 else "")
        super().__init__(message)


class ConfigError(ValueError):
    """The system configuration is invalid; ``key`` is the dotted path of the bad value."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class NotFoundError(LookupError):
    """No experiment, sweep, step or model has the requested id."""


class CodecError(ValueError):
    """Stored bytes could not be decoded (malformed, foreign, or from a newer version)."""

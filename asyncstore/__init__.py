"""asyncstore: non-blocking storage of Sparsey experiment results.

A save call checks, snapshots and enqueues; a background writer batches commits to
Firestore or the embedded store, retries what is transient and reports what is not.
"""

from __future__ import annotations

from . import comparisons
from ._async_storer import AsyncDataStorer
from ._config import SystemConfig, load_config
from ._exceptions import CodecError, ConfigError, NotFoundError, StorageError
from ._fetcher import DataFetcher
from ._recover import RecoverReport, recover
from ._results import HPOResult, HPOStepResult, TrainingResult, TrainingStepResult
from ._engine import StorerStats
from ._storer import DataStorer

__version__ = "0.1.0"

__all__ = [
    "AsyncDataStorer",
    "CodecError",
    "ConfigError",
    "DataFetcher",
    "DataStorer",
    "HPOResult",
    "HPOStepResult",
    "NotFoundError",
    "RecoverReport",
    "StorageError",
    "StorerStats",
    "SystemConfig",
    "TrainingResult",
    "TrainingStepResult",
    "comparisons",
    "load_config",
    "recover",
]

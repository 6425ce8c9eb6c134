"""``DataStorer``: the seed's storer, non-blocking. Every save method checks, snapshots
and enqueues on the caller's thread; one background thread runs the writer's event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar

import anyio

# The writer thread's event loop backend, imported here on the caller's thread: imported
# lazily by anyio.run in the writer thread, a fork during that import (a DataLoader
# started right after the storer) left the child a half-initialized module, and every
# storer the child made had a dead writer.
import anyio._backends._asyncio

from . import _lifecycle, _wandb, comparisons
from ._config import SystemConfig, load_config
from ._defaults import resolve_config, set_default
from ._exceptions import StorageError
from ._engine import Engine, StorerStats
from ._queue import Op
from ._results import HPOResult, HPOStepResult, TrainingResult, TrainingStepResult

log = logging.getLogger("asyncstore")


def _lower_priority() -> None:
    """Let the training threads win the CPU: on a machine whose cores are all busy
    training, the writer (and the threads it starts, which inherit this) runs in the
    gaps. It only waits longer; it is never starved of the GIL."""
    if os.environ.get("ASYNCSTORE_WRITER_NICE", "1") == "0":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: keep the default
        pass


class DataStorer:
    """Stores Sparsey results in every configured document store without blocking.

    >>> with DataStorer([{"name": "loss", "save": True}], config) as ds:
    ...     ds.create_experiment(result)
    ...     ds.save_training_step(result.id, step)
    """

    is_initialized: ClassVar[bool] = False
    wandb_config: ClassVar[dict[str, Any]] = {}
    firestore_config: ClassVar[dict[str, Any]] = {}

    @staticmethod
    def configure(ds_config: Mapping[str, Any] | str | os.PathLike[str] | SystemConfig) -> None:
        """Validate the system configuration and make it the process default (for
        ``DataStorer``, ``AsyncDataStorer`` and ``DataFetcher``).

        :raises ConfigError: an invalid value, naming its key.
        """
        cfg = load_config(ds_config)
        set_default(cfg)
        DataStorer.wandb_config = cfg.wandb.model_dump()
        fs = next((d for d in cfg.database.write_databases if d.name == "firestore"), None)
        DataStorer.firestore_config = fs.model_dump() if fs is not None else {}
        DataStorer.is_initialized = True

    def __init__(
        self,
        metric_config: list[dict[str, Any]],
        config: Mapping[str, Any] | str | os.PathLike[str] | SystemConfig | None = None,
    ) -> None:
        self.config = resolve_config(config, "DataStorer")
        self._engine = e = Engine(self.config, metric_config, own_thread=True)
        self._front, self._queue, self._journal, self._writer = (
            e.front, e.queue, e.journal, e.writer
        )
        self._pid = os.getpid()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._thread_main, name="asyncstore-writer", daemon=True
        )
        self._thread.start()
        _lifecycle.track(self)

    # ------------------------------------------------------------------ lifecycle

    def _thread_main(self) -> None:
        _lower_priority()
        try:
            anyio.run(self._writer.run)
        except BaseException as exc:  # noqa: BLE001 - reported by flush()/close()
            if self._writer.stats.fatal is None:  # the loop failed before the writer ran
                self._writer.stats.fatal = exc
                log.error("asyncstore: the writer could not start: %r", exc)

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this DataStorer was created in process {self._pid} and cannot be used in "
                "a forked child; create a new DataStorer in the child"
            )

    def _put(self, op: Op) -> None:
        self._check_usable()
        if self._closed:
            raise RuntimeError("this DataStorer is closed")
        self._queue.put(op)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything accepted before this call is stored in every store.

        :raises TimeoutError: not all of it was stored within ``timeout`` seconds.
        :raises StorageError: something failed permanently (listed).
        """
        self._check_usable()
        target = self._queue.request_flush()
        self._wait(target, timeout)
        self._raise_failures(target)

    def _wait(self, target: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue.wait_done(target, 0.1):
            if not self._thread.is_alive():
                fatal = self._writer.stats.fatal
                raise StorageError(
                    f"the writer stopped: {fatal!r}" if fatal else "the writer has stopped",
                    [f"{self._queue.accepted - self._queue.done} accepted operation(s) not stored"],
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self._queue.accepted - self._queue.done} operation(s) not yet stored "
                    f"after {timeout} s"
                )

    def _raise_failures(self, target: int) -> None:
        self._engine.raise_failures(target)

    def close(self, timeout: float | None = None) -> None:
        """Store everything accepted, then stop the writer. Safe to call twice.

        :raises TimeoutError: the writer did not finish within ``timeout``.
        :raises StorageError: something failed permanently (listed).
        """
        if os.getpid() != self._pid:
            return
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        target = self._queue.accepted
        self._queue.close()
        try:
            self._wait(target, timeout)
            self._thread.join(timeout)
        finally:
            _lifecycle.untrack(self)
        if self._journal is not None and not self._thread.is_alive():
            self._journal.spool.close()
        self._raise_failures(target)

    def __enter__(self) -> DataStorer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # the body's exception wins; a storage failure is logged, not raised over it
            self.close()
        except Exception:
            log.exception("closing the DataStorer after an error")

    def stats(self) -> StorerStats:
        """Counters: ``accepted, written, pending, retried, failed, spilled, high_water,
        last_error, blocked, blocked_seconds``."""
        return self._engine.stats()

    # ------------------------------------------------------------------ the seed's methods

    def create_experiment(self, experiment: TrainingResult) -> None:
        self._put(self._front.experiment(experiment))

    def save_training_step(self, parent: str, result: TrainingStepResult) -> None:
        self._put(self._front.step(parent, result, "training"))

    def save_training_result(self, result: TrainingResult) -> None:
        self._put(self._front.result(result, "training"))

    def save_evaluation_step(self, parent: str, result: TrainingStepResult) -> None:
        self._put(self._front.step(parent, result, "evaluation"))

    def save_evaluation_result(self, result: TrainingResult) -> None:
        self._put(self._front.result(result, "evaluation"))

    def create_hpo_sweep(self, sweep: HPOResult) -> None:
        self._put(self._front.hpo_sweep(sweep))

    def save_hpo_step(self, parent: str, result: HPOStepResult) -> None:
        self._put(self._front.hpo_step(parent, result))

    def save_hpo_result(self, result: HPOResult) -> None:
        self._put(self._front.hpo_result(result))

    def save_model(
        self, experiment: str, m: Any, model_config: dict[str, Any] | None = None
    ) -> None:
        self._put(self._front.model(experiment, m, model_config))

    def create_artifact(self, content: dict[str, Any]) -> Any:
        """A ``wandb.Artifact`` holding ``content`` (as ``content.json``). Runs on the
        caller's thread (importing wandb the first time); makes no network call."""
        return _wandb.create_artifact(content)

    @contextlib.contextmanager
    def experiment(self, result: TrainingResult) -> Iterator[TrainingResult]:
        """Create the experiment on entry; on a normal exit mark ``result`` finished and
        save it (as the training or evaluation result, by its ``result_type``)."""
        self.create_experiment(result)
        yield result
        if result.end_time is None:
            result.mark_finished()
        if result.result_type == "evaluation":
            self.save_evaluation_result(result)
        else:
            self.save_training_result(result)

    @staticmethod
    def average_nested_data(data: Any) -> float:
        return comparisons.average_nested_data(data)
